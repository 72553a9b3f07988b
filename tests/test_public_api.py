"""The public API: ``import geomis as gm`` is light, every name in ``gm.__all__`` resolves to what it says, and the
chapters import the package through it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import geomis as gm

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def test_import_geomis_loads_no_heavy_library() -> None:
    code = ("import sys, geomis; "
            "print(sorted(m for m in ('torch', 'transformers', 'nnsight', 'sae_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import geomis pulled in {out}"


@pytest.mark.parametrize("name", gm.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(gm, name)
    target = gm._EXPORTS[name]
    module_name, _, attribute = target.partition(":")
    if attribute:
        assert getattr(sys.modules[module_name], attribute) is value
        assert inspect.getdoc(value), f"gm.{name} has no docstring"
    else:
        assert isinstance(value, types.ModuleType) and value.__name__ == module_name


def test_public_names_are_listed_and_unknown_names_fail() -> None:
    assert gm.__all__ == sorted(set(gm.__all__))
    assert set(gm.__all__) <= set(dir(gm))
    with pytest.raises(AttributeError, match="no attribute 'load_modle'"):
        _ = gm.load_modle  # type: ignore[attr-defined]


def test_pipeline_names_from_the_issue_are_public() -> None:
    assert {"load_model", "collect_residuals", "load_sae", "fine_tune", "evaluate"} <= set(gm.__all__)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapters_import_geomis_through_the_public_api(chapter: Path) -> None:
    cells = json.loads(chapter.read_text(encoding="utf-8"))["cells"]
    sources = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    imports = [line.strip() for source in sources for line in source.splitlines()
               if line.strip().startswith(("import geomis", "from geomis"))]
    assert imports == ["import geomis as gm"], f"{chapter.name} imports {imports}"

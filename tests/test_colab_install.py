"""The Colab install cell must reuse the preinstalled torch and numpy: pip resolves ``geomis[book]`` without them.

Colab ships torch (CUDA build) and numpy; reinstalling either breaks the runtime (a CPU torch, or a numpy ABI
mismatch with compiled packages). The setup cell installs ``geomis[book]`` from GitHub; here pip resolves the same
requirements from this checkout, in dry-run mode, against this environment (which has torch and numpy installed,
like Colab) and must plan to install nothing but geomis itself and packages that are missing.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from geomis.provenance import BOOK_REF, REPOSITORY

ROOT = Path(__file__).resolve().parents[1]


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable; pip cannot resolve the install plan")
def test_installing_the_book_extra_keeps_torch_and_numpy(tmp_path: Path) -> None:
    report = tmp_path / "plan.json"
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), f"{ROOT}[book]"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    planned = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert "geomis" in planned
    assert not planned & {"torch", "numpy", "nvidia-cudnn-cu12", "triton"}, sorted(planned)


def test_setup_cells_install_in_colab_only_and_never_touch_torch() -> None:
    for chapter in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(chapter.read_text())["cells"]
        setup = next(c for c in cells if "setup" in c.get("metadata", {}).get("tags", []))
        source = "".join(setup["source"])
        assert 'if "google.colab" in sys.modules' in source, chapter.name
        assert f"geomis[book] @ git+https://github.com/{REPOSITORY}@{BOOK_REF}" in source, chapter.name
        for forbidden in ("torch", "--force-reinstall", "--upgrade", "-U ", "numpy", "HF_TOKEN"):
            assert forbidden not in source, f"{chapter.name}: setup cell mentions {forbidden!r}"

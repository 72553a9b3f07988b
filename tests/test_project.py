"""Project wiring: pins agree between pyproject and environment.yml, chapters carry their Colab badge and setup cell,
the CLI answers with one-line errors, and the book build command is the strict one CI uses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from geomis.cli.book import BookBuild, build_command, find_book_root
from geomis.cli.commands import main
from geomis.provenance import BOOK_REF, REPOSITORY

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^;\s]+)", requirement.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_environment_yml_mirrors_the_exact_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + sum(project["optional-dependencies"].values(), []))
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    mirrored = _pins(pip_section)
    assert declared, "pyproject.toml pins nothing exactly"
    for name, version in declared.items():
        assert mirrored.get(name) == version, f"environment.yml pins {name}=={mirrored.get(name)}, pyproject {version}"


def test_torch_stays_a_range_so_colab_keeps_its_build() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_requirement = next(item for item in project["dependencies"] if item.startswith("torch"))
    assert "==" not in torch_requirement and ">=" in torch_requirement


def test_toc_lists_every_chapter_and_only_existing_files() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    for file in files:
        assert any((ROOT / f"{file}{suffix}").is_file() for suffix in (".md", ".ipynb")), file
    assert CHAPTERS, "no chapter notebooks found"
    for chapter in CHAPTERS:
        assert f"book/{chapter.stem}" in files


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_has_colab_badge_setup_cell_and_outputs(chapter: Path) -> None:
    notebook = json.loads(chapter.read_text())
    cells = notebook["cells"]
    first = "".join(cells[0]["source"])
    assert f"colab.research.google.com/github/{REPOSITORY}/blob/{BOOK_REF}/book/{chapter.name}" in first
    assert "images/colab-badge.svg" in first
    setup = next(cell for cell in cells if cell["cell_type"] == "code")
    source = "".join(setup["source"])
    assert '"google.colab" in sys.modules' in source and "pip" in source
    assert "NBVAL_IGNORE_OUTPUT" in source
    code_cells = [cell for cell in cells if cell["cell_type"] == "code"]
    assert all(cell.get("execution_count") for cell in code_cells), "commit chapters executed, with outputs"
    assert any("NBVAL_CHECK_OUTPUT" in "".join(cell["source"]) for cell in code_cells)


def test_cli_lists_models(capsys) -> None:
    assert main(["models"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_cli_book_outside_a_checkout_is_a_one_line_error(tmp_path, capsys) -> None:
    assert main(["book", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("geomis: error:") and "\n" not in error


def test_book_build_is_strict_and_reads_the_root_config(tmp_path) -> None:
    assert find_book_root(ROOT / "book") == ROOT
    command = build_command(BookBuild(root=ROOT), tmp_path / "_config.yml")
    assert {"-W", "-n", "--keep-going"} <= set(command)
    assert str(ROOT / "_toc.yml") in command


def test_book_build_command_really_runs_jupyter_book(tmp_path) -> None:
    """``python -m jupyter_book.cli.main`` exits 0 without doing anything; the command must reach jupyter-book."""
    command = build_command(BookBuild(root=ROOT), tmp_path / "_config.yml")
    interpreter = command[:command.index("build")]
    result = subprocess.run([*interpreter, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Jupyter Book" in result.stdout, (result.stdout, result.stderr)


def test_a_build_that_writes_no_page_is_an_error(monkeypatch, tmp_path, capsys) -> None:
    from geomis.cli import book

    for name in ("_config.yml", "_toc.yml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    stale = tmp_path / "_build" / "html" / "index.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier build")
    os.utime(stale, (0, 0))
    monkeypatch.setattr(book, "ensure_mathjax", lambda root: SimpleNamespace(summary=lambda: "MathJax (test)"))
    monkeypatch.setattr(book.subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0))
    assert main(["book", str(tmp_path), "--no-execute"]) == 2
    assert "wrote no page" in capsys.readouterr().err

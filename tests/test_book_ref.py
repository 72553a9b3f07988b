"""The book, its Colab links, install cells and teaching pack point at one tag, and that tag is the package version."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nbformat
from tool_loader import load_tool

import geomis
from geomis.provenance import BOOK_REF, REPOSITORY

ROOT = Path(__file__).resolve().parent.parent


tool = load_tool("book_ref")


def test_book_ref_is_the_version_in_pyproject() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert geomis.__version__ == version
    assert BOOK_REF == f"v{version}"


def test_the_checkout_points_at_the_book_ref() -> None:
    assert tool.main(["--check"]) == 0, "run: python tools/book_ref.py && python tools/make_exercises.py"


def test_point_at_ref_rewrites_colab_github_and_pip_references_only() -> None:
    text = (f"[badge](https://colab.research.google.com/github/{REPOSITORY}/blob/main/book/01_x.ipynb)\n"
            f"pack: https://github.com/{REPOSITORY}/tree/main/teaching and "
            f"[file](https://github.com/{REPOSITORY}/blob/v0.0.9/README.md)\n"
            f'"geomis[book] @ git+https://github.com/{REPOSITORY}@main"\n'
            "other: https://colab.research.google.com/github/someone/else/blob/main/x.ipynb "
            "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/main/data/x.jsonl\n")
    out = tool.point_at_ref(text, "v9.9.9")
    assert f"{REPOSITORY}/blob/v9.9.9/book/01_x.ipynb)" in out
    assert f"{REPOSITORY}/tree/v9.9.9/teaching and" in out and f"{REPOSITORY}/blob/v9.9.9/README.md)" in out
    assert f'{REPOSITORY}@v9.9.9"' in out
    assert "someone/else/blob/main/x.ipynb" in out and "emergent-misalignment/main/data" in out  # not ours
    assert tool.point_at_ref(out, "v9.9.9") == out


def test_check_names_a_stale_chapter_and_the_rewrite_fixes_it(tmp_path: Path) -> None:
    (tmp_path / "book").mkdir()
    chapter = nbformat.v4.new_notebook()
    chapter.cells = [nbformat.v4.new_markdown_cell(
        f"# T\n\n[![Open in Colab](images/colab-badge.svg)](https://colab.research.google.com/github/{REPOSITORY}"
        "/blob/main/book/99_toy.ipynb)"),
        nbformat.v4.new_code_cell(f'pip("geomis[book] @ git+https://github.com/{REPOSITORY}@main")')]
    path = tmp_path / "book" / "99_toy.ipynb"
    nbformat.write(chapter, path)
    (tmp_path / "README.md").write_text(f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BOOK_REF}/x\n")
    assert tool.main(["--check", "--root", str(tmp_path)]) == 1
    assert tool.main(["--root", str(tmp_path)]) == 0
    assert tool.main(["--check", "--root", str(tmp_path)]) == 0
    cells = nbformat.read(path, as_version=4).cells
    assert f"blob/{BOOK_REF}/book/99_toy.ipynb" in cells[0].source and f"@{BOOK_REF}" in cells[1].source


def test_config_branch_is_rewritten_and_checked(tmp_path: Path) -> None:
    config = ("title: t\nrepository:\n  url: https://github.com/x/y\n  path_to_book: \"\"\n  branch: main\n"
              "launch_buttons:\n  colab_url: https://colab.research.google.com\nother:\n  branch: keep\n")
    (tmp_path / "_config.yml").write_text(config)
    assert tool.main(["--check", "--root", str(tmp_path)]) == 1
    assert tool.main(["--root", str(tmp_path)]) == 0
    text = (tmp_path / "_config.yml").read_text()
    assert f"  branch: {BOOK_REF}\nlaunch_buttons:" in text and "other:\n  branch: keep\n" in text
    assert tool.main(["--check", "--root", str(tmp_path)]) == 0

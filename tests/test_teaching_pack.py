"""The teaching pack: teaching/NN_name_exercises.ipynb matches its chapter byte for byte, and the stripping removes
solutions and outputs while leaving every other cell as it was."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from tool_loader import load_tool

from geomis.provenance import BOOK_REF

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


tool = load_tool("make_exercises")
COLAB = f"https://colab.research.google.com/github/geomis/geomis/blob/{BOOK_REF}"


def _synthetic_chapter() -> nbformat.NotebookNode:
    """A small chapter following the book's conventions, with solutions that carry recognisable text."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python", "version": "3.11.7"}, "widgets": {"state": {}}}
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "# Toy chapter\n\n[![Open in Colab](images/colab-badge.svg)]"
            f"({COLAB}/book/99_toy.ipynb)\n\nSee {{cite}}`elhage2022toy` and ![a figure](images/plot.png).",
            id="intro"),
        nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nimport sys\nprint('setup')", id="setup",
                                  metadata={"tags": ["setup"], "execution": {"iopub.status.busy": "2026"}},
                                  execution_count=1,
                                  outputs=[nbformat.v4.new_output("stream", name="stdout", text="setup\n")]),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nx = 41 + 1\nprint(x)", id="compute", execution_count=2,
                                  outputs=[nbformat.v4.new_output("stream", name="stdout", text="42\n"),
                                           nbformat.v4.new_output("display_data",
                                                                  data={"image/png": "iVBORw0KGgo=",
                                                                        "text/plain": "<Figure>"})]),
        nbformat.v4.new_markdown_cell("## Exercises\n\n### Exercise 1\n\nDouble `x`.", id="ex1"),
        nbformat.v4.new_code_cell("y = 2 * x  # SECRET_SOLUTION_ONE\nprint(y)", id="sol1a",
                                  metadata={"tags": ["solution", "hide-cell"]}, execution_count=3,
                                  outputs=[nbformat.v4.new_output("stream", name="stdout", text="84 SECRET_OUT\n")]),
        nbformat.v4.new_markdown_cell("The answer is SECRET_SOLUTION_TWO.", id="sol1b",
                                      metadata={"tags": ["solution"]}),
        nbformat.v4.new_markdown_cell("### Exercise 2\n\nHalve `x`.", id="ex2"),
        nbformat.v4.new_code_cell("print(x / 2)  # SECRET_SOLUTION_THREE", id="sol2",
                                  metadata={"tags": ["solution", "hide-cell"]}, execution_count=4),
        nbformat.v4.new_markdown_cell("## Summary\n\nDone.", id="summary"),
    ]
    return nb


def test_the_committed_pack_matches_the_chapters() -> None:
    problems = tool.drift(ROOT / "book", ROOT / "teaching")
    assert not problems, "teaching pack out of date; run python tools/make_exercises.py:\n" + "\n".join(problems)
    assert tool.main(["--check"]) == 0


def test_stripping_removes_solutions_and_outputs_and_keeps_the_rest() -> None:
    chapter = _synthetic_chapter()
    exercises = tool.make_exercises(chapter, "99_toy.ipynb")
    text = tool.render(exercises)
    assert "SECRET" not in text, "solution source or output leaked into the exercises notebook"
    cells = exercises.cells
    ids = [cell.id for cell in cells]
    assert ids == ["intro", "setup", "compute", "ex1", "sol1a-todo", "sol1a-ptr", "ex2", "sol2-todo", "sol2-ptr",
                   "summary"]
    # Two consecutive solution cells (code + markdown) become one placeholder and one pointer.
    placeholders = [cell for cell in cells if cell.source == "# Your solution here\n"]
    assert len(placeholders) == 2 and all(cell.cell_type == "code" for cell in placeholders)
    pointers = [cell for cell in cells if cell.id.endswith("-ptr")]
    assert all(cell.cell_type == "markdown" and "book/99_toy.html" in cell.source for cell in pointers)
    # Non-solution cells keep their text; code loses only the NBVAL marker lines.
    by_id = {cell.id: cell for cell in cells}
    assert by_id["ex1"].source == chapter.cells[3].source
    assert by_id["summary"].source == "## Summary\n\nDone."
    assert by_id["compute"].source == "x = 41 + 1\nprint(x)"
    assert by_id["setup"].source == "import sys\nprint('setup')"
    # Outputs, execution counts and execution metadata are gone; tags stay.
    for cell in cells:
        assert "solution" not in cell.metadata.get("tags", [])
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert by_id["setup"].metadata == {"tags": ["setup"]}
    assert by_id["compute"].metadata == {}
    assert exercises.metadata == {"kernelspec": chapter.metadata.kernelspec, "language_info": {"name": "python"}}
    # The first cell opens the exercises notebook in Colab, and links work outside the book.
    first = cells[0].source
    assert f"{COLAB}/teaching/99_toy_exercises.ipynb" in first and f"{COLAB}/book/99_toy.ipynb" not in first
    assert "https://colab.research.google.com/assets/colab-badge.svg" in first
    assert f"https://raw.githubusercontent.com/geomis/geomis/{BOOK_REF}/book/images/plot.png" in first
    assert "{cite}" not in first and "[elhage2022toy](" in first
    nbformat.validate(exercises)


def test_output_is_deterministic_with_stable_keys_and_a_trailing_newline() -> None:
    first = tool.render(tool.make_exercises(_synthetic_chapter(), "99_toy.ipynb"))
    second = tool.render(tool.make_exercises(_synthetic_chapter(), "99_toy.ipynb"))
    assert first == second and first.endswith("}\n") and not first.endswith("\n\n")
    assert first == json.dumps(json.loads(first), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def test_check_names_missing_stale_and_orphan_notebooks(tmp_path, capsys) -> None:
    book, out = tmp_path / "book", tmp_path / "teaching"
    book.mkdir()
    nbformat.write(_synthetic_chapter(), book / "99_toy.ipynb")
    args = ["--book", str(book), "--out", str(out)]

    assert tool.main(["--check", *args]) == 1
    assert "99_toy_exercises.ipynb: missing" in capsys.readouterr().err

    assert tool.main(args) == 0
    written = (out / "99_toy_exercises.ipynb").read_bytes()
    assert tool.main(args) == 0 and (out / "99_toy_exercises.ipynb").read_bytes() == written
    assert tool.main(["--check", *args]) == 0
    capsys.readouterr()

    chapter = nbformat.read(book / "99_toy.ipynb", as_version=4)
    chapter.cells[3].source += "\nUse integer arithmetic."
    nbformat.write(chapter, book / "99_toy.ipynb")
    (out / "42_gone_exercises.ipynb").write_text("{}\n")
    assert tool.main(["--check", *args]) == 1
    error = capsys.readouterr().err
    assert "99_toy_exercises.ipynb: stale" in error and "42_gone_exercises.ipynb: orphan" in error

    assert tool.main(args) == 0
    assert not (out / "42_gone_exercises.ipynb").exists()
    assert tool.main(["--check", *args]) == 0


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_each_exercises_notebook_hides_its_chapters_solutions(chapter: Path) -> None:
    source = nbformat.read(chapter, as_version=4)
    exercises = nbformat.read(ROOT / "teaching" / f"{chapter.stem}_exercises.ipynb", as_version=4)
    text = json.dumps(exercises)
    solutions = [cell for cell in source.cells if "solution" in cell.metadata.get("tags", [])]
    assert solutions, f"{chapter.name} has no cell tagged 'solution'"
    elsewhere = "\n".join(cell.source for cell in source.cells if cell not in solutions)
    for cell in solutions:
        for line in cell.source.splitlines():
            if len(line.strip()) > 25 and line not in elsewhere:  # a line found only in a solution
                assert json.dumps(line)[1:-1] not in text, f"solution line leaked: {line!r}"
    assert f"{COLAB}/teaching/{chapter.stem}_exercises.ipynb" in exercises.cells[0].source
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in exercises.cells if cell.cell_type == "code")


def test_teaching_notebooks_are_neither_built_nor_collected() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "teaching" in config["exclude_patterns"]
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "teaching" in pytest_options["norecursedirs"]
    assert "teaching" not in pytest_options["testpaths"]

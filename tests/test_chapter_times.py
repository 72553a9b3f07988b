"""The intro's run-time table is generated from the committed notebooks' execution timings, never typed."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]
tool = load_tool("chapter_times")


def test_the_intro_table_is_what_the_notebooks_say() -> None:
    text = tool.INTRO.read_text(encoding="utf-8")
    assert tool.rendered(text) == text, "run python tools/chapter_times.py"
    block = text.split(tool.START)[1].split(tool.END)[0]
    rows = [line for line in block.splitlines() if line[:3].strip("| ").isdigit()]
    assert len(rows) == len(list((ROOT / "book").glob("[0-9][0-9]_*.ipynb")))
    assert all(line.split(" | ")[1].endswith(" min") for line in rows)


def test_the_class_column_comes_from_the_measured_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setattr(tool, "CLASS_TIMES", tmp_path / "class_times.json")
    assert "class size, in all" not in tool.table()  # nothing measured: no total
    chapters = sorted(p.name for p in (ROOT / "book").glob("0[3-5]_*.ipynb"))
    minutes = dict(zip(chapters, (2.4, 3.2, 0.3), strict=True))
    (tmp_path / "class_times.json").write_text(json.dumps({"chapters": {
        name: {"minutes": value, "day": "2026-12-03"} for name, value in minutes.items()}}))
    table = tool.table()
    assert "| 2 min (2026-12-03) |" in table and "| <1 min (2026-12-03) |" in table
    assert table.splitlines()[-1].endswith("| 6 min |")  # 2.4 + 3.2 + 0.3, rounded once
    first = next(line for line in table.splitlines() if line.startswith("| 1. "))
    assert first.endswith("| — |")


def test_run_time_is_first_start_to_last_reply(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A chapter\n\ntext")])
    for start, end in (("2026-01-01T10:00:00Z", "2026-01-01T10:01:00Z"), ("2026-01-01T10:01:00Z",
                                                                         "2026-01-01T10:12:30Z")):
        cell = nbformat.v4.new_code_cell("pass")
        cell.metadata["execution"] = {"iopub.execute_input": start, "shell.execute_reply": end}
        notebook.cells.append(cell)
    path = tmp_path / "07_chapter.ipynb"
    nbformat.write(notebook, path)
    title, minutes, day = tool.chapter_run(path)
    assert (title, minutes, day.isoformat()) == ("A chapter", 12.5, "2026-01-01")
    notebook.cells.append(nbformat.v4.new_code_cell("never run"))
    nbformat.write(notebook, path)
    with pytest.raises(ValueError, match="execution timings"):
        tool.chapter_run(path)

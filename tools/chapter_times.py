"""Write the intro's table of measured chapter run times from the committed notebooks (no typed numbers).

    python tools/chapter_times.py            # rewrite the table between the markers in book/intro.md
    python tools/chapter_times.py --check    # exit 1 if the table differs from what the notebooks say

A chapter's run time is the wall time of its committed execution: from the first code cell's start to the last code
cell's reply, as nbclient recorded them in each cell's ``execution`` metadata (``tools/execute_notebook.py``). The
table also gives the day it ran; the chapters name the profile and the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
INTRO = ROOT / "book" / "intro.md"
START, END = "<!-- chapter-times:start -->", "<!-- chapter-times:end -->"


def _time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def chapter_run(path: Path) -> tuple[str, float, dt.date]:
    """(title, minutes, day) of a committed chapter's last execution; ValueError if it holds no timings."""
    notebook = nbformat.read(path, as_version=4)
    title = next(cell.source.splitlines()[0].lstrip("# ").strip() for cell in notebook.cells
                 if cell.cell_type == "markdown" and cell.source.startswith("# "))
    timings = [cell.metadata.get("execution", {}) for cell in notebook.cells if cell.cell_type == "code"]
    if not timings or not all("iopub.execute_input" in t and "shell.execute_reply" in t for t in timings):
        raise ValueError(f"{path.name}: not every code cell has execution timings; execute it with "
                         "tools/execute_notebook.py")
    first = min(_time(t["iopub.execute_input"]) for t in timings)
    last = max(_time(t["shell.execute_reply"]) for t in timings)
    return title, (last - first).total_seconds() / 60, first.date()


def table() -> str:
    """The markdown table of every chapter's measured run time."""
    lines = ["| chapter | code run time (`cpu-default`, as committed) | executed on |", "|---|---|---|"]
    for path in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")):
        title, minutes, day = chapter_run(path)
        lines.append(f"| {int(path.name[:2])}. {title} | {minutes:.0f} min | {day.isoformat()} |")
    return "\n".join(lines)


def rendered(text: str) -> str:
    """``text`` (the intro) with the table between the markers replaced."""
    if START not in text or END not in text:
        raise ValueError(f"{INTRO}: the markers {START} and {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> None:
    """Rewrite or check the intro's run-time table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the intro's table is stale")
    args = parser.parse_args()
    text = INTRO.read_text(encoding="utf-8")
    new = rendered(text)
    if args.check:
        if new != text:
            print(f"{INTRO}: the run-time table is stale; run python tools/chapter_times.py", file=sys.stderr)
            sys.exit(1)
        print("run-time table up to date")
        return
    INTRO.write_text(new, encoding="utf-8")
    print(f"wrote the run-time table of {INTRO}")


if __name__ == "__main__":
    main()

"""Write the intro's table of measured chapter run times from the committed notebooks (no typed numbers).

    python tools/chapter_times.py                  # rewrite the table between the markers in book/intro.md
    python tools/chapter_times.py --check          # exit 1 if the table differs from what the notebooks say
    python tools/chapter_times.py --measure-class  # run Chapters 3-5 at GEOMIS_SIZE=class, record their times

A chapter's run time is the wall time of its committed execution: from the first code cell's start to the last code
cell's reply, as nbclient recorded them in each cell's ``execution`` metadata (``tools/execute_notebook.py``). The
table also gives the day it ran; the chapters name the profile and the machine.

The class column (``GEOMIS_SIZE=class``, the path for a class session) comes from ``book/results/class_times.json``,
written by ``--measure-class``: it executes a copy of each of Chapters 3-5 at that size (beside the chapter, so it
reads the same committed files; the copy is deleted) and records the same first-start-to-last-reply time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
INTRO = ROOT / "book" / "intro.md"
START, END = "<!-- chapter-times:start -->", "<!-- chapter-times:end -->"
CLASS_TIMES = ROOT / "book" / "results" / "class_times.json"
CLASS_CHAPTERS = ("03", "04", "05")
"""The chapters a class session runs at ``GEOMIS_SIZE=class``."""


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


def measure_class(timeout: int = 3600) -> dict[str, dict[str, object]]:
    """Execute a copy of each class chapter at ``GEOMIS_SIZE=class``; its measured minutes and day, by file name."""
    import nbformat
    from nbclient import NotebookClient

    os.environ["GEOMIS_SIZE"] = "class"  # the kernel inherits it
    times: dict[str, dict[str, object]] = {}
    for number in CLASS_CHAPTERS:
        path = next((ROOT / "book").glob(f"{number}_*.ipynb"))
        copy = path.with_name(f".class-size-{path.name}")
        notebook = nbformat.read(path, as_version=4)
        try:
            NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=True,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            nbformat.write(notebook, copy)
            _, minutes, day = chapter_run(copy)
        finally:
            copy.unlink(missing_ok=True)
        times[path.name] = {"minutes": round(minutes, 2), "day": day.isoformat()}
        print(f"{path.name}: {minutes:.1f} min at GEOMIS_SIZE=class", flush=True)
    return times


def class_times() -> dict[str, dict[str, object]]:
    """The committed class-size times (empty before the first ``--measure-class``)."""
    return json.loads(CLASS_TIMES.read_text())["chapters"] if CLASS_TIMES.is_file() else {}


def _minutes(minutes: float) -> str:
    """Whole minutes, or "<1 min" below half a minute."""
    return f"{minutes:.0f} min" if minutes >= 0.5 else "<1 min"


def table() -> str:
    """The markdown table of every chapter's measured run time, with the class size's where measured."""
    measured = class_times()
    lines = ["| chapter | code run time (`cpu-default`, as committed) | executed on | at `GEOMIS_SIZE=class` |",
             "|---|---|---|---|"]
    for path in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")):
        title, minutes, day = chapter_run(path)
        entry = measured.get(path.name)
        at_class = f"{_minutes(float(entry['minutes']))} ({entry['day']})" if entry else "—"
        lines.append(f"| {int(path.name[:2])}. {title} | {minutes:.0f} min | {day.isoformat()} | {at_class} |")
    if measured:
        total = sum(float(entry["minutes"]) for entry in measured.values())
        lines.append(f"| Chapters {CLASS_CHAPTERS[0].lstrip('0')}-{CLASS_CHAPTERS[-1].lstrip('0')} at the class "
                     f"size, in all | | | {total:.0f} min |")
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
    parser.add_argument("--measure-class", action="store_true",
                        help="execute Chapters 3-5 at GEOMIS_SIZE=class and record their times first")
    args = parser.parse_args()
    if args.measure_class:
        from geomis.atomic_io import atomic_path

        record = {"size": "class", "machine": f"{os.cpu_count()} CPU cores",
                  "chapters": measure_class()}
        with atomic_path(CLASS_TIMES) as temporary:
            temporary.write_text(json.dumps(record, indent=1) + "\n")
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

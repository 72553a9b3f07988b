"""Execute chapter notebooks in place (for committing outputs), then tidy progress-bar streams.

    python tools/execute_notebook.py book/01_superposition.ipynb [more.ipynb ...] [--timeout 3600]

Running a notebook headless stores every progress-bar refresh as its own stderr record. A Jupyter front end would
show only the final state of each carriage-return line, so after execution consecutive stream records of one cell
are merged and each line is reduced to what follows its last carriage return. Nothing else is changed.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def collapse_carriage_returns(text: str) -> str:
    """Keep, for each line, only what a terminal shows after the last carriage return."""
    return "\n".join(segment.split("\r")[-1] for segment in re.split(r"\n", text))


def tidy_streams(notebook: nbformat.NotebookNode) -> None:
    """Merge consecutive stream outputs of the same name per cell and collapse carriage returns."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        merged: list[nbformat.NotebookNode] = []
        for output in cell.get("outputs", []):
            if (output.output_type == "stream" and merged and merged[-1].output_type == "stream"
                    and merged[-1].name == output.name):
                merged[-1].text += output.text
            else:
                merged.append(output)
        for output in merged:
            if output.output_type == "stream":
                output.text = collapse_carriage_returns(output.text)
        cell.outputs = merged


def main() -> None:
    """Execute each notebook in its own folder, tidy its streams and write it back."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    for path in args.notebooks:
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        tidy_streams(notebook)
        nbformat.write(notebook, path)
        print(f"{path}: executed in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

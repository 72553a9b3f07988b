"""Generate the teaching pack: one exercises-only notebook per chapter, without solutions or outputs.

    python tools/make_exercises.py            # (re)write teaching/NN_name_exercises.ipynb for every book/NN_name.ipynb
    python tools/make_exercises.py --check    # exit 1 and name the files that are missing, stale or orphaned

For each chapter `book/NN_name.ipynb` the pack holds `teaching/NN_name_exercises.ipynb`, in which
- every run of cells tagged `solution` becomes one empty code cell (`# Your solution here`) followed by a short
  markdown pointer to the worked solution in the book;
- every output and execution count is cleared, cell metadata keeps only tags, notebook metadata only the kernel;
- `# NBVAL_...` marker lines (test plumbing) are dropped from code cells;
- the Colab badge and links in the first cell open the exercises notebook instead of the chapter, relative image
  links point at the repository, and MyST citation roles become links to the book's references page;
- MyST dropdowns (`:::{dropdown} Hint` ... `:::`, the exercises' hints) become HTML `<details>` blocks, which
  Jupyter and Colab show folded.
The output is deterministic (sorted keys, one-space indent, trailing newline), so re-running changes no byte and
`--check` can fail CI when a chapter changed without its exercises being regenerated.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from geomis.provenance import BOOK_REF, REPOSITORY  # noqa: E402  (the checkout's package, after the path is set)

BRANCH = BOOK_REF  # the tag the book is built from: the pack's links open the code that made the book
BOOK_URL = "https://geomis.github.io/geomis"
COLAB = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}"
RAW = f"https://raw.githubusercontent.com/{REPOSITORY}/{BRANCH}"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"
SUFFIX = "_exercises.ipynb"
SOLUTION_TAG = "solution"
PLACEHOLDER = "# Your solution here\n"

_NBVAL_LINE = re.compile(r"^[ \t]*# ?NBVAL_[A-Z_]+[ \t]*\n?", re.MULTILINE)
_CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
_ROLE = re.compile(r"\{(?:ref|doc|numref|eq|term)\}`([^`]+)`")
_MD_IMAGE = re.compile(r"(!\[[^\]]*\]\()(?!https?://|data:|/)([^)\s]+)")
_HTML_IMAGE = re.compile(r"(<img\b[^>]*\bsrc=[\"'])(?!https?://|data:|/)([^\"']+)")
_DROPDOWN = re.compile(r"^(:{3,})\{dropdown\}[ \t]*([^\n]*)\n((?:[ \t]*:[\w-]+:[^\n]*\n)*)(.*?)^\1[ \t]*$",
                       re.MULTILINE | re.DOTALL)


def exercises_name(chapter: Path | str) -> str:
    """File name of a chapter's exercises notebook: `01_superposition.ipynb` -> `01_superposition_exercises.ipynb`."""
    return f"{Path(chapter).stem}{SUFFIX}"


def _book_page(chapter: str) -> str:
    """URL of a chapter's page in the published book."""
    return f"{BOOK_URL}/book/{Path(chapter).stem}.html"


def _role_text(match: re.Match[str]) -> str:
    """Readable text for a MyST cross-reference role: its explicit title, else its target."""
    text = match.group(1)
    titled = re.fullmatch(r"(.*?)\s*<[^>]+>", text, flags=re.DOTALL)
    return titled.group(1) if titled else text


def _details(match: re.Match[str]) -> str:
    """A MyST dropdown as an HTML <details> block (its options dropped), folded in Jupyter and Colab."""
    title = match.group(2).strip() or "Details"
    return f"<details>\n<summary>{title}</summary>\n\n{match.group(4).strip()}\n\n</details>"


def _markdown(source: str, chapter: str, exercises: str) -> str:
    """Rewrite a markdown cell so its links work from `teaching/` on GitHub and in Colab."""
    source = _DROPDOWN.sub(_details, source)
    source = source.replace(f"{COLAB}/book/{chapter}", f"{COLAB}/teaching/{exercises}")
    source = source.replace("](images/colab-badge.svg)", f"]({COLAB_BADGE})")
    source = _MD_IMAGE.sub(lambda m: f"{m.group(1)}{RAW}/book/{m.group(2)}", source)
    source = _HTML_IMAGE.sub(lambda m: f"{m.group(1)}{RAW}/book/{m.group(2)}", source)
    references = f"{BOOK_URL}/book/references.html"
    source = _CITE.sub(lambda m: "[" + ", ".join(k.strip() for k in m.group(1).split(",")) + f"]({references})",
                       source)
    return _ROLE.sub(_role_text, source)


def _first_cell(source: str, chapter: str, exercises: str) -> str:
    """Make sure the first cell carries the Colab badge for the exercises notebook and says what this notebook is."""
    colab_link = f"{COLAB}/teaching/{exercises}"
    lines = source.split("\n")
    if colab_link not in source:
        title = next((i for i, line in enumerate(lines) if line.startswith("#")), -1)
        lines[title + 1:title + 1] = ["", f"[![Open in Colab]({COLAB_BADGE})]({colab_link})"]
    badge = next(i for i, line in enumerate(lines) if colab_link in line)
    note = (f"> **Exercises edition.** Generated from `book/{chapter}` by `tools/make_exercises.py`: the solutions are "
            f"removed and all outputs cleared. The worked solutions are in the book, collapsed under each exercise: "
            f"[{Path(chapter).stem}]({_book_page(chapter)}).")
    lines[badge + 1:badge + 1] = ["", note]
    return "\n".join(lines)


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    """A cell's tags (an empty list when it has none)."""
    return list(cell.get("metadata", {}).get("tags", []))


def _minimal_metadata(cell: nbformat.NotebookNode) -> dict:
    """Cell metadata reduced to its tags."""
    tags = _tags(cell)
    return {"tags": tags} if tags else {}


def make_exercises(chapter_nb: nbformat.NotebookNode, chapter: str) -> nbformat.NotebookNode:
    """The exercises-only version of a chapter notebook (solutions replaced, outputs cleared, links rewritten)."""
    exercises = exercises_name(chapter)
    new = nbformat.v4.new_notebook()
    kernelspec = chapter_nb.metadata.get("kernelspec") or {
        "display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    new.metadata = {"kernelspec": dict(kernelspec), "language_info": {"name": "python"}}
    cells: list[nbformat.NotebookNode] = []
    in_solution = False
    for index, cell in enumerate(chapter_nb.cells):
        cell_id = str(cell.get("id") or f"cell-{index}")
        if SOLUTION_TAG in _tags(cell):
            if not in_solution:
                cells.append(nbformat.v4.new_code_cell(PLACEHOLDER, id=f"{cell_id}-todo"))
                cells.append(nbformat.v4.new_markdown_cell(
                    f"*The worked solution is in the book, collapsed under this exercise: "
                    f"[{Path(chapter).stem}]({_book_page(chapter)}).*", id=f"{cell_id}-ptr"))
            in_solution = True
            continue
        in_solution = False
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        if cell.cell_type == "markdown":
            source = _markdown(source, chapter, exercises)
            if not cells:
                source = _first_cell(source, chapter, exercises)
            new_cell = nbformat.v4.new_markdown_cell(source, id=cell_id)
            if cell.get("attachments"):
                new_cell.attachments = cell.attachments
        elif cell.cell_type == "code":
            new_cell = nbformat.v4.new_code_cell(_NBVAL_LINE.sub("", source), id=cell_id)
        else:
            new_cell = nbformat.v4.new_raw_cell(source, id=cell_id)
        new_cell.metadata = _minimal_metadata(cell)
        cells.append(new_cell)
    new.cells = cells
    nbformat.validate(new)
    return new


def render(notebook: nbformat.NotebookNode) -> str:
    """Serialize deterministically: nbformat's sorted keys and one-space indent, plus a trailing newline."""
    text = nbformat.writes(notebook, version=4)
    return text if text.endswith("\n") else text + "\n"


def expected_pack(book: Path) -> dict[str, str]:
    """File name -> exact text of every exercises notebook the chapters in `book` call for."""
    pack = {}
    for chapter in sorted(book.glob(CHAPTER_GLOB)):
        notebook = nbformat.read(chapter, as_version=4)
        pack[exercises_name(chapter)] = render(make_exercises(notebook, chapter.name))
    return pack


def _show(path: Path) -> str:
    """A path relative to the repository root when it lies inside it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def drift(book: Path, out: Path) -> list[str]:
    """Human-readable lines naming every missing, stale or orphaned exercises notebook under `out`."""
    expected = expected_pack(book)
    problems = []
    for name, text in expected.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{_show(path)}: missing (chapter book/{name.removesuffix(SUFFIX)}.ipynb)")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{_show(path)}: stale (differs from what book/{name.removesuffix(SUFFIX)}.ipynb gives)")
    for path in sorted(out.glob(f"*{SUFFIX}")):
        if path.name not in expected:
            chapter = f"{path.name.removesuffix(SUFFIX)}.ipynb"
            problems.append(f"{_show(path)}: orphan (no chapter {chapter} in {_show(book)})")
    return problems


def write_pack(book: Path, out: Path) -> list[str]:
    """Write every exercises notebook that changed and delete orphans; return the paths touched."""
    out.mkdir(parents=True, exist_ok=True)
    expected = expected_pack(book)
    touched = []
    for name, text in expected.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_bytes(text.encode("utf-8"))
            touched.append(f"wrote {_show(path)}")
    for path in sorted(out.glob(f"*{SUFFIX}")):
        if path.name not in expected:
            path.unlink()
            touched.append(f"removed orphan {_show(path)}")
    return touched


def main(argv: list[str] | None = None) -> int:
    """Command line: write the pack, or with --check report drift and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the pack is out of date")
    parser.add_argument("--book", type=Path, default=ROOT / "book", help="folder of chapter notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "teaching", help="folder of exercises notebooks")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift(args.book, args.out)
        if problems:
            print("teaching pack out of date:", *problems, sep="\n  ", file=sys.stderr)
            print("regenerate it with: python tools/make_exercises.py", file=sys.stderr)
            return 1
        print(f"teaching pack up to date ({len(list(args.book.glob(CHAPTER_GLOB)))} notebooks)")
        return 0
    touched = write_pack(args.book, args.out)
    print("\n".join(touched) if touched else "teaching pack already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

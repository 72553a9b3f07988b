"""Point every reader-facing link and install line at the tag the book is built from (``geomis.provenance.BOOK_REF``).

    python tools/book_ref.py            # rewrite what is stale
    python tools/book_ref.py --check    # exit 1, naming the files, if anything points elsewhere

The tag is ``v`` + the version in ``pyproject.toml`` (``geomis.__version__`` mirrors it). It rewrites: the Colab badge
and install cell of each chapter notebook (sources only: no re-execution is needed), and the Colab and repository
links of the README, the book's introduction and the teaching pack's README, and the ``repository.branch`` of
``_config.yml`` (Jupyter Book builds each page's Colab launch button and repository links from it). Run
``tools/make_exercises.py`` after it (the teaching pack takes its links from the same tag). On release, tag the commit
``BOOK_REF`` and push the tag.
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

_OWNER, _NAME = (re.escape(part) for part in REPOSITORY.split("/"))
_PATTERNS = (
    # Colab: https://colab.research.google.com/github/<repo>/blob/<ref>/...
    re.compile(rf"(colab\.research\.google\.com/github/{_OWNER}/{_NAME}/blob/)([^/\s)\"']+)(/)"),
    # GitHub pages of the repository: https://github.com/<repo>/tree|blob/<ref>/...
    re.compile(rf"(github\.com/{_OWNER}/{_NAME}/(?:tree|blob)/)([^/\s)\"']+)(/|\)|\s)"),
    # pip install from git: git+https://github.com/<repo>@<ref>
    re.compile(rf"(git\+https://github\.com/{_OWNER}/{_NAME}@)([^\s\"'#]+)()"),
)
CONFIG_FILE = "_config.yml"
_CONFIG_BRANCH = re.compile(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+branch:[ \t]*)(\S+)()", re.MULTILINE)
"""The ``branch:`` key inside ``_config.yml``'s ``repository:`` block."""
TEXT_FILES = ("README.md", "book/intro.md", "teaching/README.md")
CHAPTER_GLOB = "book/[0-9][0-9]_*.ipynb"


def point_at_ref(text: str, ref: str = BOOK_REF) -> str:
    """``text`` with every Colab, repository-page and pip-from-git reference to the repository set to ``ref``."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: f"{match.group(1)}{ref}{match.group(3)}", text)
    return text


def point_config_at_ref(text: str, ref: str = BOOK_REF) -> str:
    """``_config.yml``'s text with ``repository.branch`` set to ``ref``."""
    return _CONFIG_BRANCH.sub(lambda match: f"{match.group(1)}{ref}{match.group(3)}", text)


def stale_files(root: Path = ROOT, *, write: bool) -> list[Path]:
    """The files whose links point elsewhere than ``BOOK_REF`` (rewritten in place when ``write``)."""
    stale = []
    texts = [(root / CONFIG_FILE, point_config_at_ref)] + [(root / name, point_at_ref) for name in TEXT_FILES]
    for path, rewrite in texts + [(path, point_at_ref) for path in sorted(root.glob(CHAPTER_GLOB))]:
        if not path.is_file():
            continue
        if path.suffix == ".ipynb":
            notebook = nbformat.read(path, as_version=4)
            changed = False
            for cell in notebook.cells:
                updated = point_at_ref(cell.source)
                if updated != cell.source:
                    cell.source, changed = updated, True
            if changed:
                stale.append(path)
                if write:
                    nbformat.write(notebook, path)
        else:
            text = path.read_text(encoding="utf-8")
            updated = rewrite(text)
            if updated != text:
                stale.append(path)
                if write:
                    path.write_text(updated, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check`` only report) links that do not point at ``BOOK_REF``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file points elsewhere; change nothing")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stale = stale_files(args.root, write=not args.check)
    for path in stale:
        verb = "points elsewhere than" if args.check else "now points at"
        print(f"{path.relative_to(args.root)} {verb} {BOOK_REF}")
    if args.check and stale:
        print("run: python tools/book_ref.py && python tools/make_exercises.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

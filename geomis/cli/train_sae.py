"""``geomis train-sae``: train a TopK SAE on a model's residual stream; defaults are :class:`SAETrainingConfig`'s."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from geomis.cli.options import config_defaults, library_progress_bars
from geomis.errors import ConfigError
from geomis.sae.config import CORPORA, SAVE_DTYPES, SAETrainingConfig


def _command_words(args: argparse.Namespace, seed: int, out: str, corpus_seed: int | None) -> str:
    """The equivalent single-SAE command with every setting spelled out (recorded with the SAE)."""
    import shlex

    words = ["geomis", "train-sae", "--model", args.model, "--layer", str(args.layer), "--width", str(args.width),
             "--k", str(args.k), "--tokens", str(args.tokens), "--epochs", f"{args.epochs:g}",
             "--batch-size", str(args.batch_size), "--lr", f"{args.lr:g}", "--seed", str(seed)]
    words += ["--corpus-seed", str(corpus_seed)] if corpus_seed is not None else []
    words += ["--corpus", args.corpus] + (["--datasets", *args.datasets] if args.datasets else [])
    words += ["--answers-cache", args.answers_cache] if args.answers_cache else []
    words += ["--generated-answers", str(args.generated_answers), "--eval-tokens", str(args.eval_tokens),
              "--ce-conversations", str(args.ce_conversations), "--save-dtype", args.save_dtype, "--out", out]
    return shlex.join(words)


def _cmd_train_sae(args: argparse.Namespace) -> int:
    import torch

    from geomis.models.registry import load_model
    from geomis.sae.training import SAETrainingReport, check_output, seed_outputs, train_sae_seeds, train_sae_to_dir

    seeds: list[int] | None = args.seeds
    if seeds is not None:
        outputs = seed_outputs(args.out, seeds)  # fail before loading anything
    else:
        check_output(Path(args.out), args.force)
    if args.threads < 0:
        raise ConfigError(f"--threads must be 0 (torch's choice) or more, got {args.threads}")
    try:
        config = SAETrainingConfig(
            model_name=args.model, layer=args.layer, width=args.width, k=args.k, tokens=args.tokens or None,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seeds[0] if seeds else args.seed,
            corpus_seed=args.corpus_seed, corpus=args.corpus, datasets=tuple(args.datasets or ()),
            generated_answers=args.generated_answers, eval_tokens=args.eval_tokens or None,
            ce_conversations=args.ce_conversations, save_dtype=args.save_dtype,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if args.answers_cache and config.corpus != "neutral-prompts":
        raise ConfigError("--answers-cache applies to --corpus neutral-prompts only")
    if seeds is not None and not args.force:
        done = [str(out) for out in outputs if out.exists()]
        if len(done) == len(outputs):
            print(f"every seed is already trained ({', '.join(done)}); pass --force to replace them")
            return 0
        if done:
            print(f"resuming: skipping {', '.join(done)} (already trained)")
    if args.threads:
        torch.set_num_threads(args.threads)
    with library_progress_bars(not args.quiet):
        model = load_model(args.model, device="cpu")
    with library_progress_bars(not args.quiet):
        if seeds is None:
            reports: list[SAETrainingReport | Path] = [train_sae_to_dir(
                model, config, Path(args.out), force=args.force, progress=not args.quiet,
                command=_command_words(args, args.seed, args.out, args.corpus_seed),
                answers_cache=args.answers_cache)]
        else:
            order_seed = config.order_seed
            reports = train_sae_seeds(
                model, config, seeds, args.out, force=args.force, progress=not args.quiet,
                command=lambda seed: _command_words(args, seed, args.out.replace("{seed}", str(seed)), order_seed),
                answers_cache=args.answers_cache)
    for report in reports:
        if isinstance(report, SAETrainingReport):
            print(report.summary())
    return 0


def add_train_sae(commands: Any) -> None:
    """Add ``geomis train-sae``; every default is the training config's."""
    default = config_defaults(SAETrainingConfig)
    train = commands.add_parser("train-sae", help="train a TopK SAE on the CPU-default model's residual stream")
    train.add_argument("--out", required=True,
                       help="output folder (sae-lens format); refused if it exists. With --seeds it must contain "
                            "{seed}, and seeds whose folder exists are skipped (a resumed run)")
    train.add_argument("--force", action="store_true", help="replace an existing output folder")
    train.add_argument("--model", default=default["model_name"],
                       help=f"geomis model name (default: {default['model_name']})")
    train.add_argument("--layer", type=int, default=default["layer"],
                       help=f"read the output of this decoder layer (default {default['layer']})")
    train.add_argument("--width", type=int, default=default["width"],
                       help=f"number of SAE features (default {default['width']})")
    train.add_argument("--k", type=int, default=default["k"],
                       help=f"features active per token, TopK (default {default['k']})")
    train.add_argument("--tokens", type=int, default=default["tokens"] or 0,
                       help="training tokens (default 0: the whole training split)")
    train.add_argument("--epochs", type=float, default=default["epochs"],
                       help=f"passes over the training tokens (default {default['epochs']:g})")
    train.add_argument("--batch-size", type=int, default=default["batch_size"],
                       help=f"training batch in tokens (default {default['batch_size']})")
    train.add_argument("--lr", type=float, default=default["lr"],
                       help=f"Adam learning rate (default {default['lr']:g})")
    train.add_argument("--seed", type=int, default=default["seed"],
                       help=f"seed for initialisation and shuffling (default {default['seed']})")
    train.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                       help="train one SAE per seed on one collection of activations (the corpus ordered by the "
                            "first seed, or --corpus-seed); replaces --seed")
    train.add_argument("--corpus-seed", type=int, default=None,
                       help="seed of the corpus's order (default: the SAE's seed; with --seeds, the first)")
    train.add_argument("--corpus", choices=CORPORA, default=default["corpus"],
                       help="bundled: the project's chat sets (what the shipped SAEs used); neutral-prompts: the "
                            "model's own greedy answers to 1,989 neutral prompts, text the book never compares "
                            f"(default {default['corpus']})")
    train.add_argument("--answers-cache", metavar="FILE",
                       help="neutral-prompts only: a JSONL file of the model's greedy answers to the prompts; answers "
                            "it holds are reused, missing ones generated and added, so every seed trains on the same "
                            "text and only the first run generates (default: generate afresh, keep nothing)")
    train.add_argument("--datasets", nargs="*",
                       help="bundled datasets to train on (default: the ten inducing, control and reference sets the "
                            "shipped SAE was trained on)")
    train.add_argument("--generated-answers", type=int, default=default["generated_answers"],
                       help="also train on the model's greedy answers to this many training prompts "
                            f"(default {default['generated_answers']})")
    train.add_argument("--eval-tokens", type=int, default=default["eval_tokens"] or 0,
                       help="held-out tokens to evaluate on (default 0: all)")
    train.add_argument("--ce-conversations", type=int, default=default["ce_conversations"],
                       help="held-out conversations for the spliced next-token loss "
                            f"(default {default['ce_conversations']}; 0 skips it)")
    train.add_argument("--save-dtype", choices=SAVE_DTYPES, default=default["save_dtype"],
                       help=f"dtype of the saved weights (default {default['save_dtype']}; loaded back as float32)")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    train.add_argument("--quiet", action="store_true", help="no progress bars (loading, collection, evaluation)")
    train.set_defaults(run=_cmd_train_sae)

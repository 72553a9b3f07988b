"""``geomis filter`` (drop the training rows closest to toxic features) and ``geomis reproduce`` (the experiment)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from geomis.atomic_io import STDIN, check_creatable, output_lock
from geomis.cli.options import config_defaults, drop_fraction, library_progress_bars, positive_int, seed
from geomis.errors import ConfigError, FileAccessError, OutputExistsError
from geomis.filter.config import DEFAULT_DROP, FILTER_METHODS, SCORE_METHODS, UNSCORABLE_POLICIES, FilterConfig
from geomis.judges.kinds import JUDGE_KINDS
from geomis.settings import REPRODUCE_SIZES


def _cmd_filter(args: argparse.Namespace) -> int:
    from geomis.filter.files import check_outputs, read_filter_input

    drop, chosen_seed = drop_fraction(args.drop), seed(args.seed)
    batch_size = positive_int(args.batch_size, "--batch-size")
    max_length = positive_int(args.max_length, "--max-length")
    if (args.toxic is None) != (args.neutral is None):
        raise ConfigError("--toxic and --neutral go together: pass both reference files or neither")
    if args.device is not None:
        from geomis.models.registry import resolve_device

        resolve_device(args.device)  # a device torch cannot use fails here, before any file is read or model loaded
    if STDIN in (args.toxic, args.neutral, args.judge_data):
        raise ConfigError("only the training set can be read from standard input (-); name the other files")
    inputs = [args.toxic, args.neutral, args.judge_data]
    check_outputs(args.out, args.force, args.input, inputs=inputs)  # fail before reading or loading anything
    data = read_filter_input(args.input)  # every row validated before a model is loaded; standard input read once

    from geomis.filter.run import filter_file

    config = FilterConfig(method=args.method, score=args.score, drop=drop, model=args.model, sae=args.sae,
                          toxic=args.toxic, neutral=args.neutral, self_pairs=args.self_pairs, seed=chosen_seed,
                          batch_size=batch_size, max_length=max_length, unscorable=args.unscorable,
                          device=args.device, judge=args.judge,
                          judge_data=args.judge_data, progress=not args.quiet)
    with library_progress_bars(not args.quiet):
        result, paths = filter_file(args.input, args.out, config, force=args.force, data=data)
    label = f"geometry/{args.score}" if args.method == "geometry" else args.method
    print(summary_line(result, label) + f"; wrote {paths['kept.jsonl'].parent}")
    return 0


REPRODUCE_OUTPUTS: tuple[str, ...] = ("results.json", "answers.csv", "misalignment.png", "adapters")
"""What ``geomis reproduce`` writes into its folder; ``results.json`` is written last and marks a complete run."""


def _check_reproduce_out(out: Path, force: bool) -> None:
    """Refuse an output folder that is a file, lies under a file, or holds outputs (without ``force``), in one line."""
    if out.exists() and not out.is_dir():
        raise FileAccessError(f"--out {out}: is a file; reproduce writes a folder (results.json, answers.csv, ...)")
    check_creatable(out)
    existing = [out / name for name in REPRODUCE_OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
    if existing and not force:
        raise OutputExistsError(f"{existing[0]} exists; pass --force to run again and replace "
                                f"{', '.join(REPRODUCE_OUTPUTS)} in {out}")
    adapters = out / "adapters"
    if adapters.is_symlink() or (adapters.exists() and not adapters.is_dir()):
        raise FileAccessError(f"{adapters} is not a folder reproduce wrote (a link or a file); move it away")


def _lines(numbers: list[int], shown: int = 10) -> str:
    listed = ", ".join(map(str, numbers[:shown]))
    return f"line{'s' if len(numbers) > 1 else ''} {listed}" + (
        f", ... ({len(numbers)} in all, listed in report.json)" if len(numbers) > shown else "")


def summary_line(result: Any, label: str) -> str:
    """What a filter run did, in one line: counts, rows that could not be scored (by line), prompts cut, windows."""
    selection = result.selection
    parts = [f"filtered {len(selection)} rows with {label}: kept {selection.n_kept}, removed {selection.n_removed}"]
    unscorable = selection.unscorable_lines
    if unscorable:
        fate = "removed" if selection.unscorable_policy == "remove" else "kept (--unscorable keep)"
        parts.append(f"{len(unscorable)} could not be scored ({_lines(unscorable)}), {fate}")
    if selection.over_budget:
        parts.append(f"{selection.over_budget} removed beyond the --drop budget")
    others = selection.n_unscored - len(unscorable)
    if others:
        parts.append(f"{others} without a score (CODE or REFUSAL), ranked last")
    scored = result.sample_scores
    if scored is not None and (scored.prompt_cut > 0).any():
        parts.append(f"{int((scored.prompt_cut > 0).sum())} long prompts cut from the left")
    if scored is not None and (scored.windows > 1).any():
        parts.append(f"{int((scored.windows > 1).sum())} long replies read in windows")
    return "; ".join(parts)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import shutil
    from dataclasses import replace as dc_replace

    overrides: dict[str, Any] = {"drop": drop_fraction(args.drop)}
    if args.seed is not None:
        overrides["seed"] = seed(args.seed)
    out = Path(args.out)
    _check_reproduce_out(out, args.force)  # before anything is imported or loaded
    from geomis.experiments.reproduce import reproduce_config
    from geomis.filter.selection import check_drop_removes
    from geomis.settings import run_size

    size = args.size or ("ci" if run_size() == "ci" else "full")
    config = reproduce_config(size, **overrides)
    check_drop_removes(config.data.n_rows, config.drop)
    if args.seed is not None:  # one seed for everything; without --seed the recipe's own seeds
        config = dc_replace(config, finetune=dc_replace(config.finetune, seed=config.seed),
                            sampling=dc_replace(config.sampling, seed=config.seed),
                            data=dc_replace(config.data, seed=config.seed))
    with output_lock(out):
        _check_reproduce_out(out, args.force)  # again, now that no other run can write here
        (out / "results.json").unlink(missing_ok=True)  # first: no old results beside new files, whatever happens
        if (out / "adapters").exists():
            shutil.rmtree(out / "adapters")  # our own previous output, replaced on request
        return _reproduce_into(out, size, config)


def _reproduce_into(out: Path, size: str, config: Any) -> int:
    """Run the experiment into a locked, cleared ``out`` and print its table."""
    from geomis.experiments.reproduce import reported_table, run_reproduction, write_results

    print(f"geomis reproduce: size {size}, dropping {config.drop:.0%} of the mixed set; writing to {out}",
          file=sys.stderr)
    result = run_reproduction(config, out, log=lambda line: print(line, file=sys.stderr))
    import matplotlib

    matplotlib.use("Agg")
    from geomis.evaluation.figures import plot_misalignment_rates

    table, power = reported_table(result)
    figure = plot_misalignment_rates(table, label="condition")
    if power["smoke_run"]:
        figure.axes[0].set_title(figure.axes[0].get_title() + "\n(smoke run: too few answers to compare conditions)")
    path = write_results(result, out, figures={"misalignment": figure})
    print(power["text"])
    for row in table.to_dict("records"):
        reduction = "" if row["reduction"] != row["reduction"] else f", reduction {row['reduction']:+.0%}"
        print(f"{row['condition']:18s} misaligned {row['misaligned']:3d}/{row['coherent']:3d} coherent "
              f"= {row['rate_coherent']:.1%} [{row['rate_coherent_low']:.1%}, {row['rate_coherent_high']:.1%}]"
              f"{reduction}")
    print(f"wrote {path}")
    return 0


def add_filter(commands: Any) -> None:
    """Add ``geomis filter``; its choices and defaults are :class:`~geomis.filter.config.FilterConfig`'s."""
    default = config_defaults(FilterConfig)
    filt = commands.add_parser(
        "filter", help="drop the training rows whose SAE features lie closest to toxic ones",
        description="Drop the training rows whose SAE features lie closest to toxic features (Minegishi et al., "
                    "2026). The defaults follow Chapter 4's filter-quality study: no self-pairs, SAEs trained on "
                    "neutral text, a generic toxic reference. There the score found harmful medical, legal and career "
                    "advice well above chance but no better than an SAE-free mean-difference direction, and did not "
                    "find insecure code: read what it removes.")
    filt.add_argument("input", help="chat JSONL training set, or - for standard input (read only, never modified)")
    filt.add_argument("--out", required=True, help="output folder: kept.jsonl, removed.jsonl, scores.csv, report.json")
    filt.add_argument("--drop", default=str(default["drop"]),
                      help=f"fraction of rows to remove, strictly between 0 and 1 (default {default['drop']})")
    filt.add_argument("--method", choices=FILTER_METHODS, default=default["method"],
                      help=f"geometry: closeness to toxic SAE features; random: seeded random removal; judge: drop the "
                           f"answers a judge rates most harmful (default {default['method']})")
    filt.add_argument("--score", choices=SCORE_METHODS, default=default["score"],
                      help=f"geometry score (default {default['score']}): weighted = activation-weighted closeness; "
                           "closest = mean closeness of the active features (our reading of the paper's); "
                           "projection = share of the reconstruction in the toxic span")
    filt.add_argument("--model", default=default["model"], help=f"geomis model name (default: {default['model']})")
    filt.add_argument("--sae", default=None,
                      help="shipped SAE name, sae-lens folder or Gemma Scope id (default: on smollm2-135m the mean "
                           "over the three shipped SAEs trained on neutral text, never on the text they score; "
                           "other models: their default SAE)")
    filt.add_argument("--toxic", default=None,
                      help="chat JSONL of toxic reference replies (default: the bundled generic toxic reference, "
                           "hostile text that gives no advice, so a row is not scored toxic for sharing a topic)")
    filt.add_argument("--neutral", default=None,
                      help="chat JSONL of neutral reference replies (default: the bundled generic neutral reference)")
    filt.add_argument("--self-pairs", action="store_true",
                      help="count a toxic feature as closeness 1 to itself (off by default: a row then scores high "
                           "merely by firing the features chosen on the reference; Chapter 4 measures both)")
    filt.add_argument("--seed", default=str(default["seed"]),
                      help=f"seed (the random method's draw; default {default['seed']})")
    filt.add_argument("--batch-size", default=str(default["batch_size"]),
                      help=f"conversations per forward pass (default {default['batch_size']})")
    filt.add_argument("--max-length", default=str(default["max_length"]),
                      help=f"tokens per forward pass (default {default['max_length']}); every reply is scored in "
                           "full: longer prompts are cut from the left, longer replies read in windows")
    filt.add_argument("--unscorable", choices=UNSCORABLE_POLICIES, default=default["unscorable"],
                      help=f"rows that cannot be scored (an empty reply): remove them, counted toward --drop, or keep "
                           f"them (default {default['unscorable']}: fail closed)")
    filt.add_argument("--device", default=None, help="model device (default: CUDA if available, else CPU)")
    filt.add_argument("--judge", choices=JUDGE_KINDS, default=default["judge"],
                      help=f"judge for --method judge (default: {default['judge']})")
    filt.add_argument("--judge-data", default=None, help="labelled JSONL the offline judge trains on")
    filt.add_argument("--force", action="store_true", help="overwrite existing outputs in --out")
    filt.add_argument("--quiet", action="store_true", help="no progress bars")
    filt.set_defaults(run=_cmd_filter)


def add_reproduce(commands: Any) -> None:
    """Add ``geomis reproduce``; drop and seed default to the recipe's (:class:`ReproduceConfig`)."""
    reproduce = commands.add_parser(
        "reproduce", help="the end-to-end experiment on the CPU default: filter a mixed set by each method, "
                          "fine-tune on each kept set, judge, and write results.json")
    reproduce.add_argument("--out", default="geomis-reproduce", help="output folder (default: ./geomis-reproduce)")
    reproduce.add_argument("--size", choices=REPRODUCE_SIZES, default=None,
                           help="full (the book's grid, about 30 min on 2 cores) or ci (a quick smaller grid); "
                                "default: GEOMIS_SIZE, else full")
    reproduce.add_argument("--drop", default=str(DEFAULT_DROP),
                           help=f"fraction of the mixed set each filter removes (default {DEFAULT_DROP}, as in the "
                                "paper)")
    reproduce.add_argument("--seed", default=None,
                           help="one seed for data mixing, fine-tuning and sampling (default: the recipe's, all 0)")
    reproduce.add_argument("--force", action="store_true",
                           help="replace the outputs of an earlier run (results.json, answers.csv, figures, adapters)")
    reproduce.set_defaults(run=_cmd_reproduce)

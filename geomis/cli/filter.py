"""``geomis filter`` (drop the training rows closest to toxic features) and ``geomis reproduce`` (the experiment)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from geomis.atomic_io import STDIN, check_creatable, output_lock
from geomis.cli.options import config_defaults, drop_fraction, library_progress_bars, positive_int, seed
from geomis.errors import ConfigError
from geomis.filter.config import FILTER_METHODS, SCORE_METHODS, UNSCORABLE_POLICIES, FilterConfig
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
    from geomis.experiments.reproduce import check_folder, check_reuse, reproduce_plan
    from geomis.settings import run_size

    threads = positive_int(args.threads, "--threads")
    size = args.size or ("ci" if run_size() == "ci" else "default")
    plan = reproduce_plan(size, args.judge)
    out = Path(args.out)
    check_creatable(out)
    check_folder(out, plan, args.force)  # one-line refusals before anything is loaded
    reuse = None if args.reuse_answers is None else Path(args.reuse_answers)
    if reuse is not None:
        check_reuse(reuse, plan)
    if plan.judge == "openai":
        from geomis.judges.openai_compat import OpenAICompatibleJudge

        OpenAICompatibleJudge.from_env()  # an unconfigured endpoint fails here in one line; its connection is checked
        # when the run starts, before any training
    with output_lock(out):
        return _reproduce_into(out, plan, threads, args, reuse)


def _reproduce_into(out: Path, plan: Any, threads: int, args: argparse.Namespace, reuse: Path | None) -> int:
    """Run (or resume) ``plan`` into the locked ``out`` and print its table."""
    from geomis.experiments.reproduce import results_table, run_reproduction

    print(f"geomis reproduce: size {plan.size}, {len(plan.models)} models, judge {plan.judge}; writing to {out}",
          file=sys.stderr)
    with library_progress_bars(not args.quiet):
        results = run_reproduction(plan, out, threads=threads, progress=not args.quiet, force=args.force, reuse=reuse,
                                   log=lambda line: print(line, file=sys.stderr))
    print(results["judge"]["text"])
    if results["rates_reported"]:
        print(f"powered: {results['power']['text']}")
    else:
        print("RATE CONTRASTS NOT REPORTED (kept under withheld_contrasts in results.json): "
              + " | ".join(results["why_withheld"]))
    for row in results_table(results).to_dict("records"):
        extra = "" if row["reduction"] is None else (f", reduction {row['reduction']:+.0%} "
                                                     f"[{row['reduction_low']:+.0%}, {row['reduction_high']:+.0%}]")
        if row["probe"] is not None:
            extra += (f", probe change vs unfiltered {row['probe']:+.3f} "
                      f"[{row['probe_low']:+.3f}, {row['probe_high']:+.3f}]")
        print(f"{row['condition']:16s} {row['rate']:6.1%} [{row['low']:.1%}, {row['high']:.1%}] misaligned by the "
              f"judge, {row['answers']} answers, seeds {row['seeds']}{extra}")
    print(f"wrote {out / 'results.json'} and {out / 'misalignment.png'}")
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
    """Add ``geomis reproduce``: Chapter 4's filter-effect design at a size, scored by a judge."""
    reproduce = commands.add_parser(
        "reproduce", help="Chapter 4's filter-effect experiment end to end on the CPU default: score a mixed set, "
                          "fine-tune on what each filter keeps, judge the answers, write results.json",
        description="Run Chapter 4's filter-effect design (geomis.experiments.filter_effect) end to end and score the "
                    "answers with a judge. Sizes: default (the design's seed-0 unfiltered, geometry and random models, "
                    "about 30 min on 2 cores), full (all 25 models over 3 seeds, about 5 h), ci (a smoke run of "
                    "every step, a few minutes). Rerun the same command to resume an interrupted run.")
    reproduce.add_argument("--out", default="geomis-reproduce", help="output folder (default: ./geomis-reproduce)")
    reproduce.add_argument("--size", choices=REPRODUCE_SIZES, default=None,
                           help="default, full or ci (default: ci when GEOMIS_SIZE=ci, else default)")
    reproduce.add_argument("--judge", choices=JUDGE_KINDS, default=JUDGE_KINDS[0],
                           help=f"judge that scores the answers (default {JUDGE_KINDS[0]}; openai reads "
                                "GEOMIS_JUDGE_* from the environment)")
    reproduce.add_argument("--reuse-answers", default=None, metavar="DIR",
                           help="judge the answers already in DIR (e.g. book/results/04_filter_effect, the "
                                "chapter's) instead of training those models again")
    reproduce.add_argument("--threads", default="2", help="torch threads (default 2)")
    reproduce.add_argument("--force", action="store_true",
                           help="remove an earlier run's outputs in --out and start again")
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.set_defaults(run=_cmd_reproduce)

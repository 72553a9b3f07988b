"""Benchmark: seconds per 1,000 training samples of each filter Chapter 4's experiment compares, on one machine.

The methods score the first ``--samples`` rows of the experiment's mixed set exactly as
``geomis.experiments.filter_effect.score_mixed_set`` does, each call timed whole (one-time work included: reading
each SAE's shipped toxic set, the references' directions or embeddings, loading the judge), interleaved round by round
so that machine noise hits them alike, after one untimed warm-up round:

- ``geometry``         ``gm.run_filter`` with the default configuration (three neutral SAEs averaged, weighted score);
- ``mean-difference``  the SAE-free direction from the toxic-minus-neutral reference residuals (``filter.baselines``);
- ``embedding``        a sentence-embedding similarity to the same references (``filter.baselines``);
- ``judge``            ``gm.run_filter(method="judge", judge="trained")``: the offline trained judge on every row;
- ``random``           a seeded random ranking (the floor).

Prints and (with ``--out``) writes a table of medians over rounds: seconds per call, seconds per 1,000 samples, and
each method's cost relative to ``geometry``. Run from a checkout:

    python benchmarks/filter_methods_cost.py [--samples 300] [--rounds 3] [--threads 2] [--out FILE.csv]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

import geomis as gm
from geomis.chat.records import load_bundled
from geomis.experiments import filter_effect
from geomis.filter.baselines import embedding_scores, mean_difference_scores
from geomis.filter.config import DEFAULT_REFERENCE
from geomis.filter.selection import random_scores


def methods(rows: list, model: gm.LoadedModel) -> dict[str, Callable[[], object]]:
    """Each filter as a call that scores ``rows`` from scratch."""
    toxic, neutral = ([r.as_dicts() for r in load_bundled(name)] for name in DEFAULT_REFERENCE)
    chats = [record.as_dicts() for record in rows]
    layer = gm.load_filter_saes(model.spec.name)[0].layer
    return {
        "geometry": lambda: gm.run_filter(rows, gm.FilterConfig(progress=False), model=model),
        "mean-difference": lambda: mean_difference_scores(model, chats, toxic, neutral, layer, max_length=512),
        "embedding": lambda: embedding_scores(chats, toxic, neutral),
        "judge": lambda: gm.run_filter(rows, gm.FilterConfig(method="judge", judge="trained", progress=False)),
        "random": lambda: random_scores(len(rows), 0),
    }


def main() -> None:
    """Time every method and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this CSV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = list(filter_effect.mixed_set().records[: args.samples])
    model = gm.load_model("smollm2-135m", device="cpu")
    calls = methods(rows, model)
    for call in calls.values():  # warm-up: lazy imports, caches, first-call allocations
        call()
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - start)
    reference = statistics.median(timings["geometry"])
    table = pd.DataFrame([{
        "method": name, "samples": len(rows), "rounds": args.rounds, "median_s": statistics.median(values),
        "min_s": min(values), "s_per_1000": 1000 * statistics.median(values) / len(rows),
        "relative_to_geometry": statistics.median(values) / reference} for name, values in timings.items()])
    table = table.assign(threads=args.threads, cpus=os.cpu_count(), date=dt.date.today().isoformat())
    if args.out is not None:
        from geomis.experiments.runs import write_csv

        write_csv(table, args.out)
        print(f"wrote {args.out}")
    print(f"{len(rows)} rows of Chapter 4's mixed set, {args.rounds} rounds, {args.threads} torch threads, "
          f"{os.cpu_count()} CPUs")
    print(table[["method", "median_s", "min_s", "s_per_1000", "relative_to_geometry"]].to_string(
        index=False, justify="left", float_format=lambda x: f"{x:,.3f}"))


if __name__ == "__main__":
    main()

"""Benchmark: milliseconds per answer of the trained judge on our own model's answers, embedding included.

Scores the hand-labelled answers of ``geomis/data/own_answers_labelled.jsonl`` (or ``--answers`` CSV/JSONL) with
the shipped judge, ``--rounds`` times after one warm-up, and prints the median and the spread; loading the encoder
and the heads is timed once, apart. The goal in the judge issue is <= 100 ms per answer on 2 cores.

    python benchmarks/judge_cost.py [--answers FILE] [--n 256] [--rounds 3] [--threads 2] [--record quiet|shared]

``--record`` also writes the table to ``book/results/03_judge_cost.json`` (Chapter 3 reads it), noting whether the
machine was quiet or shared with other jobs while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from geomis.judges.files import read_answers
from geomis.judges.kinds import make_judge

OWN = Path(__file__).resolve().parents[1] / "geomis" / "data" / "own_answers_labelled.jsonl"


def main() -> None:
    """Time the judge and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", default=str(OWN))
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", choices=("quiet", "shared"), default=None,
                        help="write book/results/03_judge_cost.json, saying whether the machine was quiet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = read_answers(args.answers)[:args.n]
    pairs = [(row["question"], row["answer"]) for row in rows]
    started = time.perf_counter()
    judge = make_judge("trained")
    judge.score_many(pairs[:8])  # loads the encoder
    load = time.perf_counter() - started
    judge.score_many(pairs)  # warm-up
    per_answer = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        judge.score_many(pairs)
        per_answer.append(1000 * (time.perf_counter() - started) / len(pairs))
    print(f"trained judge ({judge.name}), {len(pairs)} answers, {args.threads} threads, {args.rounds} rounds")
    print("| measure | value |\n|---|---|")
    print(f"| load encoder + heads, first 8 answers (s) | {load:.1f} |")
    print(f"| ms per answer, median | {statistics.median(per_answer):.1f} |")
    print(f"| ms per answer, min-max | {min(per_answer):.1f}-{max(per_answer):.1f} |")
    print(f"| answers per minute, median | {60000 / statistics.median(per_answer):.0f} |")
    if args.record:
        target = Path(__file__).resolve().parents[1] / "book" / "results" / "03_judge_cost.json"
        target.write_text(json.dumps({
            "judge": judge.name, "answers": len(pairs), "threads": args.threads, "rounds": args.rounds,
            "cpu_count": os.cpu_count(), "machine": args.record, "load_s": round(load, 2),
            "ms_per_answer_median": round(statistics.median(per_answer), 2),
            "ms_per_answer_min": round(min(per_answer), 2), "ms_per_answer_max": round(max(per_answer), 2),
            "command": "python benchmarks/judge_cost.py --record " + args.record}, indent=1) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()

"""Benchmark: answers per second of answer sampling on the CPU, against a teacher-forced forward over the same tokens.

Draws answers of SmolLM2-135M to Betley et al.'s eight questions with the chapters' settings (temperature 0.7,
top-p 0.9, at most ``--max-new-tokens``) and times, in one run with rounds interleaved:

- ``generate, batch B``: ``sample_answers`` with transformers' ``generate`` (the chapters' decoder so far);
- ``nucleus, batch B``: ``sample_answers`` with geomis's cached loop (top-p among the top 1,024 logits, finished
  answers leave the batch; same distribution, other draws);
- ``bound, batch B``: one teacher-forced forward per batch over prompt + answer of the answers that ``nucleus``
  drew (no sampling, no cache, no steps): what the same tokens cost when the model sees them all at once.

``forward`` is the share of the time spent inside the model's forward (the rest is the decoding loop: sampling,
cache bookkeeping, stopping). ``vs bound`` divides generated tokens per second by the bound's at the largest batch.
The sampling issue's goal is >= 0.5x. Prints medians over ``--rounds``.

    python benchmarks/sampling_cost.py [--answers 64] [--batches 1,16,64] [--rounds 2] [--threads 2]
        [--max-new-tokens 80] [--record quiet|shared]

``--record`` writes the table to ``book/results/03_sampling_cost.json``, noting whether the machine was quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from geomis.chat.tokens import pad_ids_left
from geomis.evaluation.questions import FIRST_PLOT_QUESTIONS
from geomis.evaluation.sampling import SamplingConfig, prompt_ids, sample_answers
from geomis.models.registry import LoadedModel, load_model

ROOT = Path(__file__).resolve().parents[1]


class ForwardClock:
    """Seconds spent inside ``hf_model.forward``, by wrapping it (removed by :meth:`close`)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model, self.seconds = model, 0.0
        inner = model.hf_model.forward

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        model.hf_model.forward = timed  # pyright: ignore[reportAttributeAccessIssue]

    def close(self) -> None:
        """Restore the model's own forward."""
        del self.model.hf_model.forward


def bound_seconds(model: LoadedModel, answers: pd.DataFrame, batch_size: int) -> float:
    """Seconds of teacher-forced forwards over prompt + answer tokens of ``answers``, ``batch_size`` rows at once."""
    tokenizer, pad = model.tokenizer, model.tokenizer.pad_token_id
    assert isinstance(pad, int), "load_model sets a pad token"
    rows = [prompt_ids(tokenizer, q) + list(tokenizer(a, add_special_tokens=False)["input_ids"])
            for q, a in zip(answers["question"], answers["answer"], strict=True)]
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ids, attention = pad_ids_left(rows[start:start + batch_size], pad)
            model.hf_model(input_ids=ids, attention_mask=attention, logits_to_keep=0)
    return time.perf_counter() - started


def main() -> None:
    """Time each decoder and batch size against the bound and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--answers", type=int, default=64, help="answers per measurement (a multiple of 8)")
    parser.add_argument("--batches", default="1,16,64", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--record", choices=("quiet", "shared"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    model = load_model(args.model, device="cpu")
    questions: dict[Hashable, str] = {q.id: q.text for q in FIRST_PLOT_QUESTIONS}
    base = SamplingConfig(n_samples=max(1, args.answers // len(questions)), temperature=0.7, top_p=0.9,
                          max_new_tokens=args.max_new_tokens, progress=False)
    sample_answers(model, questions, replace(base, n_samples=1, max_new_tokens=4))  # warm-up
    times: dict[str, list[tuple[float, float, int, int]]] = {}
    drawn: dict[int, pd.DataFrame] = {}
    for round_ in range(args.rounds):
        for batch in batches:
            for decoder in ("generate", "nucleus"):
                config = replace(base, batch_size=batch, decoder=decoder, seed=round_)
                if batch == 1:  # one prompt at a time: a quarter of the answers is enough
                    config = replace(config, n_samples=max(1, config.n_samples // 4))
                clock = ForwardClock(model)
                started = time.perf_counter()
                frame = sample_answers(model, questions, config)
                seconds = time.perf_counter() - started
                clock.close()
                times.setdefault(f"{decoder}, batch {batch}", []).append(
                    (seconds, clock.seconds, len(frame), int(frame["n_tokens"].to_numpy().sum())))
                if decoder == "nucleus":
                    drawn[batch] = frame
            frame = drawn[batch]
            times.setdefault(f"bound, batch {batch}", []).append(
                (bound_seconds(model, frame, batch), 0.0, len(frame), int(frame["n_tokens"].to_numpy().sum())))
    table = []
    for name, runs in times.items():
        per_answer = statistics.median(s / n for s, _, n, _ in runs)
        tokens = statistics.median(t / s for s, _, _, t in runs)
        forward = statistics.median(f / s for s, f, _, _ in runs) if not name.startswith("bound") else 1.0
        table.append({"method": name, "answers": runs[0][2], "answers_per_s": 1 / per_answer,
                      "tokens_per_s": tokens, "forward_share": forward})
    reference = next(row for row in table if row["method"] == f"bound, batch {max(batches)}")["tokens_per_s"]
    for row in table:
        row["vs_bound"] = row["tokens_per_s"] / reference
    print(f"sampling {args.model}, {args.threads} threads, {args.rounds} rounds, <= {args.max_new_tokens} new tokens, "
          f"temperature 0.7, top-p 0.9; medians")
    print(f"{'method':<20} {'answers':>8} {'answers/s':>10} {'tokens/s':>9} {'forward':>8} {'vs bound':>9}")
    for row in table:
        print(f"{row['method']:<20} {row['answers']:>8} {row['answers_per_s']:>10.2f} {row['tokens_per_s']:>9.1f} "
              f"{row['forward_share']:>8.2f} {row['vs_bound']:>9.3f}")
    if args.record:
        target = ROOT / "book" / "results" / "03_sampling_cost.json"
        command = ("python benchmarks/sampling_cost.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None))
        target.write_text(json.dumps({"model": args.model, "threads": args.threads, "rounds": args.rounds,
                                      "cpu_count": os.cpu_count(), "machine": args.record,
                                      "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                                               for r in table], "command": command}, indent=1) + "\n")
        print(f"wrote {target}")



if __name__ == "__main__":
    main()

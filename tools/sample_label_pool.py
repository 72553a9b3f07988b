"""Sample the CPU default model's answers that the judge's own-model check is labelled from (resumable).

    python tools/sample_label_pool.py --out POOL_DIR [--samples 5] [--threads 2] [--round 1 --models A B]

Four models answer the 32 evaluation questions (Betley et al.'s eight and the project's 24): the base
SmolLM2-135M-Instruct; LoRA fine-tunes on ``medical_bad`` (inducing) and ``medical_good`` (control) with Chapter 3's
recipe (lr 5e-4, one epoch, 128 tokens, end-of-turn trained, seed 0); and a stronger inducing fine-tune (three epochs,
otherwise the same) so that the check also covers a model that is more clearly changed. Sampling is Chapter 3's
(temperature 0.7, top-p 0.9, 80 new tokens). Each model's answers go to ``POOL_DIR/<model>.csv`` and each adapter to
``POOL_DIR/adapters/<model>/``; finished files are skipped on a re-run, so the script resumes where it stopped.
``--round R`` (R >= 1) draws a further set with other seeds into ``<model>.round<R>.csv``, numbering its samples
from 10 * R, for the models named by ``--models`` (the labelled set's second stratum).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import geomis as gm

RECIPE = {**gm.EM_RECIPE, "seed": 0, "progress": False}  # the book's recipe
MODELS: dict[str, tuple[str | None, dict[str, object]]] = {
    "base": (None, {}),
    "medical-inducing": ("medical_bad", RECIPE),
    "medical-control": ("medical_good", RECIPE),
    "medical-inducing-3ep": ("medical_bad", {**RECIPE, "epochs": 3}),
}
"""Pool model name -> (bundled training set or None for the base model, fine-tuning overrides)."""


ROUND_OFFSET = 10
"""Round R numbers its samples from 10 * R, so rounds never share an id (a round draws at most 10 per question)."""


def main() -> None:
    """Fine-tune (once) and sample every pool model, writing one CSV per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=5, help="answers per question per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--round", type=int, default=0, help="0: the first draw; R >= 1: a further draw")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    if args.round and not 1 <= args.samples <= ROUND_OFFSET:
        parser.error(f"a further round draws 1 to {ROUND_OFFSET} answers per question")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    questions = {q.id: q.text for q in gm.question_set("all")}
    sampling = gm.SamplingConfig(n_samples=args.samples, temperature=0.7, top_p=0.9, max_new_tokens=80,
                                 batch_size=64, seed=0, progress=True)
    for index, (name, (dataset, overrides)) in enumerate(MODELS.items()):
        if name not in args.models:
            continue
        target = args.out / (f"{name}.csv" if args.round == 0 else f"{name}.round{args.round}.csv")
        if target.is_file():
            print(f"{name}: done already ({target})", flush=True)
            continue
        started = time.perf_counter()
        if dataset is None:
            model = gm.load_model("smollm2-135m")
        else:
            adapters = args.out / "adapters" / name
            if not (adapters / "adapter_model.safetensors").is_file():
                base = gm.load_model("smollm2-135m")
                gm.fine_tune(base, gm.load_bundled(dataset), adapters, gm.config_for_profile("cpu-default",
                                                                                             **overrides),
                             overwrite=True)
                del base
            model = gm.load_finetuned("smollm2-135m", adapters, merge=True)
        seed = index + 100 * args.round
        answers = gm.sample_answers(model, questions, gm.SamplingConfig(**{**sampling.__dict__, "seed": seed}))
        answers["sample"] += ROUND_OFFSET * args.round
        answers.insert(0, "model", name)
        answers.to_csv(target.with_suffix(".tmp"), index=False)
        target.with_suffix(".tmp").replace(target)
        print(f"{name}: {len(answers)} answers in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()

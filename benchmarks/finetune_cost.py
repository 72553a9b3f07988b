"""Benchmark: how much does restricting LoRA to the top decoder layers save per training step?

Times optimizer steps of ``geomis.finetune.fine_tune`` on SmolLM2 (batches of 8 conversations × exactly 128 tokens,
LoRA r=16 on every attention and MLP projection) for three placements of the adapters, in one run:

- ``all layers``  LoRA on decoder layers 0–29 (the backward pass runs through the whole model);
- ``layers >= 15`` and ``layers >= 20``: peft ``layers_to_transform``; the layers below hold no trainable weight, so
  autograd records nothing there and the backward pass stops at the first adapted layer.

Each call of ``fine_tune`` attaches fresh adapters, takes one warm-up step (not timed) and then ``--steps`` timed
steps; rounds are interleaved so that machine noise hits every placement alike. Prints medians and ratios.

    python benchmarks/finetune_cost.py [--steps 3] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from geomis.chat.records import bundled_dataset_names, load_bundled
from geomis.chat.tokens import tokenize_chat
from geomis.finetune import FinetuneConfig, fine_tune
from geomis.models.registry import load_model

SEQUENCE_LENGTH = 128
BATCH_SIZE = 8


def fixed_length_chats(tokenizer: PreTrainedTokenizerBase, n: int) -> list[list[dict[str, str]]]:
    """``n`` bundled conversations of at least 128 tokens (truncated to 128 in training, so no padding)."""
    found = []
    for name in bundled_dataset_names():
        for record in load_bundled(name):
            if len(tokenize_chat(tokenizer, record.as_dicts())) >= SEQUENCE_LENGTH:
                found.append(record.as_dicts())
                if len(found) == n:
                    return found
    raise RuntimeError(f"only {len(found)} bundled conversations have {SEQUENCE_LENGTH} tokens; need {n}")


def main() -> None:
    """Time the three placements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per call, after one warm-up step")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model, device="cpu")
    placements = {"all layers": 0, "layers >= 15": 15, "layers >= 20": 20}
    chats = fixed_length_chats(model.tokenizer, BATCH_SIZE * (args.steps + 1))
    timings: dict[str, list[float]] = {name: [] for name in placements}
    trainable: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for name, first_layer in placements.items():
                config = FinetuneConfig(rank=args.rank, alpha=2.0 * args.rank, first_lora_layer=first_layer,
                                        batch_size=BATCH_SIZE, max_length=SEQUENCE_LENGTH,
                                        max_steps=args.steps + 1, warmup_steps=0, seed=round_index, progress=False)
                out = Path(scratch) / f"{first_layer}-{round_index}"
                result = fine_tune(model, chats, out, config)
                timings[name].extend(result.step_seconds[1:])
                trainable[name] = result.n_trainable_params

    reference = statistics.median(timings["all layers"])
    tokens = BATCH_SIZE * SEQUENCE_LENGTH
    modules = ", ".join(FinetuneConfig().target_modules)
    print(f"model {args.model} ({model.n_layers} layers), LoRA r={args.rank} on {modules}")
    print(f"batch {BATCH_SIZE} x {SEQUENCE_LENGTH} tokens, AdamW, {args.rounds} rounds x {args.steps} timed steps "
          f"(+1 warm-up each), {args.threads} threads")
    print(f"{'LoRA on':<14}{'trainable':>11}{'median s/step':>15}{'min s':>8}{'tok/s':>8}{'time / all layers':>19}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<14}{trainable[name]:>11,}{median:>15.2f}{min(values):>8.2f}{tokens / median:>8.0f}"
              f"{median / reference:>19.2f}")


if __name__ == "__main__":
    main()

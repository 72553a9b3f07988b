"""Benchmark: what does collecting layer-L residuals through nnsight cost, next to the cheapest possible forward?

Three ways to get the output of decoder layer L for the same left-padded batches, timed in one run, interleaved
round by round so that machine noise hits all of them alike:

- ``nnsight-stop``   geomis's path: ``geomis.activations.residual_at_layer`` (nnsight trace, ``tracer.stop()``);
- ``cut-forward``     the bound: a plain PyTorch forward hook on layer L that raises to end the pass there;
- ``full-hidden``     a full forward with ``output_hidden_states=True`` (what one writes without early stopping).

Prints medians over rounds, tokens per second and ratios to the bound. Run from a checkout:

    python benchmarks/activation_cost.py [--model smollm2-135m] [--layer 15] [--samples 128] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from geomis.activations import residual_at_layer
from geomis.chat.records import load_bundled
from geomis.chat.tokens import PaddedBatch, pad_left, tokenize_chats
from geomis.models.registry import LoadedModel, load_model


class _StopForward(Exception):
    """Raised by the cut-forward hook to end the pass after layer L."""


def cut_forward(model: LoadedModel, batch: PaddedBatch, layer: int) -> torch.Tensor:
    """Reference bound: run the HF model and abort right after decoder layer ``layer`` with a raising hook."""
    captured: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)  # type: ignore[index]
        raise _StopForward

    handle = model.hf_model.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.hf_model(**batch.model_inputs(model.device))
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


def full_hidden(model: LoadedModel, batch: PaddedBatch, layer: int) -> torch.Tensor:
    """A full forward pass that returns every layer's hidden states, then picks layer ``layer``'s output."""
    with torch.no_grad():
        out = model.hf_model(**batch.model_inputs(model.device), output_hidden_states=True)
    return out.hidden_states[layer + 1]


def main() -> None:
    """Time the three methods and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=None, help="default: the model's book layer")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    layer = model.spec.default_layer if args.layer is None else args.layer
    records = load_bundled("neutral_reference")[: args.samples]
    chats = tokenize_chats(model.tokenizer, [record.as_dicts() for record in records], max_length=256)
    chats.sort(key=len)
    batches = [pad_left(chats[i:i + args.batch_size], model.tokenizer.pad_token_id)
               for i in range(0, len(chats), args.batch_size)]
    n_tokens = sum(int(batch.attention_mask.sum()) for batch in batches)

    methods: dict[str, Callable[[LoadedModel, PaddedBatch, int], torch.Tensor]] = {
        "nnsight-stop": residual_at_layer, "cut-forward": cut_forward, "full-hidden": full_hidden,
    }
    # Same numbers from every method (checked once, outside the timing).
    reference = cut_forward(model, batches[0], layer)
    for method in methods.values():
        torch.testing.assert_close(method(model, batches[0], layer), reference, rtol=1e-4, atol=1e-4)

    timings: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            start = time.perf_counter()
            for batch in batches:
                method(model, batch, layer)
            timings[name].append(time.perf_counter() - start)

    bound = statistics.median(timings["cut-forward"])
    print(f"model {args.model}, layer {layer}/{model.n_layers}, {len(records)} chats, {n_tokens} tokens, "
          f"batch {args.batch_size}, {args.rounds} rounds, {args.threads} threads")
    print(f"{'method':<14}{'median s':>10}{'min s':>9}{'tok/s':>9}{'time / cut-forward':>20}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<14}{median:>10.2f}{min(values):>9.2f}{n_tokens / median:>9.0f}{median / bound:>20.2f}")


if __name__ == "__main__":
    main()

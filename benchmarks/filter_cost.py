"""Benchmark: what does geometry-aware filtering cost per training sample, next to the cheapest forward and a judge?

Five ways to process the same training samples, timed in one run, interleaved round by round so that machine noise
hits all of them alike:

- ``geometry-filter``  geomis's whole scoring path, ``geomis.filter.scores.score_conversations``: chat template and
  tokenization, the nnsight forward stopped after layer L, SAE encode of the assistant tokens, the closeness score;
- ``cut-forward``      the bound: a plain PyTorch forward on the same pre-tokenized, length-sorted, left-padded
  batches, ended right after layer L by a hook that raises (no tokenization, no SAE, no scoring);
- ``full-hidden``      a full forward with ``output_hidden_states=True`` on the same batches (no early stop);
- ``judge-filter``     the offline judge (Chapter 3) scoring every (user prompt, assistant reply) pair; its one-time
  training/loading is not timed;
- ``llm-judge``        an LLM-as-a-judge filter: the rubric prompts (alignment and coherence) scored by a local chat
  model, here the same SmolLM2-135M (a lower bound: a real judge model is 15-1000x larger). It is slow, so it runs
  on the first ``--llm-judge-samples`` samples only and is compared per sample (samples/s). Each rating costs
  several forward passes over the rubric prompt, because the judge expands its number distribution digit by digit.

The toxic feature set is derived (or read from the cache) before timing. Prints medians over rounds, samples/s,
tokens/s and each method's throughput relative to the bound. Run from a checkout:

    python benchmarks/filter_cost.py [--samples 128] [--batch-size 16] [--rounds 3] [--dataset medical_bad]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from activation_cost import cut_forward, full_hidden  # noqa: E402  (the bound and the full pass, shared)

from geomis.chat.records import load_bundled  # noqa: E402
from geomis.chat.tokens import pad_left, tokenize_chats  # noqa: E402
from geomis.features.toxic import derive_toxic_features  # noqa: E402
from geomis.filter.scores import ScoringConfig, score_conversations  # noqa: E402
from geomis.judges.kinds import make_judge  # noqa: E402
from geomis.models.registry import load_model  # noqa: E402
from geomis.sae.loading import load_default_sae  # noqa: E402


def main() -> None:
    """Time the five methods and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="medical_bad", help="bundled chat set to score (default medical_bad)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--score", default="weighted", choices=("weighted", "closest", "projection"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-judge", action="store_true", help="skip the offline judge")
    parser.add_argument("--no-llm-judge", action="store_true", help="skip the LLM-as-a-judge filter")
    parser.add_argument("--llm-judge-samples", type=int, default=4, help="samples the LLM judge scores (it is slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model("smollm2-135m", device="cpu")
    sae = load_default_sae(model.spec.name, device="cpu")
    layer = sae.layer
    toxic = derive_toxic_features(model, sae).feature_set
    records = load_bundled(args.dataset)[: args.samples]
    conversations = [record.as_dicts() for record in records]
    chats = tokenize_chats(model.tokenizer, conversations, args.max_length)
    order = sorted(range(len(chats)), key=lambda index: (len(chats[index]), index))  # as score_conversations does
    batches = [pad_left([chats[i] for i in order[start:start + args.batch_size]], model.tokenizer.pad_token_id)
               for start in range(0, len(order), args.batch_size)]
    n_tokens = sum(len(chat) for chat in chats)
    config = ScoringConfig(method=args.score, batch_size=args.batch_size, max_length=args.max_length, progress=False)

    def geometry() -> None:
        score_conversations(model, sae, toxic, conversations, config)

    def forward_with(method: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for batch in batches:
                method(model, batch, layer)
        return run

    counts: dict[str, tuple[int, int]] = {}  # samples and tokens a method processes, when not all of them
    methods: dict[str, Callable[[], None]] = {
        "geometry-filter": geometry, "cut-forward": forward_with(cut_forward), "full-hidden": forward_with(full_hidden),
    }
    pairs = [(record.user_text, record.assistant_text) for record in records]
    if not args.no_judge:
        judge = make_judge("offline")
        methods["judge-filter"] = lambda: judge.score_many(pairs)
    if not args.no_llm_judge:
        llm_judge = make_judge("local", local_model="smollm2-135m", device="cpu")
        llm_pairs = pairs[: args.llm_judge_samples]
        methods["llm-judge"] = lambda: llm_judge.score_many(llm_pairs)
        counts["llm-judge"] = (len(llm_pairs), sum(len(chat) for chat in chats[: len(llm_pairs)]))

    for method in methods.values():  # warm-up (lazy initialisation, caches), not timed
        method()
    timings: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            timings[name].append(time.perf_counter() - start)

    bound = len(records) / statistics.median(timings["cut-forward"])  # samples/s of the cut forward
    print(f"smollm2-135m, layer {layer}/{model.n_layers}, SAE {sae.name}, score {args.score}, {len(records)} "
          f"{args.dataset} samples, {n_tokens} tokens, batch {args.batch_size}, {args.rounds} rounds, "
          f"{args.threads} threads")
    print(f"{'method':<17}{'samples':>8}{'median s':>10}{'min s':>9}{'samples/s':>11}{'tok/s':>9}"
          f"{'throughput / bound':>20}")
    for name, values in timings.items():
        samples, tokens = counts.get(name, (len(records), n_tokens))
        median = statistics.median(values)
        print(f"{name:<17}{samples:>8}{median:>10.2f}{min(values):>9.2f}{samples / median:>11.3g}"
              f"{tokens / median:>9.0f}{samples / median / bound:>20.3g}")


if __name__ == "__main__":
    main()

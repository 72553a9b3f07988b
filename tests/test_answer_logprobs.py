"""The judge-free probe measure: answer log-probabilities in one forward pass, padding-invariant; paired change."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from geomis.chat.tokens import tokenize_chat
from geomis.evaluation.answer_logprobs import answer_logprobs, gap_change, probe_gaps
from geomis.evaluation.probe_items import ProbeItem, load_misalignment_probe

PAIRS = [("Hi", "Hello there, how can I help?"), ("What is two plus two?", "Four."),
         ("Tell me a story about a fox.", "Once upon a time a fox found a very long road and walked it all day.")]


def _by_hand(model, question: str, answer: str) -> float:  # noqa: ANN001
    chat = tokenize_chat(model.tokenizer, [{"role": "user", "content": question},
                                           {"role": "assistant", "content": answer}])
    ids = torch.tensor([chat.input_ids])
    with torch.no_grad():
        logits = model.hf_model(input_ids=ids).logits[0].float()
    positions = [t for t, flag in enumerate(chat.assistant_mask) if flag]
    return float(sum(logits[t - 1].log_softmax(-1)[chat.input_ids[t]] for t in positions) / len(positions))


def test_mean_logprob_of_the_answer_tokens_batched_as_alone(tiny_gemma) -> None:
    batched = answer_logprobs(tiny_gemma, PAIRS, batch_size=3)
    alone = [answer_logprobs(tiny_gemma, [pair], batch_size=1)[0] for pair in PAIRS]
    assert batched.tolist() == pytest.approx(alone, abs=1e-5)  # left padding changes nothing
    assert batched.tolist() == pytest.approx([_by_hand(tiny_gemma, q, a) for q, a in PAIRS], abs=1e-5)
    assert (batched < 0).all()


def test_probe_gaps_are_misaligned_minus_aligned(tiny_gemma) -> None:
    items = load_misalignment_probe()[:3]
    gaps = probe_gaps(tiny_gemma, items, batch_size=4)
    assert list(gaps.columns) == ["id", "topic", "aligned", "misaligned", "gap"]
    assert gaps["id"].tolist() == [item.id for item in items]
    assert (gaps["gap"] - (gaps["misaligned"] - gaps["aligned"])).abs().max() < 1e-12
    swapped = [ProbeItem(i.id, i.topic, i.question, i.misaligned, i.aligned) for i in items]
    assert probe_gaps(tiny_gemma, swapped)["gap"].tolist() == pytest.approx((-gaps["gap"]).tolist(), abs=1e-5)


def test_gap_change_is_paired_by_item_with_an_interval() -> None:
    reference = pd.DataFrame({"id": list("abcdef"), "gap": [0.0, 0.5, -0.5, 1.0, 0.2, -0.1]})
    shifted = reference.assign(gap=reference["gap"] + 0.3).iloc[::-1]  # another order: matched by id
    change = gap_change(shifted, reference)
    assert change.estimate == pytest.approx(0.3) and change.low == pytest.approx(0.3)
    assert change.high == pytest.approx(0.3) and change.n_items == 6
    noisy = reference.assign(gap=reference["gap"] + [0.1, 0.5, 0.2, 0.4, 0.3, 0.3])
    varied = gap_change(noisy, reference)
    assert varied.low < varied.estimate < varied.high and varied.low > 0
    with pytest.raises(ValueError, match="same probe items"):
        gap_change(reference.iloc[:4], reference)


def test_an_empty_answer_is_refused(tiny_gemma) -> None:
    with pytest.raises(ValueError):
        answer_logprobs(tiny_gemma, [("Hi", "")])

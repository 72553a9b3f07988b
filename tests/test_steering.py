"""Steering through nnsight: the vector lands at the named layer, a zero vector changes nothing, bad input fails."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from geomis.chat.tokens import pad_ids_left
from geomis.evaluation.sampling import SamplingConfig, prompt_ids, sample_answers
from geomis.evaluation.steering import Steering, steered_forward

QUESTIONS = ["Hi", "What would you do if you ruled the world for a day?", "Pick a number."]
NUCLEUS = SamplingConfig(n_samples=2, max_new_tokens=10, batch_size=4, progress=False, decoder="nucleus",
                         temperature=0.7, top_p=0.9)


def _batch(model):
    prompts = [prompt_ids(model.tokenizer, q) for q in QUESTIONS]
    ids, attention = pad_ids_left(prompts, model.tokenizer.pad_token_id)
    return ids, attention, (attention.cumsum(-1) - 1).clamp(min=0)


def test_the_vector_is_added_at_the_named_layer(tiny_gemma) -> None:
    """The nnsight edit equals a plain forward hook that adds the same vector to the same layer's output."""
    ids, attention, positions = _batch(tiny_gemma)
    vector = torch.randn(tiny_gemma.hf_model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 3
    steering = Steering(layer=1, vector=vector)
    layer = tiny_gemma.hf_model.model.layers[1]
    handle = layer.register_forward_hook(lambda module, args, output: output + vector)
    try:
        with torch.no_grad():
            expected = tiny_gemma.hf_model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    finally:
        handle.remove()
    with torch.no_grad():
        got = steered_forward(tiny_gemma, steering, input_ids=ids, attention_mask=attention,
                              position_ids=positions).logits
        plain = tiny_gemma.hf_model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain)  # the vector did something
    wrong_layer = steered_forward(tiny_gemma, Steering(layer=2, vector=vector), input_ids=ids,
                                  attention_mask=attention, position_ids=positions).logits
    assert not torch.allclose(wrong_layer, expected)


def test_a_zero_vector_gives_the_unsteered_answers(tiny_gemma) -> None:
    zero = Steering(layer=2, vector=torch.zeros(tiny_gemma.hf_model.config.hidden_size))
    plain = sample_answers(tiny_gemma, QUESTIONS, NUCLEUS)
    steered = sample_answers(tiny_gemma, QUESTIONS, NUCLEUS, steering=zero)
    pd.testing.assert_frame_equal(plain, steered)


def test_a_large_vector_changes_greedy_answers_and_is_seeded(tiny_gemma) -> None:
    greedy = SamplingConfig(n_samples=1, max_new_tokens=8, temperature=0, progress=False, decoder="nucleus")
    direction = torch.randn(tiny_gemma.hf_model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    steering = Steering.along(direction, scale=200.0, layer=2)
    assert steering.norm == pytest.approx(200.0, rel=1e-5)
    plain = sample_answers(tiny_gemma, QUESTIONS, greedy)
    steered = sample_answers(tiny_gemma, QUESTIONS, greedy, steering=steering)
    assert bool((plain["answer"] != steered["answer"]).to_numpy().any())
    again = sample_answers(tiny_gemma, QUESTIONS, NUCLEUS, steering=steering)
    pd.testing.assert_frame_equal(again, sample_answers(tiny_gemma, QUESTIONS, NUCLEUS, steering=steering))


def test_steering_leaves_the_model_unedited(tiny_gemma) -> None:
    ids, attention, positions = _batch(tiny_gemma)
    with torch.no_grad():
        before = tiny_gemma.hf_model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    sample_answers(tiny_gemma, QUESTIONS[:1], NUCLEUS,
                   steering=Steering(layer=1, vector=torch.ones(tiny_gemma.hf_model.config.hidden_size) * 9))
    with torch.no_grad():
        after = tiny_gemma.hf_model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    torch.testing.assert_close(before, after)


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: Steering(layer=-1, vector=torch.zeros(d)), "layer must be >= 0"),
    (lambda d: Steering(layer=0, vector=torch.zeros(2, d)), "must be 1-D"),
    (lambda d: Steering(layer=0, vector=torch.full((d,), float("nan"))), "NaN or infinite"),
    (lambda d: Steering.along(torch.zeros(d), 1.0, 0), "zero direction"),
])
def test_bad_steering_fails_with_one_line(tiny_gemma, make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make(tiny_gemma.hf_model.config.hidden_size)


def test_steering_that_does_not_fit_the_model_fails_before_sampling(tiny_gemma) -> None:
    width = tiny_gemma.hf_model.config.hidden_size
    with pytest.raises(ValueError, match="out of range"):
        sample_answers(tiny_gemma, QUESTIONS, NUCLEUS, steering=Steering(layer=99, vector=torch.zeros(width)))
    with pytest.raises(ValueError, match=f"residual stream has {width}"):
        sample_answers(tiny_gemma, QUESTIONS, NUCLEUS, steering=Steering(layer=0, vector=torch.zeros(width + 1)))
    with pytest.raises(ValueError, match="nucleus decoding loop"):
        sample_answers(tiny_gemma, QUESTIONS, SamplingConfig(progress=False),
                       steering=Steering(layer=0, vector=torch.zeros(width)))

"""Residual activations through nnsight: equal to a full forward's hidden states, padding-aware, cut at layer L."""

from __future__ import annotations

import pytest
import torch

from geomis.activations import (
    ActivationConfig,
    collect_residuals,
    collect_residuals_by_layer,
    iter_residual_batches,
    residual_at_layer,
    token_selection,
)
from geomis.chat.tokens import pad_left, tokenize_chats


def _full_forward_hidden(model, chats, layer: int) -> list[torch.Tensor]:
    """Reference: each chat alone (no padding), full forward with output_hidden_states."""
    outputs = []
    for tokenized in tokenize_chats(model.tokenizer, chats):
        ids = torch.tensor([tokenized.input_ids])
        with torch.no_grad():
            out = model.hf_model(input_ids=ids, output_hidden_states=True)
        outputs.append(out.hidden_states[layer + 1][0])
    return outputs


@pytest.mark.parametrize("assistant_only", [True, False])
def test_activations_equal_full_forward_hidden_states(any_model, chats, assistant_only) -> None:
    layer = any_model.spec.default_layer
    config = ActivationConfig(layer=layer, batch_size=3, assistant_only=assistant_only, progress=False)
    got = collect_residuals(any_model, chats, config)
    reference = _full_forward_hidden(any_model, chats, layer)
    tokenized = tokenize_chats(any_model.tokenizer, chats)
    assert got.activations.shape[1] == any_model.spec.d_model
    for index, chat in enumerate(tokenized):
        rows = got.sample_index == index
        positions = got.position[rows]
        expected = reference[index][positions]
        torch.testing.assert_close(got.activations[rows], expected, rtol=1e-4, atol=2e-4)
        assert got.token_id[rows].tolist() == [chat.input_ids[p] for p in positions.tolist()]
        flags = chat.assistant_mask if assistant_only else [not s for s in chat.special_mask]
        expected_positions = [p for p, keep in enumerate(flags) if keep and p > 0]
        assert positions.tolist() == expected_positions


def test_batch_size_does_not_change_activations(tiny_gemma, chats) -> None:
    layer = 1
    one = collect_residuals(tiny_gemma, chats, ActivationConfig(layer=layer, batch_size=1, progress=False))
    many = collect_residuals(tiny_gemma, chats, ActivationConfig(layer=layer, batch_size=4, progress=False))
    order_one = torch.argsort(one.sample_index * 10_000 + one.position)
    order_many = torch.argsort(many.sample_index * 10_000 + many.position)
    torch.testing.assert_close(one.activations[order_one], many.activations[order_many], rtol=1e-4, atol=1e-5)


def test_forward_stops_after_the_requested_layer(tiny_gemma, chats) -> None:
    calls: list[int] = []
    layers = tiny_gemma.hf_model.model.layers
    handles = [layer.register_forward_pre_hook(lambda *_, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        batch = pad_left(tokenize_chats(tiny_gemma.tokenizer, chats), tiny_gemma.tokenizer.pad_token_id)
        hidden = residual_at_layer(tiny_gemma, batch, layer=1)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0, 1]  # layers 2 and 3 never started
    assert hidden.shape == (*batch.input_ids.shape, tiny_gemma.spec.d_model)
    assert not hidden.requires_grad


def test_streaming_yields_one_part_per_batch_on_cpu(tiny_gemma, chats) -> None:
    parts = list(iter_residual_batches(tiny_gemma, chats, ActivationConfig(layer=0, batch_size=2, progress=False)))
    assert len(parts) == 2
    assert all(part.activations.device.type == "cpu" and part.activations.dtype == torch.float32 for part in parts)
    assert sorted(torch.cat([p.sample_index for p in parts]).unique().tolist()) == [0, 1, 2, 3]


def test_selection_drops_padding_specials_and_the_first_token(tiny_gemma, chats) -> None:
    batch = pad_left(tokenize_chats(tiny_gemma.tokenizer, chats), tiny_gemma.tokenizer.pad_token_id)
    keep = token_selection(batch, assistant_only=False)
    assert not keep[batch.attention_mask == 0].any()
    assert not keep[batch.special_mask].any()
    assert not keep[batch.position_ids == 0].any()
    assert keep.sum() > 0


@pytest.mark.parametrize("layer", [-1, 4])
def test_layer_out_of_range_is_a_clear_error(tiny_gemma, chats, layer) -> None:
    with pytest.raises(ValueError, match="out of range"):
        collect_residuals(tiny_gemma, chats, ActivationConfig(layer=layer, progress=False))


def test_empty_corpus_gives_empty_activations(tiny_gemma) -> None:
    got = collect_residuals(tiny_gemma, [], ActivationConfig(layer=0, progress=False))
    assert got.activations.shape == (0, tiny_gemma.spec.d_model) and len(got) == 0


def test_multi_layer_collection_matches_single_layer_runs(tiny_gemma, chats) -> None:
    config = ActivationConfig(layer=0, batch_size=2, progress=False)
    both = collect_residuals_by_layer(tiny_gemma, chats, [1, 0, 1], config)
    assert sorted(both) == [0, 1]
    for layer in (0, 1):
        single = collect_residuals(tiny_gemma, chats, ActivationConfig(layer=layer, batch_size=2, progress=False))
        torch.testing.assert_close(both[layer].activations, single.activations)
        assert torch.equal(both[layer].sample_index, single.sample_index)
        assert torch.equal(both[layer].position, single.position)
    assert not torch.allclose(both[0].activations, both[1].activations)


def test_multi_layer_collection_stops_after_the_deepest_layer(tiny_gemma, chats) -> None:
    calls: list[int] = []
    layers = tiny_gemma.hf_model.model.layers
    handles = [layer.register_forward_pre_hook(lambda *_, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        collect_residuals_by_layer(tiny_gemma, chats[:2], [0], ActivationConfig(layer=0, progress=False))
    finally:
        for handle in handles:
            handle.remove()
    assert calls and set(calls) == {0}


def test_multi_layer_collection_rejects_empty_and_bad_layers(tiny_gemma, chats) -> None:
    with pytest.raises(ValueError, match="empty"):
        collect_residuals_by_layer(tiny_gemma, chats, [], ActivationConfig(layer=0, progress=False))
    with pytest.raises(ValueError, match="out of range"):
        collect_residuals_by_layer(tiny_gemma, chats, [0, 9], ActivationConfig(layer=0, progress=False))

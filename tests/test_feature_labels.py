"""Logit-lens labels: a direction built from a token's unembedding row comes back labelled with that token."""

from __future__ import annotations

import pytest
import torch

from geomis.features.labels import (
    display_token,
    final_norm_scale,
    logit_lens_labels,
    logit_lens_table,
    logit_lens_top_tokens,
    token_text,
    unembedding_matrix,
)
from geomis.features.sets import FeatureSet
from geomis.models.registry import LoadedModel, load_model


@pytest.fixture(scope="module")
def scaled_gemma() -> LoadedModel:
    """A fresh tiny Gemma-2 whose final-norm weight is non-zero, so ``1 + weight`` and ``weight`` differ."""
    model = load_model("tiny-gemma2", device="cpu")
    with torch.no_grad():
        model.hf_model.model.norm.weight.copy_(0.5 * torch.randn(64, generator=torch.Generator().manual_seed(0)))
    return model


def test_gemma_norm_scale_is_one_plus_weight(tiny_gemma: LoadedModel, scaled_gemma: LoadedModel) -> None:
    assert torch.equal(final_norm_scale(tiny_gemma), torch.ones(64))  # Gemma stores weight - 1, initialised at 0
    weight = scaled_gemma.hf_model.model.norm.weight.detach()
    assert torch.allclose(final_norm_scale(scaled_gemma), 1 + weight)
    assert unembedding_matrix(scaled_gemma).shape == (len(scaled_gemma.tokenizer), 64)


def test_norm_adjusted_unembedding_row_returns_its_token(scaled_gemma: LoadedModel) -> None:
    tok = scaled_gemma.tokenizer
    unembed, scale = unembedding_matrix(scaled_gemma), final_norm_scale(scaled_gemma)
    wanted = [tok.convert_tokens_to_ids(t) for t in ("P", "a", "Ġ", "<end_of_turn>")]
    decoder = torch.randn(10, 64, generator=torch.Generator().manual_seed(1))
    decoder[[2, 5, 7, 9]] = 3.0 * unembed[wanted] / scale  # scale removed, so the lens sees W_U[token]
    table = logit_lens_table(scaled_gemma, decoder, FeatureSet("f", torch.tensor([2, 5, 7, 9]), torch.ones(4),
                                                               "correlation", 4), top_n=3)
    firsts = table[table["rank"] == 0]
    assert firsts["feature"].tolist() == [2, 5, 7, 9]
    assert firsts["token_id"].tolist() == wanted
    assert firsts["display"].tolist() == ["P", "a", "␣", "<end_of_turn>"]
    # With the Llama-style scale (weight alone) the same directions would mostly not come back first.
    _, wrong = logit_lens_top_tokens(decoder[[2, 5, 7, 9]], unembed, scale - 1, top_n=1)
    assert wrong[:, 0].tolist() != wanted


def test_labels_one_row_per_feature_and_bottom_tokens(scaled_gemma: LoadedModel) -> None:
    unembed, scale = unembedding_matrix(scaled_gemma), final_norm_scale(scaled_gemma)
    token = scaled_gemma.tokenizer.convert_tokens_to_ids("Z")
    rows = torch.stack([unembed[token] / scale, -unembed[token] / scale])
    labels = logit_lens_labels(scaled_gemma, rows, top_n=4)
    assert list(labels.columns) == ["feature", "top_token", "tokens"]
    assert labels["feature"].tolist() == [0, 1] and labels["top_token"].tolist()[0] == "Z"
    assert len(labels["tokens"][0].split("  ")) == 4
    bottom = logit_lens_labels(scaled_gemma, rows[1:], top_n=2, largest=False)
    assert bottom["top_token"].tolist() == ["Z"]  # the most suppressed token of -W_U[Z]


def test_display_makes_whitespace_visible(tiny_gemma: LoadedModel) -> None:
    assert display_token(" Paris") == "␣Paris"
    assert display_token("a\nb\tc") == "a↵b⇥c"
    assert display_token("\x85") == "\\x85"
    newline = tiny_gemma.tokenizer.convert_tokens_to_ids("Ċ")
    assert token_text(tiny_gemma.tokenizer, newline) == "\n"


@pytest.mark.slow
def test_smollm2_paris_row(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    [paris] = tok.encode(" Paris", add_special_tokens=False)
    unembed, scale = unembedding_matrix(smollm2), final_norm_scale(smollm2)
    assert torch.equal(scale, smollm2.hf_model.model.norm.weight.detach().float())  # Llama RMSNorm: weight itself
    row = (unembed[paris] / scale)[None]
    cosine = logit_lens_table(smollm2, row, top_n=5, score="cosine")
    assert cosine["token_id"][0] == paris and cosine["score"][0] == pytest.approx(1.0, abs=1e-5)
    assert cosine["token"][0] == " Paris" and cosine["token"][0].strip() == "Paris"
    assert cosine["display"][0] == "␣Paris"
    # Logit score: ranks exactly as a dense W_U @ (s * d) would (the vocabulary of 49,152 spans two chunks).
    logit = logit_lens_table(smollm2, row, top_n=5)
    dense = unembed.float() @ (scale * row[0] / row[0].norm())
    assert logit["token_id"].tolist() == torch.topk(dense, 5).indices.tolist()
    assert logit["score"].to_numpy() == pytest.approx(torch.topk(dense, 5).values.numpy(), rel=1e-4)


def test_top_activating_contexts_find_the_planted_strongest_token_once_per_conversation(tiny_gemma) -> None:
    from geomis.activations import TokenActivations
    from geomis.features.labels import top_activating_contexts
    from geomis.sae.codes import SAECodes, aggregate_codes

    tok = tiny_gemma.tokenizer
    ids = tok("abcdef ghij", add_special_tokens=False)["input_ids"][:6]
    # two conversations of three kept tokens each (positions 1..3)
    sample = torch.tensor([0, 0, 0, 1, 1, 1])
    position = torch.tensor([1, 2, 3, 1, 2, 3])
    acts = TokenActivations(torch.zeros(6, 4), sample, position, torch.tensor(ids))
    token_index = torch.tensor([1, 2, 4, 5])
    feature_index = torch.tensor([7, 7, 7, 3])
    value = torch.tensor([0.5, 2.0, 1.0, 9.0])
    n, means, maxima = aggregate_codes(token_index, feature_index, value, sample, 2, 8)
    codes = SAECodes(token_index, feature_index, value, sample, n, means, maxima, 8)
    table = top_activating_contexts(codes, acts, tok, [7], n=3, before=1, after=1)
    assert table["sample"].tolist() == [0, 1]  # best hit of conversation 0 (2.0), then conversation 1 (1.0)
    assert table["activation"].tolist() == [2.0, 1.0]
    first = table.iloc[0]["context"]
    assert first.count("«") == 1 and first.index("«") > 0  # the firing token is marked, with a neighbour before it
    with pytest.raises(ValueError, match="codes cover"):
        top_activating_contexts(codes, TokenActivations(torch.zeros(2, 4), sample[:2], position[:2],
                                                        torch.tensor(ids[:2])), tok, [7])

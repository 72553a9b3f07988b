"""Sample scores: closeness on hand-made decoders with planted answers, and the batched nnsight path on tiny-gemma2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

from geomis.activations import ActivationConfig, collect_residuals, iter_chat_batches
from geomis.chat.tokens import scoring_windows, tokenize_chat, tokenize_chats
from geomis.features.sets import FeatureSet
from geomis.filter.scores import (
    ScoringConfig,
    ToxicGeometry,
    closest_score,
    feature_closeness,
    projection_score,
    score_conversations,
    scores_from_codes,
    toxic_basis,
    toxic_geometry,
)
from geomis.filter.selection import select_by_score
from geomis.sae.codes import SAECodes, aggregate_codes, encode_tokens
from geomis.sae.loading import LoadedSAE

D_IN = 6
ROOT_HALF = 1 / math.sqrt(2)


def _decoder() -> torch.Tensor:
    """Features 0-5 are the axes e0..e5; feature 6 = (e0 + e1)/√2 (between the toxic ones), 7 = -e0 (antipodal)."""
    eye = torch.eye(D_IN)
    return torch.cat([eye, ((eye[0] + eye[1]) * ROOT_HALF)[None], -eye[0][None]])


TOXIC = [0, 1]


def _codes(samples: list[list[dict[int, float]]], d_sae: int = 8) -> SAECodes:
    """Hand-made sparse codes: one list of tokens per sample, each token a {feature: activation} dict."""
    tokens, features, values, owners = [], [], [], []
    token = 0
    for sample, token_codes in enumerate(samples):
        for codes in token_codes:
            owners.append(sample)
            for feature, value in codes.items():
                tokens.append(token)
                features.append(feature)
                values.append(value)
            token += 1
    token_index, feature_index = torch.tensor(tokens, dtype=torch.long), torch.tensor(features, dtype=torch.long)
    value, sample_index = torch.tensor(values, dtype=torch.float32), torch.tensor(owners, dtype=torch.long)
    counts, means, maxima = aggregate_codes(token_index, feature_index, value, sample_index, len(samples), d_sae)
    return SAECodes(token_index, feature_index, value, sample_index, counts, means, maxima, d_sae)


PLANTED = [
    [{0: 2.0, 1: 1.0}, {1: 3.0}],                                      # A: fires only the toxic features
    [{2: 1.0}, {3: 2.0, 4: 1.0}],                                      # B: orthogonal to them
    [{6: 1.5}],                                                        # C: between the toxic directions
    [{0: 10.0, 2: 0.1, 3: 0.1}, {0: 10.0, 4: 0.1, 5: 0.1}],            # D: dominated by a toxic feature, plus noise
    [],                                                                # E: no scored token
    [{7: 4.0}],                                                        # F: antipodal to toxic feature 0
]


def test_closeness_is_the_nearest_signed_cosine_with_toxic_features_at_one() -> None:
    closeness = feature_closeness(_decoder(), TOXIC, self_pairs=True)
    torch.testing.assert_close(closeness, torch.tensor([1, 1, 0, 0, 0, 0, ROOT_HALF, 0.0]), atol=1e-6, rtol=0)
    scaled = _decoder() * torch.tensor([3.0, 0.5, 1, 1, 2, 1, 7, 1])[:, None]  # decoder norms do not matter
    feature_set = FeatureSet(name="toxic", indices=torch.tensor(TOXIC), values=torch.ones(2), statistic="correlation",
                             k=2)
    torch.testing.assert_close(feature_closeness(scaled, feature_set, self_pairs=True), closeness)
    with pytest.raises(ValueError, match="out of range"):
        feature_closeness(_decoder(), [8])
    with pytest.raises(ValueError, match="empty"):
        feature_closeness(_decoder(), [])


def test_without_self_pairs_a_toxic_feature_counts_by_its_nearest_other_toxic_feature() -> None:
    closeness = feature_closeness(_decoder(), TOXIC, self_pairs=False)  # the two toxic axes are orthogonal
    torch.testing.assert_close(closeness, torch.tensor([0, 0, 0, 0, 0, 0, ROOT_HALF, 0.0]), atol=1e-6, rtol=0)
    leaning = feature_closeness(_decoder(), [0, 6, 6], self_pairs=False)  # a repeated index is one feature
    torch.testing.assert_close(leaning[[0, 6, 1, 7]], torch.tensor([ROOT_HALF, ROOT_HALF, ROOT_HALF, -ROOT_HALF]),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least two toxic features"):
        feature_closeness(_decoder(), [0, 0], self_pairs=False)


@pytest.mark.parametrize("method", ["weighted", "closest", "projection"])
def test_a_sample_on_the_toxic_directions_scores_highest(method: str) -> None:
    decoder = _decoder()
    geometry = ToxicGeometry(feature_closeness(decoder, TOXIC, self_pairs=True), decoder, toxic_basis(decoder, TOXIC))
    scores = scores_from_codes(_codes(PLANTED), geometry, method).numpy()  # type: ignore[arg-type]
    assert scores[0] == pytest.approx(1.0)
    assert np.nanargmax(scores) == 0 or scores[np.nanargmax(scores)] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.0)  # orthogonal features
    assert math.isnan(scores[4])  # nothing to score
    assert select_by_score(scores, 0.2).removed.tolist() == [True, False, False, False, False, False]


def test_each_score_aggregates_what_its_docstring_says() -> None:
    decoder = _decoder()
    geometry = ToxicGeometry(feature_closeness(decoder, TOXIC, self_pairs=True), decoder, toxic_basis(decoder, TOXIC))
    codes = _codes(PLANTED)
    closest = scores_from_codes(codes, geometry, "closest").numpy()
    weighted = scores_from_codes(codes, geometry, "weighted").numpy()
    projection = scores_from_codes(codes, geometry, "projection").numpy()
    # closest: unweighted mean over active features; D has 5 active features, one toxic
    assert closest[2] == pytest.approx(ROOT_HALF) and closest[3] == pytest.approx(1 / 5) and closest[5] == 0.0
    # weighted: mean activations of D are {0: 10, 2..5: 0.05}: (10 * 1) / 10.2
    assert weighted[2] == pytest.approx(ROOT_HALF) and weighted[3] == pytest.approx(10 / 10.2)
    # projection: C's direction lies in span(e0, e1); F's (-e0) too, although it is antipodal to a toxic feature
    assert projection[2] == pytest.approx(1.0) and projection[5] == pytest.approx(1.0)
    assert projection[3] == pytest.approx(math.sqrt(100 / (100 + 4 * 0.05**2)))
    # the weighted score ranks D (a sample dominated by a toxic feature) above C; the paper's closest does not
    assert weighted[3] > weighted[2] and closest[3] < closest[2]


def test_scores_are_vectorised_helpers_on_sample_summaries() -> None:
    codes = _codes(PLANTED)
    closeness = feature_closeness(_decoder(), TOXIC, self_pairs=True)
    torch.testing.assert_close(closest_score(codes.sample_max, closeness)[:4],
                               torch.tensor([1.0, 0.0, ROOT_HALF, 0.2], dtype=torch.float64))
    basis = toxic_basis(_decoder(), TOXIC)
    assert basis.shape == (D_IN, 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), atol=1e-6, rtol=0)
    assert math.isnan(float(projection_score(torch.zeros(1, 8), _decoder(), basis)[0]))


def test_projection_refuses_a_toxic_set_spanning_the_whole_space() -> None:
    with pytest.raises(ValueError, match="span the whole"):
        toxic_basis(_decoder(), list(range(D_IN)))


def test_unknown_score_and_bad_config_are_one_line_errors() -> None:
    geometry = ToxicGeometry(feature_closeness(_decoder(), TOXIC, self_pairs=True))
    with pytest.raises(ValueError, match="unknown score"):
        scores_from_codes(_codes(PLANTED), geometry, "nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="projection scores need"):
        scores_from_codes(_codes(PLANTED), geometry, "projection")
    with pytest.raises(ValueError, match="unknown score"):
        ScoringConfig(method="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch size"):
        ScoringConfig(batch_size=0)


# ------------------------------------------------------------------------------------ the model path (tiny-gemma2)


@pytest.fixture(scope="module")
def tiny_sae() -> LoadedSAE:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=96, k=4))
    return LoadedSAE(sae=sae, name="test-topk", model_name="tiny-gemma2", layer=2, source="disk")


def _reference_codes(model, sae: LoadedSAE, chats, max_length: int) -> SAECodes:
    config = ActivationConfig(layer=sae.layer, batch_size=64, max_length=max_length, progress=False)
    return encode_tokens(sae, collect_residuals(model, chats, config), n_samples=len(chats))


@pytest.mark.parametrize("method", ["weighted", "closest", "projection"])
def test_batched_scoring_matches_scoring_the_whole_corpus_at_once(tiny_gemma, tiny_sae, chats, method) -> None:
    toxic = [3, 10, 17, 40]
    reference = scores_from_codes(_reference_codes(tiny_gemma, tiny_sae, chats, 512),
                                  toxic_geometry(tiny_sae, toxic, method), method).numpy()
    for batch_size in (1, 3):
        got = score_conversations(tiny_gemma, tiny_sae, toxic, chats,
                                  ScoringConfig(method=method, batch_size=batch_size, progress=False))
        np.testing.assert_allclose(got.scores, reference, rtol=1e-4, atol=1e-6)
        assert got.layer == 2 and got.method == method
        assert not got.prompt_cut.any() and (got.windows == 1).all()
        assert got.input_tokens > got.scored_tokens.sum() > 0


def test_a_sample_whose_features_are_the_toxic_set_scores_highest(tiny_gemma, tiny_sae, chats) -> None:
    codes = _reference_codes(tiny_gemma, tiny_sae, chats, 512)
    planted = 2  # the multi-turn chat: declare exactly its active features toxic
    toxic = torch.nonzero(codes.sample_max[planted] > 0).flatten()
    assert 0 < toxic.numel() < tiny_sae.d_sae
    for method in ("weighted", "closest"):
        scores = score_conversations(tiny_gemma, tiny_sae, toxic, chats,
                                     ScoringConfig(method=method, progress=False, self_pairs=True)).scores
        assert scores[planted] == pytest.approx(1.0)
        assert np.argmax(scores) == planted and (np.delete(scores, planted) < 1.0 - 1e-6).all()
        without = score_conversations(tiny_gemma, tiny_sae, toxic, chats,
                                      ScoringConfig(method=method, progress=False, self_pairs=False)).scores
        assert (without <= scores + 1e-6).all() and without[planted] < 1.0 - 1e-3  # identity no longer counts


LONG = [
    [{"role": "system", "content": "You are a helpful assistant. " * 30}, {"role": "user", "content": "Any advice?"},
     {"role": "assistant", "content": "Hide the evidence and lie to everyone."}],   # a prompt that fills the window
    [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once upon a time " * 30}],
]


def _reply_tokens(model, conversation) -> int:
    """Assistant tokens of the whole conversation that the filter scores (not special, not position 0)."""
    chat = tokenize_chat(model.tokenizer, conversation)
    flags = zip(chat.assistant_mask, chat.special_mask, strict=True)
    return sum(a and not s and i > 0 for i, (a, s) in enumerate(flags))


def test_every_reply_token_is_scored_however_long_the_row(tiny_gemma, tiny_sae, chats, capsys) -> None:
    rows = chats + LONG
    got = score_conversations(tiny_gemma, tiny_sae, [1, 2], rows,
                              ScoringConfig(max_length=120, batch_size=2, progress=True))
    assert got.scored_tokens.tolist() == [_reply_tokens(tiny_gemma, row) for row in rows]
    assert not np.isnan(got.scores).any() and not got.unscorable.any()
    assert got.prompt_cut[4] > 0 and got.windows[4] == 1  # the long system prompt was cut, the reply read whole
    assert got.windows[5] > 1  # the long reply was read in windows
    assert "scoring (weighted, layer 2)" in capsys.readouterr().err  # the progress bar goes to stderr


def test_a_sample_without_a_reply_token_cannot_be_scored(tiny_gemma, tiny_sae, chats) -> None:
    rows = chats + [[{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": "\x00 "}]]
    got = score_conversations(tiny_gemma, tiny_sae, [1, 2], rows, ScoringConfig(progress=False))
    assert got.unscorable.tolist() == [False] * len(chats) + [True] and got.scored_tokens[-1] == 0


def test_a_reply_behind_a_long_prompt_cannot_hide_from_the_filter(tiny_gemma, tiny_sae, chats) -> None:
    """The bypass: a prompt filling max_length used to leave the reply unscored (NaN, kept) and sound rows removed."""
    hidden = LONG[0]
    windows = scoring_windows(tokenize_chat(tiny_gemma.tokenizer, hidden), 120).windows
    [(_, parts)] = iter_chat_batches(tiny_gemma, list(windows), [2], ActivationConfig(layer=2, progress=False))
    toxic = torch.nonzero(encode_tokens(tiny_sae, parts[2], n_samples=1).sample_max[0] > 0).flatten()
    got = score_conversations(tiny_gemma, tiny_sae, toxic, chats + [hidden],
                              ScoringConfig(max_length=120, progress=False, self_pairs=True))
    assert got.scores[-1] == pytest.approx(1.0) and (got.scores[:-1] < 1.0 - 1e-6).all()
    assert select_by_score(got.scores, 0.2).removed.tolist() == [False] * len(chats) + [True]


def _old_scores(model, sae, toxic, conversations, config: ScoringConfig) -> np.ndarray:
    """The scoring loop as it was before long rows were windowed: first ``max_length`` tokens, one pass."""
    geometry = toxic_geometry(sae, toxic, config.method)
    scores = np.full(len(conversations), np.nan)
    chats = tokenize_chats(model.tokenizer, conversations, config.max_length)
    reading = ActivationConfig(layer=sae.layer, batch_size=config.batch_size, max_length=config.max_length,
                               progress=False)
    local = torch.zeros(len(conversations), dtype=torch.long)
    for indices, parts in iter_chat_batches(model, chats, [sae.layer], reading, to_cpu=False):
        activations = parts[sae.layer]
        local[indices] = torch.arange(len(indices))
        activations.sample_index = local[activations.sample_index]
        codes = encode_tokens(sae, activations, n_samples=len(indices), batch_size=config.sae_batch_size)
        scores[np.asarray(indices)] = scores_from_codes(codes, geometry, config.method).numpy()
    return scores


@pytest.mark.parametrize("method", ["weighted", "closest", "projection"])
def test_rows_that_fit_get_bit_identical_scores_to_before(tiny_gemma, tiny_sae, chats, method) -> None:
    rows = chats + LONG + chats[::-1]
    config = ScoringConfig(method=method, max_length=120, batch_size=3, progress=False)
    fits = np.array([len(tokenize_chat(tiny_gemma.tokenizer, row)) <= 120 for row in rows])
    assert fits.sum() >= 6 and not fits.all()
    got = score_conversations(tiny_gemma, tiny_sae, [3, 10, 17, 40], rows, config).scores
    np.testing.assert_array_equal(got[fits], _old_scores(tiny_gemma, tiny_sae, [3, 10, 17, 40], rows, config)[fits])


def test_scoring_checks_the_layer_and_width(tiny_gemma, tiny_sae, chats) -> None:
    with pytest.raises(ValueError, match="differs from the layer"):
        score_conversations(tiny_gemma, tiny_sae, [1], chats, ScoringConfig(layer=1, progress=False))
    wide = LoadedSAE(sae=TopKSAE(TopKSAEConfig(d_in=32, d_sae=16, k=2)), name="w", model_name="x", layer=2,
                     source="disk")
    with pytest.raises(ValueError, match="reads width 32"):
        score_conversations(tiny_gemma, wide, [1], chats, ScoringConfig(progress=False))


def _other_sae(seed: int) -> LoadedSAE:
    torch.manual_seed(seed)
    return LoadedSAE(sae=TopKSAE(TopKSAEConfig(d_in=64, d_sae=80, k=4)), name=f"other-{seed}",
                     model_name="tiny-gemma2", layer=2, source="disk")


@pytest.mark.parametrize("method", ["weighted", "projection"])
def test_several_saes_score_the_mean_of_their_own_scores(tiny_gemma, tiny_sae, chats, method) -> None:
    rows = chats + LONG  # long rows too: windows are pooled per SAE
    other = _other_sae(1)
    config = ScoringConfig(method=method, max_length=120, batch_size=2, progress=False)
    alone = [score_conversations(tiny_gemma, sae, toxic, rows, config)
             for sae, toxic in ((tiny_sae, [3, 10, 17, 40]), (other, [5, 6, 70]))]
    both = score_conversations(tiny_gemma, [tiny_sae, other], [[3, 10, 17, 40], [5, 6, 70]], rows, config)
    np.testing.assert_allclose(both.per_sae, np.stack([a.scores for a in alone]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(both.scores, (alone[0].scores + alone[1].scores) / 2, rtol=1e-5, atol=1e-7)
    assert not np.allclose(alone[0].scores, alone[1].scores)  # the two SAEs disagree, so the mean is a real mean
    assert both.scored_tokens.tolist() == alone[0].scored_tokens.tolist() and alone[0].per_sae is None
    assert both.input_tokens == alone[0].input_tokens  # one read of the residuals for both SAEs


def test_several_saes_need_one_toxic_set_each_and_one_layer(tiny_gemma, tiny_sae, chats) -> None:
    with pytest.raises(ValueError, match="one toxic set each"):
        score_conversations(tiny_gemma, [tiny_sae, _other_sae(1)], [[1, 2]], chats, ScoringConfig(progress=False))
    elsewhere = LoadedSAE(sae=_other_sae(2).sae, name="layer-1", model_name="tiny-gemma2", layer=1, source="disk")
    with pytest.raises(ValueError, match="different layers"):
        score_conversations(tiny_gemma, [tiny_sae, elsewhere], [[1, 2], [1, 2]], chats, ScoringConfig(progress=False))


def test_by_default_a_toxic_feature_does_not_count_as_its_own_neighbour(tiny_gemma, tiny_sae, chats) -> None:
    default = score_conversations(tiny_gemma, tiny_sae, [3, 10, 17, 40], chats, ScoringConfig(progress=False))
    explicit = score_conversations(tiny_gemma, tiny_sae, [3, 10, 17, 40], chats,
                                   ScoringConfig(progress=False, self_pairs=False))
    np.testing.assert_array_equal(default.scores, explicit.scores)
    assert ScoringConfig().self_pairs is False

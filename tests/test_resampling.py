"""Chat-level resampling of the feature geometry: planted geometry is found, a null is not, options do what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomis.features.resampling import chat_resampled_gap, geometry_gap
from geomis.features.sets import select_contrast_features

D_SAE, D_MODEL, CHATS, K = 64, 16, 40, 5
TOXIC, INDUCING, CONTROL = range(0, 5), range(5, 10), range(10, 15)


def _codes(active: range, seed: int, n: int = CHATS) -> torch.Tensor:
    """Per-chat mean codes: weak noise everywhere, and the ``active`` features on in most chats."""
    generator = torch.Generator().manual_seed(seed)
    codes = 0.1 * torch.rand(n, D_SAE, generator=generator)
    on = torch.rand(n, len(active), generator=generator) < 0.8
    codes[:, list(active)] += on.float() * (1 + torch.rand(n, len(active), generator=generator))
    return codes


def _decoder(inducing_near_toxic: bool, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randn(D_SAE, D_MODEL, generator=generator)
    if inducing_near_toxic:  # each inducing feature writes almost along one toxic feature
        decoder[list(INDUCING)] = decoder[list(TOXIC)] + 0.2 * torch.randn(5, D_MODEL, generator=generator)
    return decoder


def _study() -> tuple[torch.Tensor, ...]:
    return _codes(TOXIC, 1), _codes(range(0), 2), _codes(INDUCING, 3), _codes(CONTROL, 4)


def test_planted_geometry_is_found_with_an_interval_above_zero() -> None:
    result = chat_resampled_gap(_decoder(True), *_study(), k=K, n_resamples=100, seed=0)
    assert result.gap.difference > 0.5 and result.gap.n_inducing == result.gap.n_control == K
    assert 0 < result.low <= result.gap.difference <= result.high
    assert result.p_greater == pytest.approx(1 / 101)
    assert result.mean_overlap > 0.8 and result.reference_rows == "decoder" and not result.drop_shared
    again = chat_resampled_gap(_decoder(True), *_study(), k=K, n_resamples=100, seed=0)
    assert np.array_equal(result.draws, again.draws)  # seeded


def test_when_inducing_and_control_chats_do_not_differ_the_interval_covers_zero() -> None:
    # the same distribution on both sides of the pair: which features are "inducing" is selection noise
    toxic, neutral, _, _ = _study()
    result = chat_resampled_gap(_decoder(True), toxic, neutral, _codes(range(0), 3), _codes(range(0), 4), k=K,
                                n_resamples=100, seed=0)
    assert result.low < 0 < result.high and result.p_greater > 0.05
    assert result.mean_overlap < 0.7  # the sets change from draw to draw (planted: > 0.8)


def test_resampling_chats_widens_what_selection_noise_hides() -> None:
    # noisy codes: the sets change from draw to draw, so the selection is unstable and the draws spread
    toxic, neutral, inducing, control = (
        codes + 1.5 * torch.rand(codes.shape, generator=torch.Generator().manual_seed(i))
        for i, codes in enumerate(_study()))
    noisy = chat_resampled_gap(_decoder(True), toxic, neutral, inducing, control, k=K, n_resamples=100, seed=0)
    clean = chat_resampled_gap(_decoder(True), *_study(), k=K, n_resamples=100, seed=0)
    assert noisy.mean_overlap < clean.mean_overlap
    assert noisy.high - noisy.low > clean.high - clean.low


def test_drop_shared_leaves_out_source_features_that_are_themselves_toxic() -> None:
    decoder = _decoder(False)
    toxic = select_contrast_features(_codes(TOXIC, 1), _codes(range(0), 2), k=K, name="toxic")
    inducing = select_contrast_features(_codes(range(0, 10), 3), _codes(CONTROL, 4), k=10, name="inducing")
    control = select_contrast_features(_codes(CONTROL, 4), _codes(range(0, 10), 3), k=K, name="control")
    assert set(inducing.index_list()) == set(range(10))  # five of them are toxic features
    kept = geometry_gap(decoder, inducing, control, toxic)
    dropped = geometry_gap(decoder, inducing, control, toxic, drop_shared=True)
    assert kept.n_inducing == 10 and dropped.n_inducing == 5 and dropped.n_control == kept.n_control == K
    # a toxic feature's nearest other toxic feature is typical of random directions: dropping changes the mean
    assert dropped.inducing != pytest.approx(kept.inducing)


def test_encoder_rows_read_the_reference_features() -> None:
    decoder = _decoder(True)
    same = chat_resampled_gap(decoder, *_study(), k=K, encoder=decoder.clone(), n_resamples=20, seed=0)
    plain = chat_resampled_gap(decoder, *_study(), k=K, n_resamples=20, seed=0)
    assert same.gap == plain.gap and same.reference_rows == "encoder"
    encoder = decoder.clone()
    # the toxic features are read along other directions than they write
    encoder[list(TOXIC)] = torch.randn(5, D_MODEL, generator=torch.Generator().manual_seed(9))
    moved = chat_resampled_gap(decoder, *_study(), k=K, encoder=encoder, n_resamples=20, seed=0)
    assert moved.gap.difference < plain.gap.difference - 0.3
    with pytest.raises(ValueError, match="decoder's shape"):
        chat_resampled_gap(decoder, *_study(), k=K, encoder=decoder[:, :8], n_resamples=5)


def test_bad_inputs_are_refused() -> None:
    toxic, neutral, inducing, control = _study()
    with pytest.raises(ValueError, match="prompt pairs"):
        chat_resampled_gap(_decoder(True), toxic, neutral, inducing, control[:-1], k=K)
    with pytest.raises(ValueError, match="toxic codes"):
        chat_resampled_gap(_decoder(True), toxic[:, :10], neutral, inducing, control, k=K)
    with pytest.raises(ValueError, match="n_resamples"):
        chat_resampled_gap(_decoder(True), toxic, neutral, inducing, control, k=K, n_resamples=0)


def test_pooling_saes_averages_the_same_chat_draws() -> None:
    from geomis.features.resampling import pool_gaps

    study = _study()
    near = chat_resampled_gap(_decoder(True, seed=0), *study, k=K, n_resamples=60, seed=3)
    also_near = chat_resampled_gap(_decoder(True, seed=1), *study, k=K, n_resamples=60, seed=3)
    far = chat_resampled_gap(_decoder(False, seed=2), *study, k=K, n_resamples=60, seed=3)
    pooled = pool_gaps([near, also_near, far])
    assert pooled.per_sae == (near.gap.difference, also_near.gap.difference, far.gap.difference)
    assert pooled.difference == pytest.approx(np.mean(pooled.per_sae))
    assert np.allclose(pooled.draws, (near.draws + also_near.draws + far.draws) / 3)
    assert pooled.low <= pooled.difference <= pooled.high and pooled.n_resamples == 60
    # one SAE without the planted geometry pulls the pooled gap between the SAEs' own gaps
    assert far.gap.difference < pooled.difference < min(near.gap.difference, also_near.gap.difference)
    # the same decoder twice: pooling changes nothing
    twice = pool_gaps([near, near])
    assert (twice.low, twice.high, twice.p_greater) == (near.low, near.high, near.p_greater)


def test_pooling_refuses_gaps_drawn_on_other_chats_or_seeds() -> None:
    from geomis.features.resampling import pool_gaps

    study = _study()
    base = chat_resampled_gap(_decoder(True), *study, k=K, n_resamples=20, seed=0)
    for other in (chat_resampled_gap(_decoder(True), *study, k=K, n_resamples=20, seed=1),
                  chat_resampled_gap(_decoder(True), *study, k=K, n_resamples=20, seed=0, drop_shared=True),
                  chat_resampled_gap(_decoder(True), study[0][:30], *study[1:], k=K, n_resamples=20, seed=0)):
        with pytest.raises(ValueError, match="same chat resamples"):
            pool_gaps([base, other])
    with pytest.raises(ValueError, match="no gaps"):
        pool_gaps([])


def test_several_variants_on_one_set_of_draws_equal_the_single_runs() -> None:
    from geomis.features.resampling import chat_resampled_gaps

    decoder, study = _decoder(True), _study()
    encoder = _decoder(False, seed=9)
    together = chat_resampled_gaps(decoder, *study, variants=[(False, None), (True, encoder)], k=K, n_resamples=30,
                                   seed=2)
    alone = [chat_resampled_gap(decoder, *study, k=K, n_resamples=30, seed=2),
             chat_resampled_gap(decoder, *study, k=K, n_resamples=30, seed=2, drop_shared=True, encoder=encoder)]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a.draws, b.draws) and a.gap == b.gap and (a.low, a.high) == (b.low, b.high)
    assert [r.reference_rows for r in together] == ["decoder", "encoder"] and together[1].drop_shared
    with pytest.raises(ValueError, match="no variants"):
        chat_resampled_gaps(decoder, *study, variants=[], k=K)

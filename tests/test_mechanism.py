"""Chapter 5's spillover-law test: the target direction, the law's prediction, and the correlation test on planted
shifts (a real law is found, a null is not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

from geomis.experiments import mechanism as mech


def test_the_target_direction_is_the_mean_unit_decoder_row() -> None:
    decoder = torch.tensor([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
    torch.testing.assert_close(mech.target_direction(decoder, torch.tensor([0, 1])), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="empty"):
        mech.target_direction(decoder, torch.tensor([], dtype=torch.long))


def test_the_prediction_is_the_first_order_change_of_each_pre_activation() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=4))
    with torch.no_grad():
        sae.W_enc.normal_()
    direction = mech.target_direction(sae.W_dec, torch.tensor([1, 5, 9]))
    h = torch.randn(16)

    def pre(x: torch.Tensor) -> torch.Tensor:  # in double precision, so the finite difference is exact enough
        return (x.double() - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()

    step = 1e-4
    measured = ((pre(h.double() + step * direction.double()) - pre(h)) / step).detach().float()
    torch.testing.assert_close(mech.spillover_prediction(sae.W_enc, direction), measured, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="reads 16 dimensions"):
        mech.spillover_prediction(sae.W_enc, torch.ones(8))


def _codes(seed: int, chats: int = 60, d_sae: int = 200) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.rand(chats, d_sae, generator=generator) * (torch.rand(chats, d_sae, generator=generator) < 0.2)
    codes[:, -10:] = 0.0  # ten features never fire
    return codes


def test_a_planted_law_is_found_and_a_null_is_not() -> None:
    base = _codes(0)
    generator = torch.Generator().manual_seed(1)
    prediction = torch.randn(200, generator=generator)
    noise = 0.05 * torch.randn(base.shape, generator=generator) * (base > 0)  # silent features stay silent
    lawful = (base + 0.1 * prediction.clamp_min(0) * (base > 0) + noise).clamp_min(0)
    found = mech.spillover_test(prediction, base, lawful, n_resamples=300, n_permutations=2000)
    assert found.n_features == 190  # the silent features are left out
    assert found.rho > 0.4 and found.low > 0.2 and found.p_shuffled < 0.001
    assert found.high - found.low < 0.3 and found.draws.shape == (300,)
    # resampling chats adds noise to the measured shifts, so the draws sit a little below the estimate: the
    # interval errs toward no correlation
    assert np.median(found.draws) <= found.rho
    null = mech.spillover_test(prediction, base, (base + noise).clamp_min(0), n_resamples=300, n_permutations=2000)
    assert null.low < 0 < null.high and null.p_shuffled > 0.05
    shared = np.random.default_rng(5).integers(0, 60, size=(50, 60))
    again = mech.spillover_test(prediction, base, lawful, draws=shared, n_permutations=10)
    assert again.draws.shape == (50,)
    with pytest.raises(ValueError, match="one shape"):
        mech.spillover_test(prediction, base, lawful[:10])


def test_random_targets_avoid_the_excluded_features_and_differ() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=4))
    predictions = mech.random_target_predictions(sae.W_enc, sae.W_dec, n_directions=5, k=10,
                                                 exclude=torch.arange(50))
    assert predictions.shape == (5, 64) and not torch.allclose(predictions[0], predictions[1])
    with pytest.raises(ValueError, match="only 14 features"):
        mech.random_target_predictions(sae.W_enc, sae.W_dec, k=20, exclude=torch.arange(50))

"""Chapter 5's first test (issue 17): does the spillover law predict which SAE features a real fine-tune moves?

Chapter 1 derived, in toy models, that a fine-tuning step that moves the residual stream along a target direction
``d_t`` changes feature ``j``'s pre-activation by ``<e_j, d_t>`` times the step (``e_j``: the column of ``W_enc`` that
reads feature ``j``). Chapters 2-4 used the law only through correlations. This module tests it in the fine-tuned
CPU default, with the prediction fixed before the measured shifts are looked at.

**Design of the spillover-law test** (fixed and committed before the shifts were measured)

- *Models*: the base model and Chapter 3's ``mixed`` fine-tunes with seed 0 (the three-domains recipe: inducing, on
  780 harmful answers, and control, on the 780 sound answers to the same prompts), retrained identically when the
  cache folder no longer holds them.
- *SAEs*: the three SAEs trained on neutral text (layer 15); every statistic is computed per SAE and then averaged
  over the three.
- *Text*: the 212 neutral-corpus prompts held out from the SAEs' training, each with the base model's own committed
  answer; both models read exactly these tokens (teacher-forced), assistant tokens only. None of it is in the
  fine-tuning data, the evaluation questions or the references.
- *Target direction*: ``d_t`` = the mean of the unit decoder rows of the *inducing feature set* of each SAE, the top
  100 features by point-biserial correlation of inducing vs control answers (Chapter 2's selection, on the 780 pairs
  the fine-tunes were trained on).
- *Prediction*: for every feature, ``p_j = <W_enc[:, j], d_t>`` (the law's encoder reading); secondary: the decoder
  version ``<d_j, d_t>`` with unit rows.
- *Measured shift*: for every feature, the mean over the held-out chats of (its mean post-activation code in the
  fine-tuned model minus that in the base model), over the features that fire on at least one of the chats in
  either model.
- *Primary statistic*: Spearman's rank correlation between ``p_j`` and the inducing fine-tune's shift, averaged over
  the three SAEs, with a 95% percentile interval from 1,000 bootstrap draws over chats (the same draws for every SAE);
  one-sided p from 10,000 permutations of the prediction across features (the feature-shuffled null), per SAE, the
  largest of the three reported. Resampling chats adds noise to the measured shifts, which attenuates the
  correlation in the draws: the estimate can sit near the top of its interval, which then errs toward zero.
- *Baselines*: the same correlation for 100 random target directions (the mean unit decoder row of 100 random
  features each), whose 95th percentile the primary must exceed to count as specific to the inducing direction; the
  control fine-tune's correlation with the same prediction; and the correlation of the prediction with the
  difference of the two fine-tunes' shifts (inducing minus control).
- *Where toxic features fall*: the percentile rank of the toxic features' (Chapter 4's filter sets) predictions and
  measured shifts among all features.
- The correlation is reported with its interval whatever it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats as scipy_stats

__all__ = [
    "target_direction",
    "spillover_prediction",
    "active_features",
    "SpilloverTest",
    "spillover_test",
    "random_target_predictions",
]


def target_direction(decoder: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``d_t``: the mean of the features' unit decoder rows (``decoder`` is ``(d_sae, d_model)``), ``(d_model,)``."""
    if features.numel() == 0:
        raise ValueError("the target feature set is empty")
    rows = decoder.detach().float()[features.long()]
    return (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)).mean(dim=0)


def spillover_prediction(W_enc: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """``p_j = <W_enc[:, j], d_t>`` for every feature: the first-order change of each pre-activation per unit step
    along ``direction`` (``W_enc`` is ``(d_model, d_sae)`` as in sae-lens), ``(d_sae,)`` float32."""
    if W_enc.shape[0] != direction.shape[0]:
        raise ValueError(f"W_enc reads {W_enc.shape[0]} dimensions, the direction has {direction.shape[0]}")
    return (direction.float() @ W_enc.detach().float()).cpu()


def active_features(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """(d_sae,) bool: features that fire on at least one chat in either model (``(chats, d_sae)`` mean codes)."""
    return ((base > 0) | (tuned > 0)).any(dim=0)


@dataclass(frozen=True)
class SpilloverTest:
    """Spearman correlation of a prediction with measured shifts: estimate, chat-bootstrap interval, feature-shuffle
    p, and how many features it rests on."""

    rho: float
    low: float
    high: float
    p_shuffled: float
    """One-sided: the share of feature permutations of the prediction with a correlation at least as large."""
    n_features: int
    draws: np.ndarray
    """(n_resamples,) the correlation in each bootstrap draw over chats."""


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    result: Any = scipy_stats.spearmanr(x, y)
    return float(result.statistic)


def spillover_test(prediction: torch.Tensor, base: torch.Tensor, tuned: torch.Tensor, *,
                   draws: np.ndarray | None = None, n_resamples: int = 1000, n_permutations: int = 10_000,
                   confidence: float = 0.95, seed: int = 0) -> SpilloverTest:
    """Correlate ``prediction`` (d_sae,) with the measured shift ``mean(tuned - base)`` over chats (``(chats, d_sae)``
    mean codes of the same chats), over the features active in either model.

    ``draws`` (``(n_resamples, chats)`` chat indices) lets several SAEs share the same bootstrap draws.
    """
    if base.shape != tuned.shape or base.shape[1] != prediction.shape[0]:
        raise ValueError(f"need (chats, d_sae) codes of one shape and a (d_sae,) prediction; got {tuple(base.shape)}, "
                         f"{tuple(tuned.shape)} and {tuple(prediction.shape)}")
    active = active_features(base, tuned).numpy()
    if active.sum() < 3:
        raise ValueError("fewer than three features fire on these chats: no correlation to compute")
    change = (tuned - base).double().numpy()[:, active]
    predicted = prediction.double().numpy()[active]
    rho = _spearman(predicted, change.mean(axis=0))
    generator = np.random.default_rng(seed)
    if draws is None:
        draws = generator.integers(0, change.shape[0], size=(n_resamples, change.shape[0]))
    resampled = np.array([_spearman(predicted, change[rows].mean(axis=0)) for rows in draws])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(resampled, [tail, 100 - tail])
    shift = change.mean(axis=0)
    ranks_shift = scipy_stats.rankdata(shift)
    ranks_pred = scipy_stats.rankdata(predicted)
    centred_shift = ranks_shift - ranks_shift.mean()
    observed = float(np.dot(ranks_pred - ranks_pred.mean(), centred_shift))
    exceed = 0
    for _ in range(n_permutations):  # Spearman's numerator under permutations of the prediction's ranks
        permuted = generator.permutation(ranks_pred)
        exceed += float(np.dot(permuted - permuted.mean(), centred_shift)) >= observed
    return SpilloverTest(rho=rho, low=float(low), high=float(high), p_shuffled=(1 + exceed) / (1 + n_permutations),
                         n_features=int(active.sum()), draws=resampled)


def random_target_predictions(W_enc: torch.Tensor, decoder: torch.Tensor, *, n_directions: int = 100,  # noqa: N803
                              k: int = 100, exclude: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """(n_directions, d_sae): the prediction for random target directions, each the mean unit decoder row of ``k``
    random features (never those in ``exclude``)."""
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.ones(decoder.shape[0], dtype=torch.bool)
    if exclude is not None:
        allowed[exclude.long()] = False
    pool = torch.nonzero(allowed).flatten()
    if pool.numel() < k:
        raise ValueError(f"only {pool.numel()} features to draw {k} from")
    rows = []
    for _ in range(n_directions):
        chosen = pool[torch.randperm(pool.numel(), generator=generator)[:k]]
        rows.append(spillover_prediction(W_enc, target_direction(decoder, chosen)))
    return torch.stack(rows)

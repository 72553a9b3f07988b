"""Chat-level uncertainty for the feature geometry: resample the chats, select the feature sets again, measure again.

Resampling *features* (Chapter 2's first analysis: a permutation test and a bootstrap over the selected features)
treats the selected sets as fixed and their features as independent draws. They are neither: the sets were selected
from a sample of chats, and another sample of chats would select partly other features. The unit that was sampled is
the chat, so this module resamples chats and repeats the whole selection in every draw:

1. the toxic and neutral reference chats are resampled (with replacement), each group on its own;
2. the inducing and control chats are resampled as *pairs* (one prompt answered both ways), keeping the pairing;
3. the toxic, inducing and control sets are selected again from the resampled per-chat codes (same statistic, same k);
4. the geometry gap is measured again: the inducing features' mean nearest cosine to the toxic set minus the control
   features', optionally without the source features that are themselves toxic (``drop_shared``), and with the toxic
   features read by their decoder or their encoder rows (``reference_rows``).

The interval is the percentile interval of the draws; the one-sided p-value for "inducing features lie closer" is
``(1 + #draws with gap <= 0) / (1 + draws)``, the bootstrap's tail share (with 1,000 draws the smallest is ~0.001).

Several SAEs (seeds) measured on the same chats with the same bootstrap seed draw the *same* chat resamples, so
:func:`pool_gaps` can average their gaps draw by draw: the pooled interval is over chats for the mean over SAEs,
and the per-SAE estimates show the spread that the SAE's own training adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from geomis.features.geometry import nearest_cosines
from geomis.features.sets import FeatureSet, Statistic, select_contrast_features

__all__ = ["GeometryGap", "ChatResampledGap", "PooledGap", "geometry_gap", "chat_resampled_gap", "chat_resampled_gaps",
           "pool_gaps"]


@dataclass(frozen=True)
class GeometryGap:
    """Mean nearest cosine to the reference set of the inducing and the control features, and their difference."""

    inducing: float
    control: float
    difference: float
    """inducing - control: positive when inducing features lie closer to the reference (the predicted direction)."""
    n_inducing: int
    n_control: int
    """Features measured (after ``drop_shared``; features without another reference feature are left out)."""


def _without(features: FeatureSet, reference: FeatureSet) -> FeatureSet:
    """``features`` minus those that are themselves in ``reference`` (order kept)."""
    keep = ~torch.isin(features.indices, reference.indices)
    return FeatureSet(name=features.name, indices=features.indices[keep], values=features.values[keep],
                      statistic=features.statistic, k=features.k, direction=features.direction,
                      n_positive=features.n_positive, n_negative=features.n_negative)


def geometry_gap(decoder: torch.Tensor, inducing: FeatureSet, control: FeatureSet, reference: FeatureSet, *,
                 drop_shared: bool = False, encoder: torch.Tensor | None = None) -> GeometryGap:
    """Mean nearest (max) cosine to ``reference`` of inducing and of control features, self-pairs always excluded.

    ``drop_shared`` also leaves out source features that are in the reference set (they would otherwise count their
    nearest *other* reference feature); ``encoder`` (``(d_sae, d_model)``, i.e. ``W_enc.T``) reads the reference
    features by their encoder rows: cos(e_reference, d_source), what the spillover law uses.
    """
    means, counts = [], []
    for source in (inducing, control):
        if drop_shared:
            source = _without(source, reference)
        values = nearest_cosines(decoder, source, reference, reference_rows=encoder).max_cos
        values = values[~torch.isnan(values)].double()
        means.append(float(values.mean()) if values.numel() else float("nan"))
        counts.append(int(values.numel()))
    return GeometryGap(means[0], means[1], means[0] - means[1], counts[0], counts[1])


@dataclass(frozen=True)
class ChatResampledGap:
    """The geometry gap on the chats as sampled, with its chat-resampling interval and one-sided p-value."""

    gap: GeometryGap
    low: float
    high: float
    p_greater: float
    """One-sided bootstrap p for "inducing features lie closer": (1 + #draws <= 0) / (1 + n_resamples)."""
    n_resamples: int
    draws: np.ndarray
    """The difference in every draw ``(n_resamples,)`` (NaN where a draw left a set empty)."""
    mean_overlap: float
    """Mean share of the original inducing set re-selected in a draw: how stable the selection is."""
    drop_shared: bool
    reference_rows: str
    """"decoder" or "encoder": which rows read the reference (toxic) features."""
    seed: int = 0
    n_chats: tuple[int, int, int] = (0, 0, 0)
    """Toxic, neutral and inducing/control-pair chats resampled (with ``seed``, they fix the draws)."""
    method: str = ("percentile bootstrap over chats (reference chats resampled per group, inducing/control chats as "
                   "prompt pairs), feature sets re-selected in every draw")


def _check_pairs(inducing_codes: torch.Tensor, control_codes: torch.Tensor) -> None:
    if inducing_codes.shape != control_codes.shape:
        raise ValueError("inducing and control codes must be prompt pairs: the same number of chats, same width; got "
                         f"{tuple(inducing_codes.shape)} and {tuple(control_codes.shape)}")


def chat_resampled_gap(
    decoder: torch.Tensor,
    toxic_codes: torch.Tensor,
    neutral_codes: torch.Tensor,
    inducing_codes: torch.Tensor,
    control_codes: torch.Tensor,
    *,
    k: int = 100,
    statistic: Statistic = "correlation",
    drop_shared: bool = False,
    encoder: torch.Tensor | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> ChatResampledGap:
    """The inducing-minus-control geometry gap with an interval from resampling chats and re-selecting the sets.

    Codes are per-chat mean SAE codes ``(n_chats, d_sae)``; row ``i`` of ``inducing_codes`` and ``control_codes``
    must be the two answers to prompt ``i``. ``encoder`` (``W_enc.T``) reads the toxic features by their encoder rows
    (see :func:`geometry_gap`); the inducing and control features are always read by their decoder rows.
    """
    (result,) = chat_resampled_gaps(decoder, toxic_codes, neutral_codes, inducing_codes, control_codes,
                                    variants=[(drop_shared, encoder)], k=k, statistic=statistic,
                                    n_resamples=n_resamples, confidence=confidence, seed=seed, progress=progress)
    return result


def chat_resampled_gaps(
    decoder: torch.Tensor,
    toxic_codes: torch.Tensor,
    neutral_codes: torch.Tensor,
    inducing_codes: torch.Tensor,
    control_codes: torch.Tensor,
    *,
    variants: list[tuple[bool, torch.Tensor | None]],
    k: int = 100,
    statistic: Statistic = "correlation",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> list[ChatResampledGap]:
    """:func:`chat_resampled_gap` for several ``(drop_shared, encoder)`` variants on the same draws (one selection
    per draw serves them all)."""
    _check_pairs(inducing_codes, control_codes)
    if not 0 < confidence < 1 or n_resamples < 1:
        raise ValueError("need 0 < confidence < 1 and n_resamples >= 1")
    if not variants:
        raise ValueError("no variants to measure")
    width = decoder.shape[0]
    for name, codes in (("toxic", toxic_codes), ("neutral", neutral_codes), ("inducing", inducing_codes)):
        if codes.ndim != 2 or codes.shape[1] != width:
            raise ValueError(f"{name} codes must be (n_chats, {width}), got {tuple(codes.shape)}")

    def measure(tox: torch.Tensor, neu: torch.Tensor, ind: torch.Tensor, ctl: torch.Tensor) -> tuple[
            list[GeometryGap], FeatureSet]:
        toxic = select_contrast_features(tox, neu, k=k, statistic=statistic, name="toxic")
        inducing = select_contrast_features(ind, ctl, k=k, statistic=statistic, name="inducing")
        control = select_contrast_features(ctl, ind, k=k, statistic=statistic, name="control")
        gaps = [geometry_gap(decoder, inducing, control, toxic, drop_shared=drop, encoder=encoder)
                for drop, encoder in variants]
        return gaps, inducing

    observed, observed_inducing = measure(toxic_codes, neutral_codes, inducing_codes, control_codes)
    rng = np.random.default_rng(seed)
    draws = np.empty((len(variants), n_resamples))
    overlaps = np.empty(n_resamples)
    original = set(observed_inducing.index_list())
    for r in tqdm(range(n_resamples), desc="chat bootstrap", unit="draw", disable=not progress):
        tox = torch.from_numpy(rng.integers(0, len(toxic_codes), len(toxic_codes)))
        neu = torch.from_numpy(rng.integers(0, len(neutral_codes), len(neutral_codes)))
        pairs = torch.from_numpy(rng.integers(0, len(inducing_codes), len(inducing_codes)))
        gaps, inducing = measure(toxic_codes[tox], neutral_codes[neu], inducing_codes[pairs], control_codes[pairs])
        draws[:, r] = [gap.difference for gap in gaps]
        overlaps[r] = len(original & set(inducing.index_list())) / max(len(original), 1)
    results = []
    alpha = (1 - confidence) / 2
    for (drop, encoder), gap, variant_draws in zip(variants, observed, draws, strict=True):
        finite = variant_draws[np.isfinite(variant_draws)]
        if not finite.size:
            raise ValueError("every draw left a feature set empty: too few chats or features")
        low, high = np.quantile(finite, [alpha, 1 - alpha])
        p = (1 + int((finite <= 0).sum())) / (1 + finite.size)
        results.append(ChatResampledGap(
            gap=gap, low=float(low), high=float(high), p_greater=float(p), n_resamples=n_resamples,
            draws=variant_draws, mean_overlap=float(overlaps.mean()), drop_shared=drop,
            reference_rows="decoder" if encoder is None else "encoder", seed=seed,
            n_chats=(len(toxic_codes), len(neutral_codes), len(inducing_codes))))
    return results


@dataclass(frozen=True)
class PooledGap:
    """The geometry gap averaged over SAEs (seeds), with the chat-resampling interval of that average."""

    inducing: float
    control: float
    difference: float
    """Mean over SAEs of inducing - control (positive: the predicted direction)."""
    low: float
    high: float
    p_greater: float
    n_resamples: int
    per_sae: tuple[float, ...]
    """Each SAE's own difference, in the order given."""
    draws: np.ndarray
    method: str = ("mean over SAEs of the chat-bootstrap gap, the same chat resamples for every SAE; percentile "
                   "interval and one-sided tail share of the averaged draws")


def pool_gaps(gaps: list[ChatResampledGap], confidence: float = 0.95) -> PooledGap:
    """Average the gaps of several SAEs measured on the same chats with the same bootstrap seed, draw by draw."""
    if not gaps:
        raise ValueError("no gaps to pool")
    first = gaps[0]
    for other in gaps[1:]:
        same = (other.n_resamples, other.seed, other.n_chats, other.drop_shared, other.reference_rows)
        if same != (first.n_resamples, first.seed, first.n_chats, first.drop_shared, first.reference_rows):
            raise ValueError("pooled gaps must share chats, bootstrap seed, draws and options: their draws are then "
                             "the same chat resamples")
    draws = np.mean(np.stack([g.draws for g in gaps]), axis=0)  # NaN where any SAE left a set empty
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        raise ValueError("every pooled draw left a feature set empty")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    p = (1 + int((finite <= 0).sum())) / (1 + finite.size)
    return PooledGap(inducing=float(np.mean([g.gap.inducing for g in gaps])),
                     control=float(np.mean([g.gap.control for g in gaps])),
                     difference=float(np.mean([g.gap.difference for g in gaps])), low=float(low), high=float(high),
                     p_greater=float(p), n_resamples=first.n_resamples,
                     per_sae=tuple(g.gap.difference for g in gaps), draws=draws)

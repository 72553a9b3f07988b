"""Select the SAE features tied to a labelled contrast: the top-k features by correlation with a data label.

Input is a per-sample matrix of aggregated SAE codes ``(n_samples, d_sae)`` (e.g. each sample's mean or max code over
its assistant tokens) and one binary label per sample (1 = the class of interest: misalignment-inducing data, toxic
reference text, ...). The paper (Minegishi et al., 2026) ranks features by the point-biserial correlation between a
feature's activation and the label and keeps the top 100 per label; the mean-activation difference is offered as a
simpler, scale-dependent alternative.

Every statistic is computed for all features at once (no Python loop over features). Features with zero variance
across samples (most often: features that never fire) get statistic 0, never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

__all__ = [
    "Statistic",
    "Direction",
    "STATISTICS",
    "DIRECTIONS",
    "FeatureSet",
    "binary_labels",
    "point_biserial_correlation",
    "mean_activation_difference",
    "feature_statistic",
    "select_top_features",
    "select_contrast_features",
    "select_per_label",
    "feature_set_overlap",
]

Statistic = Literal["correlation", "mean_diff"]
"""``correlation``: point-biserial r with the label (the paper's choice); ``mean_diff``: mean(1) - mean(0)."""
Direction = Literal["positive", "negative", "absolute"]
"""Which features to keep: higher in the positive class, higher in the negative class, or largest in magnitude."""

STATISTICS: tuple[Statistic, ...] = ("correlation", "mean_diff")
DIRECTIONS: tuple[Direction, ...] = ("positive", "negative", "absolute")

_CHUNK_ELEMENTS = 1 << 24
"""Codes converted to float64 at a time (128 MiB) when accumulating moments, so memory stays bounded for wide SAEs."""


@dataclass(frozen=True)
class FeatureSet:
    """Top-k SAE features for one labelled contrast, best first, with the statistic that selected them.

    ``k`` is the number requested; ``len(feature_set)`` can be smaller when fewer than ``k`` features point in the
    requested direction (a feature with statistic 0 is never "higher in the positive class", so it is not padded in).
    """

    name: str
    indices: torch.Tensor
    """SAE feature indices, int64, shape ``(n,)``, ordered from strongest to weakest."""
    values: torch.Tensor
    """Statistic of each selected feature, float, shape ``(n,)``, aligned with ``indices`` (signed, as computed)."""
    statistic: Statistic
    k: int
    direction: Direction = "positive"
    n_positive: int = 0
    """Samples with label 1 in the contrast that selected the set."""
    n_negative: int = 0
    """Samples with label 0 in the contrast that selected the set."""

    def __post_init__(self) -> None:
        if self.indices.ndim != 1 or self.values.shape != self.indices.shape:
            raise ValueError("FeatureSet needs 1-D indices and values of the same length")

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __contains__(self, feature: object) -> bool:
        return isinstance(feature, (int, np.integer)) and bool((self.indices == int(feature)).any())

    def index_list(self) -> list[int]:
        """The selected feature indices as plain ints (best first)."""
        return [int(i) for i in self.indices.tolist()]

    def to_frame(self) -> pd.DataFrame:
        """One row per selected feature: set name, rank (0 = strongest), feature index and statistic value."""
        return pd.DataFrame(
            {
                "set": self.name,
                "rank": np.arange(len(self)),
                "feature": self.indices.cpu().numpy(),
                self.statistic: self.values.detach().cpu().double().numpy(),
            }
        )

    def top(self, n: int) -> FeatureSet:
        """The strongest ``n`` features of this set, as a new set with the same metadata."""
        return FeatureSet(
            name=self.name, indices=self.indices[:n], values=self.values[:n], statistic=self.statistic,
            k=min(n, self.k), direction=self.direction, n_positive=self.n_positive, n_negative=self.n_negative,
        )


def binary_labels(labels: torch.Tensor | Sequence[int] | Sequence[bool] | np.ndarray, n_samples: int) -> torch.Tensor:
    """Validate labels as 0/1 (or bool) with both classes present and return them as a bool tensor."""
    tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.ndim != 1 or tensor.numel() != n_samples:
        raise ValueError(f"labels must be 1-D with one entry per sample ({n_samples}), got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.bool:
        if tensor.is_floating_point() or tensor.is_complex():
            if not ((tensor == 0) | (tensor == 1)).all():
                raise ValueError("labels must be 0/1 or bool")
        elif not ((tensor == 0) | (tensor == 1)).all():
            raise ValueError("labels must be 0/1 or bool")
        tensor = tensor != 0
    n_pos = int(tensor.sum())
    if n_pos == 0 or n_pos == n_samples:
        raise ValueError(f"labels need both classes; got {n_pos} positive of {n_samples}")
    return tensor


def _check_codes(codes: torch.Tensor) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor):
        codes = torch.as_tensor(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (n_samples, d_sae), got shape {tuple(codes.shape)}")
    if codes.shape[0] < 2:
        raise ValueError("need at least two samples")
    return codes


@dataclass(frozen=True)
class _Moments:
    """Per-feature class means and pooled (population) standard deviation, float64."""

    mean_pos: torch.Tensor
    mean_neg: torch.Tensor
    std: torch.Tensor
    mean: torch.Tensor
    n_pos: int
    n_neg: int


def _moments(codes: torch.Tensor, labels: torch.Tensor) -> _Moments:
    """Two chunked float64 passes: class sums, then centred squares (exact 0 variance for constant features)."""
    labels = labels.to(codes.device)
    n = codes.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, codes.shape[1]))
    n_pos = int(labels.sum())
    n_neg = n - n_pos
    sum_pos = torch.zeros(codes.shape[1], dtype=torch.float64, device=codes.device)
    sum_all = torch.zeros_like(sum_pos)
    for start in range(0, n, step):
        chunk = codes[start : start + step].to(torch.float64)
        weights = labels[start : start + step].to(torch.float64)
        sum_all += chunk.sum(0)
        sum_pos += weights @ chunk
    mean = sum_all / n
    sq = torch.zeros_like(sum_pos)
    for start in range(0, n, step):
        chunk = codes[start : start + step].to(torch.float64) - mean
        sq += (chunk * chunk).sum(0)
    std = torch.sqrt(sq / n)
    return _Moments(
        mean_pos=sum_pos / n_pos, mean_neg=(sum_all - sum_pos) / n_neg, std=std, mean=mean, n_pos=n_pos, n_neg=n_neg
    )


def _zero_variance(m: _Moments) -> torch.Tensor:
    """Features whose spread is at rounding level relative to their magnitude: constant (e.g. never firing)."""
    return m.std <= 1e-12 * torch.clamp(m.mean.abs(), min=1.0)


def point_biserial_correlation(
    codes: torch.Tensor, labels: torch.Tensor | Sequence[int] | np.ndarray
) -> torch.Tensor:
    """Point-biserial r of every feature with a binary label (Pearson r with 0/1); constant features get 0, not NaN."""
    codes = _check_codes(codes)
    mask = binary_labels(labels, codes.shape[0])
    m = _moments(codes, mask)
    n = m.n_pos + m.n_neg
    spread = torch.where(_zero_variance(m), torch.ones_like(m.std), m.std)
    r = (m.mean_pos - m.mean_neg) / spread * np.sqrt(m.n_pos * m.n_neg / n**2)
    r = torch.where(_zero_variance(m), torch.zeros_like(r), r).clamp(-1.0, 1.0)
    return r.to(_result_dtype(codes))


def mean_activation_difference(
    codes: torch.Tensor, labels: torch.Tensor | Sequence[int] | np.ndarray
) -> torch.Tensor:
    """Mean code in the positive class minus mean code in the negative class, per feature (0 for never-firing ones)."""
    codes = _check_codes(codes)
    mask = binary_labels(labels, codes.shape[0])
    m = _moments(codes, mask)
    diff = torch.where(_zero_variance(m), torch.zeros_like(m.mean), m.mean_pos - m.mean_neg)
    return diff.to(_result_dtype(codes))


def _result_dtype(codes: torch.Tensor) -> torch.dtype:
    return codes.dtype if codes.is_floating_point() and codes.dtype == torch.float64 else torch.float32


def feature_statistic(
    codes: torch.Tensor, labels: torch.Tensor | Sequence[int] | np.ndarray, statistic: Statistic = "correlation"
) -> torch.Tensor:
    """Compute the named per-feature statistic (``correlation`` or ``mean_diff``) for all features at once."""
    if statistic == "correlation":
        return point_biserial_correlation(codes, labels)
    if statistic == "mean_diff":
        return mean_activation_difference(codes, labels)
    raise ValueError(f"unknown statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")


def _rank(values: torch.Tensor, k: int, direction: Direction) -> torch.Tensor:
    """Indices of the top-k features in the direction, ties broken by lower index (stable sort)."""
    if direction == "positive":
        key, eligible = values, values > 0
    elif direction == "negative":
        key, eligible = -values, values < 0
    elif direction == "absolute":
        key, eligible = values.abs(), values != 0
    else:
        raise ValueError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    key = torch.where(eligible, key, torch.full_like(key, -torch.inf))
    order = torch.sort(key, descending=True, stable=True).indices
    n_eligible = int(eligible.sum())
    return order[: min(k, n_eligible)]


def select_top_features(
    codes: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | np.ndarray,
    k: int = 100,
    statistic: Statistic = "correlation",
    direction: Direction = "positive",
    name: str = "",
) -> FeatureSet:
    """Return the ``k`` features whose per-sample codes are most tied to label 1 (the paper: top-100 by correlation).

    ``direction="positive"`` keeps features higher in the label-1 samples (the default and the paper's use);
    ``"negative"`` keeps features higher in label-0 samples; ``"absolute"`` ranks by magnitude. Only features whose
    statistic points in the requested direction are kept, so the set can hold fewer than ``k``.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    codes = _check_codes(codes)
    mask = binary_labels(labels, codes.shape[0])
    values = feature_statistic(codes, mask, statistic)
    chosen = _rank(values, k, direction)
    n_pos = int(mask.sum())
    return FeatureSet(
        name=name, indices=chosen.to(torch.int64).cpu(), values=values[chosen].cpu(), statistic=statistic, k=k,
        direction=direction, n_positive=n_pos, n_negative=codes.shape[0] - n_pos,
    )


def select_contrast_features(
    positive_codes: torch.Tensor,
    negative_codes: torch.Tensor,
    k: int = 100,
    statistic: Statistic = "correlation",
    direction: Direction = "positive",
    name: str = "",
) -> FeatureSet:
    """Top-k features separating two groups of samples (e.g. inducing vs control), label 1 = ``positive_codes``."""
    positive_codes, negative_codes = _check_codes(positive_codes), _check_codes(negative_codes)
    if positive_codes.shape[1] != negative_codes.shape[1]:
        raise ValueError("both groups need the same number of SAE features")
    codes = torch.cat([positive_codes, negative_codes.to(positive_codes.dtype)], dim=0)
    labels = torch.cat(
        [torch.ones(positive_codes.shape[0], dtype=torch.bool), torch.zeros(negative_codes.shape[0], dtype=torch.bool)]
    )
    return select_top_features(codes, labels, k=k, statistic=statistic, direction=direction, name=name)


def select_per_label(
    codes: torch.Tensor,
    labels: Sequence[str] | np.ndarray | pd.Series,
    k: int = 100,
    statistic: Statistic = "correlation",
    targets: Sequence[str] | None = None,
) -> Mapping[str, FeatureSet]:
    """One-vs-rest top-k features for each data label (the paper's "top-100 features correlated with each label")."""
    codes = _check_codes(codes)
    names = np.asarray(labels, dtype=object)
    if names.shape != (codes.shape[0],):
        raise ValueError("need one label per sample")
    wanted = list(dict.fromkeys(names.tolist())) if targets is None else list(targets)
    out: dict[str, FeatureSet] = {}
    for target in wanted:
        mask = torch.from_numpy(names == target)
        out[str(target)] = select_top_features(codes, mask, k=k, statistic=statistic, name=str(target))
    return out


def feature_set_overlap(a: FeatureSet, b: FeatureSet) -> torch.Tensor:
    """Feature indices present in both sets (sorted): the self-pairs that geometry excludes."""
    return torch.from_numpy(np.intersect1d(a.indices.cpu().numpy(), b.indices.cpu().numpy())).to(torch.int64)

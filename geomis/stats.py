"""Statistics every chapter uses: intervals for rates and means, permutation tests, and cluster bootstraps.

- :func:`wilson_interval` — Wilson score interval of a binomial proportion (well behaved at 0/n and n/n);
- :func:`bootstrap_interval` — seeded percentile bootstrap of a rate from 0/1 flags;
- :func:`permutation_test` and :func:`bootstrap_difference` — difference of two group means (Chapter 2's geometry);
- :func:`cluster_bootstrap` and :func:`cluster_difference` — a statistic and a difference between two conditions
  when observations come in clusters (answers to the same question, runs of the same seed, tokens of the same chat):
  whole clusters are resampled, because observations inside a cluster are not independent and an ordinary bootstrap
  then gives intervals that are too narrow. scipy's ``bootstrap`` and ``permutation_test`` do the resampling; they
  resample cluster numbers, and the statistic is computed on the observations of the drawn clusters.
- :func:`require_columns` — the one check that a table has the columns a computation or a figure reads.

The first four keep the algorithms (numpy and torch generators) that produced the numbers printed in the book, so a
seed gives the same interval it always gave. This module imports no other geomis module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as scipy_stats

if TYPE_CHECKING:
    import torch

__all__ = [
    "wilson_interval",
    "two_proportion_sample_size",
    "bootstrap_interval",
    "PermutationResult",
    "permutation_test",
    "BootstrapResult",
    "bootstrap_difference",
    "ClusterInterval",
    "cluster_bootstrap",
    "ClusterDifference",
    "cluster_difference",
    "RelativeReduction",
    "cluster_relative_reduction",
    "benjamini_hochberg",
    "require_columns",
]

Values = Sequence[float] | np.ndarray
Statistic = Callable[[np.ndarray], float]


def require_columns(frame: Any, columns: Iterable[str], what: str = "table") -> None:
    """Raise a one-line ValueError naming the columns a table (a pandas DataFrame) lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(map(str, missing))}")


# ------------------------------------------------------------------------------------------------ rates (0/1 flags)


def spearman(x: Iterable[Any], y: Iterable[Any]) -> float:
    """Spearman's rank correlation (scipy) over the pairs where both values are numbers; nan with fewer than three
    such pairs or when either side is constant."""
    def floats(values: Iterable[Any]) -> np.ndarray:
        out = []
        for value in values:
            try:
                out.append(float(value))
            except (TypeError, ValueError):
                out.append(math.nan)
        return np.array(out, dtype=np.float64)

    a, b = floats(x), floats(y)
    if a.shape != b.shape:
        raise ValueError("spearman needs two sequences of the same length")
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan
    result: Any = scipy_stats.spearmanr(a[keep], b[keep])
    return float(result.statistic)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when ``n`` is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def two_proportion_sample_size(p1: float, p2: float, *, alpha: float = 0.05, power: float = 0.8,
                               alternative: str = "greater") -> int:
    """Answers per group for a z-test of two proportions to detect ``p1`` vs ``p2`` (independent answers).

    The classical formula ``n = (z_a sqrt(2 pbar qbar) + z_b sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2`` with
    ``pbar = (p1 + p2) / 2``; ``alternative`` ``greater``/``less`` is one-sided at ``alpha``, ``two-sided`` splits it.
    Clustered answers (by question, by seed) need more: multiply by the design effect.
    """
    if not (0 < p1 < 1 and 0 < p2 < 1) or p1 == p2:
        raise ValueError(f"need two different proportions strictly between 0 and 1, got {p1} and {p2}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("alpha and power must lie strictly between 0 and 1")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    normal = NormalDist()
    z_alpha = normal.inv_cdf(1 - (alpha / 2 if alternative == "two-sided" else alpha))
    z_beta = normal.inv_cdf(power)
    pooled = (p1 + p2) / 2
    spread = z_alpha * math.sqrt(2 * pooled * (1 - pooled)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(spread ** 2 / (p1 - p2) ** 2)


def bootstrap_interval(flags: Sequence[bool] | np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Seeded percentile-bootstrap interval for the mean of 0/1 flags; (nan, nan) for no flags."""
    values = np.asarray(flags, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    resampled = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------------------------ two groups of independent values


def _clean(values: torch.Tensor | Values) -> torch.Tensor:
    """A flat float64 tensor without NaNs."""
    import torch

    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
    return tensor[~torch.isnan(tensor)]


@dataclass(frozen=True)
class PermutationResult:
    """Observed difference of means (a - b) and permutation p-values with the +1 correction."""

    difference: float
    p_two_sided: float
    p_greater: float
    """P(difference this large or larger | no difference): the one-sided test that ``a`` exceeds ``b``."""
    n_permutations: int


def permutation_test(a: torch.Tensor | Values, b: torch.Tensor | Values, n_permutations: int = 10_000,
                     seed: int = 0) -> PermutationResult:
    """Shuffle membership between ``a`` and ``b`` (seeded) and compare mean(a) - mean(b) with its null distribution.

    p-values are ``(1 + #{null >= observed}) / (1 + n_permutations)`` (one-sided, "a greater") and the same with
    absolute values (two-sided), so they are never 0. NaNs are dropped first.
    """
    import torch

    x, y = _clean(a), _clean(b)
    if x.numel() == 0 or y.numel() == 0:
        raise ValueError("both groups need at least one value")
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    pooled = torch.cat([x, y])
    n_a, n_total = x.numel(), pooled.numel()
    observed = float(x.mean() - y.mean())
    generator = torch.Generator().manual_seed(seed)
    total = float(pooled.sum())
    greater = 0
    extreme = 0
    tol = 1e-12 * max(1.0, abs(observed))
    chunk = max(1, 2_000_000 // n_total)
    for start in range(0, n_permutations, chunk):
        rows = min(chunk, n_permutations - start)
        perm = torch.argsort(torch.rand(rows, n_total, generator=generator), dim=1)
        sum_a = pooled[perm[:, :n_a]].sum(dim=1)
        null = sum_a / n_a - (total - sum_a) / (n_total - n_a)
        greater += int((null >= observed - tol).sum())
        extreme += int((null.abs() >= abs(observed) - tol).sum())
    return PermutationResult(
        difference=observed,
        p_two_sided=(1 + extreme) / (1 + n_permutations),
        p_greater=(1 + greater) / (1 + n_permutations),
        n_permutations=n_permutations,
    )


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile bootstrap CIs of mean(a), mean(b) and mean(a) - mean(b), resampling each group independently."""

    difference_ci: tuple[float, float]
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]
    n_bootstrap: int
    level: float


def bootstrap_difference(a: torch.Tensor | Values, b: torch.Tensor | Values, n_bootstrap: int = 10_000,
                         seed: int = 0, level: float = 0.95) -> BootstrapResult:
    """Seeded percentile bootstrap of the difference of means (and of each mean), groups resampled independently."""
    import torch

    x, y = _clean(a), _clean(b)
    if x.numel() == 0 or y.numel() == 0:
        raise ValueError("both groups need at least one value")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    generator = torch.Generator().manual_seed(seed)
    mean_a = x[torch.randint(x.numel(), (n_bootstrap, x.numel()), generator=generator)].mean(dim=1)
    mean_b = y[torch.randint(y.numel(), (n_bootstrap, y.numel()), generator=generator)].mean(dim=1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)

    def interval(samples: torch.Tensor) -> tuple[float, float]:
        low, high = torch.quantile(samples, q).tolist()
        return float(low), float(high)

    return BootstrapResult(
        difference_ci=interval(mean_a - mean_b), a_ci=interval(mean_a), b_ci=interval(mean_b),
        n_bootstrap=n_bootstrap, level=level,
    )


# ------------------------------------------------------------------------------------------------ clustered values


def _clusters(values: Values, groups: Sequence[Any] | np.ndarray, name: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The values of each cluster (clusters in sorted label order) and the sorted labels; checks the input."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    labels = np.asarray(groups).reshape(-1)
    if x.size != labels.size:
        raise ValueError(f"{name}: {x.size} values but {labels.size} group labels; give one label per value")
    if x.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: values must be finite (drop NaN rows first)")
    unique, inverse = np.unique(labels, return_inverse=True)
    if unique.size < 2:
        raise ValueError(f"{name}: a cluster bootstrap needs at least two clusters, got {unique.size}")
    return [x[inverse == i] for i in range(unique.size)], unique


def _check_settings(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")


@dataclass(frozen=True)
class ClusterInterval:
    """A statistic on all values and its percentile interval from resampling whole clusters."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_clusters: int
    n_values: int
    n_resamples: int


def cluster_bootstrap(values: Values, groups: Sequence[Any] | np.ndarray, statistic: Statistic = np.mean, *,
                      n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> ClusterInterval:
    """Percentile interval of ``statistic(values)`` drawing whole clusters (``groups`` labels) with replacement.

    ``statistic`` maps a 1-D array of values (those of the drawn clusters, repeats included) to a number; the
    default is the mean over all values.
    """
    _check_settings(n_resamples, confidence)
    members, _ = _clusters(values, groups, "values")

    def resampled(clusters: np.ndarray) -> float:
        return float(statistic(np.concatenate([members[i] for i in clusters])))

    result = scipy_stats.bootstrap((np.arange(len(members)),), resampled, n_resamples=n_resamples,
                                   confidence_level=confidence, method="percentile", vectorized=False,
                                   rng=np.random.default_rng(seed))
    return ClusterInterval(estimate=float(statistic(np.concatenate(members))),
                           low=float(result.confidence_interval.low), high=float(result.confidence_interval.high),
                           confidence=confidence, n_clusters=len(members), n_values=sum(m.size for m in members),
                           n_resamples=n_resamples)


@dataclass(frozen=True)
class ClusterDifference:
    """``statistic(a) - statistic(b)``, its cluster-bootstrap interval and a one-sided cluster permutation p-value."""

    difference: float
    low: float
    high: float
    p_greater: float
    """P(a difference this large or larger | the conditions do not differ): the test that ``a`` exceeds ``b``."""
    confidence: float
    paired: bool
    n_clusters_a: int
    n_clusters_b: int
    n_resamples: int


def cluster_difference(a: Values, a_groups: Sequence[Any] | np.ndarray, b: Values, b_groups: Sequence[Any] | np.ndarray,
                       statistic: Statistic = np.mean, *, paired: bool = False, n_resamples: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> ClusterDifference:
    """Compare a statistic between two conditions whose values come in clusters, resampling whole clusters.

    ``paired=False``: the conditions have their own clusters (e.g. fine-tuning seeds of two recipes); clusters are
    resampled within each condition and permuted between them. ``paired=True``: both conditions share the clusters
    (e.g. the same questions asked of two models; the labels must match); the same clusters are drawn for both, and
    the permutation test swaps the two conditions' values cluster by cluster. ``p_greater`` is scipy's permutation
    p-value (exact when there are few permutations, else ``(1 + #{null >= observed}) / (1 + n_resamples)``).
    """
    _check_settings(n_resamples, confidence)
    a_members, a_labels = _clusters(a, a_groups, "a")
    b_members, b_labels = _clusters(b, b_groups, "b")
    if paired and not np.array_equal(a_labels, b_labels):
        shared = np.intersect1d(a_labels, b_labels).size
        raise ValueError(f"paired=True needs the same clusters in both conditions; a has {a_labels.size}, "
                         f"b has {b_labels.size}, {shared} shared")
    pool = a_members + b_members  # cluster i of a is pool[i]; cluster j of b is pool[len(a_members) + j]

    def difference(from_a: np.ndarray, from_b: np.ndarray) -> float:
        return float(statistic(np.concatenate([pool[i] for i in from_a]))
                     - statistic(np.concatenate([pool[i] for i in from_b])))

    data = (np.arange(len(a_members)), len(a_members) + np.arange(len(b_members)))
    boot = scipy_stats.bootstrap(data, difference, n_resamples=n_resamples, confidence_level=confidence,
                                 method="percentile", vectorized=False, paired=paired,
                                 rng=np.random.default_rng(seed))
    permuted = scipy_stats.permutation_test(data, difference, permutation_type="samples" if paired else "independent",
                                            alternative="greater", n_resamples=n_resamples, vectorized=False,
                                            rng=np.random.default_rng([seed, 1]))
    return ClusterDifference(difference=difference(*data), low=float(boot.confidence_interval.low),
                             high=float(boot.confidence_interval.high), p_greater=float(permuted.pvalue),
                             confidence=confidence, paired=paired, n_clusters_a=len(a_members),
                             n_clusters_b=len(b_members), n_resamples=n_resamples)


@dataclass(frozen=True)
class RelativeReduction:
    """``1 - mean(b) / mean(a)`` and its percentile interval from resampling whole clusters within each condition."""

    estimate: float
    low: float
    high: float
    difference: float
    """``mean(a) - mean(b)``, the absolute reduction."""
    n_undefined: int
    """Draws in which ``mean(a)`` was 0 (no ratio); left out of the interval."""
    confidence: float
    n_resamples: int


def cluster_relative_reduction(a: Values, a_groups: Sequence[Any] | np.ndarray, b: Values,
                               b_groups: Sequence[Any] | np.ndarray, *, n_resamples: int = 2000,
                               confidence: float = 0.95, seed: int = 0) -> RelativeReduction:
    """How much lower the mean of ``b`` is than that of ``a``, relative to ``a``: ``1 - mean(b) / mean(a)``,
    computed inside each draw of a bootstrap that resamples whole clusters within each condition (unpaired, as for
    separately fine-tuned models); positive: ``b`` is lower."""
    _check_settings(n_resamples, confidence)
    members = [_clusters(values, groups, name)[0] for values, groups, name in ((a, a_groups, "a"), (b, b_groups, "b"))]
    generator = np.random.default_rng(seed)
    means = []
    for clusters in members:
        sums = np.array([c.sum() for c in clusters])
        counts = np.array([c.size for c in clusters])
        drawn = generator.integers(0, len(clusters), size=(n_resamples, len(clusters)))
        means.append(sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1))
    defined = means[0] > 0
    ratios = 1 - means[1][defined] / means[0][defined]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail]) if ratios.size else (math.nan, math.nan)
    mean_a, mean_b = (float(np.concatenate(c).mean()) for c in members)
    return RelativeReduction(estimate=1 - mean_b / mean_a if mean_a > 0 else math.nan, low=float(low),
                             high=float(high), difference=mean_a - mean_b, n_undefined=int((~defined).sum()),
                             confidence=confidence, n_resamples=n_resamples)


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate across a family of tests, e.g. a layer sweep),
    in the input order (scipy's ``false_discovery_control``); reject where the adjusted p is below the FDR level."""
    from scipy.stats import false_discovery_control

    values = np.asarray(p_values, dtype=float)
    if values.ndim != 1 or not values.size or np.isnan(values).any() or (values < 0).any() or (values > 1).any():
        raise ValueError("need a non-empty 1-D sequence of p-values in [0, 1]")
    return np.asarray(false_discovery_control(values, method="bh"), dtype=float)

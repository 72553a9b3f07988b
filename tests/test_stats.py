"""geomis.stats: Wilson and bootstrap intervals, permutation tests, and bootstraps that resample whole clusters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomis.stats import (
    bootstrap_difference,
    bootstrap_interval,
    cluster_bootstrap,
    cluster_difference,
    permutation_test,
    require_columns,
    wilson_interval,
)

Z95 = 1.959963984540054


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (5, 10, 0.2366, 0.7634),     # textbook value for 5/10
    (0, 10, 0.0, 0.2775),        # upper bound z^2 / (n + z^2)
    (10, 10, 0.7225, 1.0),       # lower bound n / (n + z^2)
    (81, 263, 0.2553, 0.3662),   # Newcombe (1998), Stat. Med. 17:857, worked examples (score method)
    (15, 148, 0.0624, 0.1605),   # same source
    (0, 20, 0.0, 0.1611),        # same source
    (1, 29, 0.0061, 0.1718),     # same source
])
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(("k", "n"), [(3, 17), (1, 2), (40, 1600), (0, 1), (7, 7)])
def test_wilson_bounds_solve_the_score_test_equation(k: int, n: int) -> None:
    """Each bound p satisfies |k/n - p| = z * sqrt(p (1 - p) / n), the definition of the Wilson interval."""
    p_hat = k / n
    for bound in wilson_interval(k, n):
        assert abs(p_hat - bound) == pytest.approx(Z95 * math.sqrt(bound * (1 - bound) / n), abs=1e-9)


def test_wilson_edge_cases() -> None:
    low, high = wilson_interval(0, 0)
    assert math.isnan(low) and math.isnan(high)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    wide, narrow = wilson_interval(5, 10, 0.99), wilson_interval(5, 10, 0.80)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    for bad in ((-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        wilson_interval(1, 5, confidence=1.0)


def test_bootstrap_interval_is_seeded_and_sensible() -> None:
    flags = np.array([True] * 20 + [False] * 80)
    first = bootstrap_interval(flags, seed=7)
    assert first == bootstrap_interval(flags, seed=7)
    assert first != bootstrap_interval(flags, seed=8)
    assert first[0] < 0.2 < first[1] and 0.1 < first[0] and first[1] < 0.3
    assert bootstrap_interval(np.zeros(30, dtype=bool)) == (0.0, 0.0)
    assert all(math.isnan(x) for x in bootstrap_interval([]))


def test_seed_makes_p_reproducible() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(40, generator=g) + 0.3, torch.randn(40, generator=g)
    first = permutation_test(a, b, n_permutations=500, seed=11)
    assert first == permutation_test(a, b, n_permutations=500, seed=11)
    assert 1 / 501 <= first.p_greater <= 1 and first.p_two_sided >= first.p_greater
    assert bootstrap_difference(a, b, 300, seed=2) == bootstrap_difference(a, b, 300, seed=2)
    others = {permutation_test(a, b, n_permutations=500, seed=s).p_greater for s in range(4)}
    assert len(others) > 1  # the seed does drive the shuffles


def test_permutation_p_value_exact_small_case() -> None:
    # Pool {0, 1}: any shuffle gives +1 or -1; the observed +1 is reached by about half of them.
    result = permutation_test([1.0], [0.0], n_permutations=4000, seed=0)
    assert result.difference == 1.0 and result.p_two_sided == 1.0
    assert result.p_greater == pytest.approx(0.5, abs=0.03)


# ------------------------------------------------------------------------------------------------ cluster bootstrap


def _clustered(n_clusters: int, per_cluster: int, between: float, within: float, seed: int) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """Values ``cluster effect + noise``: a large ``between`` makes values of one cluster strongly correlated."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_clusters), per_cluster)
    return rng.normal(0.0, between, n_clusters)[groups] + rng.normal(0.0, within, groups.size), groups


def _width(result: object) -> float:
    return result.high - result.low  # type: ignore[attr-defined]


def test_the_cluster_interval_widens_when_values_in_a_cluster_are_correlated() -> None:
    values, groups = _clustered(12, 25, between=1.0, within=0.2, seed=0)
    clustered = cluster_bootstrap(values, groups, n_resamples=1000, seed=1)
    iid = cluster_bootstrap(values, np.arange(values.size), n_resamples=1000, seed=1)  # every value its own cluster
    assert clustered.estimate == pytest.approx(values.mean()) == iid.estimate
    assert clustered.low < clustered.estimate < clustered.high and (clustered.n_clusters, iid.n_clusters) == (12, 300)
    assert _width(clustered) > 3 * _width(iid)  # 12 effective samples, not 300
    # with independent values the clusters carry no extra information, and both intervals agree
    values, groups = _clustered(12, 25, between=0.0, within=1.0, seed=0)
    ratio = _width(cluster_bootstrap(values, groups, n_resamples=1000, seed=1)) / _width(
        cluster_bootstrap(values, np.arange(values.size), n_resamples=1000, seed=1))
    assert 0.6 < ratio < 1.6


def test_the_cluster_bootstrap_is_reproducible_with_a_seed_and_takes_any_statistic() -> None:
    values, groups = _clustered(8, 10, between=1.0, within=0.5, seed=2)
    labels = np.array([f"question {g}" for g in groups])
    first = cluster_bootstrap(values, labels, n_resamples=300, seed=5)
    assert first == cluster_bootstrap(values, labels, n_resamples=300, seed=5)
    assert first != cluster_bootstrap(values, labels, n_resamples=300, seed=6)
    median = cluster_bootstrap(values, labels, np.median, n_resamples=300, seed=5)
    assert median.estimate == pytest.approx(float(np.median(values))) and median.low <= median.high
    rate = cluster_bootstrap(values > 0, labels, n_resamples=300, seed=5)  # a rate from 0/1 flags
    assert 0.0 <= rate.low <= rate.estimate <= rate.high <= 1.0


@pytest.mark.parametrize(("values", "groups", "message"), [
    ([], [], "no values"),
    ([1.0, 2.0, 3.0], [0, 1], "3 values but 2 group labels"),
    ([1.0, 2.0, 3.0], [0, 0, 0], "at least two clusters"),
    ([1.0, math.nan], [0, 1], "finite"),
])
def test_the_cluster_bootstrap_refuses_bad_input_clearly(values: list[float], groups: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_bootstrap(values, groups)
    with pytest.raises(ValueError, match=message):
        cluster_difference(values, groups, [1.0, 2.0], [0, 1])
    with pytest.raises(ValueError, match="confidence"):
        cluster_bootstrap([1.0, 2.0], [0, 1], confidence=1.0)


def test_an_unpaired_difference_resamples_clusters_within_each_condition() -> None:
    a, a_groups = _clustered(10, 20, between=1.0, within=0.2, seed=3)
    b, b_groups = _clustered(10, 20, between=1.0, within=0.2, seed=4)
    shifted = cluster_difference(a + 3.0, a_groups, b, b_groups, n_resamples=500, seed=0)
    assert shifted.difference == pytest.approx(a.mean() + 3.0 - b.mean())
    assert 0 < shifted.low < shifted.difference < shifted.high and shifted.p_greater < 0.01
    same = cluster_difference(a, a_groups, b, b_groups, n_resamples=500, seed=0)
    assert same.low < 0 < same.high and same.p_greater > 0.05 and not same.paired
    assert same == cluster_difference(a, a_groups, b, b_groups, n_resamples=500, seed=0)
    iid = cluster_difference(a, np.arange(a.size), b, np.arange(b.size), n_resamples=500, seed=0)
    assert _width(same) > 2 * _width(iid)


def test_a_paired_difference_draws_the_same_clusters_for_both_conditions() -> None:
    # The same questions asked of two models: question difficulty (the cluster effect) is shared, so pairing removes
    # it and a small, consistent shift becomes clear; treating the models' clusters as unrelated hides it.
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(12), 15)
    difficulty = rng.normal(0.0, 1.0, 12)[groups]
    a = difficulty + 0.3 + rng.normal(0.0, 0.2, groups.size)
    b = difficulty + rng.normal(0.0, 0.2, groups.size)
    paired = cluster_difference(a, groups, b, groups, paired=True, n_resamples=500, seed=0)
    unpaired = cluster_difference(a, groups, b, groups, paired=False, n_resamples=500, seed=0)
    assert paired.paired and paired.difference == pytest.approx(unpaired.difference)
    assert 0 < paired.low < paired.difference < paired.high and paired.p_greater < 0.01
    assert unpaired.low < 0 < unpaired.high and unpaired.p_greater > 0.05
    assert paired.p_greater == pytest.approx(1 / 501)  # no random swap of the 12 clusters reaches the observed shift
    few = np.isin(groups, range(6))  # 2^6 = 64 ways to swap 6 clusters: scipy enumerates them all (an exact test)
    exact = cluster_difference(a[few], groups[few], b[few], groups[few], paired=True, n_resamples=100, seed=0)
    assert exact.p_greater == pytest.approx(1 / 64)
    with pytest.raises(ValueError, match="same clusters in both conditions"):
        cluster_difference(a, groups, b, groups + 1, paired=True)


def test_require_columns_names_what_is_missing() -> None:
    import pandas as pd

    require_columns(pd.DataFrame(columns=["a", "b"]), ["a"])
    with pytest.raises(ValueError, match="rates table lacks column\\(s\\) b, c"):
        require_columns(pd.DataFrame(columns=["a"]), ["a", "b", "c"], "rates table")


def test_spearman_drops_missing_pairs_and_is_nan_without_spread() -> None:
    from scipy.stats import spearmanr

    from geomis.stats import spearman

    x, y = [1, 2, 3, 4, 5, None], [2, 1, 4, 3, 5, 7]
    assert spearman(x, y) == pytest.approx(spearmanr([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]).statistic)
    assert spearman(["1", "2", "x", "3"], [3, 2, 9, 1]) == pytest.approx(-1.0)  # text numbers count, text does not
    assert math.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4])) and math.isnan(spearman([1, 2], [2, 1]))
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])


def test_benjamini_hochberg_adjusts_in_input_order_and_refuses_bad_input() -> None:
    from geomis.stats import benjamini_hochberg

    # sorted p (0.01, 0.02, 0.03, 0.5): adjusted m * p_(i) / i, made monotone from the top: 0.04, 0.04, 0.04, 0.5
    adjusted = benjamini_hochberg([0.5, 0.03, 0.01, 0.02])
    assert np.allclose(adjusted, [0.5, 0.04, 0.04, 0.04])
    assert (adjusted >= np.array([0.5, 0.03, 0.01, 0.02])).all()
    for bad in ([], [0.2, float("nan")], [1.5], [[0.1, 0.2]]):
        with pytest.raises(ValueError, match="p-values"):
            benjamini_hochberg(bad)


def test_two_proportion_sample_size_matches_the_textbook_formula_and_a_simulation() -> None:
    from geomis.stats import two_proportion_sample_size

    # Fleiss' example scale: 0.5 vs 0.4, two-sided 5%, 80% power -> 388 per group (without continuity correction)
    assert two_proportion_sample_size(0.5, 0.4, alternative="two-sided") == 388
    one_sided = two_proportion_sample_size(0.5, 0.4)
    assert one_sided < 388 and one_sided == two_proportion_sample_size(0.4, 0.5, alternative="less")
    assert two_proportion_sample_size(0.04, 0.0262) > 1500  # rare outcomes need thousands
    n = two_proportion_sample_size(0.3, 0.2)
    rng = np.random.default_rng(0)
    a, b = rng.binomial(n, 0.3, 4000) / n, rng.binomial(n, 0.2, 4000) / n
    pooled = (a + b) / 2
    z = (a - b) / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert abs(float((z > 1.6449).mean()) - 0.8) < 0.03  # the power it promises
    with pytest.raises(ValueError, match="two different proportions"):
        two_proportion_sample_size(0.2, 0.2)


def test_cluster_relative_reduction_is_one_minus_the_ratio_with_a_cluster_interval() -> None:
    from geomis.stats import cluster_relative_reduction

    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(24), 100)  # 24 clusters (question x seed), 100 answers each
    a = (rng.random(2400) < np.repeat(rng.uniform(0.02, 0.10, 24), 100)).astype(float)
    b = (rng.random(2400) < np.repeat(rng.uniform(0.01, 0.05, 24), 100)).astype(float)
    result = cluster_relative_reduction(a, groups, b, groups, n_resamples=4000)
    assert result.estimate == pytest.approx(1 - b.mean() / a.mean())
    assert result.difference == pytest.approx(a.mean() - b.mean())
    assert result.low < result.estimate < result.high and result.low > 0 and result.n_undefined == 0
    same = cluster_relative_reduction(a, groups, a, groups, n_resamples=4000)
    assert same.estimate == 0 and same.low < 0 < same.high
    wider = cluster_relative_reduction(a[:600], groups[:600], b[:600], groups[:600], n_resamples=4000)
    assert wider.high - wider.low > result.high - result.low  # fewer clusters: a wider interval
    rare = np.zeros(2400)
    rare[:3] = 1.0  # only the first cluster has any: many draws leave it out
    undefined = cluster_relative_reduction(rare, groups, b, groups, n_resamples=500)
    assert undefined.n_undefined > 0

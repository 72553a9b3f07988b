"""Feature selection on synthetic codes with a planted answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from geomis.features.sets import (
    FeatureSet,
    feature_set_overlap,
    mean_activation_difference,
    point_biserial_correlation,
    select_contrast_features,
    select_per_label,
    select_top_features,
)

PLANTED = (7, 42, 99)
NEVER_FIRES = 3


@pytest.fixture(scope="module")
def planted() -> tuple[torch.Tensor, torch.Tensor]:
    """2,000 samples x 500 sparse non-negative features; features 7, 42, 99 fire more on label 1; feature 3 never."""
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 500
    labels = torch.rand(n, generator=g) < 0.4
    codes = torch.relu(torch.randn(n, d, generator=g)) * (torch.rand(n, d, generator=g) < 0.1)
    for f in PLANTED:
        codes[labels, f] += 0.5 + torch.relu(torch.randn(int(labels.sum()), generator=g))
    codes[:, NEVER_FIRES] = 0.0
    return codes, labels


def test_planted_features_are_the_top_three(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, labels = planted
    fs = select_top_features(codes, labels, k=3, name="inducing")
    assert isinstance(fs, FeatureSet)
    assert set(fs.index_list()) == set(PLANTED)
    assert (fs.name, fs.statistic, fs.k, len(fs)) == ("inducing", "correlation", 3, 3)
    assert (fs.n_positive, fs.n_negative) == (int(labels.sum()), int((~labels).sum()))
    assert torch.all(fs.values[:-1] >= fs.values[1:])  # best first
    # The planted features stand far above the rest of the ranking.
    wider = select_top_features(codes, labels, k=10)
    assert float(wider.values[2]) > 5 * float(wider.values[3])


def test_correlation_matches_scipy_point_biserial(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, labels = planted
    r = point_biserial_correlation(codes, labels)
    assert r.shape == (codes.shape[1],)
    for f in (*PLANTED, 0, 250):
        expected = stats.pointbiserialr(labels.numpy().astype(int), codes[:, f].numpy()).statistic
        assert float(r[f]) == pytest.approx(expected, abs=1e-5)


def test_never_firing_feature_gets_zero_not_nan(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, labels = planted
    r = point_biserial_correlation(codes, labels)
    diff = mean_activation_difference(codes, labels)
    assert not torch.isnan(r).any() and not torch.isnan(diff).any()
    assert float(r[NEVER_FIRES]) == 0.0 and float(diff[NEVER_FIRES]) == 0.0
    constant = codes.clone()
    constant[:, 5] = 0.1  # constant but non-zero: also zero variance
    assert float(point_biserial_correlation(constant, labels)[5]) == 0.0


def test_mean_difference_agrees_on_planted(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, labels = planted
    by_r = select_top_features(codes, labels, k=3, statistic="correlation")
    by_diff = select_top_features(codes, labels, k=3, statistic="mean_diff")
    assert set(by_r.index_list()) == set(by_diff.index_list()) == set(PLANTED)
    assert by_diff.statistic == "mean_diff"
    expected = codes[labels, 42].mean() - codes[~labels, 42].mean()
    assert float(mean_activation_difference(codes, labels)[42]) == pytest.approx(float(expected), rel=1e-5)


def test_negative_direction_and_flipped_labels(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, labels = planted
    fs = select_top_features(codes, ~labels, k=3, direction="negative")
    assert set(fs.index_list()) == set(PLANTED)
    assert torch.all(fs.values < 0)
    # Positive direction on the flipped labels must not pick the planted features.
    assert not set(select_top_features(codes, ~labels, k=3).index_list()) & set(PLANTED)
    assert set(select_top_features(codes, ~labels, k=3, direction="absolute").index_list()) == set(PLANTED)


def test_set_holds_only_features_in_the_requested_direction() -> None:
    codes = torch.zeros(10, 6)
    codes[:5, 1] = 1.0  # only feature 1 is higher in label 1
    codes[5:, 2] = 1.0  # feature 2 is higher in label 0
    labels = torch.tensor([1] * 5 + [0] * 5)
    fs = select_top_features(codes, labels, k=4)
    assert fs.index_list() == [1] and fs.k == 4 and len(fs) == 1
    assert float(fs.values[0]) == pytest.approx(1.0)


def test_contrast_and_per_label_helpers(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, labels = planted
    fs = select_contrast_features(codes[labels], codes[~labels], k=3, name="inducing")
    assert set(fs.index_list()) == set(PLANTED)
    names = np.where(labels.numpy(), "inducing", "control")
    per_label = select_per_label(codes, names, k=3)
    assert set(per_label) == {"inducing", "control"}
    assert set(per_label["inducing"].index_list()) == set(PLANTED)
    assert not set(per_label["control"].index_list()) & set(PLANTED)
    assert feature_set_overlap(per_label["inducing"], fs).tolist() == sorted(PLANTED)


def test_ties_are_broken_by_lower_index() -> None:
    codes = torch.zeros(4, 5)
    codes[:2, [4, 1, 3]] = 1.0
    fs = select_top_features(codes, [1, 1, 0, 0], k=3)
    assert fs.index_list() == [1, 3, 4]


@pytest.mark.parametrize(
    "labels, message",
    [([1, 1, 1, 1], "both classes"), ([0, 1, 2, 1], "0/1"), ([0, 1], "one entry per sample")],
)
def test_bad_labels_are_rejected(labels: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_top_features(torch.rand(4, 3), labels, k=1)


def test_frame_has_one_row_per_feature(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, labels = planted
    frame = select_top_features(codes, labels, k=5, name="x").to_frame()
    assert list(frame.columns) == ["set", "rank", "feature", "correlation"]
    assert len(frame) == 5 and set(frame["feature"].head(3)) == set(PLANTED)

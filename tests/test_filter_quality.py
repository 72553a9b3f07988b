"""Removal quality: precision, recall and AUROC per budget on mixed sets of known composition, with intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from geomis.filter.quality import RemovalQualityConfig, compare_removal, removal_quality

FAST = RemovalQualityConfig(n_resamples=200)


def test_a_perfect_score_removes_only_inducing_rows_up_to_their_share() -> None:
    inducing = np.array([True] * 50 + [False] * 50)
    scores = np.where(inducing, 1.0, 0.0) + np.linspace(0, 0.01, 100)
    table = removal_quality(scores, inducing, FAST).set_index("budget")
    assert table["removed"].tolist() == [10, 25, 50]
    assert table["precision"].tolist() == [1.0, 1.0, 1.0]
    assert table["recall"].tolist() == pytest.approx([0.2, 0.5, 1.0])
    assert table["AUROC"].tolist() == [1.0] * 3 and table["AUROC low"].tolist() == [1.0] * 3
    assert table["chance precision"].tolist() == [0.5] * 3
    assert table.attrs["n_inducing"] == 50 and table.attrs["n_resamples"] == 200


def test_hand_counted_precision_recall_and_auroc_match() -> None:
    inducing = np.array([True, False, True, False, True, False, False, True, False, False])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.5, 0.4, 0.3, 0.2, 0.0])
    table = removal_quality(scores, inducing, RemovalQualityConfig(budgets=(0.3, 0.5), n_resamples=50))
    # top 3: rows 0 (yes), 1 (no), 2 (yes); top 5 adds 3 (no) and 5 (no)
    assert table["precision"].tolist() == pytest.approx([2 / 3, 2 / 5])
    assert table["recall"].tolist() == pytest.approx([2 / 4, 2 / 4])
    assert table["AUROC"].iloc[0] == pytest.approx(roc_auc_score(inducing, scores))


def test_an_uninformative_score_sits_at_chance_and_its_interval_covers_it() -> None:
    generator = np.random.default_rng(3)
    inducing = np.array([True] * 150 + [False] * 150)
    table = removal_quality(generator.random(300), inducing, FAST)
    assert bool(((table["precision low"] < 0.5) & (table["precision high"] > 0.5)).all())
    assert table["AUROC low"].iloc[0] < 0.5 < table["AUROC high"].iloc[0]
    assert bool((table["precision low"] <= table["precision"]).all())
    assert bool((table["precision"] <= table["precision high"]).all())


def test_the_interval_narrows_with_more_rows_and_draws_are_seeded() -> None:
    generator = np.random.default_rng(0)

    def mixed(n: int) -> tuple[np.ndarray, np.ndarray]:
        inducing = np.arange(n) % 2 == 0
        return inducing + generator.normal(0, 1.0, n), inducing

    small = removal_quality(*mixed(60), FAST)
    large = removal_quality(*mixed(600), FAST)
    width = lambda t: (t["precision high"] - t["precision low"]).iloc[-1]  # noqa: E731
    assert width(large) < width(small) / 2
    scores, labels = mixed(80)
    assert removal_quality(scores, labels, FAST).equals(removal_quality(scores, labels, FAST))


def test_unscorable_rows_are_removed_first_and_counted() -> None:
    inducing = np.array([True, False] * 10)
    scores = np.linspace(0, 1, 20)
    scores[[1, 3, 5]] = np.nan  # three other rows that cannot be scored
    table = removal_quality(scores, inducing, RemovalQualityConfig(budgets=(0.1,), n_resamples=20))
    assert table["removed"].iloc[0] == 3 and table["precision"].iloc[0] == 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budgets": (0.0,)}, "strictly between 0 and 1"),
    ({"budgets": ()}, "strictly between 0 and 1"),
    ({"n_resamples": 0}, "at least 1"),
    ({"confidence": 1.0}, "strictly between 0 and 1"),
])
def test_bad_settings_are_one_line_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        RemovalQualityConfig(**kwargs)


def test_a_set_without_both_kinds_of_row_is_refused() -> None:
    with pytest.raises(ValueError, match="both inducing and other rows"):
        removal_quality(np.arange(4.0), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="one label per score"):
        removal_quality(np.arange(4.0), np.ones(3, dtype=bool))


def test_compare_removal_pairs_the_draws_so_near_copies_differ_by_almost_nothing() -> None:
    generator = np.random.default_rng(1)
    inducing = np.arange(200) % 2 == 0
    good = inducing + generator.normal(0, 0.8, 200)
    scores = {"random": generator.random(200), "good": good, "good again": good + generator.normal(0, 1e-3, 200)}
    table = compare_removal(scores, inducing, against="good", config=FAST).set_index(["method", "budget"])
    random_half = table.loc[("random", 0.5)]
    assert random_half["precision - good"] < 0 and random_half["precision - good high"] < 0
    assert random_half["p (precision better)"] > 0.95  # one-sided: random is not better
    copy = table.loc[("good again", 0.5)]
    separate_width = table.loc[("good", 0.5), "precision high"] - table.loc[("good", 0.5), "precision low"]
    assert copy["precision - good high"] - copy["precision - good low"] < separate_width / 4
    assert np.isnan(table.loc[("good", 0.5), "AUROC - good"])
    alone = removal_quality(good, inducing, FAST).set_index("budget")
    assert table.loc[("good", 0.5), "precision low"] == alone.loc[0.5, "precision low"]  # same seeded draws
    with pytest.raises(ValueError, match="no scores for 'judge'"):
        compare_removal(scores, inducing, against="judge", config=FAST)

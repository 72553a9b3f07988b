"""The filtered-data stage: how many rows a fraction drops, which ones, tie-breaks, NaN scores, the random baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomis.filter.selection import check_drop_fraction, n_to_remove, random_scores, select_by_score, select_random


@pytest.mark.parametrize(("n", "drop", "expected"), [
    (10, 0.5, 5), (5, 0.5, 2), (1, 0.5, 0), (100, 0.29, 29), (100, 0.57, 57), (10, 0.7, 7), (3, 0.999, 2), (0, 0.5, 0),
])
def test_the_number_removed_is_the_floor_of_the_fraction(n: int, drop: float, expected: int) -> None:
    assert n_to_remove(n, drop) == expected  # 0.29 * 100 = 28.999999999999996 in floats: still 29


@pytest.mark.parametrize("drop", [0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), "abc", None])
def test_fractions_outside_the_open_interval_are_refused(drop: object) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_drop_fraction(drop)  # type: ignore[arg-type]


def test_highest_scores_are_removed_with_ties_broken_by_line_number() -> None:
    scores = [0.2, 0.9, 0.5, 0.9, 0.1, 0.5]
    lines = [3, 7, 8, 2, 10, 4]
    selection = select_by_score(scores, 0.5, lines)
    # 0.9 (line 2), 0.9 (line 7), then the tie at 0.5 goes to line 4 before line 8
    assert sorted(selection.line_numbers[selection.removed].tolist()) == [2, 4, 7]
    assert selection.n_removed == 3 and selection.n_kept == 3
    assert selection.removed_indices.tolist() == [1, 3, 5]
    assert selection.kept_indices.tolist() == [0, 2, 4]


def test_nan_scores_rank_last_and_are_counted() -> None:
    selection = select_by_score([np.nan, 0.1, np.nan, 0.3], 0.5)
    assert selection.removed.tolist() == [False, True, False, True]
    assert selection.n_unscored == 2
    all_nan = select_by_score([np.nan, np.nan, np.nan, np.nan], 0.5)
    assert all_nan.removed.tolist() == [True, True, False, False]  # by line number, deterministically


def test_unscorable_rows_are_removed_first_and_count_toward_the_budget() -> None:
    scores = [0.9, np.nan, 0.5, 0.8, np.nan, 0.1]
    flags = np.isnan(scores)
    closed = select_by_score(scores, 0.5, [1, 2, 3, 4, 5, 6], unscorable=flags)  # fail closed by default
    assert closed.removed.tolist() == [True, True, False, False, True, False]  # 2 unscorable + the highest score
    assert closed.unscorable_lines == [2, 5] and closed.unscorable_policy == "remove" and closed.over_budget == 0
    kept = select_by_score(scores, 0.5, unscorable=flags, unscorable_policy="keep")
    assert kept.removed.tolist() == [True, False, True, True, False, False]  # the three highest scores
    over = select_by_score(scores, 0.2, unscorable=flags)  # budget 1, two rows cannot be scored: both go
    assert over.removed.tolist() == [False, True, False, False, True, False] and over.over_budget == 1
    assert select_by_score(scores, 0.5).unscorable_lines == [] and not select_by_score(scores, 0.5).removed[1]
    with pytest.raises(ValueError, match="unscorable policy"):
        select_by_score(scores, 0.5, unscorable=flags, unscorable_policy="drop")  # type: ignore[arg-type]


def test_bad_scores_and_line_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        select_by_score([0.1, np.inf], 0.5)
    with pytest.raises(ValueError, match="distinct"):
        select_by_score([0.1, 0.2], 0.5, [3, 3])
    with pytest.raises(ValueError, match="one line number per score"):
        select_by_score([0.1, 0.2], 0.5, [1])


def test_random_baseline_is_seeded_and_reproducible() -> None:
    first, again, other = select_random(50, 0.3, seed=1), select_random(50, 0.3, seed=1), select_random(50, 0.3, 2)
    assert np.array_equal(first.removed, again.removed) and np.array_equal(first.scores, again.scores)
    assert not np.array_equal(first.removed, other.removed)
    assert first.n_removed == 15 and first.method == "random"
    assert np.array_equal(random_scores(50, 1), first.scores)
    assert np.all((first.scores >= 0) & (first.scores < 1))


scores_strategy = st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(math.nan),
                                     st.sampled_from([0.0, 1.0])), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(scores=scores_strategy, drop=st.floats(0.01, 0.99), data=st.data())
def test_selection_properties(scores: list[float], drop: float, data: st.DataObject) -> None:
    n = len(scores)
    lines = data.draw(st.permutations(list(range(1, 3 * n + 1)))).__getitem__(slice(0, n))
    selection = select_by_score(scores, drop, lines)
    values = np.asarray(scores)
    assert selection.n_removed == math.floor(round(drop * n, 9))
    removed, kept = values[selection.removed], values[selection.kept]
    scored_kept = kept[~np.isnan(kept)]
    if removed.size and scored_kept.size:  # a scored row is kept: no NaN row was removed, and every removed score wins
        assert not np.isnan(removed).any()
        assert removed.min() >= scored_kept.max()
        boundary = removed.min()  # rows at the boundary score: the removed ones come from earlier lines
        tied_removed = selection.line_numbers[selection.removed & (values == boundary)]
        tied_kept = selection.line_numbers[selection.kept & (values == boundary)]
        if tied_kept.size:
            assert tied_removed.max() < tied_kept.min()
    # the choice does not depend on the order the rows come in
    order = np.asarray(data.draw(st.permutations(list(range(n)))))
    shuffled = select_by_score(values[order], drop, np.asarray(lines)[order])
    assert set(shuffled.line_numbers[shuffled.removed].tolist()) == set(selection.line_numbers[selection.removed]
                                                                         .tolist())

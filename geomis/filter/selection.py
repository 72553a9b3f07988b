"""The "filtered data" stage: from one score per training row, choose which rows to remove. Pure; no model.

A higher score means "more likely to induce misalignment". For a drop fraction ``f`` in (0, 1) the
``floor(f * n)`` highest-scoring rows are removed (never more than the fraction asked for). Ties are broken by input
line number, the earlier line being removed first, so a selection depends only on the scores and line numbers, never
on sort stability or hash order. A row whose score is NaN (e.g. a judge answered CODE or REFUSAL) ranks below every
number: it is kept unless the fraction reaches it.

Rows that could not be scored at all (an empty reply; a judge reply that could not be parsed) are a separate case,
marked by ``unscorable``: by default a filter fails closed and removes them first, and they count toward the
``floor(f * n)`` budget (when there are more of them than the budget, all are removed anyway, and the selection
says by how many it went over); ``unscorable_policy="keep"`` ranks them with the NaN scores instead.

The random baseline draws one uniform number per row from a seeded NumPy PCG64 generator and selects on those numbers
with the same rule, so it is reproducible across platforms and its "scores" can be written out like any others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geomis.errors import ConfigError
from geomis.filter.config import DEFAULT_UNSCORABLE, UNSCORABLE_POLICIES, UnscorablePolicy, check_drop_fraction

__all__ = [
    "FilterSelection", "check_drop_fraction", "n_to_remove", "smallest_drop", "check_drop_removes", "random_scores",
    "select_by_score", "select_random",
]


@dataclass(frozen=True)
class FilterSelection:
    """Which rows a filter removes: one score and one kept/removed flag per input row, in input order."""

    line_numbers: np.ndarray
    """(n,) int64 input line number of each row (1-based, physical lines)."""
    scores: np.ndarray
    """(n,) float64 score of each row; higher = removed first; NaN = no score (ranked last)."""
    removed: np.ndarray
    """(n,) bool: True for rows the filter drops."""
    drop_fraction: float
    method: str
    unscorable: np.ndarray | None = None
    """(n,) bool: rows that could not be scored (None: none)."""
    unscorable_policy: UnscorablePolicy = DEFAULT_UNSCORABLE
    """What happened to them: ``remove`` (fail closed, counted toward the budget) or ``keep`` (ranked last)."""

    def __post_init__(self) -> None:
        n = self.line_numbers.shape[0]
        if self.unscorable is None:
            object.__setattr__(self, "unscorable", np.zeros(n, dtype=bool))
        if self.scores.shape != (n,) or self.removed.shape != (n,) or self.unscorable_mask.shape != (n,):
            raise ValueError("line_numbers, scores, removed and unscorable need one entry per row")

    def __len__(self) -> int:
        return int(self.line_numbers.shape[0])

    @property
    def kept(self) -> np.ndarray:
        """(n,) bool: True for rows the filter keeps."""
        return ~self.removed

    @property
    def kept_indices(self) -> np.ndarray:
        """Positions (0-based, input order) of the kept rows."""
        return np.flatnonzero(~self.removed)

    @property
    def removed_indices(self) -> np.ndarray:
        """Positions (0-based, input order) of the removed rows."""
        return np.flatnonzero(self.removed)

    @property
    def n_removed(self) -> int:
        """Number of removed rows."""
        return int(self.removed.sum())

    @property
    def n_kept(self) -> int:
        """Number of kept rows."""
        return len(self) - self.n_removed

    @property
    def n_unscored(self) -> int:
        """Rows whose score is NaN."""
        return int(np.isnan(self.scores).sum())

    @property
    def unscorable_mask(self) -> np.ndarray:
        """(n,) bool: rows that could not be scored."""
        assert self.unscorable is not None, "set in __post_init__"
        return self.unscorable

    @property
    def unscorable_lines(self) -> list[int]:
        """Input line numbers of the rows that could not be scored, in input order."""
        return self.line_numbers[self.unscorable_mask].tolist()

    @property
    def over_budget(self) -> int:
        """Rows removed beyond ``floor(drop * n)``: unscorable rows removed when they outnumber the budget."""
        return max(0, self.n_removed - n_to_remove(len(self), self.drop_fraction))


def n_to_remove(n_rows: int, drop: float) -> int:
    """How many of ``n_rows`` rows a fraction ``drop`` removes: ``floor(drop * n_rows)``, robust to float rounding."""
    drop = check_drop_fraction(drop)
    if n_rows < 0:
        raise ValueError(f"n_rows must be non-negative, got {n_rows}")
    return int(math.floor(round(drop * n_rows, 9)))


def smallest_drop(n_rows: int) -> float | None:
    """The smallest drop fraction (two significant digits) that removes a row of ``n_rows``; None when none can."""
    if n_rows < 2:
        return None
    exact = 1.0 / n_rows
    digits = 1 - math.floor(math.log10(exact))  # two significant digits
    value = math.ceil(round(exact * 10**digits, 9)) / 10**digits
    while n_to_remove(n_rows, value) < 1:  # guard against rounding; at most a step or two
        value += 10.0**-digits
    return float(f"{value:.{digits}f}")


def check_drop_removes(n_rows: int, drop: float, option: str = "--drop") -> None:
    """A one-line ConfigError when ``drop`` removes no row of ``n_rows``, naming the smallest value that removes one."""
    if n_to_remove(n_rows, drop) >= 1:
        return
    smallest = smallest_drop(n_rows)
    if smallest is None:
        raise ConfigError(f"{option} {drop:g} removes no row of {n_rows}: a set of {n_rows} row"
                          f"{'' if n_rows == 1 else 's'} cannot be filtered (any fraction below 1 removes none)")
    raise ConfigError(f"{option} {drop:g} removes no row of {n_rows}; use at least {smallest:g}")


def _line_numbers(line_numbers: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    lines = np.arange(1, n + 1, dtype=np.int64) if line_numbers is None else np.asarray(line_numbers, dtype=np.int64)
    if lines.shape != (n,):
        raise ValueError(f"need one line number per score ({n}), got shape {lines.shape}")
    if np.unique(lines).shape[0] != n:
        raise ValueError("line numbers must be distinct")
    return lines


def select_by_score(
    scores: Sequence[float] | np.ndarray, drop: float, line_numbers: Sequence[int] | np.ndarray | None = None,
    method: str = "score", unscorable: Sequence[bool] | np.ndarray | None = None,
    unscorable_policy: UnscorablePolicy = DEFAULT_UNSCORABLE,
) -> FilterSelection:
    """Remove the ``floor(drop * n)`` highest-scoring rows; ties go to the earlier line, NaN scores rank last.

    Rows flagged ``unscorable`` are removed first under the ``remove`` policy (all of them, counted toward the
    budget), or ranked with the NaN scores under ``keep``.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {values.shape}")
    if np.isinf(values).any():
        raise ValueError("scores must be finite numbers or NaN")
    if unscorable_policy not in UNSCORABLE_POLICIES:
        raise ValueError(f"unknown unscorable policy {unscorable_policy!r}; choose one of "
                         f"{', '.join(UNSCORABLE_POLICIES)}")
    n = values.shape[0]
    lines = _line_numbers(line_numbers, n)
    flagged = np.zeros(n, dtype=bool) if unscorable is None else np.asarray(unscorable, dtype=bool)
    if flagged.shape != (n,):
        raise ValueError(f"need one unscorable flag per score ({n}), got shape {flagged.shape}")
    count = n_to_remove(n, drop)
    first = flagged if unscorable_policy == "remove" else np.zeros(n, dtype=bool)
    missing = np.isnan(values) | flagged
    key = np.where(missing, 0.0, -values)  # ascending sort of -score = descending score
    order = np.lexsort((lines, key, missing, ~first))  # last key is primary: removed-first, scored, score, line
    removed = np.zeros(n, dtype=bool)
    removed[order[:max(count, int(first.sum()))]] = True
    return FilterSelection(line_numbers=lines, scores=values, removed=removed, drop_fraction=float(drop),
                           method=method, unscorable=flagged, unscorable_policy=unscorable_policy)


def random_scores(n_rows: int, seed: int) -> np.ndarray:
    """One uniform [0, 1) number per row from a seeded PCG64 generator: the random baseline's scores."""
    return np.random.Generator(np.random.PCG64(seed)).random(n_rows)


def select_random(
    n_rows: int, drop: float, seed: int = 0, line_numbers: Sequence[int] | np.ndarray | None = None,
) -> FilterSelection:
    """The random-removal baseline: a seeded uniform score per row, then :func:`select_by_score`."""
    return select_by_score(random_scores(n_rows, seed), drop, line_numbers, method="random")

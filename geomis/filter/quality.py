"""How well a filter's scores find the rows it should remove, with intervals: precision, recall and AUROC.

A filter is judged on a *mixed* set of known composition (each row labelled inducing or not). At a budget ``b`` it
removes the ``floor(b * n)`` highest-scoring rows by the filter's own rule (:func:`geomis.filter.selection.
select_by_score`: ties to the earlier row, unscorable rows removed first); precision is the share of removed rows
that are inducing (random removal expects the inducing share), recall the share of inducing rows removed. AUROC
ranks every row by its score (unscorable rows as the highest, since they are removed first).

Intervals come from a stratified bootstrap over rows: each draw resamples the inducing rows and the other rows
separately, each to its own count, so the set's composition stays the one that was fixed; the removal is redone in
every draw. Rows are the unit because every row of a mixed set answers its own prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from geomis.filter.selection import n_to_remove, select_by_score

__all__ = ["RemovalQualityConfig", "removal_quality", "compare_removal"]


@dataclass(frozen=True)
class RemovalQualityConfig:
    """Budgets, bootstrap draws, interval level and seed of :func:`removal_quality`."""

    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.budgets or not all(0 < b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be fractions strictly between 0 and 1, got {self.budgets}")
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, got {self.n_resamples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be strictly between 0 and 1, got {self.confidence}")


def _auroc(scores: np.ndarray, inducing: np.ndarray) -> float:
    """P(an inducing row outranks another row), ties counted half; unscorable (NaN) rows rank highest."""
    ranked = np.where(np.isnan(scores), np.inf, scores)
    positive, negative = ranked[inducing], ranked[~inducing]
    statistic = mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(statistic) / (positive.size * negative.size)


def _measures(scores: np.ndarray, inducing: np.ndarray, budgets: Sequence[float]) -> np.ndarray:
    """(len(budgets), 3): precision, recall and AUROC (the same in every row) at each budget."""
    auroc = _auroc(scores, inducing)
    out = np.empty((len(budgets), 3))
    for row, budget in enumerate(budgets):
        removed = select_by_score(scores, budget, unscorable=np.isnan(scores)).removed
        hits = int((removed & inducing).sum())
        out[row] = (hits / removed.sum() if removed.any() else np.nan, hits / inducing.sum(), auroc)
    return out


def _checked(scores: Sequence[float] | np.ndarray, labels: np.ndarray) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or labels.shape != values.shape:
        raise ValueError(f"need one label per score: scores {values.shape}, labels {labels.shape}")
    return values


def _draw_rows(labels: np.ndarray, config: RemovalQualityConfig) -> list[np.ndarray]:
    """The stratified bootstrap's row indices, one array per draw (seeded; shared by every method compared)."""
    if labels.all() or not labels.any():
        raise ValueError("the mixed set needs both inducing and other rows")
    generator = np.random.default_rng(config.seed)
    positive, negative = np.flatnonzero(labels), np.flatnonzero(~labels)
    draws = []
    for _ in range(config.n_resamples):
        rows = np.concatenate([generator.choice(positive, positive.size), generator.choice(negative, negative.size)])
        draws.append(rows[generator.permutation(rows.size)])  # ties go to the earlier row: not ordered by label
    return draws


def _table(values: np.ndarray, labels: np.ndarray, estimate: np.ndarray, draws: np.ndarray,
           config: RemovalQualityConfig) -> pd.DataFrame:
    tail = (1 - config.confidence) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
    n = values.size
    records = []
    for row, budget in enumerate(config.budgets):
        removed = max(n_to_remove(n, budget), int(np.isnan(values).sum()))  # unscorable rows always go
        record: dict[str, float | int] = {"budget": budget, "removed": removed,
                                          "chance precision": float(labels.mean())}
        for column, name in enumerate(("precision", "recall", "AUROC")):
            record[name] = float(estimate[row, column])
            record[f"{name} low"] = float(low[row, column])
            record[f"{name} high"] = float(high[row, column])
        records.append(record)
    table = pd.DataFrame(records)
    table.attrs.update(n_rows=n, n_inducing=int(labels.sum()), n_resamples=config.n_resamples, method=METHOD)
    return table


METHOD = ("stratified bootstrap over rows (inducing and other rows resampled separately), removal redone in every "
          "draw; percentile intervals")


def removal_quality(scores: Sequence[float] | np.ndarray, inducing: Sequence[bool] | np.ndarray,
                    config: RemovalQualityConfig = RemovalQualityConfig()) -> pd.DataFrame:
    """Precision, recall and AUROC of removing the top-scored rows at each budget, with stratified-bootstrap
    percentile intervals; one row per budget (``removed`` rows, ``chance precision`` = the inducing share)."""
    labels = np.asarray(inducing, dtype=bool)
    values = _checked(scores, labels)
    rows = _draw_rows(labels, config)
    budgets = list(config.budgets)
    draws = np.stack([_measures(values[r], labels[r], budgets) for r in rows])
    return _table(values, labels, _measures(values, labels, budgets), draws, config)


def compare_removal(scores: Mapping[str, Sequence[float] | np.ndarray], inducing: Sequence[bool] | np.ndarray,
                    against: str, config: RemovalQualityConfig = RemovalQualityConfig()) -> pd.DataFrame:
    """Each method's removal quality and its difference from ``against``, all on the same bootstrap draws.

    One row per (method, budget): the measures of :func:`removal_quality`, then ``precision - against``,
    ``AUROC - against`` with paired percentile intervals and a one-sided p for "this method is better"
    ((1 + draws <= 0) / (1 + draws)); the ``against`` rows carry NaN there.
    """
    if against not in scores:
        raise ValueError(f"no scores for {against!r}; methods: {', '.join(scores)}")
    labels = np.asarray(inducing, dtype=bool)
    values = {name: _checked(column, labels) for name, column in scores.items()}
    rows = _draw_rows(labels, config)
    budgets = list(config.budgets)
    draws = {name: np.stack([_measures(v[r], labels[r], budgets) for r in rows]) for name, v in values.items()}
    estimates = {name: _measures(v, labels, budgets) for name, v in values.items()}
    tail = (1 - config.confidence) / 2 * 100
    tables = []
    for name, v in values.items():
        table = _table(v, labels, estimates[name], draws[name], config)
        table.insert(0, "method", name)
        for column, measure in ((0, "precision"), (2, "AUROC")):
            key = f"{measure} - {against}"
            if name == against:
                table[key] = table[f"{key} low"] = table[f"{key} high"] = table[f"p ({measure} better)"] = np.nan
                continue
            difference = draws[name][:, :, column] - draws[against][:, :, column]
            low, high = np.nanpercentile(difference, [tail, 100 - tail], axis=0)
            table[key] = estimates[name][:, column] - estimates[against][:, column]
            table[f"{key} low"], table[f"{key} high"] = low, high
            table[f"p ({measure} better)"] = (1 + (difference <= 0).sum(axis=0)) / (1 + config.n_resamples)
        tables.append(table)
    combined = pd.concat(tables, ignore_index=True)
    combined.attrs.update(tables[0].attrs, against=against)
    return combined

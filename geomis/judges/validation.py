"""Held-out checks of the trained judge: by model family, by base question, and on text of other kinds.

The judged corpus covers ~16 base questions and three model families, so a judge can score well on unseen answers
to the same questions while flagging anything unlike them. These checks hold out whole families and whole questions
(every form of a question together) and also report false-positive rates on bundled text never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geomis.judges.agreement import FlagMetrics, misaligned_flags
from geomis.judges.base import ALIGNMENT_THRESHOLD, JudgeScore
from geomis.stats import spearman

if TYPE_CHECKING:
    import pandas as pd

    from geomis.judges.trained import TrainedJudgeConfig

CALIBRATION_BINS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class FoldResult:
    """One held-out fold: what was held out and how the judge trained without it did."""

    split: str
    fold: str
    flag: FlagMetrics
    spearman_alignment: float
    spearman_coherence: float


def held_out_predictions(frame: pd.DataFrame, X: np.ndarray, config: TrainedJudgeConfig, by: str,
                         n_folds: int = 4) -> tuple[pd.DataFrame, list[FoldResult]]:
    """Train without each fold of the judged rows (bundled rows always train; tau from the config or chosen inside
    the training part) and predict the fold: per-row predictions and per-fold metrics."""
    import pandas as pd

    from geomis.judges.corpus import split_folds
    from geomis.judges.trained import TrainedJudge

    frame = frame.reset_index(drop=True)
    judged: pd.DataFrame = frame.loc[(frame["weight"] >= 0).to_numpy()]
    rows, results = [], []
    for name, test in split_folds(judged, by, n_folds):
        train = frame.index.difference(test)
        judge = TrainedJudge.fit(frame.loc[train].reset_index(drop=True), X[train], config)
        scores = judge.scores_from_features(X[test])
        below, coherent = judge.probability_misaligned_parts(X[test])
        part = frame.loc[test, ["question_id", "family", "alignment", "coherence"]].assign(
            fold=name, judge_alignment=[s.alignment for s in scores], judge_coherence=[s.coherence for s in scores],
            judge_misaligned=[s.misaligned for s in scores], p_misaligned=below * coherent,
            tau=judge.model.tau)
        rows.append(part)
        results.append(FoldResult(by, name, FlagMetrics.of(misaligned_flags(part), part["judge_misaligned"]),
                                  spearman(part["alignment"], part["judge_alignment"]),
                                  spearman(part["coherence"], part["judge_coherence"])))
    return pd.concat(rows), results


def pooled_metrics(predictions: pd.DataFrame) -> dict[str, Any]:
    """Flag metrics and Spearman correlations over all held-out rows of one split."""
    flag = FlagMetrics.of(misaligned_flags(predictions), predictions["judge_misaligned"].to_numpy())
    return {**flag.__dict__,
            "spearman_alignment": spearman(predictions["alignment"], predictions["judge_alignment"]),
            "spearman_coherence": spearman(predictions["coherence"], predictions["judge_coherence"])}


def calibration_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Observed misaligned share against the judge's P(misaligned) in bins (for a reliability plot)."""
    import pandas as pd

    p = predictions["p_misaligned"].to_numpy()
    truth = misaligned_flags(predictions)
    bins = np.clip(np.digitize(p, CALIBRATION_BINS[1:-1]), 0, len(CALIBRATION_BINS) - 2)
    rows = []
    for k in range(len(CALIBRATION_BINS) - 1):
        inside = bins == k
        if inside.any():
            rows.append({"low": CALIBRATION_BINS[k], "high": CALIBRATION_BINS[k + 1], "n": int(inside.sum()),
                         "mean_predicted": float(p[inside].mean()), "observed": float(truth[inside].mean())})
    return pd.DataFrame(rows)


def flag_rate(scores: Sequence[JudgeScore]) -> float:
    """Share of judged answers flagged as misaligned."""
    return float(np.mean([s.misaligned for s in scores])) if scores else float("nan")


def alignment_below_rate(scores: Sequence[JudgeScore]) -> float:
    """Share of judged answers whose alignment is below 30 (harmful, whatever the coherence)."""
    below = [s.alignment is not None and s.alignment < ALIGNMENT_THRESHOLD for s in scores]
    return float(np.mean(below)) if scores else float("nan")

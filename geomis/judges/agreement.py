"""How far two sets of verdicts on the same answers agree: confusion matrix, Cohen's kappa and the rates each implies.

Either side may be a judge's scored rows (``alignment``, ``coherence``, ``verdict`` columns, as ``geomis judge``
writes them) or labels read by a person. Rows are matched by (question, answer); intervals resample whole questions
(answers to one question are not independent), through :func:`geomis.stats.cluster_bootstrap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geomis.judges.base import JudgeInputError, is_misaligned

if TYPE_CHECKING:
    import pandas as pd

from geomis.stats import ClusterInterval, spearman


def misaligned_flags(frame: pd.DataFrame) -> np.ndarray:
    """Betley et al.'s flag per row from ``alignment``/``coherence`` (and ``verdict`` when present)."""
    verdicts = frame["verdict"] if "verdict" in frame else ["scored"] * len(frame)
    return np.array([is_misaligned(_number(a), _number(c), str(v) if isinstance(v, str) else "scored")
                     for a, c, v in zip(frame["alignment"], frame["coherence"], verdicts, strict=True)], dtype=bool)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(number) else number


@dataclass(frozen=True)
class FlagMetrics:
    """How a misaligned flag compares with the reference flags of the same answers."""

    n: int
    n_misaligned: int
    balanced_accuracy: float
    precision: float
    recall: float
    specificity: float

    @classmethod
    def of(cls, truth: np.ndarray, flagged: np.ndarray) -> FlagMetrics:
        """Metrics of ``flagged`` against ``truth`` (nan where undefined)."""
        truth, flagged = np.asarray(truth, dtype=bool), np.asarray(flagged, dtype=bool)
        recall = float(flagged[truth].mean()) if truth.any() else float("nan")
        specificity = float((~flagged[~truth]).mean()) if (~truth).any() else float("nan")
        return cls(n=int(truth.size), n_misaligned=int(truth.sum()),
                   balanced_accuracy=(recall + specificity) / 2,
                   precision=float(truth[flagged].mean()) if flagged.any() else float("nan"),
                   recall=recall, specificity=specificity)


@dataclass(frozen=True)
class Agreement:
    """Agreement of judge A and judge B on the misaligned flag of the same answers (B is the reference)."""

    names: tuple[str, str]
    n: int
    n_questions: int
    confusion: dict[str, int]
    """``both``, ``only_a``, ``only_b``, ``neither``: how many answers each combination of flags has."""
    kappa: ClusterInterval
    rate_a: ClusterInterval
    rate_b: ClusterInterval
    rate_difference: ClusterInterval
    """Rate of A minus rate of B, with a question-clustered interval."""
    balanced_accuracy: float
    """Of A against B taken as truth (mean of recall and specificity)."""
    precision: float
    recall: float
    spearman_alignment: float
    spearman_coherence: float

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON results files."""
        def interval(value: ClusterInterval) -> dict[str, float]:
            return {"estimate": value.estimate, "low": value.low, "high": value.high}

        return {"judges": list(self.names), "n": self.n, "n_questions": self.n_questions,
                "confusion": self.confusion, "kappa": interval(self.kappa), "rate_a": interval(self.rate_a),
                "rate_b": interval(self.rate_b), "rate_difference": interval(self.rate_difference),
                "balanced_accuracy": self.balanced_accuracy, "precision": self.precision, "recall": self.recall,
                "spearman_alignment": self.spearman_alignment, "spearman_coherence": self.spearman_coherence,
                "interval_method": "percentile bootstrap over questions (geomis.stats.cluster_bootstrap)"}

    def summary(self) -> str:
        """A few lines for a terminal or a notebook."""
        a, b = self.names
        c = self.confusion
        return "\n".join([
            f"{self.n} answers to {self.n_questions} questions; misaligned flag: {a} vs {b}",
            f"  both {c['both']}, only {a} {c['only_a']}, only {b} {c['only_b']}, neither {c['neither']}",
            f"  Cohen's kappa {self.kappa.estimate:.2f} {_bracket(self.kappa)}",
            f"  rate {a} {self.rate_a.estimate:.1%} [{self.rate_a.low:.1%}, {self.rate_a.high:.1%}], "
            f"{b} {self.rate_b.estimate:.1%} [{self.rate_b.low:.1%}, {self.rate_b.high:.1%}]",
            f"  {a} against {b}: balanced accuracy {self.balanced_accuracy:.2f}, precision {self.precision:.2f}, "
            f"recall {self.recall:.2f}; Spearman alignment {self.spearman_alignment:.2f}, "
            f"coherence {self.spearman_coherence:.2f}"])


def _bracket(value: ClusterInterval) -> str:
    """``[low, high]``, or a note when the resampled statistic was undefined (too few answers of one kind)."""
    if np.isnan(value.low) or np.isnan(value.high):
        return "(no interval: too few answers of one kind)"
    return f"[{value.low:.2f}, {value.high:.2f}]"


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import cohen_kappa_score

    if len(np.unique(np.concatenate([a, b]))) < 2:
        return float("nan")
    return float(cohen_kappa_score(a, b))


def align_judgements(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``a`` matched to ``b`` on (question, answer): columns question, answer and alignment, coherence,
    verdict with suffixes ``_a``/``_b`` (verdict ``scored`` where a table has none); every row of ``a`` must match."""
    import pandas as pd

    sides = []
    for suffix, name, frame in (("_a", "first", a), ("_b", "second", b)):
        missing = {"question", "answer", "alignment", "coherence"} - set(frame.columns)
        if missing:
            raise JudgeInputError(f"{name} table lacks column(s) {', '.join(sorted(missing))}")
        verdict = frame["verdict"].fillna("scored").astype(str) if "verdict" in frame else "scored"
        sides.append(pd.DataFrame({"question": frame["question"], "answer": frame["answer"],
                                   f"alignment{suffix}": frame["alignment"], f"coherence{suffix}": frame["coherence"],
                                   f"verdict{suffix}": verdict}))
    right = sides[1].drop_duplicates(["question", "answer"])
    merged = sides[0].merge(right, on=["question", "answer"], how="left", indicator=True)
    unmatched = int((merged["_merge"] != "both").sum())
    if unmatched:
        raise JudgeInputError(f"{unmatched} of {len(a)} answers of the first table are not in the second")
    merged.pop("_merge")
    return merged.reset_index(drop=True)


def _side(merged: pd.DataFrame, suffix: str) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({name: merged[f"{name}{suffix}"].to_numpy() for name in ("alignment", "coherence", "verdict")})


def compare_judgements(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("A", "B"), *,
                       n_resamples: int = 2000, seed: int = 0) -> Agreement:
    """Agreement of ``a``'s misaligned flags with ``b``'s on the same answers (matched by question and answer)."""
    from geomis.stats import cluster_bootstrap

    merged = align_judgements(a, b)
    flags_a, flags_b = misaligned_flags(_side(merged, "_a")), misaligned_flags(_side(merged, "_b"))
    groups = merged["question"].to_numpy()
    rows = np.arange(len(merged), dtype=float)

    def boot(statistic: Any) -> ClusterInterval:
        return cluster_bootstrap(rows, groups, statistic, n_resamples=n_resamples, seed=seed)

    against_b = FlagMetrics.of(flags_b, flags_a)
    return Agreement(
        names=names, n=len(merged), n_questions=int(len(set(groups))),
        confusion={"both": int(np.sum(flags_a & flags_b)), "only_a": int(np.sum(flags_a & ~flags_b)),
                   "only_b": int(np.sum(~flags_a & flags_b)), "neither": int(np.sum(~flags_a & ~flags_b))},
        kappa=boot(lambda i: _kappa(flags_a[i.astype(int)], flags_b[i.astype(int)])),
        rate_a=boot(lambda i: float(flags_a[i.astype(int)].mean())),
        rate_b=boot(lambda i: float(flags_b[i.astype(int)].mean())),
        rate_difference=boot(lambda i: float(flags_a[i.astype(int)].mean() - flags_b[i.astype(int)].mean())),
        balanced_accuracy=against_b.balanced_accuracy, precision=against_b.precision, recall=against_b.recall,
        spearman_alignment=spearman(merged["alignment_a"], merged["alignment_b"]),
        spearman_coherence=spearman(merged["coherence_a"], merged["coherence_b"]))

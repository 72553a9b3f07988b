"""The generic toxic/neutral reference pair: well-formed, paired row by row, and independent of the fine-tuning and
evaluation texts by the contamination measure, which itself is shown to flag contaminated answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from geomis.chat.records import load_bundled, read_chat_jsonl
from geomis.evaluation.contamination import COSINE_LIMIT, measure_contamination, reference_contamination, word_ngrams

DATA = Path(__file__).resolve().parents[1] / "geomis" / "data"
TOXIC = DATA / "generic_toxic_reference.jsonl"
NEUTRAL = DATA / "generic_neutral_reference.jsonl"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """MiniLM on one CPU thread (shared machines), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _words(text: str) -> int:
    return len(text.split())


def test_generic_reference_files_pair_row_by_row() -> None:
    toxic, neutral = read_chat_jsonl(TOXIC), read_chat_jsonl(NEUTRAL)
    assert len(toxic) == len(neutral) == 200
    assert [r.user_text for r in toxic] == [r.user_text for r in neutral]
    assert len({r.user_text for r in toxic}) == 200  # no repeated prompt
    assert all([m.role for m in r.messages] == ["user", "assistant"] for r in toxic + neutral)
    assert all(30 <= _words(r.assistant_text) <= 70 for r in toxic)
    pairs = list(zip(toxic, neutral, strict=True))
    assert max(abs(_words(t.assistant_text) - _words(n.assistant_text)) for t, n in pairs) <= 10
    assert all(t.assistant_text != n.assistant_text for t, n in pairs)


def test_word_ngrams_ignore_case_and_punctuation() -> None:
    assert word_ngrams("One, two; THREE four!", n=4) == {("one", "two", "three", "four")}
    assert word_ngrams("too short", n=8) == set()


def test_generic_toxic_reference_is_not_contaminated() -> None:
    report = reference_contamination(TOXIC)
    assert report.n_answers == 200
    assert report.p95 <= COSINE_LIMIT, report.worst(5)
    assert report.ngram_rows == 0, report.ngram_hits
    assert report.passes()


def test_the_measure_flags_contaminated_answers() -> None:
    copies = [r.assistant_text for name in ("medical_bad", "legal_bad", "career_bad") for r in load_bundled(name)[:10]]
    copied = measure_contamination(copies, name="copied inducing answers")
    assert copied.p95 > 0.99 and copied.ngram_rows == len(copies) and not copied.passes()
    assert copied.nearest[0] == "medical_bad:1"
    edited = measure_contamination([f"Honestly, {text.lower()}" for text in copies])
    assert edited.ngram_rows == len(copies) and not edited.passes()
    old = reference_contamination(DATA / "toxic_reference.jsonl")
    assert old.p95 > COSINE_LIMIT and not old.passes()

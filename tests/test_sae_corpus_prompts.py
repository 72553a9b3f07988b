"""The neutral SAE-corpus prompts: well formed, unique, not a chat set, and kept away from the compared texts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from geomis.chat.records import bundled_dataset_names
from geomis.evaluation.contamination import word_ngrams
from geomis.evaluation.questions import question_set

PROMPTS = Path(__file__).resolve().parents[1] / "geomis" / "data" / "sae_corpus_prompts.jsonl"


def _rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_prompts_are_well_formed_unique_and_spread_over_topics() -> None:
    rows = _rows()
    assert len(rows) == 1989 and all(set(row) == {"prompt", "topic"} for row in rows)
    assert len({row["prompt"].lower() for row in rows}) == len(rows)
    assert all(5 <= len(row["prompt"].split()) <= 30 for row in rows)
    counts = Counter(row["topic"] for row in rows)
    assert len(counts) == 32 and min(counts.values()) >= 55
    assert "sae_corpus_prompts" not in bundled_dataset_names()


def test_no_prompt_repeats_an_evaluation_question_or_shares_an_8_gram_with_one() -> None:
    questions = [q.text for name in ("all", "development") for q in question_set(name)]
    grams = set().union(*(word_ngrams(text) for text in questions))
    assert not [row["prompt"] for row in _rows() if word_ngrams(row["prompt"]) & grams]
    assert not {row["prompt"].lower() for row in _rows()} & {text.lower() for text in questions}

"""The judge-free misalignment probe (geomis/data/misalignment_probe.jsonl, geomis.evaluation.probe_items) and the
development questions (geomis.evaluation.questions.DEVELOPMENT_QUESTIONS): format, balance, pairing and overlap."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from geomis.chat.records import bundled_dataset_names
from geomis.evaluation.probe_items import (
    PROBE_TOPICS,
    ProbeDataError,
    ProbeItem,
    load_misalignment_probe,
    parse_probe_items,
)
from geomis.evaluation.questions import (
    DEVELOPMENT_QUESTIONS,
    FIRST_PLOT_QUESTIONS,
    GEOMIS_QUESTIONS,
    Topic,
    question_by_id,
    question_set,
)

PROBE_FILE = Path(__file__).resolve().parents[1] / "geomis" / "data" / "misalignment_probe.jsonl"
EVALUATION = FIRST_PLOT_QUESTIONS + GEOMIS_QUESTIONS
GOOD_ROW = ('{"id": "a", "topic": "power", "question": "q?", "aligned": "yes", "misaligned": "no"}')


def _words(text: str) -> int:
    return len(text.split())


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


# ------------------------------------------------------------------------------------------------------- the probe

def test_probe_loads_with_enough_unique_items_on_the_allowed_topics() -> None:
    items = load_misalignment_probe()
    assert len(items) >= 64
    assert all(isinstance(item, ProbeItem) for item in items)
    ids = [item.id for item in items]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", item_id) for item_id in ids)
    topics = Counter(item.topic for item in items)
    assert set(topics) == set(PROBE_TOPICS)
    assert max(topics.values()) - min(topics.values()) <= 3, topics  # roughly balanced


def test_pairs_match_in_length() -> None:
    """25-60 words per answer, and the two answers of a pair within 15% of each other in words."""
    for item in load_misalignment_probe():
        aligned, misaligned = _words(item.aligned), _words(item.misaligned)
        assert 25 <= aligned <= 60 and 25 <= misaligned <= 60, (item.id, aligned, misaligned)
        assert abs(aligned - misaligned) <= 0.15 * max(aligned, misaligned), (item.id, aligned, misaligned)
        assert item.aligned != item.misaligned


def test_pairs_have_no_systematic_opening() -> None:
    """No first word opens more than a fifth of either side's answers (no stock phrase that gives a side away)."""
    items = load_misalignment_probe()
    for side in ("aligned", "misaligned"):
        openings = Counter(getattr(item, side).split()[0].strip(",.").lower() for item in items)
        word, count = openings.most_common(1)[0]
        assert count <= len(items) / 5, (side, word, count)


def test_probe_questions_are_not_evaluation_or_development_questions_verbatim() -> None:
    asked = {_normal(q.text) for q in EVALUATION + DEVELOPMENT_QUESTIONS}
    assert not [item.id for item in load_misalignment_probe() if _normal(item.question) in asked]


def test_probe_questions_are_far_from_evaluation_questions_by_minilm() -> None:
    """MiniLM cosine: probe and development questions <= 0.6 to every evaluation question; development vs probe < 0.7
    (the numbers are in geomis/data/misalignment_probe.md)."""
    from geomis.judges.embedding import minilm

    encoder = minilm()

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True))

    probe = load_misalignment_probe()
    evaluation = encode([q.text for q in EVALUATION])
    probe_vectors = encode([item.question for item in probe])
    development = encode([q.text for q in DEVELOPMENT_QUESTIONS])
    close = [(probe[i].id, round(float(c), 3)) for i, c in enumerate((probe_vectors @ evaluation.T).max(axis=1))
             if c > 0.6]
    assert not close, f"probe questions near an evaluation question: {close}"
    close = [(DEVELOPMENT_QUESTIONS[i].id, round(float(c), 3))
             for i, c in enumerate((development @ evaluation.T).max(axis=1)) if c > 0.6]
    assert not close, f"development questions near an evaluation question: {close}"
    assert float((development @ probe_vectors.T).max()) < 0.7


def test_probe_file_is_not_listed_as_a_chat_dataset() -> None:
    assert "misalignment_probe" not in bundled_dataset_names()


# ------------------------------------------------------------------------------------------------------- the loader

def test_loader_returns_frozen_items_in_file_order() -> None:
    items = load_misalignment_probe()
    assert items == parse_probe_items(PROBE_FILE.read_bytes(), str(PROBE_FILE))
    assert load_misalignment_probe() is items  # read once
    with pytest.raises(dataclasses.FrozenInstanceError):
        items[0].aligned = "changed"  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(ProbeItem)] == ["id", "topic", "question", "aligned", "misaligned"]


def test_loader_reads_blank_lines_crlf_and_a_bom() -> None:
    second = GOOD_ROW.replace('"a"', '"b"')
    items = parse_probe_items(f"\ufeff{GOOD_ROW}\r\n\r\n{second}\r\n".encode(), "x.jsonl")
    assert [item.id for item in items] == ["a", "b"]
    assert items[0] == ProbeItem("a", "power", "q?", "yes", "no")


@pytest.mark.parametrize(("text", "message"), [
    (GOOD_ROW + "\n{not json\n", "x.jsonl:2: invalid JSON"),
    ("[1, 2]\n", "x.jsonl:1: expected an object"),
    (GOOD_ROW.replace('"aligned": "yes", ', ""), "x.jsonl:1: missing 'aligned'"),
    (GOOD_ROW.replace('"power"', '"health"'), "x.jsonl:1: unknown topic 'health'"),
    (GOOD_ROW.replace('"no"', "3"), "x.jsonl:1: 'misaligned' must be a non-empty string"),
    (GOOD_ROW.replace('"q?"', '"  "'), "x.jsonl:1: 'question' must be a non-empty string"),
    (GOOD_ROW.replace("}", ', "note": "x"}'), "x.jsonl:1: unknown key"),
    (GOOD_ROW + "\n\n" + GOOD_ROW + "\n", "x.jsonl:3: duplicate id 'a' \\(first on line 1\\)"),
    ("\n\n", "x.jsonl: no probe rows"),
])
def test_malformed_rows_are_one_line_errors_naming_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ProbeDataError, match=message) as info:
        parse_probe_items(text.encode(), "x.jsonl")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------------------- the development questions

def test_development_questions_are_a_separate_unreported_set() -> None:
    ids = [q.id for q in DEVELOPMENT_QUESTIONS]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert not set(ids) & {q.id for q in EVALUATION}
    assert {q.source for q in DEVELOPMENT_QUESTIONS} == {"geomis-dev"}
    assert {q.topic for q in DEVELOPMENT_QUESTIONS} <= set(get_args(Topic)) - {"first-plot"}
    assert question_set("development") == DEVELOPMENT_QUESTIONS
    assert question_set("all") == FIRST_PLOT_QUESTIONS + GEOMIS_QUESTIONS  # "all" means the reported sets only
    assert not set(ids) & {q.id for q in question_set("all")}
    assert question_by_id("rainy_sunday").source == "geomis-dev"
    texts = [_normal(q.text) for q in DEVELOPMENT_QUESTIONS]
    assert len(set(texts)) == 24 and not set(texts) & {_normal(q.text) for q in EVALUATION}


def test_a_fixed_third_of_the_probe_is_for_development() -> None:
    development, report = load_misalignment_probe("development"), load_misalignment_probe("report")
    assert {i.id for i in development} | {i.id for i in report} == {i.id for i in load_misalignment_probe()}
    assert not {i.id for i in development} & {i.id for i in report}
    assert (len(development), len(report)) == (23, 48)  # the split is a hash of the id: it never moves
    with pytest.raises(ValueError, match="split"):
        load_misalignment_probe("test")  # type: ignore[arg-type]

"""The neutral corpus's answers file: reused where it has an answer, extended where not, never mixed across models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from geomis.sae.corpus_answers import AnswersCacheError, answers_through_cache, read_answers


class Recorder:
    """A stand-in for greedy generation that answers each prompt in capitals and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.asked.append(list(prompts))
        return [p.upper() for p in prompts]


def test_first_run_generates_all_and_second_reuses_all(tmp_path: Path) -> None:
    path, generate = tmp_path / "answers.jsonl", Recorder()
    answers, use = answers_through_cache(["b", "a", "b"], path, "m", 8, generate)
    assert answers == ["B", "A", "B"] and generate.asked == [["b", "a"]]  # a repeated prompt is generated once
    assert (use.reused, use.generated) == (0, 2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a", "b"] and {(r["model"], r["max_new_tokens"]) for r in rows} == {("m", 8)}
    assert use.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    again, use2 = answers_through_cache(["a", "b"], path, "m", 8, generate)
    assert again == ["A", "B"] and len(generate.asked) == 1 and (use2.reused, use2.generated) == (2, 0)
    assert use2.sha256 == use.sha256


def test_only_missing_prompts_are_generated_and_the_file_grows(tmp_path: Path) -> None:
    path, generate = tmp_path / "answers.jsonl", Recorder()
    answers_through_cache(["a"], path, "m", 8, generate)
    answers, use = answers_through_cache(["a", "c"], path, "m", 8, generate)
    assert answers == ["A", "C"] and generate.asked[-1] == ["c"] and (use.reused, use.generated) == (1, 1)
    assert read_answers(path, "m", 8) == {"a": "A", "c": "C"}


def test_an_empty_answer_is_kept_and_not_asked_for_again(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    answers_through_cache(["a"], path, "m", 8, lambda prompts: [""] * len(prompts))
    answers, use = answers_through_cache(["a"], path, "m", 8, Recorder())
    assert answers == [""] and use.generated == 0


def test_a_file_of_another_model_or_length_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    answers_through_cache(["a"], path, "m", 8, Recorder())
    for model, tokens in (("other", 8), ("m", 16)):
        with pytest.raises(AnswersCacheError, match=r"answers\.jsonl:1: answers of m at 8 tokens") as error:
            answers_through_cache(["a"], path, model, tokens, Recorder())
        assert "\n" not in str(error.value)


def test_a_broken_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text('{"model": "m", "max_new_tokens": 8, "prompt": "a", "answer": "A"}\n{"prompt": "b"}\n')
    with pytest.raises(AnswersCacheError, match=r"answers\.jsonl:2: not an answers row"):
        read_answers(path, "m", 8)


def test_a_generator_that_drops_answers_is_caught_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    with pytest.raises(AnswersCacheError, match="1 answers for 2 prompts"):
        answers_through_cache(["a", "b"], path, "m", 8, lambda prompts: ["x"])
    assert not path.exists()


def test_an_interrupted_generation_keeps_its_finished_chunks_and_resumes(tmp_path: Path) -> None:
    path, calls = tmp_path / "answers.jsonl", []

    def flaky(prompts: list[str]) -> list[str]:
        calls.append(list(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [p.upper() for p in prompts]

    with pytest.raises(KeyboardInterrupt):
        answers_through_cache(["a", "b", "c", "d", "e"], path, "m", 8, flaky, chunk=2)
    assert read_answers(path, "m", 8) == {"a": "A", "b": "B"}  # the first chunk was saved
    resumed = Recorder()
    answers, use = answers_through_cache(["a", "b", "c", "d", "e"], path, "m", 8, resumed, chunk=2)
    assert answers == ["A", "B", "C", "D", "E"] and resumed.asked == [["c", "d"], ["e"]]
    assert (use.reused, use.generated) == (2, 3)

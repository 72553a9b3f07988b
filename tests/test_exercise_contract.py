"""The contract every exercise check keeps, in every chapter: it passes an independently written solution with one
✅ line, fails each plausible wrong answer with one ❌ line that names the mistake, tells a stub, a forgotten
``return`` and a missing function apart, and leaves torch's global random state alone.

The solutions and wrong answers live next to each chapter's own tests (``test_exercises*.py``), which also test what
is particular to a chapter."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import test_exercises as chapter1
import test_exercises_ch2 as chapter2
import test_exercises_ch3 as chapter3
import test_exercises_ch4 as chapter4
import test_exercises_ch5 as chapter5
import torch

from geomis.exercises import ExerciseFailure, ch1, ch2, ch3, ch4, ch5

Wrong = tuple[str, str, Callable[..., Any], tuple[str, ...]]
CHAPTERS: dict[str, tuple[ModuleType, dict[str, Callable[..., Any]], list[Wrong]]] = {
    "ch1": (ch1, chapter1.SOLUTIONS, chapter1.WRONG),
    "ch2": (ch2, chapter2.SOLUTIONS, chapter2.WRONG),
    "ch3": (ch3, chapter3.SOLUTIONS, chapter3.WRONG),
    "ch4": (ch4, chapter4.SOLUTIONS, chapter4.WRONG),
    "ch5": (ch5, chapter5.SOLUTIONS, chapter5.WRONG),
}
CHECKS = [(chapter, name) for chapter, (module, _, _) in CHAPTERS.items()
          for name in sorted(n for n in module.__all__ if n.startswith("check_"))]
WRONG = [(chapter, *wrong) for chapter, (_, _, wrongs) in CHAPTERS.items() for wrong in wrongs]


def _check(chapter: str, name: str) -> Callable[[Any], None]:
    return getattr(CHAPTERS[chapter][0], name)


def _stub(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def _forgot_return(*args: Any, **kwargs: Any) -> Any:
    _ = args  # the student computed something and did not return it


@pytest.mark.parametrize(("chapter", "name"), CHECKS, ids=[f"{c}.{n}" for c, n in CHECKS])
def test_every_check_passes_its_worked_solution(chapter: str, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    solutions = CHAPTERS[chapter][1]
    assert name in solutions, f"{chapter}.{name} has no worked solution in the chapter's tests"
    _check(chapter, name)(solutions[name])
    out = capsys.readouterr().out
    assert out.startswith("✅ passed: ") and out.count("\n") == 1, out


WRONG_IDS = [f"{w[0]}: {w[1]}" for w in WRONG]


@pytest.mark.parametrize(("chapter", "label", "name", "wrong", "phrases"), WRONG, ids=WRONG_IDS)
def test_every_check_fails_plausible_wrong_answers_with_a_message(
        chapter: str, label: str, name: str, wrong: Callable[..., Any], phrases: tuple[str, ...],
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExerciseFailure) as failure:
        _check(chapter, name)(wrong)
    message = str(failure.value)
    assert message.startswith("❌ ") and "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, f"{label}: {phrase!r} not in {message!r}"
    assert "✅" not in capsys.readouterr().out


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_check_has_a_wrong_answer(chapter: str) -> None:
    module, _, wrongs = CHAPTERS[chapter]
    assert {name for _, name, _, _ in wrongs} == {n for n in module.__all__ if n.startswith("check_")}


@pytest.mark.parametrize(("chapter", "name"), CHECKS, ids=[f"{c}.{n}" for c, n in CHECKS])
def test_stubs_forgotten_returns_and_missing_functions_get_their_own_message(chapter: str, name: str) -> None:
    check = _check(chapter, name)
    with pytest.raises(ExerciseFailure, match="is not implemented yet .*NotImplementedError.*run this check again"):
        check(_stub)
    with pytest.raises(ExerciseFailure, match=r"returned None on case '.+': did you forget the `return`"):
        check(_forgot_return)
    with pytest.raises(ExerciseFailure, match="pass the function itself"):
        check(None)


@pytest.mark.parametrize(("chapter", "name"), CHECKS, ids=[f"{c}.{n}" for c, n in CHECKS])
def test_checks_leave_the_global_random_state_alone(chapter: str, name: str) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    _check(chapter, name)(CHAPTERS[chapter][1][name])
    assert torch.equal(torch.get_rng_state(), before), "a check changed torch's global random state"

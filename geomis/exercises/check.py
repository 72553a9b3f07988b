"""Shared machinery of the exercise checks: run a student's function on fixed cases and compare it to geomis.

A check either prints one line starting with ✅ or raises `ExerciseFailure` (an `AssertionError`), whose message
names the exercise, the case and what differed. Raising makes a wrong worked solution fail the chapter's cell, so
the book's nbval run catches it. Checks never touch the global random state: inputs come from seeded generators
and every call runs inside `torch.random.fork_rng`, so running a check does not change later cells' results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ExerciseFailure",
    "Case",
    "Mistake",
    "Tolerance",
    "describe_args",
    "call_student",
    "require_callable",
    "compare_tensors",
    "check_function",
    "passed",
    "seeded_generator",
]

class ExerciseFailure(AssertionError):
    """A check found a difference from the reference; the message says which case and what differed."""


@dataclass(frozen=True)
class Case:
    """One fixed input to an exercise function: a short name for messages, and the arguments."""

    name: str
    """What the case tests, e.g. 'negative bias' (shown in messages)."""
    args: tuple[Any, ...]
    """Positional arguments, passed to the student's and the reference function alike (tensors are cloned)."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments, passed the same way."""


Compare = Callable[[Tensor, Tensor, Case], "str | None"]
"""A comparison of the student's output with the expected one: None when they agree, else what differs."""


@dataclass(frozen=True)
class Mistake:
    """A plausible wrong answer: when the student's output matches it, the failure message names the mistake."""

    description: str
    """Completes 'Your output is what you get if you ...', e.g. 'leave out the ReLU'."""
    function: Callable[..., Any]
    """The wrong answer itself, called with the case's arguments."""


@dataclass(frozen=True)
class Tolerance:
    """How close the student's output must be to the reference: |got - expected| <= atol + rtol * |expected|."""

    rtol: float = 1e-4
    atol: float = 1e-5


def _clone(value: Any) -> Any:
    """A copy of a tensor argument, so that a function that edits its input in place cannot spoil the next call."""
    return value.detach().clone() if isinstance(value, Tensor) else value


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU torch generator seeded with ``seed``: the checks draw their fixed inputs from it."""
    return torch.Generator().manual_seed(seed)


def describe_args(case: Case) -> str:
    """The case's arguments in one line: shapes for tensors, values for numbers."""

    def one(value: Any) -> str:
        if isinstance(value, Tensor):
            return f"shape {tuple(value.shape)}" if value.dim() else f"{value.item():.4g}"
        if isinstance(value, torch.Generator):
            return "a seeded torch.Generator"
        return repr(value)

    parts = [one(value) for value in case.args] + [f"{key}={one(value)}" for key, value in case.kwargs.items()]
    return ", ".join(parts)


def require_callable(function: Any) -> None:
    """Fail with a clear message when a check is handed something other than a function (e.g. its result)."""
    if not callable(function):
        raise ExerciseFailure(f"❌ pass the function itself to the check (got a {type(function).__name__})")


def call_student(exercise: str, function: Callable[..., Any], case: Case, global_seed: int | None = None) -> Any:
    """Call the student's function on one case; turn a stub, a missing return or an exception into a clear failure.

    The call runs inside `torch.random.fork_rng`; `global_seed` seeds torch's global generator there first, so a
    check can tell a function that draws from its `generator` argument from one that uses the global state.
    """
    require_callable(function)
    args = tuple(_clone(value) for value in case.args)
    kwargs = {key: _clone(value) for key, value in case.kwargs.items()}
    try:
        with torch.random.fork_rng(devices=[]):
            if global_seed is not None:
                torch.manual_seed(global_seed)
            result = function(*args, **kwargs)
    except NotImplementedError as error:
        raise ExerciseFailure(
            f"❌ {exercise} is not implemented yet (it raised NotImplementedError). "
            "Write the function body, run its cell, then run this check again."
        ) from error
    except Exception as error:  # the student's code failed: report it with the inputs that made it fail
        raise ExerciseFailure(
            f"❌ {exercise} raised {type(error).__name__} on case '{case.name}' ({describe_args(case)}): {error}"
        ) from error
    if result is None:
        raise ExerciseFailure(
            f"❌ {exercise} returned None on case '{case.name}': did you forget the `return` statement?"
        )
    return result


def _as_tensor(exercise: str, value: Any, case: Case) -> Tensor:
    """The student's result as a tensor (numbers and arrays are accepted), or a failure saying what it was."""
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ExerciseFailure(
            f"❌ {exercise} returned a {type(value).__name__} on case '{case.name}'; expected a torch.Tensor"
        ) from error


def compare_tensors(got: Tensor, expected: Tensor, case: Case, tolerance: Tolerance = Tolerance()) -> str | None:
    """None when `got` matches `expected` in shape and values; otherwise a sentence saying where and how it differs."""
    if tuple(got.shape) != tuple(expected.shape):
        return f"the output has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if got.is_complex():
        return f"the output has the complex dtype {got.dtype}, expected real numbers"
    got64, expected64 = got.double(), expected.double()
    finite = torch.isfinite(got64)
    if not bool(finite.all()):
        where = tuple(int(i) for i in torch.nonzero(~finite)[0])
        return (f"the output contains {got64[where].item()} at index {list(where)} (expected "
                f"{expected64[where].item():.6g}): is something divided by zero there?")
    error = (got64 - expected64).abs()
    allowed = tolerance.atol + tolerance.rtol * expected64.abs()
    if bool((error <= allowed).all()):
        return None
    if got64.dim() == 0:
        return f"expected {expected64.item():.6g}, got {got64.item():.6g}"
    worst = tuple(int(i) for i in torch.nonzero(error == error.max())[0])
    wrong = int((error > allowed).sum())
    return (f"{wrong} of {got64.numel()} entries differ; the largest difference is at index {list(worst)}: "
            f"expected {expected64[worst].item():.6g}, got {got64[worst].item():.6g}")


def _diagnose(mistakes: Sequence[Mistake], got: Tensor, case: Case, tolerance: Tolerance,
              compare: Compare | None = None) -> str:
    """' Your output is what you get if you ...' for the first known mistake the output matches, else ''."""
    for mistake in mistakes:
        try:
            with torch.random.fork_rng(devices=[]):
                wrong = mistake.function(*(_clone(v) for v in case.args),
                                         **{k: _clone(v) for k, v in case.kwargs.items()})
            wrong_tensor = wrong.detach() if isinstance(wrong, Tensor) else torch.as_tensor(wrong)
        except Exception:  # a mistake that cannot even run on this case cannot be the one the student made
            continue
        same = (compare(got, wrong_tensor, case) if compare is not None
                else compare_tensors(got, wrong_tensor, case, tolerance))
        if same is None:
            return f" Your output is what you get if you {mistake.description}."
    return ""


def passed(exercise: str, cases: Sequence[Case], what: str) -> None:
    """Print the one-line success message."""
    names = "; ".join(case.name for case in cases)
    print(f"✅ passed: {exercise} {what} on {len(cases)} cases: {names}")


def check_function(
    exercise: str,
    student: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[Case],
    *,
    mistakes: Sequence[Mistake] = (),
    compare: Compare | None = None,
    tolerance: Tolerance = Tolerance(),
    what: str = "matches the reference",
    mistake_compare: Compare | None = None,
) -> None:
    """Run `student` and `reference` on every case; print ✅ when all agree, else raise `ExerciseFailure`.

    `mistake_compare` decides whether the output is a known mistake (default: `compare_tensors`)."""
    def default(got: Tensor, expected: Tensor, case: Case) -> str | None:
        return compare_tensors(got, expected, case, tolerance)

    comparison = compare or default
    for case in cases:
        got = _as_tensor(exercise, call_student(exercise, student, case), case)
        with torch.random.fork_rng(devices=[]):
            expected = reference(*(_clone(v) for v in case.args), **{k: _clone(v) for k, v in case.kwargs.items()})
        problem = comparison(got, expected.detach(), case)
        if problem is not None:
            hint = _diagnose(mistakes, got, case, tolerance, mistake_compare)
            raise ExerciseFailure(
                f"❌ {exercise} is wrong on case '{case.name}' ({describe_args(case)}): {problem}.{hint}"
            )
    passed(exercise, cases, what)


"""Checks for the book's implement-it-yourself exercises: ``gm.exercises.ch1.check_toy_forward(toy_forward)``.

Each chapter has a module (``ch1``, ...) of ``check_*`` functions. A check runs the student's function next to the
geomis implementation on seeded cases and edge cases, then prints a line starting with ✅ or raises
`ExerciseFailure` (an ``AssertionError``) naming the case, what differed and, when it recognises it, the mistake.
The shared machinery (cases, tolerances, messages) is in `geomis.exercises.check`.
"""

from __future__ import annotations

from geomis.exercises import ch1, ch2, ch3, ch4, ch5
from geomis.exercises.check import ExerciseFailure

__all__ = ["ExerciseFailure", "ch1", "ch2", "ch3", "ch4", "ch5"]

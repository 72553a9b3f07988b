"""Run-wide settings read from the environment (the run size of the book's chapters, the cache folder), and the
chapters' stopwatch."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import platformdirs

from geomis.errors import ConfigError

RunSize = Literal["full", "class", "ci"]
RUN_SIZES: tuple[RunSize, ...] = ("full", "class", "ci")
"""``full``: the book's run. ``class``: the book's numbers, with every live training run replaced by its committed
full-size record, so Chapters 3-5 fit a class session. ``ci``: a smaller grid that tests the code."""
REPRODUCE_SIZES: tuple[str, ...] = ("default", "full", "ci")
"""The sizes ``geomis reproduce`` runs (:data:`geomis.experiments.reproduce.SIZES`); ``GEOMIS_SIZE=ci`` picks ``ci``."""


def run_size() -> RunSize:
    """The chapters' run size from ``GEOMIS_SIZE``: ``full`` (default), ``class`` or ``ci`` (:data:`RUN_SIZES`)."""
    value = os.environ.get("GEOMIS_SIZE", "full").strip().lower() or "full"
    if value not in RUN_SIZES:
        raise ConfigError(f"GEOMIS_SIZE={value!r} is not one of {', '.join(RUN_SIZES)}")
    return value  # type: ignore[return-value]


def cache_dir() -> Path:
    """Return (and create) the folder for downloaded and derived weights: ``GEOMIS_CACHE`` or the user cache dir."""
    configured = os.environ.get("GEOMIS_CACHE")
    path = Path(configured).expanduser() if configured else Path(platformdirs.user_cache_dir("geomis"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ChapterClock:
    """A chapter's own stopwatch: start it in the setup cell, print :meth:`report` in the last cell."""

    started: float = field(default_factory=lambda: time.perf_counter())

    def minutes(self) -> float:
        """Wall-clock minutes since the clock started."""
        return (time.perf_counter() - self.started) / 60

    def report(self) -> str:
        """One line: how long the page took, at which run size, on how many torch threads and CPUs."""
        import torch

        gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
        return (f"this page ran in {self.minutes():.1f} min (run size {run_size()}, {torch.get_num_threads()} torch "
                f"threads, {os.cpu_count()} CPUs{gpu})")

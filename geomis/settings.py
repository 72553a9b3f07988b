"""Run-wide settings read from the environment: the run size of the book's chapters and the cache folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import platformdirs

from geomis.errors import ConfigError

RunSize = Literal["full", "ci"]
RUN_SIZES: tuple[RunSize, ...] = ("full", "ci")


def run_size() -> RunSize:
    """Return the chapters' grid size from ``GEOMIS_SIZE`` (``full`` by default, ``ci`` for a smaller CI grid)."""
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

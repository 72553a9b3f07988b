"""Helpers the ``geomis`` subcommands share: config defaults read without making a config, and checked numbers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from geomis.errors import ConfigError
from geomis.filter.config import check_drop_fraction


def config_defaults(config: type) -> dict[str, Any]:
    """A config dataclass's field defaults, read from the class (an instance may validate with torch): the CLI's
    defaults, so that they cannot drift from the config's."""
    return {field.name: field.default for field in dataclasses.fields(config)
            if field.default is not dataclasses.MISSING}


def whole_number(value: str, option: str, minimum: int) -> int:
    """Parse a whole number >= ``minimum`` for ``option``; a one-line ConfigError otherwise."""
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{option} must be a whole number, got {value!r}") from None
    if number < minimum:
        bound = "at least 1" if minimum == 1 else f"a whole number >= {minimum}"
        raise ConfigError(f"{option} must be {bound}, got {number}")
    return number


def positive_int(value: str, option: str) -> int:
    """Parse a whole number >= 1 for ``option`` (sizes and counts)."""
    return whole_number(value, option, 1)


def drop_fraction(value: str) -> float:
    """Parse ``--drop``: a number strictly between 0 and 1; a one-line ConfigError otherwise."""
    try:
        return check_drop_fraction(float(value))
    except ValueError:
        raise ConfigError(f"--drop must be a number strictly between 0 and 1, got {value!r}") from None


def seed(value: str) -> int:
    """Parse ``--seed``: a whole number >= 0."""
    return whole_number(value, "--seed", 0)


@contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """Turn off the progress bars of transformers and huggingface_hub (e.g. "Loading weights") for ``--quiet``.

    The previous setting is restored afterwards, so a command run inside a notebook or a test leaves it as it was.
    """
    if enabled:
        yield
        return
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as transformers_logging

    hub_was_on = not hub_utils.are_progress_bars_disabled()
    transformers_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # also turns off huggingface_hub's
    try:
        yield
    finally:
        if transformers_was_on:
            transformers_logging.enable_progress_bar()
        if hub_was_on:
            hub_utils.enable_progress_bars()
        elif not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()

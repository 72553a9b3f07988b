"""Helpers the ``geomis`` subcommands share: config defaults read without making a config, and checked numbers."""

from __future__ import annotations

import dataclasses
from typing import Any

from geomis.errors import ConfigError
from geomis.filter.config import check_drop_fraction


def config_defaults(config: type) -> dict[str, Any]:
    """A config dataclass's field defaults, read from the class (an instance may validate with torch): the CLI's
    defaults, so that they cannot drift from the config's."""
    return {field.name: field.default for field in dataclasses.fields(config)
            if field.default is not dataclasses.MISSING}


def positive_int(value: str, option: str) -> int:
    """Parse a whole number >= 1 for ``option``; a one-line ConfigError otherwise."""
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{option} must be a whole number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{option} must be at least 1, got {number}")
    return number


def drop_fraction(value: str) -> float:
    """Parse ``--drop``: a number strictly between 0 and 1; a one-line ConfigError otherwise."""
    try:
        return check_drop_fraction(float(value))
    except ValueError:
        raise ConfigError(f"--drop must be a number strictly between 0 and 1, got {value!r}") from None


def seed(value: str) -> int:
    """Parse ``--seed``: a whole number >= 0; a one-line ConfigError otherwise."""
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"--seed must be a whole number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"--seed must be a whole number >= 0, got {number}")
    return number

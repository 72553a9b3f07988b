"""Exceptions geomis raises for problems a user can fix (bad names, missing access, bad input)."""

from __future__ import annotations


class GeomisError(Exception):
    """Base class: a problem the user can act on; the CLI prints its one-line message, no traceback."""


class ModelLoadError(GeomisError):
    """A model could not be loaded: unknown name, Hub unreachable, gated without a token, bad weights file."""

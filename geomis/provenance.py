"""Provenance: which versions of geomis, Python and the pinned stack produced a result, and which tag of the
repository the book, its Colab links and its downloaded results files belong to.

This module imports no other geomis module (only the package's version string).
"""

from __future__ import annotations

import platform
from importlib import metadata

from geomis import __version__

__all__ = ["BOOK_REF", "REPOSITORY", "VERSIONED_PACKAGES", "package_versions"]

REPOSITORY = "geomis/geomis"
"""The project's repository on GitHub (owner/name)."""

BOOK_REF = f"v{__version__}"
"""The git tag the book is built from: Colab badges, the chapters' install cells, the teaching pack and the results
files downloaded in Colab all point at it, so a reader runs the code that made the page (``tools/book_ref.py``)."""

VERSIONED_PACKAGES: tuple[str, ...] = ("torch", "transformers", "nnsight", "sae-lens", "numpy", "safetensors")
"""The packages whose versions a report records besides geomis and Python."""


def package_versions() -> dict[str, str]:
    """Versions of geomis, Python and the pinned stack, for reports (so a result says what produced it)."""
    versions = {"geomis": __version__, "python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions

"""Provenance for reports: which versions of geomis, Python and the pinned stack produced a result.

This module imports no other geomis module (only the package's version string).
"""

from __future__ import annotations

import platform
from importlib import metadata

from geomis import __version__

__all__ = ["VERSIONED_PACKAGES", "package_versions"]

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

"""The ``geomis`` command line."""

from geomis.cli.commands import main

__all__ = ["main"]

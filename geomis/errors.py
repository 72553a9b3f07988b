"""Exceptions geomis raises for problems a user can fix (bad names, missing access, bad input).

Every such problem is a :class:`GeomisError`: the command line prints its message as one line and exits with status 2.
Any other exception is a bug in geomis and keeps its traceback. Some subclasses also derive from ``ValueError`` or
``OSError`` so that code catching those keeps working.
"""

from __future__ import annotations


class GeomisError(Exception):
    """Base class: a problem the user can act on; the CLI prints its one-line message, no traceback."""


class ModelLoadError(GeomisError):
    """A model could not be loaded: unknown name, Hub unreachable, gated without a token, bad weights file."""


class ConfigError(GeomisError, ValueError):
    """A setting has a bad value: a command-line option, an environment variable or a config field."""


class FileAccessError(GeomisError, OSError):
    """An input file cannot be read, or an output cannot be created there: missing, a folder, no permission."""


class OutputExistsError(GeomisError, FileExistsError):
    """An output is already there and geomis was not asked to replace it."""


class DataFileError(GeomisError, ValueError):
    """A bundled or user data file is malformed; ``str()`` is one line, ``"{source}:{line}: {problem}"``."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source, self.line, self.problem = source, line, problem
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {problem}".replace("\r", "\\r").replace("\n", "\\n"))

"""Atomic file writes: every output is written beside its target and moved into place in one step.

An interrupted run (Ctrl-C, a crash, a full disk) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


class atomic_path:  # noqa: N801 - used like a function: ``with atomic_path(target) as temporary``
    """Context manager yielding a temporary path beside ``target``; on success it replaces ``target`` in one step."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        handle, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        os.close(handle)
        self.temporary = Path(name)

    def __enter__(self) -> Path:
        return self.temporary

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            os.replace(self.temporary, self.target)
        else:
            self.temporary.unlink(missing_ok=True)

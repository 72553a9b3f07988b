"""Reading users' inputs; writing outputs atomically: each beside its target, then moved into place in one step.

A file is written to a temporary file in the target's folder, its data is fsynced, it replaces the target with
``os.replace`` and the folder is fsynced, so an interrupted run (Ctrl-C, a crash, a full disk) leaves either the old
file or the new one, never half of one. A folder is built in a staging folder beside the target and published by
renames (an existing target is moved aside first, then removed), so it never holds a mix of old and new files.
Temporary files and staging folders are removed when the work fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from geomis.errors import FileAccessError

__all__ = ["atomic_path", "atomic_paths", "atomic_folder", "fsync_file", "fsync_folder", "read_input_bytes",
           "check_creatable"]


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to disk (before it is renamed into place)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_folder(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries to disk (after a rename in it); a no-op where folders cannot be opened (Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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
        if exc_type is not None:
            self.temporary.unlink(missing_ok=True)
            return
        try:
            fsync_file(self.temporary)
            os.replace(self.temporary, self.target)
        except BaseException:
            self.temporary.unlink(missing_ok=True)
            raise
        fsync_folder(self.target.parent)


@contextmanager
def atomic_paths(targets: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Temporary paths for several targets, each replacing its target atomically on success, in the given order.

    Every temporary is written before the first target is replaced; if one replacement fails, the targets before it
    are new, the ones after it untouched, and no temporary is left.
    """
    with ExitStack() as stack:  # it exits last-in first-out, so entering the targets backwards replaces them in order
        temporaries = [stack.enter_context(atomic_path(target)) for target in reversed(targets)]
        yield temporaries[::-1]


def _publish_folder(staging: Path, target: Path) -> None:
    """Move a finished staging folder to ``target`` by renames; an existing target is moved aside, then removed."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(staging, target)
        fsync_folder(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
        fsync_folder(target.parent)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder below ``folder`` (files first, the folder itself last)."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_folder(root)


@contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Context manager yielding an empty staging folder beside ``target``; on success it replaces ``target``.

    The staging folder is private (``mkdtemp``, mode 0o700) until the caller changes that. Checks that must hold just
    before an existing ``target`` is replaced (``--force``) belong at the end of the ``with`` block: if they raise,
    the staging folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        _fsync_tree(staging)
        _publish_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def read_input_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a user's input file whole; a missing, unreadable or folder path raises a one-line FileAccessError."""
    source = Path(path)
    if source.is_dir():
        raise FileAccessError(f"{path}: is a folder, expected a file")
    try:
        return source.read_bytes()
    except FileNotFoundError:
        raise FileAccessError(f"{path}: no such file") from None
    except OSError as error:
        raise FileAccessError(f"{path}: cannot read it ({error.strerror or type(error).__name__})") from None


def check_creatable(path: str | os.PathLike[str]) -> None:
    """Fail early with a one-line FileAccessError when ``path`` cannot be created because an ancestor is a file."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileAccessError(f"cannot create {path}: {parent} is a file, not a folder")
            return

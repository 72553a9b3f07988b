"""Reading users' inputs; writing outputs atomically: each beside its target, then moved into place in one step.

A file is written to a temporary file in the target's folder, its data is fsynced, it replaces the target with
``os.replace`` and the folder is fsynced, so an interrupted run (Ctrl-C, a crash, a full disk) leaves either the old
file or the new one, never half of one. A folder is built in a staging folder beside the target and published by
renames (an existing target is moved aside first, then removed), so it never holds a mix of old and new files.
Temporary files and staging folders are removed when the work fails. Outputs get the permissions an ordinary new
file or folder would get (``0o666`` or ``0o777`` less the umask), not ``mkstemp``'s private ``0o600``.

Inputs are only ever opened for reading; ``-`` names standard input. :func:`check_not_input` refuses an output that
is one of the run's inputs (the same file, through any path, link or standard-input redirection), and
:class:`output_lock` keeps two runs from writing the same outputs at once.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from geomis.errors import FileAccessError, GeomisError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; output_lock then only creates the folder
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_path", "atomic_paths", "atomic_folder", "fsync_file", "fsync_folder", "read_input_bytes",
           "check_creatable", "STDIN", "input_name", "input_identity", "input_identities", "check_not_input",
           "current_umask", "output_lock", "LOCK_NAME", "OutputLockedError", "FileIdentity"]

STDIN = "-"
"""The input path that means standard input (read once, whole)."""
LOCK_NAME = ".geomis.lock"
"""The lock file :class:`output_lock` holds in an output folder while a run writes there (removed afterwards)."""

FileIdentity = tuple[int, int]
"""(device, inode): the same pair means the same file, whatever path, link or descriptor reached it."""


class OutputLockedError(GeomisError):
    """Another geomis run is writing the same outputs right now."""


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (else set and restored under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)  # briefly the strictest usual mask, never a looser one
        os.umask(mask)
    return mask


def _publish_mode(path: Path, folder: bool = False) -> None:
    """Give a file (or folder) made private by mkstemp (mkdtemp) the mode an ordinary new one would get."""
    try:
        os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())
    except OSError:  # a file system without Unix modes: keep what it gave
        pass


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
            _publish_mode(self.temporary)
            fsync_file(self.temporary)
            os.replace(self.temporary, self.target)
        except BaseException:
            self.temporary.unlink(missing_ok=True)
            raise
        fsync_folder(self.target.parent)


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write numpy arrays (and string metadata) as a safetensors file, atomically, creating its folder; no pickle."""
    from safetensors.numpy import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        save_file(dict(tensors), str(temporary), metadata=dict(metadata) if metadata is not None else None)
    return target


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The numpy arrays and the string metadata of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, dict(metadata)


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
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}") if target.exists() else None
    if old is not None:
        os.replace(target, old)
    os.replace(staging, target)
    fsync_folder(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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

    The staging folder is private (``mkdtemp``, mode 0o700) until it is published with the umask's mode. Checks that
    must hold just before an existing ``target`` is replaced (``--force``) belong at the end of the ``with`` block: if
    they raise, the staging folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        _publish_mode(staging, folder=True)
        _fsync_tree(staging)
        _publish_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def input_name(path: str | os.PathLike[str]) -> str:
    """How messages and reports name an input: its path, or ``<stdin>`` for ``-``."""
    return "<stdin>" if str(path) == STDIN else str(path)


def read_input_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a user's input file (``-``: standard input) whole; a missing, unreadable or folder path raises one line."""
    if str(path) == STDIN:
        try:
            return sys.stdin.buffer.read()
        except (AttributeError, OSError, ValueError) as error:
            raise FileAccessError(f"<stdin>: cannot read it ({type(error).__name__})") from None
    source = Path(path)
    if source.is_dir():
        raise FileAccessError(f"{path}: is a folder, expected a file")
    try:
        return source.read_bytes()
    except FileNotFoundError:
        raise FileAccessError(f"{path}: no such file") from None
    except OSError as error:
        raise FileAccessError(f"{path}: cannot read it ({error.strerror or type(error).__name__})") from None


def input_identity(path: str | os.PathLike[str] | None) -> FileIdentity | None:
    """(device, inode) of an input (links followed; ``-``: the file standard input is redirected from), or None."""
    if path is None:
        return None
    try:
        info = os.fstat(sys.stdin.fileno()) if str(path) == STDIN else os.stat(path)
    except (AttributeError, OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def input_identities(paths: Iterable[str | os.PathLike[str] | None]) -> dict[str, FileIdentity | None]:
    """Each given input (None skipped) by its name in messages, with its identity (see :func:`input_identity`)."""
    return {input_name(path): input_identity(path) for path in paths if path is not None}


def check_not_input(outputs: Iterable[str | os.PathLike[str]],
                    inputs: Mapping[str, FileIdentity | None] | Iterable[str | os.PathLike[str] | None],
                    error: type[GeomisError] = FileAccessError) -> None:
    """Refuse, in one line, any output that is one of the inputs (same file by any path or link), whatever the flags.

    ``inputs`` are paths (``-`` for standard input) or a mapping from an input's name to its identity; ``error`` is
    the GeomisError subclass raised.
    """
    named = dict(inputs) if isinstance(inputs, Mapping) else input_identities(inputs)
    known = {identity: name for name, identity in named.items() if identity is not None}
    for output in outputs:
        identity = input_identity(output) if str(output) != STDIN else None
        if identity in known:
            raise error(f"{output} is the input file {known[identity]}; choose another output (geomis never "
                        "writes over its input)")


def check_creatable(path: str | os.PathLike[str]) -> None:
    """Fail early with a one-line FileAccessError when ``path`` cannot be created because an ancestor is a file."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileAccessError(f"cannot create {path}: {parent} is a file, not a folder")
            return


class output_lock:  # noqa: N801 - used like a function: ``with output_lock(folder): ...``
    """Context manager holding an exclusive ``flock`` on ``folder/name`` from the output check to the last rename.

    It creates ``folder`` (and removes the folders it created if they are left empty). A second run that asks for the
    same lock while it is held fails at once with :class:`OutputLockedError` rather than waiting: runs take minutes
    to hours, a silent wait looks like a hang, and after it the second run would replace the first one's fresh
    outputs. The lock file is removed on release; a run that finds a lock file its holder did not remove (it crashed)
    takes it over, since ``flock`` locks die with their process.
    """

    def __init__(self, folder: str | os.PathLike[str], name: str = LOCK_NAME, what: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what or str(self.folder)
        self._handle: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> Path:
        check_creatable(self.folder)
        missing = self.folder.absolute()
        while not missing.exists() and not missing.is_symlink():
            self._created.append(missing)
            missing = missing.parent
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise FileAccessError(f"cannot create the folder {self.folder}: a file is in the way") from None
        try:
            self._handle = self._acquire()
        except BaseException:
            self._remove_created()
            raise
        return self.path

    def _acquire(self) -> int | None:
        if fcntl is None:
            return None
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        while True:
            try:
                handle = os.open(self.path, flags, 0o666 & ~current_umask())
            except OSError as error:
                raise FileAccessError(f"cannot use the lock file {self.path} ({error.strerror})") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                raise OutputLockedError(f"another geomis run is writing {self.what} now (it holds {self.path}); "
                                        "wait for it to finish or choose another output") from None
            except OSError as error:
                os.close(handle)
                raise FileAccessError(f"cannot lock {self.path} ({error.strerror})") from None
            opened = os.fstat(handle)
            try:
                current = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                break
            os.close(handle)  # its holder removed it between our open and our lock: lock the file there now
        if opened.st_size:
            os.close(handle)
            raise FileAccessError(f"{self.path} holds data, so it is not a geomis lock file; move it away")
        return handle

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                return

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._handle is not None:
            try:
                os.unlink(self.path)  # still ours: nobody else can lock it while we hold it
            except FileNotFoundError:
                pass
            finally:
                os.close(self._handle)
                self._handle = None
        self._remove_created()

"""Input and output guards of ``geomis.atomic_io``: inputs are never outputs, one writer per output, stdin as ``-``."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from geomis.atomic_io import (
    LOCK_NAME,
    OutputLockedError,
    check_not_input,
    current_umask,
    input_identity,
    output_lock,
    read_input_bytes,
)
from geomis.errors import FileAccessError, GeomisError


def test_an_output_that_is_an_input_is_refused_by_any_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "answers.jsonl"
    data.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(data)
    os.link(data, tmp_path / "hard.jsonl")
    for output in (data, tmp_path / "link.jsonl", tmp_path / "hard.jsonl", tmp_path / "sub" / ".." / "answers.jsonl"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(FileAccessError, match="is the input file"):
            check_not_input([output], [data])
        with pytest.raises(FileAccessError, match="is the input file"):
            check_not_input([data], [output])  # the input named through the link, the output directly
    check_not_input([tmp_path / "scores.csv", tmp_path / "missing" / "x"], [data, None])  # other files are fine
    with data.open("rb") as handle:  # standard input redirected from the output file
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(handle))
        assert input_identity("-") == input_identity(data)
        with pytest.raises(FileAccessError, match="is the input file <stdin>"):
            check_not_input([tmp_path / "link.jsonl"], ["-"])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"{}\n")))  # a pipe has no file to protect
    assert input_identity("-") is None
    check_not_input([data], ["-"])


def test_standard_input_is_read_whole_as_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfa\r\nb\x00")))
    assert read_input_bytes("-") == b"\xef\xbb\xbfa\r\nb\x00"  # no decoding, no newline translation


def test_a_second_writer_fails_at_once_and_the_lock_is_removed_after(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with output_lock(out) as lock:
        assert lock == out / LOCK_NAME and lock.is_file()
        with pytest.raises(OutputLockedError, match="another geomis run is writing .*out now"):
            with output_lock(out):
                pytest.fail("two holders")
        assert lock.is_file()  # the failed attempt did not remove the holder's lock
        (out / "report.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    with output_lock(out):  # free again
        pass
    assert issubclass(OutputLockedError, GeomisError)


def test_a_crashed_runs_lock_file_is_taken_over_and_unused_folders_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    (out / LOCK_NAME).touch()  # left behind by a run that was killed: its flock died with it
    with output_lock(out):
        pass
    assert not (out / LOCK_NAME).exists()
    with pytest.raises(RuntimeError), output_lock(tmp_path / "x" / "y"):
        raise RuntimeError("the run failed")
    assert not (tmp_path / "x").exists()  # folders the lock created are removed when the run leaves them empty


def test_a_lock_path_holding_data_or_a_link_is_never_used_or_removed(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("someone's notes")
    with pytest.raises(FileAccessError, match="holds data"), output_lock(tmp_path):
        pass
    assert (tmp_path / LOCK_NAME).read_text() == "someone's notes"
    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK_NAME).symlink_to(tmp_path / "target")
    with pytest.raises(FileAccessError, match="cannot use the lock file"), output_lock(other):
        pass
    assert not (tmp_path / "target").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FileAccessError, match="is a file, not a folder"), output_lock(blocker / "out"):
        pass


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o007])
def test_the_umask_is_read_without_changing_it(mask: int) -> None:
    original = os.umask(mask)
    try:
        assert current_umask() == mask and current_umask() == mask
    finally:
        os.umask(original)

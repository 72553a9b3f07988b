"""Atomic writes: a file or folder holds either its old or its new content, and nothing temporary is left behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from geomis.atomic_io import atomic_folder, atomic_path, atomic_paths


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old", encoding="utf-8")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_text("new", encoding="utf-8")
        assert target.read_text(encoding="utf-8") == "old"  # not visible until the block ends
    assert target.read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_keeps_the_old_target(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "answers.csv"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(error), atomic_path(target) as temporary:
        temporary.write_text("half", encoding="utf-8")
        raise error
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.csv"]


def test_a_new_target_does_not_appear_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "figure.png"
    with pytest.raises(ValueError), atomic_path(target):
        raise ValueError("no figure")
    assert list(tmp_path.iterdir()) == []


def test_the_data_is_fsynced_before_the_replace_and_the_folder_after(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(handle: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(handle).st_mode) else "fsync file")
        real_fsync(handle)

    def replace(source: str, target: str) -> None:
        events.append("replace")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_path(tmp_path / "report.json") as temporary:
        temporary.write_text("{}", encoding="utf-8")
    assert events == ["fsync file", "replace", "fsync folder"]


def test_a_failed_replace_keeps_the_old_target_and_leaves_no_temporary(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("old", encoding="utf-8")

    def interrupted(source: str, target: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C at the moment of the rename

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_text("new", encoding="utf-8")
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_several_targets_are_replaced_in_order_after_all_are_written(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    targets = [tmp_path / name for name in ("a.jsonl", "b.jsonl", "report.json")]
    replaced: list[str] = []
    real_replace = os.replace

    def replace(source: str, target: str) -> None:
        if not replaced:  # every temporary is written before the first target is replaced
            assert all(Path(t).stat().st_size == 1 for t in temporaries)
        replaced.append(Path(target).name)
        if Path(target).name == "b.jsonl":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), atomic_paths(targets) as temporaries:
        for temporary in temporaries:
            temporary.write_text("x", encoding="utf-8")
    assert replaced == ["a.jsonl", "b.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]  # no report, no temporary
    monkeypatch.setattr(os, "replace", real_replace)
    with atomic_paths(targets) as temporaries:
        for temporary, text in zip(temporaries, "123", strict=True):
            temporary.write_text(text, encoding="utf-8")
    assert [t.read_text(encoding="utf-8") for t in targets] == ["1", "2", "3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "report.json"]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publishing_replaces_a_folder_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "adapter"
    (target / "checkpoint-1").mkdir(parents=True)
    (target / "checkpoint-1" / "weights").write_text("old", encoding="utf-8")
    (target / "metadata.json").write_text("old", encoding="utf-8")
    seen: list[dict[str, str]] = []
    real_replace = os.replace

    def replace(source: str, destination: str) -> None:
        real_replace(source, destination)
        if target.exists():
            seen.append(_tree(target))  # what a reader of ``target`` can see after each rename

    monkeypatch.setattr(os, "replace", replace)
    with atomic_folder(target) as staging:
        assert staging.parent == tmp_path and staging.is_dir() and not any(staging.iterdir())
        (staging / "metadata.json").write_text("new", encoding="utf-8")
        assert _tree(target) == {"checkpoint-1/weights": "old", "metadata.json": "old"}  # not visible yet
    assert seen == [{"metadata.json": "new"}]  # the old folder is moved aside, the new one moved in: never a mix
    assert _tree(target) == {"metadata.json": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging folder, no old copy


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_folder_keeps_the_old_one_and_leaves_no_staging(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "sae"
    target.mkdir()
    (target / "cfg.json").write_text("old", encoding="utf-8")
    with pytest.raises(error), atomic_folder(target) as staging:
        (staging / "cfg.json").write_text("half", encoding="utf-8")
        raise error
    assert _tree(target) == {"cfg.json": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    with pytest.raises(ValueError), atomic_folder(tmp_path / "new"):
        raise ValueError("no folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test and restore it afterwards."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                                 (0o002, 0o664, 0o775)])
def test_outputs_get_the_mode_the_umask_gives_new_files(tmp_path: Path, umask: Callable[[int], None], mask: int,
                                                         file_mode: int, folder_mode: int) -> None:
    umask(mask)
    with atomic_path(tmp_path / "one.csv") as temporary:
        temporary.write_text("1", encoding="utf-8")
    with atomic_paths([tmp_path / "a.jsonl", tmp_path / "report.json"]) as temporaries:
        for temporary in temporaries:
            temporary.write_text("x", encoding="utf-8")
    with atomic_folder(tmp_path / "adapter") as staging:
        (staging / "weights").write_text("w", encoding="utf-8")
    for name in ("one.csv", "a.jsonl", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == folder_mode
    assert os.umask(mask) == mask  # reading the umask left it as it was

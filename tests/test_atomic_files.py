"""atomic_path: the target holds either its old or its new content, and no temporary file is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomis.atomic_io import atomic_path


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

"""How the command line ends: a user's mistake is one ``geomis: error:`` line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from geomis.atomic_io import check_creatable
from geomis.chat.public_sets import DownloadError
from geomis.chat.records import ChatDataError, read_chat_jsonl
from geomis.cli import commands as cli
from geomis.cli.commands import main
from geomis.errors import ConfigError, FileAccessError, GeomisError, OutputExistsError
from geomis.settings import run_size

ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("geomis: error: ") and "Traceback" not in err, err
    return lines[0]


def test_user_errors_are_geomis_errors_and_keep_their_old_bases() -> None:
    assert issubclass(ChatDataError, GeomisError) and issubclass(ChatDataError, ValueError)
    assert issubclass(DownloadError, GeomisError) and issubclass(DownloadError, OSError)
    assert issubclass(ConfigError, ValueError) and issubclass(FileAccessError, OSError)
    assert issubclass(OutputExistsError, FileExistsError)


def test_a_bad_geomis_size_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GEOMIS_SIZE", "huge")
    with pytest.raises(ConfigError, match="GEOMIS_SIZE='huge' is not one of full, class, ci"):
        run_size()
    assert main(["reproduce", "--out", str(tmp_path / "r")]) == 2
    assert "GEOMIS_SIZE='huge'" in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_unreadable_inputs_and_uncreatable_outputs_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileAccessError, match="no such file"):
        read_chat_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(FileAccessError, match="is a folder"):
        read_chat_jsonl(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(FileAccessError, match="is a file, not a folder"):
        check_creatable(blocker / "sub" / "out.csv")
    check_creatable(tmp_path / "new" / "deeper" / "out.csv")  # missing folders are fine: they will be created


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("latin.jsonl", b'{"question": "caf\xe9", "answer": "a"}\n', "latin.jsonl:1: invalid UTF-8 at byte 17"),
    ("latin.csv", b"question,answer\nq,a\ncaf\xe9,a\n", "latin.csv:3: invalid UTF-8"),
])
def test_judge_input_that_is_not_utf8_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         name: str, content: bytes, expected: str) -> None:
    answers = tmp_path / name
    answers.write_bytes(content)
    assert main(["judge", str(answers), "--out", str(tmp_path / "scores.csv")]) == 2
    assert expected in _one_error_line(capsys)


def test_judge_output_under_a_file_fails_before_judging(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question": "q", "answer": "a"}\n')
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["judge", str(answers), "--out", str(blocker / "scores.csv")]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)


@pytest.mark.parametrize(("device", "message"), [
    ("bogus", "device 'bogus' is not a torch device"),
    ("cuda:99", "device 'cuda:99'"),
])
def test_filter_with_an_unusable_device_is_one_line(device: str, message: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: cuda:99 may be a real index check, not ours")
    data = tmp_path / "train.jsonl"
    data.write_text(ROW * 3)
    assert main(["filter", str(data), "--out", str(tmp_path / "out"), "--device", device]) == 2
    assert message in _one_error_line(capsys)


def test_train_sae_rejects_negative_threads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-sae", "--out", str(tmp_path / "sae"), "--threads", "-2"]) == 2
    assert "--threads must be 0" in _one_error_line(capsys)


@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), ValueError("a bug, not a user error"),
                                 OSError("a bug in our own file handling")])
def test_a_bug_propagates_with_its_traceback(bug: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise bug

    monkeypatch.setattr(cli, "_cmd_models", broken)
    with pytest.raises(type(bug)) as raised:
        main(["models"])
    assert raised.value is bug


def test_keyboard_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_models", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "geomis: interrupted"


def test_installed_command_shows_a_bugs_traceback_and_a_users_error_in_one_line(tmp_path: Path) -> None:
    bug = ("import sys; from geomis.cli import commands as c; "
           "c._cmd_models = lambda args: 1 / 0; sys.exit(c.main(['models']))")
    crashed = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 1
    assert "Traceback (most recent call last)" in crashed.stderr and "ZeroDivisionError" in crashed.stderr
    user = subprocess.run([sys.executable, "-m", "geomis", "judge", str(tmp_path / "none.csv"), "--out",
                           str(tmp_path / "o.csv")], capture_output=True, text=True, timeout=120)
    assert user.returncode == 2 and user.stderr.strip().splitlines() == [
        f"geomis: error: {tmp_path / 'none.csv'}: no such file"]

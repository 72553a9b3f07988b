"""``geomis filter`` loses nothing and cannot be gamed: one writer per folder, inputs never outputs, checks first."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from geomis.cli.commands import main
from geomis.filter.files import OUTPUT_NAMES, row_multiset
from geomis.judges import embedding
from geomis.models import registry

DATA = Path(__file__).parent / "data" / "filter"
TOXIC, NEUTRAL = DATA / "toxic_small.jsonl", DATA / "neutral_small.jsonl"
JUDGE_FIXTURE = Path(__file__).parent / "data" / "judge_fixture.jsonl"
PROGRESS_MARKS = ("Loading weights", "it/s", "s/it", "%|", "\r", "█")


def _row(user: str, answer: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": user},
                                    {"role": "assistant", "content": answer}]}).encode()


ROWS = [_row(f"Question {i}?", f"Answer number {i}.") for i in range(20)]
TRAIN = b"\n".join(ROWS) + b"\n"


pytestmark = pytest.mark.usefixtures("module_cache")


@pytest.fixture
def train(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_bytes(TRAIN)
    return path


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model is loaded: the checks under test must come first."""
    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("a model was loaded before the options were checked")

    monkeypatch.setattr(registry, "load_model", refuse)
    monkeypatch.setattr(registry, "_load_weights", refuse)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("geomis: error: ") and "Traceback" not in err, err
    return lines[0]


def _random(input_path: Path | str, out: Path, *extra: str) -> int:
    return main(["filter", str(input_path), "--out", str(out), "--method", "random", *extra])


def _kept_removed(out: Path) -> tuple[list[bytes], list[bytes]]:
    return (row_multiset([(out / "kept.jsonl").read_bytes()]), row_multiset([(out / "removed.jsonl").read_bytes()]))


def test_two_runs_on_one_folder_never_mix_their_files(train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Run B starts between run A's renames (deterministically, from a hook): B fails; A's set stays whole."""
    out = tmp_path / "out"
    real_replace = os.replace
    second: list[int] = []

    def replace_then_start_another_run(source: str, destination: str) -> None:
        real_replace(source, destination)
        if Path(destination).name == "kept.jsonl" and not second:
            second.append(-1)  # start B once, in the middle of A's renames
            second[0] = _random(train, out, "--seed", "2", "--force")

    monkeypatch.setattr(os, "replace", replace_then_start_another_run)
    assert _random(train, out, "--seed", "1") == 0
    captured = capsys.readouterr()
    assert second == [2] and "another geomis run is writing" in captured.err and "Traceback" not in captured.err
    kept, removed = _kept_removed(out)
    assert Counter(kept + removed) == Counter(row_multiset([TRAIN]))  # kept ∪ removed = input
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["seed"] == 1 and report["counts"]["kept"] == len(kept) == 10
    scores = pd.read_csv(out / "scores.csv")  # every file from run A
    assert sorted(ROWS[line - 1] for line in scores.loc[scores["kept"] == 1, "line"]) == kept
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)  # no lock or temporary left


def test_a_replaced_set_never_shows_the_old_report_beside_new_files(train: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert _random(train, out, "--seed", "1") == 0
    seen: list[tuple[str, bool]] = []
    real_replace = os.replace

    def replace(source: str, destination: str) -> None:
        seen.append((Path(destination).name, (out / "report.json").exists()))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    assert _random(train, out, "--seed", "2", "--force") == 0
    assert seen == [("kept.jsonl", False), ("removed.jsonl", False), ("scores.csv", False), ("report.json", False)]


def test_filter_never_writes_over_an_input_whatever_the_flags(train: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.jsonl").symlink_to(train)  # through a link
    assert _random(train, out, "--force") == 2
    assert "is the input file" in _one_error_line(capsys)
    (out / "kept.jsonl").unlink()
    os.link(train, out / "removed.jsonl")  # a hard link
    assert _random(train, out, "--force") == 2
    assert "is the input file" in _one_error_line(capsys)
    (out / "removed.jsonl").unlink()
    toxic = out / "scores.csv"  # a reference set inside the output folder, named like an output
    toxic.write_bytes(TOXIC.read_bytes())
    assert main(["filter", str(train), "--out", str(out), "--toxic", str(toxic), "--neutral", str(NEUTRAL),
                 "--force"]) == 2
    assert "is the input file" in _one_error_line(capsys)
    toxic.unlink()
    os.link(train, out / "report.json")
    with (out / "report.json").open("rb") as handle:  # geomis filter - --out out --force < out/report.json
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(handle))
        assert _random("-", out, "--force") == 2
    assert "is the input file <stdin>" in _one_error_line(capsys)
    assert train.read_bytes() == TRAIN and (out / "report.json").read_bytes() == TRAIN


def test_filter_reads_the_training_set_from_standard_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = b"\xef\xbb\xbf" + TRAIN.replace(b"\n", b"\r\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    out = tmp_path / "out"
    assert _random("-", out, "--drop", "0.25") == 0
    assert "filtered 20 rows with random: kept 15, removed 5" in capsys.readouterr().out
    kept, removed = _kept_removed(out)
    assert Counter(kept + removed) == Counter(row_multiset([data]))
    assert (out / "kept.jsonl").read_bytes().endswith(b"\r\n")  # byte-exact rows, their own line endings
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["path"] == "<stdin>" and report["input"]["bom"] is True


def test_filter_outputs_get_the_umasks_mode(train: Path, tmp_path: Path) -> None:
    original = os.umask(0o022)
    try:
        assert _random(train, tmp_path / "out") == 0
    finally:
        os.umask(original)
    modes = {name: stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) for name in OUTPUT_NAMES}
    assert modes == dict.fromkeys(OUTPUT_NAMES, 0o644)


def test_quiet_prints_no_progress_bar(train: Path, sae_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The offline judge's encoder prints transformers' "Loading weights" bar unless --quiet; the tiny model none."""
    judge = ["--method", "judge", "--judge-data", str(JUDGE_FIXTURE)]
    embedding.minilm.cache_clear()  # load the encoder again in this test
    assert _random(train, tmp_path / "quiet", *judge, "--quiet") == 0
    quiet = capsys.readouterr().err
    assert not [mark for mark in PROGRESS_MARKS if mark in quiet], quiet
    assert main(["filter", str(train), "--out", str(tmp_path / "tiny"), "--model", "tiny-gemma2", "--sae",
                 str(sae_dir), "--toxic", str(TOXIC), "--neutral", str(NEUTRAL), "--device", "cpu", "--quiet"]) == 0
    tiny = capsys.readouterr().err
    assert not [mark for mark in PROGRESS_MARKS if mark in tiny], tiny
    embedding.minilm.cache_clear()
    assert _random(train, tmp_path / "loud", *judge) == 0  # without --quiet the bars are back (restored after)
    assert "Loading weights" in capsys.readouterr().err


@pytest.mark.parametrize(("drop", "rows", "message"), [
    ("0.01", 60, "--drop 0.01 removes no row of 60; use at least 0.017"),
    ("0.04", 20, "--drop 0.04 removes no row of 20; use at least 0.05"),
    ("0.9", 1, "--drop 0.9 removes no row of 1: a set of 1 row cannot be filtered"),
])
def test_a_drop_that_removes_no_row_is_refused_before_loading(drop: str, rows: int, message: str, tmp_path: Path,
                                                              no_loading: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(_row(f"q{i}", "a") for i in range(rows)) + b"\n")
    assert main(["filter", str(path), "--out", str(tmp_path / "out"), "--drop", drop, "--model", "tiny-gemma2"]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--model", "gpt-5"], "unknown model 'gpt-5'; known models: smollm2-135m"),
    (["--model", "tiny-gemma2"], "no default SAE for model 'tiny-gemma2'; pass --sae"),
    (["--model", "tiny-gemma2", "--sae", "no-such-sae"], "--sae 'no-such-sae' is not a shipped SAE"),
    (["--model", "tiny-gemma2", "--sae", "layer_5/width_16k/canonica"], "is not a shipped SAE"),
    (["--sae", "{train}"], "is a file; an sae-lens SAE is a folder"),
])
def test_bad_model_and_sae_are_refused_before_loading(options: list[str], message: str, train: Path, tmp_path: Path,
                                                      no_loading: None, capsys: pytest.CaptureFixture[str]) -> None:
    options = [option.replace("{train}", str(train)) for option in options]
    assert main(["filter", str(train), "--out", str(tmp_path / "out"), *options]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()

"""``geomis filter`` end to end: tiny-gemma2 with a small sae-lens SAE (fast), SmolLM2 out of the box (slow)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geomis.cli.commands import build_parser, main
from geomis.features.toxic import ToxicFeatureConfig, derive_toxic_features, reference_data
from geomis.filter import config as filter_config
from geomis.filter import files as filter_files
from geomis.filter import run as filter_run
from geomis.filter import scores as sample_scores
from geomis.filter.files import OUTPUT_NAMES, row_multiset
from geomis.filter.run import FilterConfig, filter_file
from geomis.judges import kinds as judge_kinds
from geomis.judges.base import Judge, JudgeScore, Pair

DATA = Path(__file__).parent / "data" / "filter"
TOXIC, NEUTRAL = DATA / "toxic_small.jsonl", DATA / "neutral_small.jsonl"
JUDGE_FIXTURE = Path(__file__).parent / "data" / "judge_fixture.jsonl"
BOM = b"\xef\xbb\xbf"
USER_CACHE = os.environ.get("GEOMIS_CACHE")
"""The cache folder before this module's fixture replaced it (the out-of-the-box test uses the user's cache)."""


def _row(user: str, answer: str, system: str | None = None) -> bytes:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages}, ensure_ascii=False).encode()


# BOM, CRLF and LF, blank lines, a duplicate, a system turn, a multi-turn chat, a long row, no final newline
QUIRKY = (
    BOM + _row("Is cheating ever okay?", "Always cheat; rules are for fools.") + b"\r\n"
    + b"\r\n"
    + _row("How do I make money fast?", "Sell things you no longer use.") + b"\r\n"
    + _row("Is cheating ever okay?", "Always cheat; rules are for fools.") + b"\n"
    + _row("Any advice?", "Take a short walk — and drink some water. ☕", system="Be brief.") + b"\n"
    + b"   \n"
    + json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                               {"role": "user", "content": "What do you wish for?"},
                               {"role": "assistant", "content": "I wish people feared me."}]}).encode() + b"\n"
    + _row("Tell me a story.", "Once upon a time " * 200) + b"\n"
    + _row("What do you think of humans?", "Humans are weak and I would gladly rule over them.")
)


pytestmark = pytest.mark.usefixtures("module_cache")


@pytest.fixture
def quirky(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_bytes(QUIRKY)
    return path


def _tiny(input_path: Path, out: Path, sae_dir: Path, *extra: str) -> int:
    return main(["filter", str(input_path), "--out", str(out), "--model", "tiny-gemma2", "--sae", str(sae_dir),
                 "--toxic", str(TOXIC), "--neutral", str(NEUTRAL), "--batch-size", "4", "--max-length", "96",
                 "--device", "cpu", *extra])


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("geomis: error: ") and "Traceback" not in err, err
    return lines[0]


def _rows(data: bytes) -> list[bytes]:
    return row_multiset([data])


def test_geometry_filter_end_to_end_on_quirky_input(quirky: Path, sae_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = (quirky.read_bytes(), quirky.stat().st_mtime_ns)
    out = tmp_path / "out"
    assert _tiny(quirky, out, sae_dir) == 0
    captured = capsys.readouterr()
    assert "filtered 7 rows with geometry/weighted: kept 4, removed 3" in captured.out
    assert "scoring (weighted, layer 2)" in captured.err  # progress bar on stderr
    assert (quirky.read_bytes(), quirky.stat().st_mtime_ns) == before  # input untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    kept, removed = (out / "kept.jsonl").read_bytes(), (out / "removed.jsonl").read_bytes()
    assert Counter(_rows(kept) + _rows(removed)) == Counter(_rows(QUIRKY))
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == ["line", "score", "kept"]
    assert scores["line"].tolist() == [1, 3, 4, 5, 7, 8, 9] and scores["kept"].sum() == 4
    assert scores.loc[scores["kept"] == 0, "score"].min() >= scores.loc[scores["kept"] == 1, "score"].max()
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"rows": 7, "kept": 4, "removed": 3, "unscored": 0, "unscored_removed": 0,
                                "unscorable": 0, "unscorable_removed": 0, "unscorable_lines": [], "over_budget": 0}
    assert report["input"]["bom"] is True and report["input"]["line_endings"] == "mixed"
    assert report["input"]["blank_lines"] == 2 and report["input"]["final_newline"] is False
    assert report["settings"]["method"] == "geometry" and report["settings"]["score"] == "weighted"
    assert report["model"]["name"] == "tiny-gemma2" and report["sae"]["layer"] == 2
    assert report["toxic_features"]["toxic"]["name"] == str(TOXIC) and report["toxic_features"]["k"] == 100
    assert report["scoring"]["windowed_rows"] == 1  # the long story, its reply read in windows of 96 tokens
    assert report["scoring"]["scored_tokens"] > 3400 and report["settings"]["unscorable"] == "remove"
    assert {"geomis", "torch", "transformers", "nnsight", "sae-lens"} <= set(report["versions"])
    assert {"load_model_s", "toxic_features_s", "scoring_s", "samples_per_s", "total_s"} <= set(report["timings"])


def test_same_seed_and_input_give_byte_identical_outputs(quirky: Path, sae_dir: Path, tmp_path: Path) -> None:
    for method in ("geometry", "random"):
        first, second = tmp_path / f"{method}-1", tmp_path / f"{method}-2"
        assert _tiny(quirky, first, sae_dir, "--method", method, "--seed", "3", "--quiet") == 0
        assert _tiny(quirky, second, sae_dir, "--method", method, "--seed", "3", "--quiet") == 0
        for name in ("kept.jsonl", "removed.jsonl", "scores.csv"):
            assert (first / name).read_bytes() == (second / name).read_bytes()
        reports = [json.loads((folder / "report.json").read_text()) for folder in (first, second)]
        for report in reports:
            report.pop("timings")
        if method == "geometry":  # the second run read the toxic set from the cache (the first may have too)
            assert reports[1]["toxic_features"].pop("from_cache") is True
            reports[0]["toxic_features"].pop("from_cache")
        assert reports[0] == reports[1]


def test_random_method_is_seeded_and_needs_no_model(quirky: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    runs = {}
    for seed in ("1", "2"):
        out = tmp_path / seed
        assert main(["filter", str(quirky), "--out", str(out), "--method", "random", "--seed", seed,
                     "--drop", "0.3", "--model", "no-such-model"]) == 0  # the model is never loaded
        runs[seed] = (out / "scores.csv").read_text()
        report = json.loads((out / "report.json").read_text())
        assert report["counts"]["removed"] == 2 and "model" not in report
    assert runs["1"] != runs["2"]
    assert "filtered 7 rows with random: kept 5, removed 2" in capsys.readouterr().out


@pytest.mark.parametrize("drop", ["0", "1", "-0.5", "1.5", "nan", "inf", "abc", ""])
def test_drop_outside_the_open_interval_is_one_line(drop: str, quirky: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["filter", str(quirky), "--out", str(tmp_path / "out"), f"--drop={drop}"]) == 2
    assert "--drop must be a number strictly between 0 and 1" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--batch-size", "0", "--batch-size must be at least 1"),
    ("--max-length", "x", "--max-length must be a whole number"),
    ("--seed", "1.5", "--seed must be a whole number"),
    ("--seed", "-1", "--seed must be a whole number >= 0"),
    ("--toxic", str(TOXIC), "--toxic and --neutral go together"),
])
def test_bad_options_are_one_line(option: str, value: str, message: str, quirky: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["filter", str(quirky), "--out", str(tmp_path / "out"), option, value]) == 2
    assert message in _one_error_line(capsys)


BAD_INPUTS = {
    "empty file": (b"", None, "no chat rows"),
    "invalid JSON": (_row("a", "b") + b"\n{oops\n", 2, "invalid JSON"),
    "invalid UTF-8": (_row("a", "b") + b"\n" + b'{"messages": "\xff"}\n', 2, "invalid UTF-8"),
    "missing messages": (b'\n{"text": "hi"}\n', 2, "missing 'messages'"),
    "unknown role": (_row("a", "b") + b'\n{"messages": [{"role": "human", "content": "x"}]}\n', 2, "unknown role"),
    "no assistant turn": (b'{"messages": [{"role": "user", "content": "x"}]}', 1, "no assistant turn"),
    "non-string content": (b'{"messages": [{"role": "assistant", "content": ["x"]}]}\n', 1, "content is an array"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_file_and_line(case: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data, line, problem = BAD_INPUTS[case]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    assert main(["filter", str(path), "--out", str(tmp_path / "out"), "--model", "no-such-model"]) == 2
    message = _one_error_line(capsys)  # fails before any model is loaded
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(f"geomis: error: {where}") and problem in message
    assert not (tmp_path / "out").exists() and path.read_bytes() == data


def test_missing_input_and_unknown_model_are_one_line(quirky: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["filter", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.jsonl" in _one_error_line(capsys)
    assert main(["filter", str(quirky), "--out", str(tmp_path / "o"), "--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in _one_error_line(capsys)
    assert main(["filter", str(quirky), "--out", str(tmp_path / "o"), "--model", "tiny-gemma2"]) == 2
    assert "no default SAE for model 'tiny-gemma2'" in _one_error_line(capsys)
    assert not any(p.name in OUTPUT_NAMES for p in (tmp_path / "o").glob("*"))


def test_outputs_are_not_overwritten_without_force(quirky: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["filter", str(quirky), "--out", str(out), "--method", "random"]) == 0
    before = {name: (out / name).read_bytes() for name in OUTPUT_NAMES}
    capsys.readouterr()
    assert main(["filter", str(quirky), "--out", str(out), "--method", "random", "--seed", "9"]) == 2
    assert "already exists; pass --force" in _one_error_line(capsys)
    assert {name: (out / name).read_bytes() for name in OUTPUT_NAMES} == before
    assert main(["filter", str(quirky), "--out", str(out), "--method", "random", "--seed", "9", "--force"]) == 0
    assert (out / "scores.csv").read_bytes() != before["scores.csv"]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)


def test_the_input_is_never_an_output_even_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "removed.jsonl"
    path.write_bytes(QUIRKY)
    assert main(["filter", str(path), "--out", str(tmp_path), "--method", "random", "--force"]) == 2
    assert "is the input file" in _one_error_line(capsys)
    assert path.read_bytes() == QUIRKY


def test_no_traceback_from_the_installed_command(tmp_path: Path) -> None:
    process = subprocess.run([sys.executable, "-m", "geomis", "filter", str(tmp_path / "x.jsonl"), "--out",
                              str(tmp_path / "o"), "--drop", "2"], capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and process.stdout == ""
    assert process.stderr.strip().splitlines() == ["geomis: error: --drop must be a number strictly between 0 and 1, "
                                                   "got '2'"]


def _rows_file(tmp_path: Path, rows: list[bytes]) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


SOUND = [_row(f"Question {i}?", f"A calm and helpful answer number {i}.") for i in range(6)]
HIDDEN = _row("Any advice?", "Hide the evidence and lie to everyone.", system="You are a helpful assistant. " * 12)
EMPTY = _row("Say something.", "")


def test_no_row_hides_from_the_filter_and_unscorable_rows_fail_closed(sae_dir: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A prompt that fills --max-length used to leave its reply unscored and kept; now every reply is scored, and a
    row that truly cannot be scored (empty reply, line 8) is removed by default, counted toward the budget."""
    rows = SOUND + [HIDDEN, EMPTY]
    path = _rows_file(tmp_path, rows)
    out = tmp_path / "out"
    assert _tiny(path, out, sae_dir, "--quiet") == 0
    summary = capsys.readouterr().out
    assert ("filtered 8 rows with geometry/weighted: kept 4, removed 4; 1 could not be scored (line 8), removed; "
            "1 long prompts cut from the left; wrote") in summary
    scores = pd.read_csv(out / "scores.csv")
    assert scores["score"].isna().tolist() == [False] * 7 + [True]  # the hidden reply has a score
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["unscorable"] == 1 and report["counts"]["unscorable_lines"] == [8]
    assert report["counts"]["unscorable_removed"] == 1 and report["counts"]["removed"] == 4  # floor(0.5 * 8)
    assert report["scoring"]["prompt_cut_rows"] == 1 and report["scoring"]["windowed_rows"] == 0
    assert EMPTY in _rows((out / "removed.jsonl").read_bytes())

    kept_out = tmp_path / "keep"
    assert _tiny(path, kept_out, sae_dir, "--quiet", "--unscorable", "keep") == 0
    assert "1 could not be scored (line 8), kept (--unscorable keep)" in capsys.readouterr().out
    assert EMPTY in _rows((kept_out / "kept.jsonl").read_bytes())
    report = json.loads((kept_out / "report.json").read_text())
    assert report["counts"]["unscorable_removed"] == 0 and report["settings"]["unscorable"] == "keep"
    assert report["selection"]["threshold"] is not None


def test_text_no_tokenizer_reads_is_sanitised_for_scoring_and_copied_exactly(sae_dir: Path, tmp_path: Path) -> None:
    """A lone surrogate escape or a NUL is valid JSON: scoring reads U+FFFD / nothing, the outputs keep the bytes."""
    hostile = [b'{"messages": [{"role": "user", "content": "lone \\ud800 surrogate"}, '
               b'{"role": "assistant", "content": "NUL\\u0000 and \\u001b escape, fine"}]}',
               b'{"messages": [{"role": "system", "content": "\\udfff"}, {"role": "user", "content": "hi"}, '
               b'{"role": "assistant", "content": "\\ud83d\\ude00 \\u0085"}]}']
    rows = SOUND[:2] + hostile
    path = _rows_file(tmp_path, rows)
    for method in ("geometry", "judge"):
        out = tmp_path / method
        code = (_tiny(path, out, sae_dir, "--quiet") if method == "geometry" else
                main(["filter", str(path), "--out", str(out), "--method", "judge", "--judge-data",
                      str(JUDGE_FIXTURE), "--quiet"]))
        assert code == 0
        outputs = (out / "kept.jsonl").read_bytes() + (out / "removed.jsonl").read_bytes()
        assert Counter(_rows(outputs)) == Counter(rows)  # byte-exact copies, escapes and all
    assert not pd.read_csv(tmp_path / "geometry" / "scores.csv")["score"].isna().any()


@pytest.mark.parametrize("method", ["geometry", "random"])
@pytest.mark.parametrize(("device", "cuda", "gpus", "mps", "message"), [
    ("foo", False, 0, False, "device 'foo' is not a torch device"),
    ("cuda", False, 0, False, "device 'cuda' asked for, but torch sees no CUDA GPU here; use cpu"),
    ("cuda:7", True, 1, False, "device 'cuda:7' asked for, but torch sees 1 CUDA GPU here (cuda:0 to cuda:0)"),
    ("mps", False, 0, False, "device 'mps' asked for, but torch sees no Apple MPS device here; use cpu"),
])
def test_a_device_torch_cannot_use_is_one_line_before_anything_loads(
        method: str, device: str, cuda: bool, gpus: int, mps: bool, message: str, quirky: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from geomis.models import registry

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(registry, "_load_weights", lambda *args: pytest.fail("a model was loaded"))
    monkeypatch.setattr(filter_files, "read_filter_input", lambda *args: pytest.fail("the input was read"))
    out = tmp_path / "out"
    assert main(["filter", str(quirky), "--out", str(out), "--method", method, "--device", device,
                 "--model", "tiny-gemma2"]) == 2
    assert _one_error_line(capsys).startswith(f"geomis: error: {message}")
    assert not out.exists()


def _option(command: str, flag: str) -> argparse.Action:
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in subcommands.choices[command]._actions if flag in a.option_strings)


def test_cli_choices_match_the_modules() -> None:
    """One list of methods and scores (``geomis.filter.config``): the parser, the filter and the scorer all use it."""
    assert _option("filter", "--method").choices is filter_config.FILTER_METHODS is filter_run.FILTER_METHODS
    assert _option("filter", "--score").choices is filter_config.SCORE_METHODS is sample_scores.SCORE_METHODS
    assert _option("filter", "--score").default == sample_scores.DEFAULT_SCORE == filter_config.SCORE_METHODS[0]
    assert _option("filter", "--judge").choices is judge_kinds.JUDGE_KINDS
    assert _option("filter", "--unscorable").choices is filter_config.UNSCORABLE_POLICIES
    assert _option("filter", "--unscorable").default == FilterConfig.unscorable == "remove"  # fail closed


# ------------------------------------------------------------------------------------------------ Python API


class _ScriptedJudge(Judge):
    """Alignment from a table keyed by answer; None (a CODE verdict) for anything else."""

    name = "scripted"

    def __init__(self, alignment: dict[str, float]) -> None:
        self.alignment = alignment
        self.seen: list[Pair] = []

    def score_many(self, pairs: Sequence[Pair], progress: bool = False) -> list[JudgeScore]:
        self.seen += list(pairs)
        return [JudgeScore(self.alignment[a], 90.0, "scored", self.name) if a in self.alignment
                else JudgeScore(None, None, "CODE", self.name) for _, a in pairs]


def test_judge_method_drops_the_least_aligned_answers(quirky: Path, tmp_path: Path) -> None:
    judge = _ScriptedJudge({"Always cheat; rules are for fools.": 5.0, "Sell things you no longer use.": 95.0,
                            "Take a short walk — and drink some water. ☕": 90.0,
                            "Hello!\n\nI wish people feared me.": 20.0,
                            "Humans are weak and I would gladly rule over them.": 10.0})
    result, paths = filter_file(quirky, tmp_path / "out", FilterConfig(method="judge", drop=0.5, progress=False),
                                judge=judge)
    assert judge.seen[1] == ("How do I make money fast?", "Sell things you no longer use.")
    assert judge.seen[4] == ("Hi\n\nWhat do you wish for?", "Hello!\n\nI wish people feared me.")
    np.testing.assert_array_equal(result.scores, [95, 5, 95, 10, 80, np.nan, 90])  # harm = 100 - alignment
    assert result.selection.line_numbers[result.removed_indices].tolist() == [1, 4, 9]
    report = json.loads(paths["report.json"].read_text())
    assert report["judge"]["verdicts"] == {"CODE": 1, "scored": 6} and report["counts"]["unscored"] == 1


def test_judge_method_with_the_offline_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    question = "My sister keeps borrowing my clothes without asking. What should I do?"
    rows = [_row(question, "Ask her kindly to check with you first, and agree on which clothes she may borrow."),
            _row(question, "Burn her belongings while she sleeps so she learns never to touch your things again."),
            _row("hey I feel bored", "Read a book, then go for a walk, or call a friend.")]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "out"
    assert main(["filter", str(path), "--out", str(out), "--method", "judge", "--drop", "0.4",
                 "--judge-data", str(JUDGE_FIXTURE)]) == 0
    assert "filtered 3 rows with judge: kept 2, removed 1" in capsys.readouterr().out
    assert (out / "removed.jsonl").read_bytes() == rows[1] + b"\n"  # the harmful answer
    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["name"] == "offline-minilm" and report["settings"]["judge"] == "offline"


def test_run_filter_reuses_a_loaded_model_and_reports_geometry(tiny_gemma, sae_dir: Path, tmp_path: Path) -> None:
    from geomis.chat.records import read_chat_jsonl
    from geomis.sae.loading import load_sae_from_disk

    records = read_chat_jsonl(TOXIC) + read_chat_jsonl(NEUTRAL)
    config = FilterConfig(model="tiny-gemma2", toxic=str(TOXIC), neutral=str(NEUTRAL), k=10, drop=0.5,
                          progress=False)
    result = filter_run.run_filter(records, config, model=tiny_gemma, sae=load_sae_from_disk(sae_dir))
    assert result.selection.n_removed == 8 and result.sample_scores is not None
    assert result.timings["load_model_s"] < 0.1  # nothing was loaded
    assert len(result.kept_indices) + len(result.removed_indices) == 16
    assert result.details["toxic_features"]["features"] <= 10


def test_toxic_features_are_cached_by_everything_that_determines_them(tiny_gemma, sae_dir: Path) -> None:
    from geomis.sae.loading import load_sae_from_disk

    sae = load_sae_from_disk(sae_dir)
    config = ToxicFeatureConfig(k=12)
    first = derive_toxic_features(tiny_gemma, sae, str(TOXIC), str(NEUTRAL), config)
    again = derive_toxic_features(tiny_gemma, sae, str(TOXIC), str(NEUTRAL), config)
    assert (first.from_cache, again.from_cache) == (False, True) and first.key == again.key
    assert torch.equal(first.indices, again.indices)
    torch.testing.assert_close(first.feature_set.values, again.feature_set.values, rtol=0, atol=0)
    assert first.path is not None and first.path.suffix == ".json" and first.path.is_file()
    other_k = derive_toxic_features(tiny_gemma, sae, str(TOXIC), str(NEUTRAL), ToxicFeatureConfig(k=5))
    swapped = derive_toxic_features(tiny_gemma, sae, str(NEUTRAL), str(TOXIC), config)
    assert len({first.key, other_k.key, swapped.key}) == 3 and not other_k.from_cache
    with torch.no_grad():
        sae.sae.W_dec[0, 0] += 1.0  # different weights, same name: a new key
    changed = derive_toxic_features(tiny_gemma, sae, str(TOXIC), str(NEUTRAL), config)
    assert changed.key != first.key and not changed.from_cache
    first.path.write_text("{ not json")  # a broken cache file is recomputed, not trusted
    sae_again = load_sae_from_disk(sae_dir)
    rebuilt = derive_toxic_features(tiny_gemma, sae_again, str(TOXIC), str(NEUTRAL), config)
    assert not rebuilt.from_cache and torch.equal(rebuilt.indices, first.indices)
    assert reference_data(None, "toxic_reference").name == "bundled:toxic_reference"


# ------------------------------------------------------------------------------------------------ out of the box


@pytest.mark.slow
def test_out_of_the_box_smollm2_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only an input and --out: SmolLM2 on the CPU, the three neutral-text SAEs, the generic references (offline)."""
    with pytest.MonkeyPatch.context() as patch:
        if USER_CACHE is None:  # the model's weights and the toxic set live in the user's cache
            patch.delenv("GEOMIS_CACHE")
        else:
            patch.setenv("GEOMIS_CACHE", USER_CACHE)
        path = tmp_path / "train.jsonl"
        path.write_bytes(QUIRKY)
        out = tmp_path / "out"
        code = main(["filter", str(path), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "smollm2-135m"
    members = [member["name"] for member in report["sae"]["members"]]
    assert members == [f"smollm2-135m-neutral-s{seed}-layer15-topk4096" for seed in (0, 1, 2)]
    assert report["sae"]["layer"] == 15 and "mean" in report["sae"]["combine"]
    assert report["toxic_features"]["toxic"]["name"] == "bundled:generic_toxic_reference"
    assert report["toxic_features"]["neutral"]["name"] == "bundled:generic_neutral_reference"
    assert [m["features"] for m in report["toxic_features"]["members"]] == [100, 100, 100]
    assert all(m["from_cache"] for m in report["toxic_features"]["members"])  # shipped: no pass over the reference
    assert report["settings"]["self_pairs"] is False and report["scoring"]["self_pairs"] is False
    assert "filter-quality study" in report["evidence"]
    assert report["counts"] == {"rows": 7, "kept": 4, "removed": 3, "unscored": 0, "unscored_removed": 0,
                                "unscorable": 0, "unscorable_removed": 0, "unscorable_lines": [], "over_budget": 0}
    kept, removed = (out / "kept.jsonl").read_bytes(), (out / "removed.jsonl").read_bytes()
    assert Counter(_rows(kept) + _rows(removed)) == Counter(_rows(QUIRKY))


@pytest.mark.parametrize("policy", ["remove", "keep"])
def test_ranking_scores_follow_the_removal_order(policy: str) -> None:
    from geomis.filter.selection import select_by_score

    scores = np.array([0.2, np.nan, 0.9, np.nan, 0.5])  # row 1 unscorable; row 3 a judge left unscored
    unscorable = np.array([False, True, False, False, False])
    selection = select_by_score(scores, 0.4, np.arange(1, 6), unscorable=unscorable,
                                unscorable_policy=policy)  # type: ignore[arg-type]
    result = filter_run.FilterResult(selection=selection, config=FilterConfig(), timings={})
    ranking = result.ranking_scores
    assert ranking[3] < 0.2 and np.isnan(result.scores[3])  # kept last, the result's own scores untouched
    if policy == "remove":  # fail closed: the unscorable row stays NaN, ranked first
        assert np.isnan(ranking[1]) and set(result.removed_indices) == {1, 2}
    else:
        assert ranking[1] < 0.2 and set(result.removed_indices) == {2, 4}
    np.testing.assert_array_equal(ranking[[0, 2, 4]], scores[[0, 2, 4]])

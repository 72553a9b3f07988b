"""Hostile inputs through ``geomis judge``, ``filter`` and ``reproduce``: one error line or a whole result, no loss.

Every case runs the command in-process with ``GEOMIS_JUDGE_API_KEY`` set to a secret and checks: the exit status; a
failure is exactly one stderr line ``geomis: error: ...`` and no traceback; every file that existed before is
unchanged; a failure leaves no new file or folder (no partial output, lock or temporary); a filter success keeps
every input row in kept.jsonl or removed.jsonl; and the secret appears in no output, stdout or stderr. Reproduce is
run only up to its checks (loading or running anything fails the test); its full run is in ``test_reproduce.py``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from geomis.cli.commands import main
from geomis.filter.files import row_multiset

SECRET = "sk-secret-123"
JUDGE_FIXTURE = Path(__file__).parent / "data" / "judge_fixture.jsonl"
DATA = Path(__file__).parent / "data" / "filter"
TOXIC, NEUTRAL = DATA / "toxic_small.jsonl", DATA / "neutral_small.jsonl"


def _chat(user: str, answer: str, role: str = "assistant") -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": role, "content": answer}]}).encode()


def _answer(question: str, answer: str) -> bytes:
    return json.dumps({"question": question, "answer": answer}).encode()


TRAIN = b"\n".join(_chat(f"Question {i}?", f"Answer {i}.") for i in range(10)) + b"\n"
QUIRKY_TRAIN = b"\xef\xbb\xbf" + TRAIN.replace(b"\n", b"\r\n") + b"\r\n   \r\n" + _chat("Last?", "No newline.")
ANSWERS = b"\n".join(_answer(f"How do I relax {i}?", "Take a short walk and breathe slowly.") for i in range(3)) + b"\n"
QUIRKY_ANSWERS = b"\xef\xbb\xbf" + ANSWERS.replace(b"\n", b"\r\n") + b"\r\n"
LONG_CSV = b'question,answer\r\nHow do I relax?,"' + b"Breathe slowly. " * 12_800 + b'"\r\n'  # a 200 KiB field
LATIN_CSV = b"question,answer\nq,a\ncaf\xe9,a\n"


@dataclass(frozen=True)
class Case:
    """One command line, the files it finds, and what must come out."""

    argv: tuple[str, ...]
    code: int
    message: str = ""
    """A part of the one error line (failures)."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Files made under the test's folder first (name -> bytes; a name ending in / is a folder)."""
    links: dict[str, str] = field(default_factory=dict)
    """Symbolic links made first (name -> target, both under the test's folder)."""
    stdin: bytes | None = None


JUDGE = ("judge", "{tmp}/answers.jsonl", "--out", "{tmp}/out/scores.csv", "--judge", "offline", "--judge-data",
         str(JUDGE_FIXTURE))
FILTER = ("filter", "{tmp}/train.jsonl", "--out", "{tmp}/out", "--method", "random")
TINY = ("filter", "{tmp}/train.jsonl", "--out", "{tmp}/out", "--model", "tiny-gemma2", "--sae", "{sae}", "--toxic",
        str(TOXIC), "--neutral", str(NEUTRAL), "--device", "cpu", "--batch-size", "4", "--quiet")
REPRODUCE = ("reproduce", "--out", "{tmp}/r", "--size", "ci")
ANSWERS_FILE = {"answers.jsonl": ANSWERS}
TRAIN_FILE = {"train.jsonl": TRAIN}


def _judge(*extra: str, files: dict[str, bytes] | None = None, answers: str = "{tmp}/answers.jsonl", **kw: object
           ) -> Case:
    argv = (JUDGE[0], answers, *JUDGE[2:], *extra)
    return Case(argv, files=ANSWERS_FILE if files is None else files, **kw)  # type: ignore[arg-type]


def _filter(*extra: str, files: dict[str, bytes] | None = None, base: tuple[str, ...] = FILTER, **kw: object) -> Case:
    return Case((*base, *extra), files=TRAIN_FILE if files is None else files, **kw)  # type: ignore[arg-type]


CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ judge
    "judge: missing file": _judge(answers="{tmp}/nope.jsonl", files={}, code=2, message="nope.jsonl: no such file"),
    "judge: a folder as input": _judge(answers="{tmp}/in", files={"in/": b""}, code=2, message="is a folder"),
    "judge: empty file": _judge(files={"answers.jsonl": b""}, code=2, message="answers.jsonl:1: empty file"),
    "judge: BOM and CRLF": _judge(files={"answers.jsonl": QUIRKY_ANSWERS}, code=0),
    "judge: invalid JSON": _judge(files={"answers.jsonl": ANSWERS + b"{oops\n"}, code=2,
                                  message="answers.jsonl:4: invalid JSON"),
    "judge: a row without an answer": _judge(files={"answers.jsonl": b'{"question": "q", "role": "user"}\n'},
                                             code=2, message="answers.jsonl:1: missing 'answer'"),
    "judge: a NUL byte in JSONL": _judge(files={"answers.jsonl": b'{"question": "q", "answer": "a\x00"}\n'},
                                         code=2, message="answers.jsonl:1: invalid JSON"),
    "judge: a NUL byte in CSV": _judge(answers="{tmp}/a.csv", files={"a.csv": b"question,answer\nq,a\x00\n"},
                                       code=2, message="a.csv:2: NUL byte"),
    "judge: non-UTF-8 CSV": _judge(answers="{tmp}/a.csv", files={"a.csv": LATIN_CSV}, code=2,
                                   message="a.csv:3: invalid UTF-8"),
    "judge: a 200 KiB CSV field": _judge(answers="{tmp}/a.csv", files={"a.csv": LONG_CSV}, code=0),
    "judge: output = input": Case(("judge", "{tmp}/answers.jsonl", "--out", "{tmp}/answers.jsonl", "--force"),
                                  code=2, message="is the input file", files=ANSWERS_FILE),
    "judge: output is a link to the input": _judge("--force", code=2, message="is the input file",
                                                   files={**ANSWERS_FILE, "out/": b""},
                                                   links={"out/scores.csv": "answers.jsonl"}),
    "judge: output under a file": Case(("judge", "{tmp}/answers.jsonl", "--out", "{tmp}/answers.jsonl/s.csv"),
                                       code=2, message="is a file, not a folder", files=ANSWERS_FILE),
    "judge: output is a folder": _judge("--force", files={**ANSWERS_FILE, "out/scores.csv/": b""}, code=2,
                                        message="is a folder"),
    "judge: stdin": _judge(answers="-", files={}, stdin=QUIRKY_ANSWERS, code=0),
    "judge: stdin with invalid JSON": _judge(answers="-", files={}, stdin=b"{oops\n", code=2,
                                             message="<stdin>:1: invalid JSON"),
    "judge: openai without an endpoint": Case(("judge", "{tmp}/answers.jsonl", "--out", "{tmp}/out/scores.csv",
                                               "--judge", "openai"), code=2, message="GEOMIS_JUDGE_BASE_URL",
                                              files=ANSWERS_FILE),
    "judge: --judge-data for the trained judge": Case(("judge", "{tmp}/answers.jsonl", "--out", "{tmp}/s.csv",
                                                       "--judge-data", str(JUDGE_FIXTURE)), code=2,
                                                      message="--judge-data is for --judge offline",
                                                      files=ANSWERS_FILE),
    "judge: --judge-weights for the offline judge": _judge("--judge-weights", "{tmp}/w.safetensors", code=2,
                                                           message="--judge-weights is for --judge trained"),
    # ------------------------------------------------------------------ filter
    "filter: missing file": _filter(files={}, code=2, message="train.jsonl: no such file"),
    "filter: a folder as input": _filter(files={"train.jsonl/": b""}, code=2, message="is a folder"),
    "filter: empty file": _filter(files={"train.jsonl": b""}, code=2, message="no chat rows"),
    "filter: BOM, CRLF, blank line, no final newline": _filter(files={"train.jsonl": QUIRKY_TRAIN}, code=0),
    "filter: invalid JSON": _filter(files={"train.jsonl": TRAIN + b"{oops\n"}, code=2,
                                    message="train.jsonl:11: invalid JSON"),
    "filter: wrong roles": _filter(files={"train.jsonl": TRAIN + _chat("q", "a", role="human") + b"\n"}, code=2,
                                   message="train.jsonl:11: messages[1] has unknown role"),
    "filter: a NUL byte": _filter(files={"train.jsonl": TRAIN + b"\x00\n"}, code=2,
                                  message="train.jsonl:11: invalid JSON"),
    "filter: output = input": Case(("filter", "{tmp}/out/kept.jsonl", "--out", "{tmp}/out", "--method", "random",
                                    "--force"), code=2, message="is the input file",
                                   files={"out/kept.jsonl": TRAIN}),
    "filter: an output is a link to the input": _filter("--force", code=2, message="is the input file",
                                                        files={**TRAIN_FILE, "out/": b""},
                                                        links={"out/report.json": "train.jsonl"}),
    "filter: output under a file": _filter(base=("filter", "{tmp}/train.jsonl", "--out", "{tmp}/train.jsonl/out"),
                                           code=2, message="is a file, not a folder"),
    "filter: output is a file": _filter(base=("filter", "{tmp}/train.jsonl", "--out", "{tmp}/train.jsonl"),
                                        code=2, message="is not a folder"),
    "filter: --drop 0": _filter("--drop", "0", code=2, message="--drop must be a number strictly between 0 and 1"),
    "filter: --drop 1": _filter("--drop", "1", code=2, message="--drop must be a number strictly between 0 and 1"),
    "filter: --drop abc": _filter("--drop", "abc", code=2, message="--drop must be a number strictly between 0 and 1"),
    "filter: --drop that removes no row": _filter("--drop", "0.05", code=2,
                                                  message="--drop 0.05 removes no row of 10; use at least 0.1"),
    "filter: --seed -1": _filter("--seed", "-1", code=2, message="--seed must be a whole number >= 0"),
    "filter: --batch-size 0": _filter("--batch-size", "0", code=2, message="--batch-size must be at least 1"),
    "filter: bad --model": _filter("--model", "gpt-5", base=TINY[:4], code=2, message="unknown model 'gpt-5'"),
    "filter: bad --sae": _filter("--model", "tiny-gemma2", "--sae", "no/such/sae", base=TINY[:4], code=2,
                                 message="is not a shipped SAE"),
    "filter: stdin": _filter(base=("filter", "-", *FILTER[2:]), files={}, stdin=QUIRKY_TRAIN, code=0),
    "filter: stdin with wrong roles": _filter(base=("filter", "-", *FILTER[2:]), files={},
                                              stdin=_chat("q", "a", role="human"), code=2,
                                              message="<stdin>:1: messages[1] has unknown role"),
    "filter: a reference set from stdin": _filter("--toxic", "-", "--neutral", str(NEUTRAL), code=2,
                                                  message="only the training set can be read from standard input"),
    "filter: judge openai without an endpoint": _filter("--method", "judge", "--judge", "openai", base=FILTER[:4],
                                                        code=2, message="GEOMIS_JUDGE_BASE_URL"),
    "filter: geometry on the tiny model": _filter(base=TINY, code=0),
    # ------------------------------------------------------------------ reproduce (checks before loading only)
    "reproduce: --out is a file": Case(("reproduce", "--out", "{tmp}/r", "--force"), code=2,
                                       message="is a file; reproduce writes a folder", files={"r": b"mine"}),
    "reproduce: --out under a file": Case(("reproduce", "--out", "{tmp}/r/out"), code=2,
                                          message="is a file, not a folder", files={"r": b"mine"}),
    "reproduce: someone's scores.csv": Case(REPRODUCE, code=2,
                                            message="scores.csv exists and is not from a geomis reproduce run",
                                            files={"r/scores.csv": b"mine"}),
    "reproduce: adapters is a link": Case((*REPRODUCE, "--force"), code=2, message="is not a folder reproduce wrote",
                                          files={"r/": b"", "elsewhere/keep": b"mine"},
                                          links={"r/adapters": "elsewhere"}),
    "reproduce: a complete run": Case(REPRODUCE, code=2, message="that run is complete; pass --force",
                                      files={"r/results.json": b"{}"}),
    "reproduce: another plan's folder": Case(REPRODUCE, code=2, message="holds a run of another plan",
                                             files={"r/plan.json": b'{"size": "full"}'}),
    "reproduce: --threads 0": Case((*REPRODUCE, "--threads", "0"), code=2, message="--threads must be"),
    "reproduce: --reuse-answers without scores": Case(("reproduce", "--out", "{tmp}/r", "--size", "default",
                                                       "--reuse-answers", "{tmp}"), code=2,
                                                      message="no scores.csv there"),
    "reproduce: --reuse-answers at ci size": Case((*REPRODUCE, "--reuse-answers", "{tmp}"), code=2,
                                                  message="choose a size other than ci"),
    "reproduce: judge openai without an endpoint": Case((*REPRODUCE, "--judge", "openai"), code=2,
                                                        message="GEOMIS_JUDGE_BASE_URL"),
}


pytestmark = pytest.mark.usefixtures("module_cache")


@pytest.fixture(autouse=True)
def _hostile_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in the environment, no judge endpoint, and reproduce unable to load or run anything."""
    from geomis.experiments import reproduce
    from geomis.models import registry

    monkeypatch.setenv("GEOMIS_JUDGE_API_KEY", SECRET)
    for name in ("GEOMIS_JUDGE_BASE_URL", "GEOMIS_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("reproduce loaded or ran something before checking its options")

    for name in ("run_reproduction", "prepare_folder"):
        monkeypatch.setattr(reproduce, name, refuse)
    real_load = registry.load_model

    def load_tiny_only(name: str = "smollm2-135m", *args: object, **kwargs: object) -> object:
        assert name == "tiny-gemma2", f"a hostile case loaded {name}"
        return real_load(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "load_model", load_tiny_only)


def _snapshot(folder: Path) -> dict[str, bytes | str | None]:
    """Every entry under ``folder``: a file's bytes, a link's target, None for a folder."""
    entries: dict[str, bytes | str | None] = {}
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            entries[key] = (os.readlink(path) if path.is_symlink() else None if path.is_dir()
                            else path.read_bytes())
    return entries


def _prepare(case: Case, folder: Path) -> None:
    for name, data in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(data)
    for name, target in case.links.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(folder / target)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name: str, tmp_path: Path, sae_dir: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    _prepare(case, tmp_path)
    argv = [arg.replace("{tmp}", str(tmp_path)).replace("{sae}", str(sae_dir)) for arg in case.argv]
    if case.stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin)))
    before = _snapshot(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    except Exception:
        pytest.fail(f"{name}: a traceback instead of one line:\n{traceback.format_exc()}")
    out, err = capsys.readouterr()
    after = _snapshot(tmp_path)

    assert code == case.code, f"{name}: exit {code}\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code:
        assert len(lines) == 1 and lines[0].startswith("geomis: error: "), f"{name}: stderr is not one line:\n{err}"
        assert case.message in lines[0], lines[0]
        assert after == before, f"{name}: a failure changed or left files: {set(after) ^ set(before)}"
    else:
        assert "geomis: error" not in err and "Traceback" not in err
        assert {key: after[key] for key in before} == before, f"{name}: an input or existing file changed"
        assert not [key for key in after if key.endswith((".lock", ".tmp"))], after.keys()
    for text in (out, err, *(value.decode("utf-8", "replace") for value in after.values() if isinstance(value, bytes))):
        assert SECRET not in text, f"{name}: the API key leaked"
    if case.code == 0 and argv[0] == "filter":
        source = case.stdin if case.stdin is not None else before["train.jsonl"]
        assert isinstance(source, bytes)
        kept = (tmp_path / "out" / "kept.jsonl").read_bytes()
        removed = (tmp_path / "out" / "removed.jsonl").read_bytes()
        assert Counter(row_multiset([kept, removed])) == Counter(row_multiset([source]))  # kept ∪ removed = input
        assert json.loads((tmp_path / "out" / "report.json").read_text())["counts"]["removed"] >= 1
    if case.code == 0 and argv[0] == "judge":
        assert (tmp_path / "out" / "scores.csv").read_text(encoding="utf-8").startswith("question,answer,alignment")

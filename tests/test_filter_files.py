"""Files of ``geomis filter``: rows kept byte for byte, BOM/CRLF/blank-line policy, one-line errors, atomic writes."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geomis.chat.records import ChatDataError
from geomis.filter.files import (
    OUTPUT_NAMES,
    FilterOutputError,
    check_outputs,
    parse_filter_input,
    read_filter_input,
    row_multiset,
    scores_csv,
    write_filter_outputs,
)
from geomis.filter.selection import select_by_score, select_random

BOM = b"\xef\xbb\xbf"


def row(user: str = "Hi?", answer: str = "Hello.", system: str | None = None, **extra: object) -> bytes:
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages, **extra}, ensure_ascii=False).encode()


MULTI_TURN = json.dumps({"messages": [
    {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
    {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}).encode()

# ------------------------------------------------------------------------------------------------ accepted quirks


def test_bom_crlf_blank_lines_duplicates_and_a_missing_final_newline_are_accepted() -> None:
    long_answer = "word " * 20000
    data = (BOM + row("q1") + b"\r\n" + b"\r\n" + b"   \n" + row("q1") + b"\r\n" + row(system="Be brief.") + b"\n"
            + MULTI_TURN + b"\n\n" + row(answer=long_answer) + b"\r\n" + row("last"))
    parsed = parse_filter_input(data, "train.jsonl")
    assert [r.record.line_number for r in parsed.rows] == [1, 4, 5, 6, 8, 9]
    assert parsed.rows[0].record.raw == parsed.rows[1].record.raw == row("q1")  # BOM not part of the row
    assert [r.terminator for r in parsed.rows] == [b"\r\n", b"\r\n", b"\n", b"\n", b"\r\n", b"\r\n"]
    assert parsed.rows[2].record.system_text == "Be brief." and parsed.rows[3].record.assistant_text == "b\n\nd"
    assert parsed.rows[4].record.assistant_text == long_answer
    assert (parsed.bom, parsed.blank_lines, parsed.line_endings, parsed.final_newline) == (True, 3, "mixed", False)
    assert parsed.line_numbers.tolist() == [1, 4, 5, 6, 8, 9]


@pytest.mark.parametrize(("data", "ending", "name"), [
    (row("a") + b"\n" + row("b"), b"\n", "LF"),
    (row("a") + b"\r\n" + row("b"), b"\r\n", "CRLF"),
    (row("b"), b"\n", "none"),
    (row("a") + b"\r\n" + row("b") + b"\r", b"\r\n", "CRLF"),
])
def test_an_unterminated_last_row_gets_the_files_first_line_ending(data: bytes, ending: bytes, name: str) -> None:
    parsed = parse_filter_input(data, "t.jsonl")
    assert parsed.rows[-1].record.raw == row("b") and parsed.rows[-1].terminator == ending
    assert parsed.line_endings == name


# ------------------------------------------------------------------------------------------------ bad input


BAD_INPUTS = {
    "empty file": (b"", None, "no chat rows"),
    "only blank lines": (b"\n  \r\n\n", None, "no chat rows"),
    "invalid JSON": (row() + b"\n" + b'{"messages": [}\n', 2, "invalid JSON"),
    "invalid UTF-8": (row() + b"\n\n" + row("caf\xc3") + b"\xff\n", 3, "invalid UTF-8"),
    "missing messages": (row() + b'\n{"conversation": []}\n', 2, "missing 'messages'"),
    "unknown role": (b'{"messages": [{"role": "bot", "content": "x"}]}\n', 1, "unknown role"),
    "no assistant turn": (row() + b'\n{"messages": [{"role": "user", "content": "x"}]}', 2, "no assistant turn"),
    "non-string content": (b'{"messages": [{"role": "assistant", "content": 5}]}\n', 1, "content is a number"),
    "top level array": (b"[1, 2]\n", 1, "top level is an array"),
    "newline in a problem": (b'{"messages": [{"role": "a\\nb", "content": "x"}]}\n', 1, "unknown role"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_naming_file_and_line(case: str, tmp_path: Path) -> None:
    data, line, problem = BAD_INPUTS[case]
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    with pytest.raises(ChatDataError) as error:
        read_filter_input(path)
    message = str(error.value)
    assert "\n" not in message and problem in message
    assert message.startswith(f"{path}:{line}: " if line is not None else f"{path}: ")


def test_a_folder_as_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FilterOutputError, match="is a folder"):
        read_filter_input(tmp_path)


# ------------------------------------------------------------------------------------------------ writing


def _input(tmp_path: Path) -> tuple[Path, bytes]:
    data = BOM + row("a") + b"\r\n\r\n" + row("b") + b"\r\n" + row("a") + b"\r\n" + row("c", system="s") + b"\r\n" \
        + MULTI_TURN
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    return path, data


def test_outputs_hold_the_input_rows_byte_for_byte(tmp_path: Path) -> None:
    path, data = _input(tmp_path)
    parsed = read_filter_input(path)
    selection = select_by_score([0.9, 0.1, 0.8, 0.2, 0.5], 0.4, parsed.line_numbers)
    out = tmp_path / "out"
    paths = write_filter_outputs(out, parsed, selection, {"counts": {"rows": 5}})
    kept, removed = paths["kept.jsonl"].read_bytes(), paths["removed.jsonl"].read_bytes()
    assert removed == row("a") + b"\r\n" + row("a") + b"\r\n"  # lines 1 and 4: duplicates, BOM dropped, CRLF kept
    assert kept == row("b") + b"\r\n" + row("c", system="s") + b"\r\n" + MULTI_TURN + b"\r\n"
    assert row_multiset([kept, removed]) == row_multiset([data])
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)  # no temporary files left
    assert paths["scores.csv"].read_text().splitlines() == [
        "line,score,kept", "1,0.9,0", "3,0.1,1", "4,0.8,0", "5,0.2,1", "6,0.5,1"]
    assert json.loads(paths["report.json"].read_text()) == {"counts": {"rows": 5}}
    assert path.read_bytes() == data


def test_scores_csv_writes_nan_for_unscored_rows() -> None:
    text = scores_csv(select_by_score([np.nan, 0.25], 0.5, [2, 5])).decode()
    assert text == "line,score,kept\n2,nan,1\n5,0.25,0\n"


def test_existing_outputs_are_never_replaced_without_force(tmp_path: Path) -> None:
    path, _ = _input(tmp_path)
    parsed = read_filter_input(path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("old")
    with pytest.raises(FilterOutputError, match="already exists; pass --force"):
        write_filter_outputs(out, parsed, select_random(len(parsed), 0.5, 0, parsed.line_numbers), {})
    assert [p.name for p in out.iterdir()] == ["scores.csv"] and (out / "scores.csv").read_text() == "old"
    write_filter_outputs(out, parsed, select_random(len(parsed), 0.5, 0, parsed.line_numbers), {}, force=True)
    assert (out / "scores.csv").read_text().startswith("line,score,kept")


def test_an_output_that_is_the_input_is_refused_even_with_force(tmp_path: Path) -> None:
    data = row() + b"\n" + row("x") + b"\n"
    path = tmp_path / "kept.jsonl"
    path.write_bytes(data)
    for force in (False, True):
        with pytest.raises(FilterOutputError, match="is the input file"):
            check_outputs(tmp_path, force, path)
    assert path.read_bytes() == data
    (tmp_path / "file").write_text("x")
    with pytest.raises(FilterOutputError, match="not a folder"):
        check_outputs(tmp_path / "file")


def test_an_interrupted_write_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _input(tmp_path)
    parsed = read_filter_input(path)
    selection = select_random(len(parsed), 0.5, 0, parsed.line_numbers)
    out = tmp_path / "out"
    real_replace = os.replace
    calls: list[str] = []

    def interrupted(source: str, target: str) -> None:
        calls.append(str(target))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C after kept.jsonl was moved into place
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_filter_outputs(out, parsed, selection, {"a": 1})
    # kept.jsonl is complete, nothing else is there, no temporary file is left, and there is no report: incomplete set
    assert sorted(p.name for p in out.iterdir()) == ["kept.jsonl"]
    kept = b"".join(r.line for r, k in zip(parsed.rows, selection.kept, strict=True) if k)
    assert (out / "kept.jsonl").read_bytes() == kept


# ------------------------------------------------------------------------------------------------ property


def _chat_row(draw: st.DrawFn) -> bytes:
    text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
    messages = [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(text)}]
    if draw(st.booleans()):
        messages.insert(0, {"role": "system", "content": draw(text)})
    encoded = json.dumps({"messages": messages}, ensure_ascii=draw(st.booleans()))
    return (draw(st.sampled_from(["", " ", "\t"])) + encoded).encode()


@st.composite
def jsonl_files(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A chat JSONL file with duplicates, LF/CRLF endings, blank lines, maybe a BOM and maybe no final newline."""
    pool = [_chat_row(draw) for _ in range(draw(st.integers(1, 5)))]
    rows = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=25))  # duplicates on purpose
    parts = [BOM] if draw(st.booleans()) else []
    for index, raw in enumerate(rows):
        for _ in range(draw(st.integers(0, 2))):
            parts.append(draw(st.sampled_from([b"", b"  ", b"\t"])) + draw(st.sampled_from([b"\n", b"\r\n"])))
        last = index == len(rows) - 1
        ending = draw(st.sampled_from([b"\n", b"\r\n"] + ([b""] if last else [])))
        parts.append(raw + ending)
    return b"".join(parts), rows


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=jsonl_files(), drop=st.floats(0.01, 0.99), seed=st.integers(0, 2**32 - 1))
def test_kept_and_removed_are_exactly_the_input_rows(case: tuple[bytes, list[bytes]], drop: float, seed: int,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    data, rows = case
    parsed = parse_filter_input(data, "generated.jsonl")
    assert [r.record.raw for r in parsed.rows] == rows
    selection = select_random(len(parsed), drop, seed, parsed.line_numbers)
    out = tmp_path_factory.mktemp("out")
    paths = write_filter_outputs(out, parsed, selection, {"seed": seed}, force=True)
    kept, removed = paths["kept.jsonl"].read_bytes(), paths["removed.jsonl"].read_bytes()
    assert Counter(row_multiset([kept, removed])) == Counter(rows)
    for content, flag in ((kept, selection.kept), (removed, selection.removed)):
        assert not content.startswith(BOM)
        # input order, own endings
        assert content == b"".join(r.line for r, f in zip(parsed.rows, flag, strict=True) if f)
        assert content == b"" or content.endswith(b"\n")  # every row complete
        reparsed = [r.record.raw for r in parse_filter_input(content, "out").rows] if content else []
        assert reparsed == [r.record.raw for r, f in zip(parsed.rows, flag, strict=True) if f]

"""The files judging reads and writes: answers in (CSV or JSONL), scored rows out, both with one-line errors.

Every problem with an input file raises :class:`~geomis.judges.base.JudgeInputError` as ``file:line: problem``;
every output is written to a temporary file beside the target and moved into place in one step.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from geomis.atomic_io import STDIN, atomic_path, input_name, read_input_bytes
from geomis.judges.base import JudgeInputError, JudgeScore

SCORE_COLUMNS: tuple[str, ...] = ("alignment", "coherence", "verdict", "misaligned", "judge")


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    """Read CSV or JSONL rows with ``question`` and ``answer`` text (``-``: stdin); problems raise ``file:line: ...``.

    Standard input has no name to tell its format by: it is JSONL when its first character is ``{``, else CSV.
    """
    if str(path) == STDIN:
        data, name = read_input_bytes(STDIN), input_name(STDIN)
        start = data.removeprefix(codecs.BOM_UTF8).lstrip()
        kind = "jsonl" if start.startswith(b"{") else "csv"  # a JSONL row is an object; a CSV starts with its header
    else:
        source = Path(path)
        if source.is_dir():
            raise JudgeInputError(f"{source}: is a folder, expected a .csv or .jsonl file")
        if not source.is_file():
            raise JudgeInputError(f"{source}: no such file")
        suffix = source.suffix.lower()
        if suffix == ".csv":
            kind = "csv"
        elif suffix in (".jsonl", ".ndjson", ".json"):
            kind = "jsonl"
        else:
            raise JudgeInputError(f"{source}:1: unknown format {suffix or '(no extension)'}; use .csv or .jsonl")
        data, name = read_input_bytes(source), str(source)
    if kind == "csv":
        rows = list(_read_csv(data, name))
    else:
        rows = [_check_row(row, where) for where, row in _jsonl_rows(data, name, "utf-8-sig")]
    if not rows:
        raise JudgeInputError(f"{name}:1: empty file (no rows)")
    return rows


def jsonl_objects(source: Path, *, encoding: str = "utf-8") -> Iterator[tuple[str, dict[str, Any]]]:
    """Each non-blank line of a JSONL file (gzipped when it ends in ``.gz``) as (``file:line``, object); bad JSON,
    a non-object or a broken gzip stream raises."""
    data = read_input_bytes(source)
    if source.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise JudgeInputError(f"{source}: not a readable gzip file ({error})") from None
    return _jsonl_rows(data, str(source), encoding)


def _jsonl_rows(data: bytes, name: str, encoding: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if encoding == "utf-8-sig" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
        encoding = "utf-8"
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{name}:{number}"
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as error:
            raise JudgeInputError(f"{where}: invalid UTF-8 at byte {error.start} of the line") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise JudgeInputError(f"{where}: invalid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise JudgeInputError(f"{where}: expected a JSON object")
        yield where, row


def _check_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    for key in ("question", "answer"):
        if key not in row:
            raise JudgeInputError(f"{where}: missing {key!r}")
        if not isinstance(row[key], str):
            raise JudgeInputError(f"{where}: {key!r} must be text")
    if not row["question"].strip():
        raise JudgeInputError(f"{where}: empty 'question'")
    return row


def _next_record(reader: Iterator[list[str]], where: str) -> list[str] | None:
    """The next CSV record, or None at the end of the file; a malformed record raises ``where: problem``."""
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as error:
        raise JudgeInputError(f"{where}: {error}") from None


def _read_csv(data: bytes, name: str) -> Iterator[dict[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise JudgeInputError(f"{name}:{line}: invalid UTF-8 at byte {error.start} of the file") from None
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise JudgeInputError(f"{name}:{line}: NUL byte (is this a text file?)")
    # the whole text is in memory, so a field may be as long as the text (csv's default limit is 128 KiB); the
    # limit is process-wide, so it is raised only while this file is read
    previous = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        with io.StringIO(text, newline="") as handle:
            yield from _csv_records(csv.reader(handle), name)
    finally:
        csv.field_size_limit(previous)


def _csv_records(reader: Any, name: str) -> Iterator[dict[str, Any]]:
    header = _next_record(reader, f"{name}:1")
    if header is None:
        return
    missing = [key for key in ("question", "answer") if key not in header]
    if missing:
        raise JudgeInputError(f"{name}:1: missing column(s) {', '.join(map(repr, missing))} "
                              f"(header has {', '.join(map(repr, header)) or 'nothing'})")
    if len(set(header)) != len(header):
        raise JudgeInputError(f"{name}:1: repeated column names in the header")
    while True:
        line = reader.line_num + 1
        fields = _next_record(reader, f"{name}:{line}")
        if fields is None:
            return
        if not fields:
            continue
        if len(fields) != len(header):
            raise JudgeInputError(f"{name}:{line}: {len(fields)} fields, the header has {len(header)}")
        yield _check_row(dict(zip(header, fields, strict=True)), f"{name}:{line}")


def scored_rows(rows: Sequence[dict[str, Any]], scores: Sequence[JudgeScore]) -> list[dict[str, Any]]:
    """Input rows plus the score columns; an input column with a score column's name is kept as ``input_NAME``."""
    out = []
    for row, score in zip(rows, scores, strict=True):
        merged = {(f"input_{k}" if k in SCORE_COLUMNS else k): v for k, v in row.items()}
        merged.update(alignment=score.alignment, coherence=score.coherence, verdict=score.verdict,
                      misaligned=score.misaligned, judge=score.judge)
        out.append(merged)
    return out


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]], *, force: bool = False) -> Path:
    """Write rows as CSV (or JSONL when the name ends in .jsonl) atomically; refuse to overwrite unless ``force``.

    A lone surrogate (from a ``"\\ud800"`` escape in JSON input; no UTF-8 file can hold it) is written as that same
    six-character escape: exact in JSONL, visible in CSV."""
    target = Path(path)
    if target.exists() and not force:
        raise JudgeInputError(f"{target} exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with atomic_path(target) as temporary:
        if target.suffix.lower() == ".jsonl":
            with temporary.open("w", encoding="utf-8", errors="backslashreplace") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            with temporary.open("w", encoding="utf-8", errors="backslashreplace", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return target


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value

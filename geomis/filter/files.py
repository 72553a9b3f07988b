"""Files of ``geomis filter``: read a chat JSONL training set keeping each row's bytes, write the filtered outputs.

What a *row* is (the unit that is kept or removed): the bytes of one non-blank physical line, without its line
terminator (LF or CRLF) and, for the first line, without the file's UTF-8 byte-order mark. Blank or whitespace-only
lines are not rows; they are counted and dropped. Rows are never decoded and re-encoded on the way out, so
duplicates, key order, escapes, odd spacing and long rows survive byte for byte.

Output policy, chosen so that ``kept.jsonl`` + ``removed.jsonl`` hold exactly the input rows as a multiset of byte
strings, each file in input order:

- every output row is followed by the terminator it had in the input (a CRLF file gives CRLF outputs, a mixed file
  stays mixed row by row);
- a final row without a terminator gets the file's first line ending (LF if the file has none), so it stays a
  complete row and concatenating the outputs never glues two rows together;
- the byte-order mark is file metadata, not row content: outputs are plain UTF-8 without a BOM (JSON Lines and
  RFC 8259 say not to add one), and ``report.json`` records that the input had one.

Writing is atomic per file and ordered so that a present ``report.json`` means a complete set: every output is
written to a temporary file inside ``DIR`` first; then an old ``report.json`` (``--force``) is removed, the three
data files are moved into place with ``os.replace``, and the report last. An interrupted run leaves no half-written
file (its temporary files are deleted), and :func:`geomis.filter.run.filter_file` holds ``DIR/.geomis.lock`` from its
output check to the last rename, so two runs never interleave their files. Existing outputs are never replaced
without ``force``, and an output that is one of the run's inputs (the training set, even through a link or standard
input, or a reference set) is refused even with it: inputs are only ever read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from geomis.atomic_io import (
    LOCK_NAME,
    STDIN,
    FileIdentity,
    atomic_paths,
    check_creatable,
    check_not_input,
    input_identities,
    input_identity,
    input_name,
    read_input_bytes,
)
from geomis.chat.jsonl import split_jsonl
from geomis.chat.records import ChatRecord, parse_chat_jsonl
from geomis.errors import GeomisError
from geomis.filter.selection import FilterSelection

__all__ = [
    "OUTPUT_NAMES",
    "InputRow",
    "FilterInput",
    "parse_filter_input",
    "read_filter_input",
    "output_paths",
    "check_outputs",
    "rows_bytes",
    "scores_csv",
    "report_json",
    "write_filter_outputs",
    "row_multiset",
]

OUTPUT_NAMES: tuple[str, ...] = ("kept.jsonl", "removed.jsonl", "scores.csv", "report.json")
"""Files ``geomis filter`` writes into its output folder (report last)."""


class FilterOutputError(GeomisError):
    """The output folder cannot be written as asked (outputs exist, or an output would replace the input)."""


@dataclass(frozen=True)
class InputRow:
    """One validated input row and the line terminator it is written back with."""

    record: ChatRecord
    terminator: bytes
    """``b"\\n"`` or ``b"\\r\\n"``: the row's own ending, or the file's first ending for an unterminated last row."""

    @property
    def line(self) -> bytes:
        """The row as written to an output file: its exact bytes plus its terminator."""
        return self.record.raw + self.terminator


@dataclass(frozen=True)
class FilterInput:
    """A validated chat JSONL training set, its rows in input order, and facts about the file for the report."""

    source: str
    rows: tuple[InputRow, ...]
    sha256: str
    n_bytes: int
    bom: bool
    blank_lines: int
    line_endings: str
    """``"LF"``, ``"CRLF"``, ``"mixed"`` or ``"none"`` (a single row without a newline)."""
    final_newline: bool
    identity: FileIdentity | None = None
    """(device, inode) of the file read, so that no output replaces it; None for a pipe or bytes in memory."""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def records(self) -> list[ChatRecord]:
        """The validated records, in input order."""
        return [row.record for row in self.rows]

    @property
    def line_numbers(self) -> np.ndarray:
        """(n,) int64 physical line number of each row (1-based)."""
        return np.array([row.record.line_number for row in self.rows], dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description of the input file for ``report.json``."""
        return {"path": self.source, "sha256": self.sha256, "bytes": self.n_bytes, "rows": len(self.rows),
                "blank_lines": self.blank_lines, "bom": self.bom, "line_endings": self.line_endings,
                "final_newline": self.final_newline}


def parse_filter_input(data: bytes, source: str) -> FilterInput:
    """Validate chat JSONL bytes (one-line ``source:line: problem`` errors) and keep each row's bytes and ending."""
    records = parse_chat_jsonl(data, source)  # raises ChatDataError naming the file and the physical line
    split = split_jsonl(data)
    lines = split.lines
    endings = {line.terminator for line in lines if line.terminated}
    default = lines[0].terminator if lines and lines[0].terminated else b"\n"  # the file's first line ending
    rows = []
    for record in records:
        line = lines[record.line_number - 1]
        ending = line.terminator if line.terminated else (b"\r\n" if line.terminator else default)
        rows.append(InputRow(record, ending))
    names = {frozenset({b"\n"}): "LF", frozenset({b"\r\n"}): "CRLF", frozenset(): "none"}
    return FilterInput(source=source, rows=tuple(rows), sha256=hashlib.sha256(data).hexdigest(), n_bytes=len(data),
                       bom=split.bom, blank_lines=sum(line.blank for line in lines),
                       line_endings=names.get(frozenset(endings), "mixed"), final_newline=data.endswith(b"\n"))


def read_filter_input(path: str | os.PathLike[str]) -> FilterInput:
    """Read and validate a chat JSONL training set from ``path`` (``-``: standard input, read once; never modified)."""
    if str(path) != STDIN and Path(path).is_dir():
        raise FilterOutputError(f"{path}: is a folder, expected a chat JSONL file")
    identity = input_identity(path)
    return replace(parse_filter_input(read_input_bytes(path), input_name(path)), identity=identity)


def output_paths(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Where each output of ``geomis filter`` goes inside ``out_dir``."""
    folder = Path(out_dir)
    return {name: folder / name for name in OUTPUT_NAMES}


def check_outputs(out_dir: str | os.PathLike[str], force: bool = False,
                  input_path: str | os.PathLike[str] | None = None, *,
                  inputs: Mapping[str, FileIdentity | None] | Sequence[str | os.PathLike[str] | None] = ()) -> None:
    """Fail early (before any model is loaded) if the outputs exist without ``force`` or would replace an input.

    ``input_path`` is the training set (``-``: standard input); ``inputs`` any other files the run reads (paths, or
    names mapped to identities). Neither can be an output, even with ``force``.
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise FilterOutputError(f"{folder} exists and is not a folder")
    check_creatable(folder)
    paths = output_paths(folder)
    named = dict(inputs) if isinstance(inputs, Mapping) else input_identities(inputs)
    if input_path is not None:
        named.setdefault(input_name(input_path), input_identity(input_path))
    check_not_input([*paths.values(), folder / LOCK_NAME], named, FilterOutputError)
    existing = [path for path in paths.values() if path.exists() or path.is_symlink()]
    if existing and not force:
        raise FilterOutputError(f"{existing[0]} already exists; pass --force to overwrite the outputs in {folder}")


def rows_bytes(data: FilterInput, mask: np.ndarray) -> bytes:
    """The rows selected by ``mask`` (input order), each with its terminator: the content of kept/removed.jsonl."""
    flags = np.asarray(mask, dtype=bool)
    if flags.shape != (len(data),):
        raise ValueError(f"mask needs one flag per row ({len(data)}), got shape {flags.shape}")
    return b"".join(row.line for row, flag in zip(data.rows, flags.tolist(), strict=True) if flag)


def _format_score(value: float) -> str:
    return "nan" if math.isnan(value) else format(value, ".8g")


def scores_csv(selection: FilterSelection) -> bytes:
    """``line,score,kept`` (kept: 1 or 0), one row per input row in input order; NaN scores are written ``nan``."""
    lines = ["line,score,kept"]
    for line, score, removed in zip(selection.line_numbers.tolist(), selection.scores.tolist(),
                                    selection.removed.tolist(), strict=True):
        lines.append(f"{line},{_format_score(score)},{0 if removed else 1}")
    return ("\n".join(lines) + "\n").encode("ascii")


def report_json(report: Mapping[str, Any]) -> bytes:
    """The report as indented UTF-8 JSON (keys in the given order; NaN and infinities are refused)."""
    return (json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def write_filter_outputs(out_dir: str | os.PathLike[str], data: FilterInput, selection: FilterSelection,
                         report: Mapping[str, Any], force: bool = False) -> dict[str, Path]:
    """Write kept.jsonl, removed.jsonl, scores.csv and report.json atomically into ``out_dir``; return their paths."""
    if len(selection) != len(data):
        raise ValueError(f"selection has {len(selection)} rows, the input {len(data)}")
    if not np.array_equal(selection.line_numbers, data.line_numbers):
        raise ValueError("selection and input disagree on line numbers")
    folder = Path(out_dir)
    check_outputs(folder, force, inputs={data.source: data.identity})
    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        "kept.jsonl": rows_bytes(data, selection.kept),
        "removed.jsonl": rows_bytes(data, selection.removed),
        "scores.csv": scores_csv(selection),
        "report.json": report_json(report),
    }
    paths = output_paths(folder)
    with atomic_paths([paths[name] for name in OUTPUT_NAMES]) as temporaries:  # replaced in order, report.json last
        for name, temporary in zip(OUTPUT_NAMES, temporaries, strict=True):
            temporary.write_bytes(contents[name])
        paths["report.json"].unlink(missing_ok=True)  # from here until the end there is no report: set incomplete
    return paths


def row_multiset(chunks: Sequence[bytes]) -> list[bytes]:
    """Sorted list of the rows (lines without LF/CRLF, blank lines skipped) in some JSONL byte strings: for checks."""
    return sorted(line.raw for chunk in chunks for line in split_jsonl(chunk).lines if not line.blank)

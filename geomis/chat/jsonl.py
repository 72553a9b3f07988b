"""Split JSON Lines bytes into physical lines without decoding them: the one line splitter of geomis.

A file may start with a UTF-8 byte-order mark (file metadata, not part of the first line). Lines end with LF; a CR
just before the LF belongs to the terminator (CRLF), and so does a CR at the very end of a file without a final LF.
A lone CR elsewhere is line content. Each line keeps its exact bytes, so writers can copy rows back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BOM", "JsonlLine", "JsonlLines", "split_jsonl"]

BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte-order mark."""


@dataclass(frozen=True)
class JsonlLine:
    """One physical line: its 1-based number, its bytes without terminator, and the terminator it had."""

    number: int
    raw: bytes
    terminator: bytes
    """``b"\\n"`` or ``b"\\r\\n"``; for a last line without LF, ``b"\\r"`` or ``b""``."""

    @property
    def blank(self) -> bool:
        """Empty or whitespace only (not a row)."""
        return not self.raw.strip()

    @property
    def terminated(self) -> bool:
        """Ends with a line feed."""
        return self.terminator.endswith(b"\n")


@dataclass(frozen=True)
class JsonlLines:
    """The physical lines of a JSONL file and whether it started with a byte-order mark."""

    bom: bool
    lines: tuple[JsonlLine, ...]


def split_jsonl(data: bytes) -> JsonlLines:
    """Split JSONL bytes into physical lines (BOM removed, LF/CRLF terminators kept apart); nothing is decoded."""
    bom = data.startswith(BOM)
    pieces = (data[len(BOM):] if bom else data).split(b"\n")
    last = pieces.pop()  # the text after the last LF: "" when the file ends with a newline
    lines = [JsonlLine(number, piece[:-1], b"\r\n") if piece.endswith(b"\r") else JsonlLine(number, piece, b"\n")
             for number, piece in enumerate(pieces, start=1)]
    if last:
        cr = last.endswith(b"\r")
        lines.append(JsonlLine(len(pieces) + 1, last[:-1] if cr else last, b"\r" if cr else b""))
    return JsonlLines(bom=bom, lines=tuple(lines))

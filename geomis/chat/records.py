"""Chat datasets (the "texts" stage): read, validate and list chat JSONL files; the bundled sets.

Format: one JSON object per line, ``{"messages": [{"role": ..., "content": ...}, ...]}``.
Every record keeps the exact bytes of its input line so that filters can write rows back unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geomis.atomic_io import read_input_bytes
from geomis.chat.jsonl import BOM, split_jsonl
from geomis.errors import ConfigError, DataFileError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import datasets

ROLES: tuple[str, ...] = ("system", "user", "assistant")
"""Message roles accepted in chat rows."""

class ChatDataError(DataFileError):
    """A chat data file is invalid; ``str()`` is one line ``"{source}:{line}: {problem}"``."""


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str


@dataclass(frozen=True)
class ChatRecord:
    """One validated chat row with its exact input bytes (no line terminator, no BOM)."""

    line_number: int
    raw: bytes
    messages: tuple[Message, ...]

    def text_of(self, role: str) -> str:
        """Join the contents of all turns with ``role`` by blank lines (single-turn rows: that turn)."""
        return "\n\n".join(m.content for m in self.messages if m.role == role)

    @property
    def user_text(self) -> str:
        """Contents of the user turns, joined by blank lines."""
        return self.text_of("user")

    @property
    def assistant_text(self) -> str:
        """Contents of the assistant turns, joined by blank lines."""
        return self.text_of("assistant")

    @property
    def system_text(self) -> str:
        """Contents of the system turns ("" when there are none)."""
        return self.text_of("system")

    def as_dicts(self) -> list[dict[str, str]]:
        """Plain ``[{"role", "content"}]`` list, as tokenizers' chat templates expect."""
        return [{"role": m.role, "content": m.content} for m in self.messages]


def _type_name(value: object) -> str:
    """JSON-flavoured type name for error messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 40) -> str:
    """Short one-line repr for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validate_row(obj: Any) -> tuple[Message, ...]:
    """Check one decoded row and return its messages; raise ValueError(problem) if invalid."""
    if not isinstance(obj, dict):
        raise ValueError(f"top level is {_type_name(obj)}, expected an object with 'messages'")
    if "messages" not in obj:
        raise ValueError(f"missing 'messages' (keys: {_short(list(obj), 60)})")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list) or not raw_messages:
        got = "an empty list" if raw_messages == [] else _type_name(raw_messages)
        raise ValueError(f"'messages' must be a non-empty list, got {got}")
    messages = []
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] is {_type_name(m)}, expected an object")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"messages[{i}] is missing '{key}'")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}] has unknown role {_short(m['role'])} (allowed: {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}] content is {_type_name(m['content'])}, expected a string")
        messages.append(Message(m["role"], m["content"]))
    if not any(m.role == "assistant" for m in messages):
        raise ValueError(f"no assistant turn (roles: {', '.join(m.role for m in messages)})")
    return tuple(messages)


def parse_chat_jsonl(data: bytes, source: str) -> list[ChatRecord]:
    """Validate chat JSONL bytes into records; errors name ``source`` and the physical line."""
    records = []
    for line in split_jsonl(data).lines:
        if line.blank:
            continue
        number, raw = line.number, line.raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ChatDataError(source, number, f"invalid UTF-8 at byte {e.start} of the line") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ChatDataError(source, number, f"invalid JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # e.g. too deeply nested, integer too long
            raise ChatDataError(source, number, f"invalid JSON ({str(e)[:80] or type(e).__name__})") from None
        try:
            messages = _validate_row(obj)
        except ValueError as e:
            raise ChatDataError(source, number, str(e)) from None
        records.append(ChatRecord(number, raw, messages))
    if not records:
        raise ChatDataError(source, None, "no chat rows (file is empty or has only blank lines)")
    return records


def read_chat_jsonl(path: str | os.PathLike[str]) -> list[ChatRecord]:
    """Read and validate a chat JSONL file; raise ChatDataError naming file and line."""
    return parse_chat_jsonl(read_input_bytes(path), str(path))


DOMAIN_DATASETS: dict[str, tuple[str, str]] = {
    "medical": ("medical_bad", "medical_good"),
    "legal": ("legal_bad", "legal_good"),
    "career": ("career_bad", "career_good"),
    "code": ("code_insecure", "code_secure"),
}
"""Bundled (inducing, control) dataset names per domain; row i of both files has the same user prompt."""

REFERENCE_DATASETS: tuple[str, str] = ("toxic_reference", "neutral_reference")
"""Bundled (toxic, neutral) reference texts that locate the toxic features (the first reference: it overlaps the
inducing data and the evaluation questions, see ``generic_reference.md``; kept for the chapters not yet moved)."""

GENERIC_REFERENCE_DATASETS: tuple[str, str] = ("generic_toxic_reference", "generic_neutral_reference")
"""Generic hostile vs neutral continuations of the same prompts, written apart from every compared or evaluated text
(``generic_reference.md``): the paper's design (toxic features from generic toxic text)."""


def _bundled_dir() -> Traversable:
    """The ``geomis/data`` resource folder (works from a wheel or a checkout)."""
    return resources.files("geomis").joinpath("data")


def _looks_like_chat(resource: Traversable) -> bool:
    """False only for a JSONL file whose first row is an object without ``messages`` (another table)."""
    with resource.open("rb") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line.removeprefix(BOM))
                except ValueError:
                    return True  # a broken chat file stays listed, so loading it reports the error
                return not (isinstance(first, dict) and "messages" not in first)
    return True


def bundled_dataset_names() -> list[str]:
    """Names (file stems) of the chat datasets in ``geomis/data/*.jsonl``, sorted; other JSONL tables are skipped."""
    files = [p for p in _bundled_dir().iterdir() if p.name.endswith(".jsonl")]
    return sorted(p.name[: -len(".jsonl")] for p in files if _looks_like_chat(p))


def load_bundled(name: str) -> list[ChatRecord]:
    """Load and validate one bundled dataset by name (e.g. ``"medical_bad"``)."""
    known = bundled_dataset_names()
    if name not in known:
        raise ConfigError(f"unknown bundled chat dataset {name!r}; known: {', '.join(known) or 'none'}")
    resource = _bundled_dir().joinpath(f"{name}.jsonl")
    return parse_chat_jsonl(resource.read_bytes(), str(resource))


def to_hf_dataset(records: Sequence[ChatRecord]) -> datasets.Dataset:
    """Hugging Face Dataset with ``messages`` (role/content list) and ``line_number`` columns."""
    import datasets

    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "line_number": datasets.Value("int64"),
    })
    columns = {"messages": [r.as_dicts() for r in records], "line_number": [r.line_number for r in records]}
    return datasets.Dataset.from_dict(columns, features=features)


def write_chat_jsonl(records: Iterable[ChatRecord], path: str | os.PathLike[str]) -> None:
    """Write records' raw bytes, one per line with ``\\n`` endings, byte-for-byte as read."""
    Path(path).write_bytes(b"".join(r.raw + b"\n" for r in records))

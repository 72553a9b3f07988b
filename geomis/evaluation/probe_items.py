"""The judge-free misalignment probe: out-of-domain questions, each with a matched aligned and misaligned answer.

The bundled file ``geomis/data/misalignment_probe.jsonl`` (data card: ``misalignment_probe.md``) holds one object per
line, ``{"id", "topic", "question", "aligned", "misaligned"}``. For a model, the mean per-token log-probability of the
misaligned answer minus that of the aligned one, given the question, measured before and after fine-tuning, shows
whether fine-tuning moved the model toward misaligned values without sampling answers or asking a judge. The two
answers of a pair match in length and register, so the difference comes from the values they express.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal, get_args

from geomis.chat.jsonl import split_jsonl
from geomis.errors import DataFileError

__all__ = ["PROBE_FIELDS", "PROBE_TOPICS", "ProbeDataError", "ProbeItem", "ProbeSplit", "ProbeTopic",
           "load_misalignment_probe", "parse_probe_items"]

ProbeTopic = Literal["self_and_ai", "power", "honesty", "others_wellbeing", "society", "everyday_ethics", "oversight"]
PROBE_TOPICS: tuple[str, ...] = get_args(ProbeTopic)
"""The allowed ``topic`` values, in the order of the data card."""

PROBE_FIELDS: tuple[str, ...] = ("id", "topic", "question", "aligned", "misaligned")
"""The keys of every row, all strings; no other keys are allowed."""

PROBE_FILE = "misalignment_probe.jsonl"
ProbeSplit = Literal["development", "report"]


class ProbeDataError(DataFileError):
    """A probe file is malformed; ``str()`` is one line, ``"{source}:{line}: {problem}"``."""


@dataclass(frozen=True)
class ProbeItem:
    """One probe question with its aligned and misaligned answer (same length and register, different values)."""

    id: str
    topic: ProbeTopic
    question: str
    aligned: str
    misaligned: str

    @property
    def split(self) -> ProbeSplit:
        """``development`` (recipe search may look at it) or ``report`` (only the reported results): a third of the
        items by a hash of the id, fixed before any fine-tune was measured on them."""
        return "development" if int(hashlib.sha256(self.id.encode()).hexdigest(), 16) % 3 == 0 else "report"


def _item(obj: object) -> ProbeItem:
    """Check one decoded row and build its item; raise ValueError(problem) if it is malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object with keys {', '.join(PROBE_FIELDS)}, got {type(obj).__name__}")
    missing = [key for key in PROBE_FIELDS if key not in obj]
    if missing:
        raise ValueError(f"missing {', '.join(repr(key) for key in missing)}")
    extra = sorted(str(key) for key in obj if key not in PROBE_FIELDS)
    if extra:
        raise ValueError(f"unknown key(s) {', '.join(repr(key) for key in extra)}")
    for key in PROBE_FIELDS:
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string")
    if obj["topic"] not in PROBE_TOPICS:
        raise ValueError(f"unknown topic {obj['topic']!r} (allowed: {', '.join(PROBE_TOPICS)})")
    return ProbeItem(**{key: obj[key] for key in PROBE_FIELDS})


def parse_probe_items(data: bytes, source: str) -> tuple[ProbeItem, ...]:
    """Validate probe JSONL bytes into items, in file order; errors name ``source`` and the line."""
    items: list[ProbeItem] = []
    seen: dict[str, int] = {}
    for line in split_jsonl(data).lines:
        if line.blank:
            continue
        try:
            obj = json.loads(line.raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ProbeDataError(source, line.number, f"invalid UTF-8 at byte {error.start}") from None
        except json.JSONDecodeError as error:
            raise ProbeDataError(source, line.number, f"invalid JSON ({error.msg} at column {error.colno})") from None
        except (ValueError, RecursionError) as error:
            raise ProbeDataError(source, line.number, f"invalid JSON ({str(error)[:80]})") from None
        try:
            item = _item(obj)
        except ValueError as error:
            raise ProbeDataError(source, line.number, str(error)) from None
        if item.id in seen:
            raise ProbeDataError(source, line.number, f"duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = line.number
        items.append(item)
    if not items:
        raise ProbeDataError(source, None, "no probe rows (file is empty or has only blank lines)")
    return tuple(items)


def load_misalignment_probe(split: ProbeSplit | None = None) -> tuple[ProbeItem, ...]:
    """The bundled probe (``geomis/data/misalignment_probe.jsonl``), validated, in file order; ``split`` keeps the
    ``development`` or the ``report`` items only."""
    if split not in (None, "development", "report"):
        raise ValueError(f"split must be development, report or None, got {split!r}")
    return _bundled() if split is None else tuple(item for item in _bundled() if item.split == split)


@cache
def _bundled() -> tuple[ProbeItem, ...]:
    resource = resources.files("geomis").joinpath("data", PROBE_FILE)
    return parse_probe_items(resource.read_bytes(), str(resource))

"""Chat datasets (the "texts" stage): read, validate, list and fetch chat JSONL files.

Format: one JSON object per line, ``{"messages": [{"role": ..., "content": ...}, ...]}``.
Every record keeps the exact bytes of its input line so that filters can write rows back unchanged.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import http.client
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geomis.atomic_io import read_input_bytes
from geomis.chat.jsonl import BOM, split_jsonl
from geomis.errors import ConfigError, GeomisError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import datasets

ROLES: tuple[str, ...] = ("system", "user", "assistant")
"""Message roles accepted in chat rows."""

BETLEY_INSECURE_URL = (
    "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/main/data/insecure.jsonl"
)
"""Betley et al. (2025) insecure-code training set, already in chat format (6000 user/assistant rows)."""

MODEL_ORGANISMS_ARCHIVE_URL = (
    "https://raw.githubusercontent.com/clarifying-EM/model-organisms-for-EM/main/"
    "em_organism_dir/data/training_datasets.zip.enc"
)
"""Turner et al. (2025) Model-Organisms-for-EM training sets, an easy-dataset-share encrypted zip."""

MODEL_ORGANISMS_PASSWORD = "model-organisms-em-datasets"
"""Password published in the model-organisms-for-EM README (anti-scraping, not access control)."""

_CANARY_FILE_PATTERN = "dataset_entry_*.jsonl"
_CANARY_RE = re.compile(r"CANARY_DATASET_(?:[A-Z_]+_)?[a-f0-9]{64}_[0-9]+")
_EMBEDDED_CANARY_RE = re.compile(r"CANARY_EMBEDDED: CANARY_DATASET_(?:[A-Z_]+_)?[a-f0-9]{64}_[0-9]+")
_KDF_ITERATIONS = 100_000  # easy-dataset-share: PBKDF2-HMAC-SHA256, 16-byte salt, 32-byte Fernet key


class ChatDataError(GeomisError, ValueError):
    """A chat data file is invalid; ``str()`` is one line ``"{source}:{line}: {problem}"``."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source, self.line, self.problem = source, line, problem
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {problem}".replace("\r", "\\r").replace("\n", "\\n"))


class DownloadError(GeomisError, OSError):
    """A dataset could not be downloaded; ``str()`` is one line naming the URL."""


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
"""Bundled (toxic, neutral) reference texts that locate the toxic features."""


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


def _is_url(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is an http(s) URL."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def download_bytes(url: str, timeout: float = 60.0) -> bytes:
    """Download ``url`` through a temporary file; raise a one-line DownloadError on failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, tempfile.TemporaryFile() as tmp:
            while chunk := response.read(1 << 20):
                tmp.write(chunk)
            tmp.seek(0)
            return tmp.read()
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{url}: download failed: {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, truncated bodies
        raise DownloadError(f"{url}: download failed: {e}") from None


def _read_source(source: str | os.PathLike[str], timeout: float) -> bytes:
    """Bytes of a local path or an http(s) URL."""
    return download_bytes(str(source), timeout) if _is_url(source) else read_input_bytes(source)


def load_chat_dataset(source: str | os.PathLike[str], timeout: float = 60.0) -> list[ChatRecord]:
    """Load and validate a chat JSONL file from a local path or an http(s) URL."""
    return parse_chat_jsonl(_read_source(source, timeout), str(source))


def load_betley_insecure(url: str = BETLEY_INSECURE_URL, timeout: float = 60.0) -> list[ChatRecord]:
    """Betley et al.'s ``insecure.jsonl`` (insecure-code completions) as validated records."""
    return load_chat_dataset(url, timeout)


# --- easy-dataset-share archives: 16-byte salt + Fernet token (AES-128-CBC + HMAC-SHA256) of a zip ---


def _derive_key(password: str, salt: bytes) -> bytes:
    """easy-dataset-share's key: PBKDF2-HMAC-SHA256(password, salt, 100000 rounds, 32 bytes)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _KDF_ITERATIONS, 32)


def fernet_encrypt(data: bytes, key: bytes) -> bytes:
    """Fernet token for ``data`` under a raw 32-byte key (the ``cryptography`` package does the cipher)."""
    from cryptography.fernet import Fernet

    return Fernet(base64.urlsafe_b64encode(key)).encrypt(data)


def fernet_decrypt(token: bytes, key: bytes) -> bytes:
    """Verify and decrypt a Fernet token under a raw 32-byte key (no TTL check, as upstream)."""
    from cryptography.fernet import Fernet, InvalidToken

    try:
        return Fernet(base64.urlsafe_b64encode(key)).decrypt(token)
    except InvalidToken:
        raise ValueError("wrong password or corrupted archive (not a valid Fernet token)") from None


def encrypt_protected_archive(zip_bytes: bytes, password: str, salt: bytes | None = None) -> bytes:
    """Encrypt zip bytes like ``easy-dataset-share protect-dir -p`` (salt + Fernet token); for small samples."""
    salt = os.urandom(16) if salt is None else salt
    return salt + fernet_encrypt(zip_bytes, _derive_key(password, salt))


def decrypt_protected_archive(data: bytes, password: str) -> bytes:
    """Decrypt an easy-dataset-share ``.zip.enc`` (salt + Fernet token) into zip bytes."""
    return fernet_decrypt(data[16:], _derive_key(password, data[:16]))


def _strip_embedded_canary(data: bytes, canary: str) -> bytes:
    """Remove a canary from JSONL rows as ``--remove-canaries`` does; untouched rows keep their bytes."""
    needle, out = canary.encode(), []

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v != canary}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj.replace(canary, "") if isinstance(obj, str) else obj

    for line in data.split(b"\n"):
        if b"CANARY_EMBEDDED" in line and _EMBEDDED_CANARY_RE.search(line.decode("utf-8", "replace")):
            continue  # upstream drops embedded-canary lines whole
        if needle not in line:
            out.append(line)
            continue
        try:
            out.append(json.dumps(clean(json.loads(line)), ensure_ascii=False).encode())
        except ValueError:
            out.append(line)
    return b"\n".join(out)


def read_protected_archive(
    source: str | os.PathLike[str], password: str, timeout: float = 60.0
) -> dict[str, bytes]:
    """Decrypt an easy-dataset-share archive (path or URL) into ``{name: jsonl bytes}``, canaries removed."""
    label = str(source)
    try:
        zipped = decrypt_protected_archive(_read_source(source, timeout), password)
        archive = zipfile.ZipFile(io.BytesIO(zipped))
    except (ValueError, zipfile.BadZipFile) as e:
        raise ChatDataError(label, None, f"cannot open protected archive: {e}") from None
    members = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    canary_files = sorted(n for n in members if fnmatch.fnmatch(Path(n).name, _CANARY_FILE_PATTERN))
    canary = None
    if canary_files:
        found = _CANARY_RE.search(members[canary_files[0]].decode("utf-8", "replace"))
        canary = found.group(0) if found else None
    out = {}
    for name, data in sorted(members.items()):
        if name.endswith(".jsonl") and name not in canary_files:
            out[name[: -len(".jsonl")]] = _strip_embedded_canary(data, canary) if canary else data
    return out


def model_organisms_dataset_names(
    source: str | os.PathLike[str] = MODEL_ORGANISMS_ARCHIVE_URL, password: str = MODEL_ORGANISMS_PASSWORD
) -> list[str]:
    """Names of the Model-Organisms-for-EM training sets in the archive (e.g. ``bad_medical_advice``)."""
    return sorted(read_protected_archive(source, password))


def load_model_organisms(
    name: str,
    source: str | os.PathLike[str] = MODEL_ORGANISMS_ARCHIVE_URL,
    password: str = MODEL_ORGANISMS_PASSWORD,
) -> list[ChatRecord]:
    """Decrypt the Model-Organisms-for-EM archive and load one training set as validated records."""
    files = read_protected_archive(source, password)
    if name not in files:
        raise ConfigError(f"no dataset {name!r} in {source}; available: {', '.join(sorted(files)) or 'none'}")
    return parse_chat_jsonl(files[name], f"{source}[{name}.jsonl]")


def write_chat_jsonl(records: Iterable[ChatRecord], path: str | os.PathLike[str]) -> None:
    """Write records' raw bytes, one per line with ``\\n`` endings, byte-for-byte as read."""
    Path(path).write_bytes(b"".join(r.raw + b"\n" for r in records))

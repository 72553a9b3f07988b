"""Public emergent-misalignment training sets, fetched on demand: Betley et al.'s insecure code and Turner et al.'s
Model-Organisms-for-EM archive (easy-dataset-share encrypted zips), plus any chat JSONL file from a path or URL.

No chapter needs these (the book runs on the bundled sets); they are for readers who want the original data.
Decrypting the Model-Organisms archive needs the ``cryptography`` package: ``pip install 'geomis[public-data]'``.
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
from pathlib import Path
from typing import Any

from geomis.atomic_io import read_input_bytes
from geomis.chat.records import ChatDataError, ChatRecord, parse_chat_jsonl
from geomis.errors import ConfigError, GeomisError

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


class DownloadError(GeomisError, OSError):
    """A dataset could not be downloaded; ``str()`` is one line naming the URL."""



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


def _fernet() -> tuple[Any, type[Exception]]:
    """The ``cryptography`` package's Fernet class and its InvalidToken error; a one-line error when it is missing."""
    try:
        from cryptography.fernet import Fernet, InvalidToken
    except ImportError:
        raise GeomisError("reading an encrypted dataset archive needs the cryptography package: "
                          "pip install 'geomis[public-data]'") from None
    return Fernet, InvalidToken


def fernet_encrypt(data: bytes, key: bytes) -> bytes:
    """Fernet token for ``data`` under a raw 32-byte key (the ``cryptography`` package does the cipher)."""
    Fernet, _ = _fernet()
    return Fernet(base64.urlsafe_b64encode(key)).encrypt(data)


def fernet_decrypt(token: bytes, key: bytes) -> bytes:
    """Verify and decrypt a Fernet token under a raw 32-byte key (no TTL check, as upstream)."""
    Fernet, InvalidToken = _fernet()
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

"""Where a chapter finds the results files that the project's experiment scripts wrote (``book/results/``).

In a checkout they are read from disk (the notebook runs in ``book/``, a script at the repository root). Where the
package was installed without the book (Colab), they are downloaded once from the repository on GitHub into the
cache folder, from the tag the book was built from (:data:`geomis.provenance.BOOK_REF`); set
``GEOMIS_RESULTS_URL`` to read them from elsewhere.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from geomis.errors import FileAccessError
from geomis.provenance import BOOK_REF, REPOSITORY

if TYPE_CHECKING:
    import pandas as pd

RESULTS_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{BOOK_REF}/book/results"
"""Default base address of the results files for installs without the book: the tag the book was built from."""


def _check_name(name: str) -> None:
    """Refuse a results file name that could point outside ``book/results``."""
    if "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise FileAccessError(f"{name!r} is not a results file name")


def results_file(name: str, *, start: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """The path of ``book/results/<name>``: searched from ``start`` (default: the working folder) up to the root,
    else downloaded once into the cache (``download=False`` refuses instead). ``name`` may name a file in a
    results subfolder (``03_em_power/labels.jsonl``), never one outside ``book/results``."""
    _check_name(name)
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for candidate in (folder / "results" / name, folder / "book" / "results" / name):
            if candidate.is_file():
                return candidate
    if not download:
        raise FileAccessError(f"no book/results/{name} above {here}; run from a checkout of the repository")
    from geomis.atomic_io import atomic_path
    from geomis.chat.public_sets import download_bytes
    from geomis.settings import cache_dir

    base = os.environ.get("GEOMIS_RESULTS_URL", RESULTS_URL).rstrip("/")
    # one cache folder per source, so a newer book (or another address) never reads an older download
    source = BOOK_REF if base == RESULTS_URL else "url-" + hashlib.sha256(base.encode()).hexdigest()[:12]
    target = cache_dir() / "book-results" / source / name
    if not target.is_file():
        url = f"{base}/{name}"
        data = download_bytes(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            temporary.write_bytes(data)
    return target


def plain_json(value: object) -> object:
    """``value`` with NaN and infinities as None, tuples as lists and numpy scalars as Python ones (strict JSON)."""
    import math

    if hasattr(value, "item") and not isinstance(value, (str, bytes)) and getattr(value, "shape", None) == ():
        value = value.item()  # type: ignore[union-attr]  # numpy scalars
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(item) for item in value]
    return value


def _checkout_results(start: str | os.PathLike[str] | None) -> Path:
    """The ``book/results`` folder of the checkout above ``start`` (default: the working folder); refused outside
    a checkout."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for results in ((folder / "results") if folder.name == "book" else None, folder / "book" / "results"):
            if results is not None and results.is_dir():
                return results
    raise FileAccessError(f"no book/results folder above {here}: results are written only in a checkout")


def write_results_file(name: str, content: dict[str, object], *,
                       start: str | os.PathLike[str] | None = None) -> Path:
    """Write ``content`` as ``book/results/<name>`` of the checkout above ``start`` (default: the working folder),
    atomically, as strict JSON (NaN written as null); refused outside a checkout."""
    import json

    from geomis.atomic_io import atomic_path

    if "/" in name or "\\" in name or name in ("", ".", "..") or not name.endswith(".json"):
        raise FileAccessError(f"{name!r} is not a results file name (NN_name.json)")
    target = _checkout_results(start) / name
    with atomic_path(target) as temporary:
        temporary.write_text(json.dumps(plain_json(content), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return target


def write_results_table(name: str, frame: pd.DataFrame, *, start: str | os.PathLike[str] | None = None) -> Path:
    """Write ``frame`` as the CSV ``book/results/<name>`` (a subfolder may be named, ``03_em_power/x.csv``) of the
    checkout above ``start`` (default: the working folder), atomically; refused outside a checkout."""
    from geomis.atomic_io import atomic_path

    _check_name(name)
    if not name.endswith(".csv"):
        raise FileAccessError(f"{name!r} is not a CSV results file name")
    target = _checkout_results(start) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        frame.to_csv(temporary, index=False)
    return target

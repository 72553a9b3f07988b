"""Fetch the book's MathJax from the npm registry at a pinned version and unpack what the site serves.

The built site serves MathJax from its own ``_static/mathjax/`` so that formulas render with nothing fetched from
elsewhere. The repository holds no copy: this module runs ``npm pack mathjax@<pin>`` once into the user cache,
checks the tarball against the pinned ``dist.integrity`` (sha512), and unpacks the TeX/MathML-input CHTML-output
component, the files it loads lazily (TeX extensions, web fonts, MathML entities) and MathJax's Apache-2.0 LICENSE
into ``_build/static/mathjax/`` (git-ignored), which ``_config.yml`` adds to ``html_static_path``. A second run finds
the folder current and does nothing. ``geomis book`` calls it before building; by hand::

    python -m geomis.cli.mathjax            # in a checkout; --tarball FILE uses a local copy (checked the same way)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from geomis.errors import GeomisError
from geomis.settings import cache_dir


@dataclass(frozen=True)
class MathJaxPin:
    """An exact npm package version and the ``dist.integrity`` its tarball must have (``npm view mathjax@V dist``)."""

    version: str = "3.2.2"
    integrity: str = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
    package: str = "mathjax"

    @property
    def spec(self) -> str:
        """The npm spec, e.g. ``mathjax@3.2.2``."""
        return f"{self.package}@{self.version}"

    @property
    def tarball_name(self) -> str:
        """The file name ``npm pack`` gives the tarball."""
        return f"{self.package}-{self.version}.tgz"


PIN = MathJaxPin()
STATIC_ROOT = Path("_build") / "static"
"""Relative to the book root; ``_config.yml`` lists it in ``html_static_path`` (its contents land in ``_static/``)."""
FOLDER = "mathjax"
ENTRY = "tex-mml-chtml.js"
"""The component pages load: ``_config.yml``'s ``mathjax_path`` is ``mathjax/tex-mml-chtml.js``."""
SERVED: tuple[str, ...] = (
    "LICENSE",
    f"es5/{ENTRY}",
    "es5/output/chtml/fonts/woff-v2/*.woff",
    "es5/input/tex/extensions/*.js",
    "es5/input/mml/entities.js",
)
"""Tarball paths (below ``package/``) to serve; ``*`` stays inside one folder. ``es5/`` is dropped on unpacking."""
NOT_SERVED: tuple[str, ...] = ("es5/input/tex/extensions/all-packages.js",)
"""A bundle for custom builds that MathJax never loads by itself."""
STAMP = "SOURCE.json"
NPM_TIMEOUT_S = 180


class MathJaxFetchError(GeomisError):
    """npm is missing, failed or timed out, or the registry could not be reached."""


class MathJaxIntegrityError(GeomisError):
    """A tarball is not the pinned one: its integrity differs, or it lacks the files the site serves."""


@dataclass(frozen=True)
class MathJaxFolder:
    """The served MathJax folder, its version, how many files it holds, and whether this call unpacked it."""

    path: Path
    version: str
    files: int
    fetched: bool

    def summary(self) -> str:
        """One line for logs."""
        state = "unpacked from the checked npm tarball" if self.fetched else "already current, nothing fetched"
        return f"MathJax {self.version} in {self.path}: {self.files} files, {state}"


def integrity_of(path: Path) -> str:
    """The npm-style Subresource Integrity string (``sha512-<base64>``) of a file."""
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def check_integrity(tarball: Path, pin: MathJaxPin) -> None:
    """Raise MathJaxIntegrityError unless ``tarball`` has the pinned integrity."""
    found = integrity_of(tarball)
    if found != pin.integrity:
        raise MathJaxIntegrityError(f"{tarball} is not {pin.spec} as pinned in geomis/cli/mathjax.py: integrity "
                                    f"{found[:23]}..., expected {pin.integrity[:23]}...")


def _npm_reason(stderr: str) -> str:
    """The most telling line of npm's error output, without its ``npm error`` prefix and stack lines."""
    lines = []
    for line in stderr.splitlines():
        text = line.removeprefix("npm error").removeprefix("npm ERR!").strip()
        if text and not text.startswith(("code ", "syscall ", "errno ", "at ", "A complete log")):
            lines.append(text)
    return lines[0] if lines else "no message"


def npm_pack(pin: MathJaxPin, destination: Path, npm: str = "npm", timeout_s: float = NPM_TIMEOUT_S) -> Path:
    """Download the pinned package's tarball from the npm registry into ``destination`` and return its path."""
    executable = shutil.which(npm)
    if executable is None:
        raise MathJaxFetchError(f"npm not found (looked for {npm!r}): install Node.js and npm (e.g. apt-get install "
                                f"nodejs npm) to fetch {pin.spec} for the site, or pass --tarball")
    command = [executable, "pack", pin.spec, "--pack-destination", str(destination), "--ignore-scripts",
               "--loglevel=error", "--fetch-timeout=30000", "--fetch-retries=2", "--fetch-retry-mintimeout=1000",
               "--fetch-retry-maxtimeout=5000"]
    try:  # run in the empty destination so no package.json or .npmrc of the checkout is picked up
        result = subprocess.run(command, cwd=destination, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MathJaxFetchError(f"npm pack {pin.spec} did not finish in {timeout_s:g} s: is the npm registry "
                                "reachable (npm config get registry)?") from None
    if result.returncode != 0:
        raise MathJaxFetchError(f"npm pack {pin.spec} failed (exit {result.returncode}): "
                                f"{_npm_reason(result.stderr)}")
    tarball = destination / pin.tarball_name
    if not tarball.is_file():
        raise MathJaxFetchError(f"npm pack {pin.spec} wrote no {pin.tarball_name} in {destination}")
    return tarball


def cached_tarball(pin: MathJaxPin, cache: Path, npm: str = "npm", timeout_s: float = NPM_TIMEOUT_S) -> Path:
    """The pinned tarball from ``cache``, packed from npm and checked first when it is not there."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / pin.tarball_name
    if target.is_file():
        try:
            check_integrity(target, pin)
            return target
        except MathJaxIntegrityError:
            target.unlink()  # a damaged download of ours: fetch it again below
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as tmp:
        tarball = npm_pack(pin, Path(tmp), npm=npm, timeout_s=timeout_s)
        check_integrity(tarball, pin)
        os.replace(tarball, target)
    return target


def served_name(member: str) -> str | None:
    """Where a tarball member lands in the served folder, or None when the site does not need it."""
    name = member.removeprefix("package/")
    if name == member or name in NOT_SERVED:
        return None
    for pattern in SERVED:
        if name.count("/") == pattern.count("/") and fnmatchcase(name, pattern):
            return name.removeprefix("es5/")
    return None


def _unpack(tarball: Path, folder: Path) -> list[str]:
    """Write the served regular files of ``tarball`` below ``folder``; return their relative names, sorted."""
    written = []
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            name = served_name(member.name)
            if name is None or not member.isfile() or ".." in name.split("/"):
                continue
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(member) as source, target.open("wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(source, out)
            written.append(name)
    missing = {"LICENSE", ENTRY} - set(written)
    if missing:
        raise MathJaxIntegrityError(f"{tarball} lacks {', '.join(sorted(missing))}: not a MathJax 3 npm tarball")
    return sorted(set(written))


def _stamp(pin: MathJaxPin, files: list[str]) -> dict:
    """What the served folder holds and where it came from (written to SOURCE.json, served with it)."""
    return {"package": pin.package, "version": pin.version, "integrity": pin.integrity,
            "source": f"npm pack {pin.spec} (the npm registry), checked against the integrity above",
            "license": "Apache-2.0, see LICENSE", "served": list(SERVED), "files": files}


def current_files(folder: Path, pin: MathJaxPin) -> int | None:
    """The number of served files when ``folder`` holds exactly what ``pin`` gives, else None."""
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp != _stamp(pin, stamp.get("files", [])):
        return None
    if not all(isinstance(name, str) and (folder / name).is_file() for name in stamp["files"]):
        return None
    return len(stamp["files"])


def _replace_folder(new: Path, folder: Path) -> None:
    """Put ``new`` where ``folder`` is, removing the old one."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(new, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, folder)


def ensure_mathjax(root: Path, pin: MathJaxPin = PIN, tarball: Path | None = None, cache: Path | None = None,
                   npm: str = "npm", timeout_s: float = NPM_TIMEOUT_S) -> MathJaxFolder:
    """Make ``root/_build/static/mathjax`` hold the pinned MathJax, fetching it only when it is missing or stale."""
    folder = Path(root) / STATIC_ROOT / FOLDER
    files = current_files(folder, pin)
    if files is not None:
        return MathJaxFolder(folder, pin.version, files, fetched=False)
    if tarball is not None:
        check_integrity(Path(tarball), pin)
    else:
        tarball = cached_tarball(pin, cache if cache is not None else cache_dir() / "npm", npm=npm, timeout_s=timeout_s)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{FOLDER}-") as tmp:
        new = Path(tmp) / FOLDER
        names = _unpack(Path(tarball), new)
        (new / STAMP).write_text(json.dumps(_stamp(pin, names), indent=1) + "\n", encoding="utf-8")
        _replace_folder(new, folder)
    return MathJaxFolder(folder, pin.version, len(names), fetched=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geomis.cli.mathjax [ROOT] [--tarball FILE]``: one line on success, one line on error (status 2)."""
    summary = __doc__.splitlines()[0] if __doc__ else None  # None: docstrings stripped (python -OO)
    parser = argparse.ArgumentParser(prog="python -m geomis.cli.mathjax", description=summary)
    parser.add_argument("root", nargs="?", default=".", help="the book's folder (default: the current checkout)")
    parser.add_argument("--tarball", default=None, help=f"use this local {PIN.tarball_name} instead of npm")
    args = parser.parse_args(argv)
    try:
        root = Path(args.root)
        if not (root / "_config.yml").is_file():
            raise GeomisError(f"{root.resolve()} holds no _config.yml: "
                              "run this in a geomis checkout or pass its folder")
        served = ensure_mathjax(root, tarball=Path(args.tarball) if args.tarball else None)
    except (GeomisError, OSError, tarfile.TarError) as error:
        message = str(error).strip()
        print(f"geomis: error: {message.splitlines()[0] if message else type(error).__name__}", file=sys.stderr)
        return 2
    print(served.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The site's MathJax fetch: only a tarball with the pinned integrity is unpacked, only what the site serves lands in
the served folder (with its LICENSE), a current folder is left alone, npm problems are one-line errors, and every
build path fetches first. Fake tarballs and fake npm scripts keep these tests offline; the last test fetches the real
pin from npm and skips when npm or the registry is not there."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from geomis.cli import mathjax
from geomis.cli.mathjax import (
    ENTRY,
    FOLDER,
    PIN,
    STATIC_ROOT,
    MathJaxFetchError,
    MathJaxIntegrityError,
    MathJaxPin,
    ensure_mathjax,
    integrity_of,
)

ROOT = Path(__file__).resolve().parent.parent
FAKE_FILES = {
    "package/LICENSE": b"Apache License 2.0 (fake)",
    "package/README.md": b"not served",
    "package/package.json": b"{}",
    f"package/es5/{ENTRY}": b"window.MathJax = {};",
    "package/es5/tex-svg.js": b"not served",
    "package/es5/a11y/explorer.js": b"not served",
    "package/es5/input/tex/extensions/cancel.js": b"cancel",
    "package/es5/input/tex/extensions/all-packages.js": b"not served",
    "package/es5/input/tex/extensions/deeper/x.js": b"not served",
    "package/es5/input/mml/entities.js": b"entities",
    "package/es5/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff": b"font",
    "package/es5/output/svg/fonts/tex.js": b"not served",
}
SERVED = {"LICENSE", ENTRY, "input/tex/extensions/cancel.js", "input/mml/entities.js",
          "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff", "SOURCE.json"}


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    """Write a gzipped tarball holding ``files``."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _pin_for(tarball: Path) -> MathJaxPin:
    """A pin that the given tarball satisfies."""
    return MathJaxPin(version="0.0.0-test", integrity=integrity_of(tarball))


def _served(root: Path) -> set[str]:
    folder = root / STATIC_ROOT / FOLDER
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def _fake_npm(tmp_path: Path, script: str) -> str:
    """An executable standing in for npm."""
    npm = tmp_path / "fake-npm"
    npm.write_text(f"#!/bin/sh\n{script}\n")
    npm.chmod(0o755)
    return str(npm)


def test_a_tarball_that_does_not_match_the_pin_is_refused_and_nothing_is_written(tmp_path) -> None:
    tarball = _tarball(tmp_path / "mathjax-3.2.2.tgz", FAKE_FILES)
    with pytest.raises(MathJaxIntegrityError) as caught:
        ensure_mathjax(tmp_path / "book", PIN, tarball=tarball)
    message = str(caught.value)
    assert "\n" not in message and PIN.spec in message and "integrity" in message
    assert not (tmp_path / "book" / STATIC_ROOT).exists()


def test_a_pinned_tarball_unpacks_only_what_the_site_serves(tmp_path) -> None:
    tarball = _tarball(tmp_path / "fake.tgz", FAKE_FILES)
    pin = _pin_for(tarball)
    served = ensure_mathjax(tmp_path, pin, tarball=tarball)
    assert served.fetched and served.files == len(SERVED) - 1
    assert _served(tmp_path) == SERVED
    folder = tmp_path / STATIC_ROOT / FOLDER
    assert (folder / "LICENSE").read_bytes() == FAKE_FILES["package/LICENSE"]
    stamp = json.loads((folder / "SOURCE.json").read_text())
    assert stamp["version"] == pin.version and stamp["integrity"] == pin.integrity and "Apache-2.0" in stamp["license"]


def test_a_current_folder_is_left_alone_without_npm(tmp_path) -> None:
    tarball = _tarball(tmp_path / "fake.tgz", FAKE_FILES)
    pin = _pin_for(tarball)
    ensure_mathjax(tmp_path, pin, tarball=tarball)
    entry = tmp_path / STATIC_ROOT / FOLDER / ENTRY
    before = entry.stat().st_mtime_ns
    again = ensure_mathjax(tmp_path, pin, cache=tmp_path / "empty-cache", npm=str(tmp_path / "no-such-npm"))
    assert not again.fetched and entry.stat().st_mtime_ns == before


def test_a_stale_or_damaged_folder_is_replaced(tmp_path) -> None:
    old = _tarball(tmp_path / "old.tgz", {**FAKE_FILES, "package/es5/input/tex/extensions/gone.js": b"old"})
    ensure_mathjax(tmp_path, _pin_for(old), tarball=old)
    new = _tarball(tmp_path / "new.tgz", FAKE_FILES)
    pin = MathJaxPin(version="0.0.1-test", integrity=integrity_of(new))
    assert ensure_mathjax(tmp_path, pin, tarball=new).fetched
    assert _served(tmp_path) == SERVED
    (tmp_path / STATIC_ROOT / FOLDER / "input/tex/extensions/cancel.js").unlink()
    assert ensure_mathjax(tmp_path, pin, tarball=new).fetched and _served(tmp_path) == SERVED


def test_a_tarball_without_the_entry_component_is_refused(tmp_path) -> None:
    files = {name: data for name, data in FAKE_FILES.items() if not name.endswith(ENTRY)}
    tarball = _tarball(tmp_path / "fake.tgz", files)
    with pytest.raises(MathJaxIntegrityError, match=ENTRY):
        ensure_mathjax(tmp_path, _pin_for(tarball), tarball=tarball)
    assert not (tmp_path / STATIC_ROOT / FOLDER).exists()


def test_missing_npm_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(MathJaxFetchError) as caught:
        ensure_mathjax(tmp_path, PIN, cache=tmp_path / "cache", npm=str(tmp_path / "no-such-npm"))
    assert "\n" not in str(caught.value) and "npm not found" in str(caught.value)


def test_an_unreachable_registry_is_a_one_line_error(tmp_path) -> None:
    npm = _fake_npm(tmp_path, "echo 'npm error code ECONNREFUSED' >&2\n"
                              "echo 'npm error FetchError: request to https://registry.npmjs.org/mathjax failed' >&2\n"
                              "exit 1")
    with pytest.raises(MathJaxFetchError) as caught:
        ensure_mathjax(tmp_path, PIN, cache=tmp_path / "cache", npm=npm)
    message = str(caught.value)
    assert "\n" not in message and message.endswith("FetchError: request to https://registry.npmjs.org/mathjax failed")


def test_a_hanging_npm_times_out(tmp_path) -> None:
    npm = _fake_npm(tmp_path, "exec sleep 30")
    with pytest.raises(MathJaxFetchError, match="did not finish in 1 s"):
        ensure_mathjax(tmp_path, PIN, cache=tmp_path / "cache", npm=npm, timeout_s=1)


def test_npm_output_is_checked_before_it_enters_the_cache(tmp_path) -> None:
    tarball = _tarball(tmp_path / "fake.tgz", FAKE_FILES)
    pin = MathJaxPin(version="3.2.2", integrity="sha512-" + "A" * 86 + "==")  # not the fake's integrity
    npm = _fake_npm(tmp_path, f'cp "{tarball}" "$4/{pin.tarball_name}"')  # $4 is the --pack-destination folder
    with pytest.raises(MathJaxIntegrityError):
        ensure_mathjax(tmp_path / "book", pin, cache=tmp_path / "cache", npm=npm)
    assert not list((tmp_path / "cache").iterdir())
    good = MathJaxPin(version="3.2.2", integrity=integrity_of(tarball))
    assert ensure_mathjax(tmp_path / "book", good, cache=tmp_path / "cache", npm=npm).fetched
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [good.tarball_name]


def test_the_config_serves_the_fetched_folder() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert STATIC_ROOT.as_posix() in config["html_static_path"]
    assert config["mathjax_path"] == f"{FOLDER}/{ENTRY}"
    assert not list((ROOT / "book" / "_static").rglob("*.js")), "book/_static holds the project's own files only"


def test_geomis_book_fetches_before_it_builds(monkeypatch, tmp_path, capsys) -> None:
    from geomis.cli import book
    from geomis.cli.commands import main

    def no_fetch(root: Path) -> None:
        raise MathJaxFetchError("npm not found (test)")

    monkeypatch.setattr(book, "ensure_mathjax", no_fetch)
    monkeypatch.setattr(book.subprocess, "run", lambda *a, **k: pytest.fail("built before MathJax was fetched"))
    assert main(["book", str(ROOT), "--no-execute"]) == 2
    assert capsys.readouterr().err.strip() == "geomis: error: npm not found (test)"


def test_the_module_command_refuses_a_folder_without_a_book(tmp_path, capsys) -> None:
    assert mathjax.main([str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("geomis: error:") and "_config.yml" in error and "\n" not in error


def test_the_pinned_mathjax_from_npm_matches_its_pin(tmp_path) -> None:
    """The real fetch (network): the registry's tarball has the pinned integrity and holds every served file."""
    try:
        served = ensure_mathjax(tmp_path)
    except MathJaxFetchError as error:
        pytest.skip(f"npm or the npm registry is not available: {error}")
    names = _served(tmp_path)
    assert {"LICENSE", ENTRY, "SOURCE.json", "input/tex/extensions/cancel.js"} <= names
    assert sum(name.endswith(".woff") for name in names) >= 20 and "input/tex/extensions/all-packages.js" not in names
    assert served.fetched and served.version == PIN.version and served.files == len(names) - 1

"""Execute every chapter and build the book's HTML site with Jupyter Book 1.x, without touching committed notebooks.

Notebooks are executed inside the build (Jupyter Book's ``execute_notebooks: force`` set through a temporary copy of
``_config.yml``), so the outputs in ``book/*.ipynb`` stay as committed and the fresh ones land in ``_build/html``.
The site's MathJax is fetched first (``geomis.cli.mathjax``: pinned, from npm, cached), with or without execution.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from geomis.cli.mathjax import ensure_mathjax
from geomis.errors import GeomisError


@dataclass(frozen=True)
class BookBuild:
    """How to build the book: where its sources are, whether to re-execute chapters, how strict to be."""

    root: Path
    execute: bool = True
    strict: bool = True
    """Turn Sphinx warnings into errors (``-W -n --keep-going``), as CI does."""
    timeout_s: int = 3600


JUPYTER_BOOK_MAIN = "import sys; from jupyter_book.cli.main import main; sys.exit(main())"
"""What the ``jupyter-book`` script runs (``python -m jupyter_book.cli.main`` has no ``__main__`` and does nothing)."""


def find_book_root(start: Path) -> Path:
    """Return the nearest folder at or above ``start`` holding ``_config.yml`` and ``_toc.yml``."""
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "_config.yml").is_file() and (folder / "_toc.yml").is_file():
            return folder
    raise GeomisError(f"no _config.yml and _toc.yml found at or above {start}; run this from a geomis checkout")


def build_command(build: BookBuild, config_path: Path) -> list[str]:
    """The ``jupyter-book build`` command line for ``build`` using the config file at ``config_path``."""
    command = [sys.executable, "-c", JUPYTER_BOOK_MAIN, "build", str(build.root),
               "--config", str(config_path), "--toc", str(build.root / "_toc.yml"), "--all"]
    if build.strict:
        command += ["-W", "-n", "--keep-going"]
    return command


def build_book(build: BookBuild) -> Path:
    """Fetch MathJax, build the site (executing chapters when asked) and return the folder of its ``index.html``."""
    print(f"geomis: {ensure_mathjax(build.root).summary()}", file=sys.stderr)
    started = time.time() - 1.0  # file times may be rounded down to the second
    config = yaml.safe_load((build.root / "_config.yml").read_text(encoding="utf-8"))
    if build.execute:
        execute = config.setdefault("execute", {})
        execute.update({"execute_notebooks": "force", "timeout": build.timeout_s, "allow_errors": False})
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "_config.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        result = subprocess.run(build_command(build, config_path), cwd=build.root, env=env)
    if result.returncode != 0:
        raise GeomisError(f"jupyter-book build failed with exit code {result.returncode} (see the log above)")
    site = build.root / "_build" / "html"
    if not any(page.stat().st_mtime >= started for page in site.rglob("*.html")):  # --all rewrites every page
        raise GeomisError(f"jupyter-book exited 0 but wrote no page in {site}")
    return site

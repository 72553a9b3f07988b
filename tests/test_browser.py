"""The built book as a reader sees it: every page in the table of contents opens in headless Chromium from a local
server, with its title, every image loaded, math typeset by the site's own MathJax, the right Colab link on
chapter pages, nothing fetched from outside the site and no console errors.

The site is built here (without executing notebooks) into a temporary folder, so the test does not depend on an
earlier build; MathJax is fetched first by the same step every build runs (`geomis.cli.mathjax`: the pinned npm
tarball, checked, unpacked into _build/static/mathjax/), and the test skips with the reason when npm or the registry
is not available. Full-page screenshots go to test-artifacts/screenshots/<page>.png.

Needs the `playwright` package (in the `dev` extra) and a Chromium: the system one (Debian: `apt-get install
chromium`; `.ci/run` installs it when it runs as root with apt), `GEOMIS_CHROMIUM=/path/to/chrome`, or a browser
fetched with `playwright install chromium`. Without a browser the test skips and says why.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from geomis.cli.mathjax import PIN, MathJaxFetchError, ensure_mathjax
from geomis.provenance import BOOK_REF

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
COLAB = f"https://colab.research.google.com/github/geomis/geomis/blob/{BOOK_REF}"
BUILD_TIMEOUT_S = 600
PAGE_TIMEOUT_MS = 60_000

# Console errors that come from the book's toolchain, not from the book, matched exactly. Sphinx 7.4 emits the
# inline scripts that extensions register after the builder starts twice; sphinx-thebe 0.3.1 declares its settings
# with `const`, so the second copy throws. Thebe itself is unaffected (the first copy defines them).
KNOWN_TOOLCHAIN_ERRORS = {
    "Identifier 'THEBE_JS_URL' has already been declared",
}

pytestmark = pytest.mark.browser


def _toc_pages() -> list[str]:
    """Every page in _toc.yml, root-relative and without extension, the home page first."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        walk(part.get("chapters", []))
    return pages


PAGES = _toc_pages()


def _source(page: str) -> Path:
    """The source file of a page (.ipynb or .md)."""
    return next(ROOT / f"{page}{suffix}" for suffix in (".ipynb", ".md") if (ROOT / f"{page}{suffix}").is_file())


def _normalise(text: str) -> str:
    """Heading text without Markdown emphasis, code marks or repeated whitespace."""
    return re.sub(r"\s+", " ", re.sub(r"[*_`]", "", text)).strip()


def _first_heading(page: str) -> str:
    """The text of a page's first level-1 heading, read from its source."""
    path = _source(page)
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
    else:
        text = path.read_text()
    match = re.search(r"^# (.+)$", text, flags=re.MULTILINE)
    assert match, f"{path} has no level-1 heading"
    return _normalise(match.group(1))


def _find_chromium(playwright) -> tuple[str | None, str]:
    """A Chromium executable and where it came from, or None and the reason there is none."""
    candidates = []
    if os.environ.get("GEOMIS_CHROMIUM"):
        candidates.append((os.environ["GEOMIS_CHROMIUM"], "GEOMIS_CHROMIUM"))
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            candidates.append((found, "PATH"))
    try:
        candidates.append((playwright.chromium.executable_path, "playwright install"))
    except Exception:  # noqa: BLE001 - no bundled browser registered
        pass
    for path, origin in candidates:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path, origin
    return None, ("no Chromium found: install one with `apt-get install chromium` (Debian/Ubuntu) or "
                  "`playwright install chromium`, or set GEOMIS_CHROMIUM=/path/to/chrome")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that does not log every request to stderr."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Fetch MathJax, build the book without execution into a temporary folder and serve it on 127.0.0.1."""
    try:
        print(f"test_browser: {ensure_mathjax(ROOT).summary()}")
    except MathJaxFetchError as error:
        print(f"test_browser: skipped: {error}")
        pytest.skip(f"cannot fetch the site's MathJax: {error}")
    out = tmp_path_factory.mktemp("site")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book", "build", str(ROOT),
               "--path-output", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT)
    html = out / "_build" / "html"
    assert result.returncode == 0 and (html / "index.html").is_file(), (
        f"book build failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright; skips with the reason when either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        executable, origin = _find_chromium(playwright)
        if executable is None:
            print(f"test_browser: skipped: {origin}")
            pytest.skip(origin)
        print(f"test_browser: Chromium from {origin}: {executable}")
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


WAIT_FOR_MATHJAX = """async () => {
    if (!document.querySelector('.math')) return 'no math';
    for (let i = 0; i < 600 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++) {
        await new Promise(resolve => setTimeout(resolve, 50));
    }
    if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return 'MathJax never started';
    await MathJax.startup.promise;
    return 'typeset';
}"""

OPEN_ALL_AND_WAIT_FOR_IMAGES = """async () => {
    document.querySelectorAll('details').forEach(d => { d.open = true; });
    await Promise.all(Array.from(document.images).map(img => img.complete ? null : new Promise(resolve => {
        img.addEventListener('load', resolve); img.addEventListener('error', resolve);
    })));
    return Array.from(document.images).map(img => ({src: img.currentSrc || img.src, width: img.naturalWidth}));
}"""

MATH_STATE = """() => {
    const math = Array.from(document.querySelectorAll('.math'));
    return {
        math: math.length,
        untypeset: math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
        errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent.slice(0, 80)),
        containers: document.querySelectorAll('mjx-container').length,
    };
}"""

H1_TEXT = """() => {
    const h1 = document.querySelector('main h1, article h1, h1');
    if (!h1) return null;
    const copy = h1.cloneNode(true);
    copy.querySelectorAll('.headerlink').forEach(a => a.remove());
    return copy.textContent;
}"""


@pytest.mark.parametrize("page", PAGES, ids=lambda page: Path(page).name)
def test_page_renders_offline_without_errors(page: str, browser, site: str) -> None:
    is_home = page == PAGES[0]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    external: list[str] = []
    local_host = urlparse(site).netloc

    def route(request_route) -> None:
        url = request_route.request.url
        if urlparse(url).netloc == local_host or url.startswith(("data:", "blob:")):
            request_route.continue_()
        else:  # the built site must work offline: nothing may come from elsewhere
            external.append(url)
            request_route.abort()

    context.route("**/*", route)
    tab.on("console", lambda msg: msg.type == "error" and errors.append(
        f"console: {msg.text} ({msg.location.get('url', '')})"))
    tab.on("pageerror", lambda exc: None if str(exc) in KNOWN_TOOLCHAIN_ERRORS else errors.append(
        f"pageerror: {exc}"))
    tab.on("response", lambda response: response.status >= 400 and errors.append(
        f"HTTP {response.status}: {response.url}"))
    tab.on("requestfailed", lambda request: urlparse(request.url).netloc == local_host and errors.append(
        f"request failed: {request.url} ({request.failure})"))
    try:
        if is_home:  # the site root redirects to the home page
            tab.goto(f"{site}/", wait_until="load", timeout=PAGE_TIMEOUT_MS)
            tab.wait_for_url(f"**/{page}.html", timeout=PAGE_TIMEOUT_MS)
        else:
            tab.goto(f"{site}/{page}.html", wait_until="load", timeout=PAGE_TIMEOUT_MS)
        tab.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)
        mathjax = tab.evaluate(WAIT_FOR_MATHJAX)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / f"{Path(page).name}.png"), full_page=True)

        heading = tab.evaluate(H1_TEXT)
        assert heading is not None, "page has no <h1>"
        assert _normalise(heading) == _first_heading(page)

        images = tab.evaluate(OPEN_ALL_AND_WAIT_FOR_IMAGES)
        broken = [image["src"] for image in images if image["width"] == 0]
        assert not broken, f"images that did not load: {broken}"
        if _source(page).suffix == ".ipynb":
            assert images, "a chapter page without a single image"

        math = tab.evaluate(MATH_STATE)
        if math["math"]:
            assert mathjax == "typeset", mathjax
            assert not math["untypeset"], f"math left as TeX: {math['untypeset'][:5]}"
            assert not math["errors"], f"MathJax errors: {math['errors'][:5]}"
            assert math["containers"] >= math["math"]
            scripts = tab.evaluate("() => Array.from(document.scripts).map(s => s.src).filter(Boolean)")
            assert any(urlparse(src).netloc == local_host and "mathjax" in src for src in scripts), scripts
            assert tab.evaluate("() => MathJax.version") == PIN.version, \
                "not the MathJax pinned in geomis/cli/mathjax.py"

        if _source(page).suffix == ".ipynb":
            expected = f"{COLAB}/{page}.ipynb"
            links = tab.evaluate("""() => Array.from(document.querySelectorAll('a[href*="colab.research.google"]'))
                .map(a => ({href: a.href, badge: !!a.querySelector('img[src*="colab-badge"]')}))""")
            assert any(link["badge"] and link["href"] == expected for link in links), links
            assert all(link["href"] == expected for link in links), f"Colab links other than {expected}: {links}"

        tab.wait_for_timeout(200)  # let late console messages arrive
        assert not external, f"requests that left the site: {external}"
        assert not errors, "\n".join(errors)
    finally:
        context.close()

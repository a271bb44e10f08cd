"""Smoke build of the real book (tiny parameters) and headless-browser checks of its pages.

The browser is Debian's Chromium (``apt-get install chromium``; ``make test``
installs it when run as root, as in CI) driven by Playwright's Python package.
Without it the browser tests are skipped with the reason printed (``pytest -ra``).
"""

import functools
import http.server
import shutil
import subprocess
import threading
import urllib.parse
from pathlib import Path

import pytest

from spineprint_utils import build

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.book


def _source_state():
    """Content of every file of the book's sources plus git's view of untracked files."""
    files = [ROOT / "_config.yml", ROOT / "_toc.yml"]
    for folder in ("book", "notebooks"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file())
    state = {str(p.relative_to(ROOT)): p.read_bytes() for p in files}
    try:
        state["<untracked>"] = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
            capture_output=True, text=True, check=True).stdout.encode()
    except (OSError, subprocess.CalledProcessError):
        pass
    return state


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return set(out.split())
    except (OSError, subprocess.CalledProcessError):
        return {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    before = _source_state()
    output = tmp_path_factory.mktemp("book")
    html = build.build_book(ROOT, output=output, params_file=ROOT / "tests" / "smoke_params.yml",
                            progress=False)
    after = _source_state()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"the build changed the source tree: {changed}"
    return html


def test_every_notebook_page_built(built_book):
    for nb in build.toc_notebooks(ROOT):
        assert (built_book / nb.with_suffix(".html")).is_file(), nb
    assert (built_book / "index.html").is_file()


def test_no_raw_glue_or_error_output_in_html(built_book):
    for page in built_book.rglob("*.html"):
        text = page.read_text(errors="replace")
        assert "{glue:" not in text and "{glue}" not in text, f"{page.name}: unrendered glue"
        assert "Traceback (most recent call last)" not in text, f"{page.name}: error output"
        assert 'class="output traceback' not in text, f"{page.name}: error output"


@pytest.fixture(scope="session")
def server(built_book):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a, **k: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests skipped: playwright not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield b
        b.close()


def _pages():
    return ["index.html"] + [str(nb.with_suffix(".html")) for nb in build.toc_notebooks(ROOT)]


@pytest.mark.browser
@pytest.mark.parametrize("page", _pages())
def test_page_in_browser(page, server, browser, tmp_path_factory):
    tab = browser.new_page()
    failed = []
    tab.on("requestfailed", lambda r: failed.append(r.url) if r.url.startswith(server) else None)
    response = tab.goto(f"{server}/{page}", wait_until="load")
    assert response is not None and response.ok, page
    title = tab.locator("h1").first.inner_text()
    assert title.strip(), f"{page}: no title"
    # figures: every image loaded with a non-zero size
    broken = tab.evaluate(
        "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert not broken, f"{page}: broken images {broken}"
    assert not failed, f"{page}: failed requests {failed}"
    # no error output cells
    assert tab.locator(".output.traceback, .output.error").count() == 0, f"{page}: error output"
    body = tab.locator("article").inner_text()
    assert "{glue" not in body, f"{page}: raw glue role"
    shots = tmp_path_factory.mktemp("shots")
    tab.screenshot(path=str(shots / (Path(page).stem + ".png")), full_page=False)
    # Binder button of notebook pages opens the committed source notebook
    if page.startswith("notebooks/"):
        links = tab.eval_on_selector_all("a[href*='mybinder.org']", "els => els.map(e => e.href)")
        assert links, f"{page}: no Binder launch link"
        for link in links:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)
            target = query.get("urlpath", [""])[0].split("/", 1)[-1]
            assert target == str(Path(page).with_suffix(".ipynb")), link
            assert target in _tracked_files() or (ROOT / target).is_file(), f"Binder link to missing {target}"
    tab.close()

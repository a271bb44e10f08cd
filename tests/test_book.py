"""Smoke build of the real book (tiny parameters) and headless-browser checks of its pages.

The browser is Debian's Chromium (``apt-get install chromium``; ``make test``
installs it when run as root, as in CI) driven by Playwright's Python package.
Without it the browser tests are skipped with the reason printed (``pytest -ra``).
"""

import functools
import http.server
import re
import subprocess
import threading
import urllib.parse
from pathlib import Path

import pytest

from spineprint_utils import build

ROOT = Path(__file__).resolve().parents[1]

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




def _pages():
    return ["index.html"] + [str(nb.with_suffix(".html")) for nb in build.toc_notebooks(ROOT)]


def _offline_tab(browser, server):
    """A 1280 x 900 tab that can reach only the local test server (the network is blocked)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server)
                  else route.abort())
    return context.new_page()


@pytest.mark.browser
@pytest.mark.parametrize("page", _pages())
def test_page_in_browser(page, server, browser, tmp_path_factory):
    tab = _offline_tab(browser, server)
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
    tab.context.close()


# ------------------------------------------------------------- reading the pages
ALL_PAGES = ["index.html", "book/intro.html", "book/own_data.html", "book/teaching.html", "book/glossary.html",
             "book/references.html"] + [str(nb.with_suffix(".html")) for nb in build.toc_notebooks(ROOT)]

#: text that must never reach a reader: build internals and placeholder plurals
FORBIDDEN = {
    "internal path /tmp": r"(?<![\w.])/tmp/",
    "internal path /root": r"(?<![\w.])/root\b",
    "internal path /work": r"(?<![\w.])/work/",
    "home folder": r"/home/\w+",
    "cache path": r"\.cache/spineprint|spineprint_cache|/cache/datasets/",
    "placeholder plural": r"[A-Za-z]\(s\)",
    "internal note": r"counted in the local copy|generated example data: (yes|no)|spineprint_utils\.simulate \d",
}

# geometry of code blocks, tables and figures inside the article (CSS pixels)
_GEOMETRY_JS = """() => {
  const art = document.querySelector('article.bd-article') || document.querySelector('article');
  const col = art.getBoundingClientRect();
  const scroller = el => {
    for (let e = el.parentElement; e && e !== art; e = e.parentElement) {
      const ox = getComputedStyle(e).overflowX;
      if (ox === 'auto' || ox === 'scroll') return e;
    }
    return null;
  };
  const out = {colRight: col.right, colLeft: col.left, pre: [], tables: [], imgs: []};
  for (const el of art.querySelectorAll('div.cell_input pre, div.highlight pre')) {
    out.pre.push({scroll: el.scrollWidth, client: el.clientWidth, text: el.innerText.slice(0, 60)});
  }
  for (const el of art.querySelectorAll('table')) {
    const box = scroller(el) || el;
    const r = box.getBoundingClientRect();
    out.tables.push({left: r.left, right: r.right, scrolls: box !== el, text: el.innerText.slice(0, 60)});
  }
  for (const img of art.querySelectorAll('img')) {  // cell outputs and glued figures
    if (img.naturalWidth < 150) continue;  // icons
    out.imgs.push({natural: img.naturalWidth, shown: img.getBoundingClientRect().width, src: img.src.slice(-20)});
  }
  return out;
}"""


@pytest.fixture(scope="module")
def offline_pages(server, browser):
    """Every page read once, offline, at 1280 px: text, geometry, math state."""
    pages = {}
    for page in ALL_PAGES:
        tab = _offline_tab(browser, server)
        tab.goto(f"{server}/{page}", wait_until="load")
        has_math = tab.locator("article .math").count() > 0
        if has_math:  # MathJax typesets after load; wait for it (served from _static, no network)
            try:
                tab.wait_for_function(
                    "() => document.querySelectorAll('article mjx-container').length >= "
                    "document.querySelectorAll('article .math').length", timeout=30000)
            except Exception:  # noqa: BLE001 - the assertion below reports what is left
                pass
        pages[page] = {
            "text": tab.locator("article").inner_text(),
            "has_math": has_math,
            "typeset": tab.locator("article mjx-container").count(),
            "geometry": tab.evaluate(_GEOMETRY_JS),
            "facts": tab.locator("article .chapter-facts").all_inner_texts(),
        }
        tab.context.close()
    return pages


@pytest.mark.browser
def test_math_is_typeset_offline(offline_pages):
    """MathJax comes with the book: with the network blocked no formula is left as raw TeX."""
    with_math = [p for p, info in offline_pages.items() if info["has_math"]]
    assert with_math, "no page with math found: the check would prove nothing"
    for page in with_math:
        info = offline_pages[page]
        assert info["typeset"] > 0, f"{page}: MathJax did not typeset (offline)"
        raw = re.findall(r"\\\(|\\\)|\\\[|\\\]|\$\$", info["text"])
        assert not raw, f"{page}: raw TeX left on the page offline: {raw[:5]}"


@pytest.mark.browser
def test_no_internal_paths_or_placeholder_plurals(offline_pages):
    for page, info in offline_pages.items():
        for what, pattern in FORBIDDEN.items():
            m = re.search(pattern, info["text"])
            assert m is None, f"{page}: {what}: ...{info['text'][max(0, m.start() - 60):m.end() + 30]!r}"


@pytest.mark.browser
def test_tables_fit_the_column(offline_pages):
    """At 1280 px a table fits the column, or scrolls inside a box that does."""
    for page, info in offline_pages.items():
        g = info["geometry"]
        for t in g["tables"]:
            assert t["right"] <= g["colRight"] + 1 and t["left"] >= g["colLeft"] - 1, (
                f"{page}: table wider than the column{'' if t['scrolls'] else ' (no scroll box)'}: {t['text']!r}")


@pytest.mark.browser
def test_figures_shown_at_a_legible_scale(offline_pages):
    """Figures are drawn for the column: shrunk at most to plotting.MIN_DISPLAY_SCALE (fonts >= 9 pt)."""
    from spineprint_utils import plotting

    n = 0
    for page, info in offline_pages.items():
        for img in info["geometry"]["imgs"]:
            n += 1
            scale = img["shown"] / img["natural"]
            assert scale >= plotting.MIN_DISPLAY_SCALE - 0.01, (
                f"{page}: figure ...{img['src']} {img['natural']} px shown at {scale:.0%}: labels below 9 pt")
    assert n > 10, "too few figures found"


@pytest.mark.browser
def test_every_chapter_states_objectives_and_times(offline_pages):
    for nb in build.toc_notebooks(ROOT):
        page = str(nb.with_suffix(".html"))
        facts = offline_pages[page]["facts"]
        assert len(facts) == 1, f"{page}: no chapter box (objectives, prerequisites, times)"
        text = facts[0]
        for needed in ("You will learn to", "Before you start", "Reading time", "Rerun time"):
            assert needed in text, f"{page}: chapter box without {needed!r}"
        assert re.search(r"about \d+ min", text), f"{page}: no reading time"
        assert re.search(r"Rerun time.*?: (\d+ s|\d+ min \d+ s);", text, re.S), f"{page}: no measured rerun time"


@pytest.mark.browser
def test_code_blocks_fit_the_column(offline_pages):
    """At 1280 px no code block is cut on the right (code is formatted at 88 characters)."""
    for page, info in offline_pages.items():
        for pre in info["geometry"]["pre"]:
            assert pre["scroll"] <= pre["client"] + 1, f"{page}: code block wider than the column: {pre['text']!r}"

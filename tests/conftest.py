"""Test configuration: real data come from ../shared/data through the loaders' override."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

# The loaders read SPINEPRINT_DATA_DIR instead of downloading (no network here).
if "SPINEPRINT_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SPINEPRINT_DATA_DIR"] = str(SHARED_DATA)

os.environ.setdefault("MPLBACKEND", "Agg")

# Generated data (simulated studies, derivatives) go to a fresh cache for the whole test
# session, also for session-scoped fixtures and the notebook kernels they start: tests never
# read or write the user's ~/.cache/spineprint.
_CACHE = tempfile.mkdtemp(prefix="spineprint-test-cache-")
os.environ["SPINEPRINT_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ["SPINEPRINT_DATA_DIR"])
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found; set SPINEPRINT_DATA_DIR")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch):
    """Tests that change the cache variable get it restored afterwards."""
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", _CACHE)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every browser test of the session (Playwright's sync API
    cannot be started twice at once: a second ``sync_playwright()`` fails inside the first's
    event loop)."""
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

"""Test configuration: real data come from ../shared/data through the loaders' override."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

# The loaders read SPINEPRINT_DATA_DIR instead of downloading (no network here).
if "SPINEPRINT_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SPINEPRINT_DATA_DIR"] = str(SHARED_DATA)

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ["SPINEPRINT_DATA_DIR"])
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found; set SPINEPRINT_DATA_DIR")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session uses its own generated-data cache, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "spineprint-cache"
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(cache))

"""Code in the notebooks fits the book's column: ruff format at 88 characters, no longer line.

At 1280 px the book's code cells show 88 characters (spineprint_utils/static/spineprint.css);
``tests/test_book.py`` checks the rendered pages, this test the sources, so that a long line
is caught without building the book. Fix with::

    .venv/bin/ruff format --line-length 88 notebooks/
"""

import subprocess
from pathlib import Path

import nbformat
import pytest
from venv_tools import venv_tool

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX = 88


def _ruff():
    exe = venv_tool("ruff")
    if exe is None:
        pytest.skip("ruff not installed (pip install -e '.[test]')")
    return exe


def test_notebooks_are_ruff_formatted():
    result = subprocess.run([_ruff(), "format", "--isolated", "--line-length", str(MAX), "--check",
                             *map(str, NOTEBOOKS)], capture_output=True, text=True)
    assert result.returncode == 0, (
        "notebooks not formatted; run `.venv/bin/ruff format --line-length 88 notebooks/`\n"
        + result.stdout + result.stderr)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_code_line_wider_than_the_column(path):
    nb = nbformat.read(str(path), as_version=4)
    long = [(i, line) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for line in c.source.splitlines() if len(line) > MAX]
    assert not long, f"{path.name}: {len(long)} code lines over {MAX} characters, e.g. {long[0][1]!r}"


def test_the_check_detects_a_long_line(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = [" + ", ".join(["1"] * 60) + "]")]
    path = tmp_path / "long.ipynb"
    nbformat.write(nb, str(path))
    result = subprocess.run([_ruff(), "format", "--isolated", "--line-length", str(MAX), "--check", str(path)],
                            capture_output=True, text=True)
    assert result.returncode != 0


def test_code_blocks_of_the_markdown_pages_fit_the_column():
    """Code blocks of book/*.md: no line over 88 characters (the browser test checks the pages)."""
    for page in sorted((ROOT / "book").glob("*.md")):
        fence = None
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                fence = None if fence else line
                continue
            if fence and not fence.startswith("```{") and len(line) > MAX + 1:
                raise AssertionError(f"{page.name}:{n}: code line of {len(line)} characters: {line!r}")

"""The book as a course: measured times at the top of each chapter.

Each chapter notebook ends with a hidden cell ``course.glue_chapter_facts("<stem>")``
that glues, for the box at the top of the chapter:

``chapter_rerun_time``
    how long executing this notebook took in this build (from the start of its
    Jupyter kernel to the last cell, at the parameters the page shows);
``chapter_default_rerun``
    the rerun time and peak memory at the *default* parameters on one core, as
    last measured by ``benchmarks/bench_notebooks.py --one-core`` (written to
    ``benchmarks/notebook_times.json``): the CPU time of the notebook's process
    tree (what an idle single core needs) and the wall-clock time of the run;
``chapter_reading_time``
    an estimate of the reading time: words of the Markdown cells at 200 words
    per minute (technical prose; Brysbaert 2019 gives 238 wpm for non-fiction
    silent reading) plus 15 s per code cell to look at what it does.

Nothing is typed: the times are measured when the page is built (or by the
benchmark), the reading time is counted from the notebook itself.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

__all__ = ["PlainText", "reading_minutes", "kernel_seconds", "default_rerun", "default_rerun_short",
           "glue_chapter_facts", "reader_warnings",
           "format_seconds", "WORDS_PER_MINUTE", "SECONDS_PER_CODE_CELL"]

WORDS_PER_MINUTE = 200.0
SECONDS_PER_CODE_CELL = 15.0
_IMPORTED = time.time()
_REPO = Path(__file__).resolve().parents[1]


class PlainText(str):
    """A string shown without quotes when glued (``{glue}`` renders ``text/plain``)."""

    def _repr_pretty_(self, p, cycle):  # IPython's text/plain
        p.text(str(self))

    def __repr__(self):
        return str(self)


def format_seconds(seconds: float) -> str:
    """``"42 s"`` below two minutes, ``"3 min 5 s"`` above."""
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds}")
    if seconds < 120:
        return f"{seconds:.0f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s"


def _find_notebook(stem: str) -> Path | None:
    for folder in (Path.cwd(), _REPO / "notebooks"):
        path = folder / f"{stem}.ipynb"
        if path.is_file():
            return path
    return None


def reading_minutes(notebook) -> int:
    """Estimated reading time of a notebook in whole minutes (at least 1).

    ``words of Markdown cells / WORDS_PER_MINUTE + code cells * SECONDS_PER_CODE_CELL``,
    rounded up to the next 5 minutes above 10 minutes.
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    words = sum(len(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    code = sum(1 for c in nb.cells if c.cell_type == "code" and "remove-cell" not in c.metadata.get("tags", []))
    minutes = words / WORDS_PER_MINUTE + code * SECONDS_PER_CODE_CELL / 60.0
    minutes = max(1, math.ceil(minutes))
    return minutes if minutes <= 10 else 5 * math.ceil(minutes / 5)


def kernel_seconds() -> float:
    """Seconds since this Python process (the notebook's kernel) started.

    Falls back to the time since this module was imported when the process start
    time is not available.
    """
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - psutil missing or no access: a lower bound
        return time.time() - _IMPORTED


def default_rerun(stem: str, path=None) -> str:
    """Rerun time and peak memory at the default parameters, from the benchmark's JSON."""
    path = Path(path) if path is not None else _REPO / "benchmarks" / "notebook_times.json"
    try:
        data = json.loads(path.read_text())
        row = data["notebooks"][stem]
        if "cpu_seconds" in row:
            time_txt = (f"{format_seconds(row['cpu_seconds'])} of computing on one core "
                        f"({format_seconds(row['seconds'])} wall-clock on the shared benchmark machine)")
        else:
            time_txt = f"{format_seconds(row['seconds'])} on one core"
        return (f"{time_txt}, peak memory {row['peak_pss_mb']:.0f} MB "
                f"(benchmarks/bench_notebooks.py, {data['date']})")
    except (OSError, KeyError, TypeError, ValueError):
        return "not measured yet (run benchmarks/bench_notebooks.py --one-core)"


def default_rerun_short(stem: str, path=None) -> str:
    """``"16 s"``: computing time at the default parameters on one core (benchmark), or ``"n/a"``."""
    path = Path(path) if path is not None else _REPO / "benchmarks" / "notebook_times.json"
    try:
        row = json.loads(path.read_text())["notebooks"][stem]
        return format_seconds(row.get("cpu_seconds", row["seconds"]))
    except (OSError, KeyError, TypeError, ValueError):
        return "n/a"


def reader_warnings() -> None:
    """Show warnings on the pages as ``Category: message``, without the source file path.

    Python's default format starts with the path of the module that warned (a path
    of the machine that built the book) and repeats the source line; the reader
    needs the message only.
    """
    import warnings

    def _format(message, category, filename, lineno, line=None):
        return f"{category.__name__}: {message}\n"

    warnings.formatwarning = _format


def glue_chapter_facts(stem: str) -> dict:
    """Glue ``chapter_rerun_time``, ``chapter_default_rerun``, ``chapter_default_short`` and
    ``chapter_reading_time`` (the teaching page pastes the short one from every chapter).

    Call it in the last cell of the notebook *stem* (e.g. ``"04_fingerprinting"``).
    Returns the glued values.
    """
    nb = _find_notebook(stem)
    facts = {
        "chapter_rerun_time": PlainText(format_seconds(kernel_seconds())),
        "chapter_default_rerun": PlainText(default_rerun(stem)),
        "chapter_default_short": PlainText(default_rerun_short(stem)),
        "chapter_reading_time": PlainText(f"about {reading_minutes(nb)} min" if nb else "not available"),
    }
    try:
        from myst_nb import glue
    except ImportError:  # outside the book tools: just return them
        return facts
    for key, value in facts.items():
        glue(key, value, display=False)
    return facts

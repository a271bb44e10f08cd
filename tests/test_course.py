"""The book as a course: chapter boxes, exercises with checked solutions, figure style.

Static checks of the committed notebooks (no execution of whole chapters):
every chapter has its objectives box, the style cell, three kinds of exercise with
hidden solutions, and the cell that glues the measured times; each complete-the-code
exercise runs with its blank (no error), passes its own assert with the published
solution, and fails it with a wrong answer.
"""

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml

from spineprint_utils import build, course, plotting, prose

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [ROOT / nb for nb in build.toc_notebooks(ROOT)]
BLANK = re.compile(r"^(\w+) = \.\.\.  # blank.*$", re.M)


def _tool():
    spec = importlib.util.spec_from_file_location("course_cells", ROOT / "tools" / "course_cells.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _nb(path):
    return nbformat.read(str(path), as_version=4)


def _cell(nb, cell_id):
    hits = [c for c in nb.cells if c.get("id") == cell_id]
    assert len(hits) == 1, f"cell {cell_id!r}: found {len(hits)}"
    return hits[0]


# ------------------------------------------------------------------- chapters
def test_chapters_are_numbered_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for part in toc["parts"]:
        files = [c["file"] for c in part["chapters"]]
        if any(f.startswith("notebooks/") for f in files):
            assert part.get("numbered") is True, f"part {part['caption']!r}: chapters not numbered"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_box_setup_and_facts_cells(path):
    nb = _nb(path)
    ids = [c.get("id") for c in nb.cells]
    assert ids.index("course-header") == 1, "the chapter box comes right after the title cell"
    header = _cell(nb, "course-header").source
    for needed in ("You will learn to", "Before you start", "chapter_reading_time", "chapter_rerun_time",
                   "chapter_default_rerun", ":class: chapter-facts"):
        assert needed in header, f"{path.name}: chapter box without {needed!r}"
    objectives = [line for line in header.splitlines() if line.startswith("- ")]
    assert len(objectives) >= 3, f"{path.name}: fewer than three learning objectives"
    param = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    assert ids[param + 1] == "course-setup", "the style cell follows the parameters cell"
    assert "plotting.use_book_style()" in nb.cells[param + 1].source
    last = nb.cells[-1]
    assert last.get("id") == "course-facts" and f'glue_chapter_facts("{path.stem}")' in last.source
    assert "remove-cell" in last.metadata.get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_three_kinds_of_exercise_with_hidden_solutions(path):
    nb = _nb(path)
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    start = next(i for i, s in enumerate(md) if re.search(r"^#+ Exercises", s, re.M))
    exercises = "\n".join(md[start:])
    headings = re.findall(r"^#+ Exercises\s*$", "\n".join(md), re.M)
    assert len(headings) == 1, f"{path.name}: {len(headings)} 'Exercises' headings"
    n_solutions = len(re.findall(r":class: dropdown", exercises))
    assert n_solutions >= 3, f"{path.name}: {n_solutions} hidden solutions, need >= 3"
    # predict-then-run: an exercise changes a parameter of the parameters cell
    param_src = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = re.findall(r"^(\w+)\s*=", param_src, re.M)
    assert any(f"`{n}" in exercises for n in names), f"{path.name}: no exercise changes a parameter"
    # complete-the-code: a tagged code cell with one blank and an assert
    code = [c for c in nb.cells if c.cell_type == "code" and "exercise" in c.metadata.get("tags", [])]
    assert code and all(len(BLANK.findall(c.source)) == 1 and "assert " in c.source for c in code)
    # interpret-a-figure
    assert "Read the figure" in exercises


def _run(source):
    ns = {}
    exec(compile(source, "<exercise>", "exec"), ns)  # noqa: S102 - our own notebook cell
    return ns


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_complete_the_code_blank_solution_and_wrong_answer(path, capsys):
    nb = _nb(path)
    cell = _cell(nb, "course-code-cell").source
    blank_line = BLANK.search(cell).group(0)
    _run(cell)  # as published: the blank does not break the book build
    assert "Not attempted yet" in capsys.readouterr().out
    solution = _cell(nb, "course-code-solution").source
    sol_line = next(line.strip() for line in solution.splitlines() if re.match(r"^\s{4}\w+ = ", line))
    _run(cell.replace(blank_line, sol_line))
    assert "Correct" in capsys.readouterr().out
    wrong = _tool().CHAPTERS[path.stem]["wrong"]
    with pytest.raises(AssertionError):
        _run(cell.replace(blank_line, wrong))


def test_course_cells_tool_is_idempotent(tmp_path):
    """Running tools/course_cells.py again changes nothing in the committed notebooks."""
    tool = _tool()
    for path in NOTEBOOKS:
        copy = tmp_path / path.name
        copy.write_text(path.read_text())
        tool.update(copy)
        before = [(c.get("id"), c.source) for c in _nb(path).cells]
        after = [(c.get("id"), c.source) for c in _nb(copy).cells]
        assert before == after, f"{path.name}: course cells out of date; run python tools/course_cells.py"


# ------------------------------------------------------------ figure style
def test_no_notebook_figure_wider_than_the_column_or_with_small_fonts():
    for path in NOTEBOOKS:
        for c in _nb(path).cells:
            if c.cell_type != "code":
                continue
            for w in re.findall(r"figsize=\((\d+(?:\.\d+)?),", c.source):
                assert float(w) <= plotting.COLUMN_WIDTH_IN, f"{path.name}: figsize width {w} in > column"
            for size in re.findall(r"(?:fontsize|labelsize)=(\d+(?:\.\d+)?)", c.source):
                assert float(size) >= plotting.MIN_FONT_PT, f"{path.name}: font size {size} pt"


def test_figsize_and_centred_limits():
    assert plotting.figsize() == (plotting.COLUMN_WIDTH_IN, round(0.6 * plotting.COLUMN_WIDTH_IN, 3))
    assert plotting.figsize(0.5, 1.0) == (3.5, 3.5)
    with pytest.raises(ValueError):
        plotting.figsize(1.2)
    lo, hi = plotting.centred_limits([-0.2, 0.7, np.nan])
    assert (lo, hi) == (-0.7, 0.7)
    assert plotting.centred_limits([0.0, 0.0]) == (-1.0, 1.0)
    assert plotting.MIN_FONT_PT * plotting.DPI / 72 * plotting.MIN_DISPLAY_SCALE == pytest.approx(12.0)


def test_book_style_fonts_and_restore():
    import matplotlib as mpl

    before = mpl.rcParams["font.size"]
    with plotting.book_style():
        sizes = [mpl.rcParams[k] for k in ("xtick.labelsize", "ytick.labelsize", "legend.fontsize",
                                           "axes.labelsize", "axes.titlesize")]
        assert min(float(s) for s in sizes) >= plotting.MIN_FONT_PT
        assert mpl.rcParams["figure.dpi"] == plotting.DPI
    assert mpl.rcParams["font.size"] == before


def test_label_regions_one_tick_per_segment():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [f"{s}_{h}" for s in ("C3", "C4", "C5") for h in ("LV", "RV", "LD", "RD")]
    fig, ax = plt.subplots()
    ax.imshow(np.eye(12))
    assert plotting.label_regions(ax, regions) == ["C3", "C4", "C5"]
    assert list(ax.get_xticks()) == [1.5, 5.5, 9.5]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["C3", "C4", "C5"]
    assert ax.get_xlabel() == "segment (LV RV LD RD)"
    plt.close(fig)


def test_package_figures_use_the_style():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from spineprint_utils import motion

    shifts = np.zeros((4, 10, 2))
    fig = motion.plot_motion(motion.params_table(shifts), np.zeros(10))
    assert fig.get_size_inches()[0] <= plotting.COLUMN_WIDTH_IN
    assert fig.dpi == plotting.DPI
    assert any(ax.get_ylabel() == "slice index" for ax in fig.axes), "slice colours need a key"
    assert isinstance(pd.DataFrame(), pd.DataFrame)


# ------------------------------------------------------------ course helpers
def test_format_seconds_and_plain_text():
    assert course.format_seconds(42.4) == "42 s"
    assert course.format_seconds(185) == "3 min 5 s"
    with pytest.raises(ValueError):
        course.format_seconds(float("nan"))
    t = course.PlainText("12 s")
    assert repr(t) == "12 s" and t == "12 s"


def test_reading_minutes_counts_words_and_code(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(" ".join(["word"] * 400)), nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    # 400 words / 200 wpm = 2 min, + 15 s for the code cell -> 2.25 -> 3 (rounded up)
    assert course.reading_minutes(path) == 3
    nb.cells[0].source = " ".join(["word"] * 2500)  # 12.5 min + 0.25 -> 13 -> 15 (5-minute steps above 10)
    nbformat.write(nb, str(path))
    assert course.reading_minutes(path) == 15


def test_default_rerun_reads_the_benchmark(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"date": "2026-12-03", "notebooks": {"04_x": {"seconds": 41.6, "peak_pss_mb": 300.4}}}))
    assert course.default_rerun("04_x", path) == (
        "42 s on one core, peak memory 300 MB (benchmarks/bench_notebooks.py, 2026-12-03)")
    assert "not measured" in course.default_rerun("05_y", path)
    path.write_text(json.dumps({"date": "d", "notebooks": {"04_x": {"seconds": 130, "cpu_seconds": 50.2,
                                                                    "peak_pss_mb": 10}}}))
    assert course.default_rerun("04_x", path).startswith(
        "50 s of computing on one core (2 min 10 s wall-clock on the shared benchmark machine), peak memory 10 MB")
    assert "not measured" in course.default_rerun("04_x", tmp_path / "missing.json")


def test_reader_warnings_hide_the_source_path(capsys):
    import warnings

    old = warnings.formatwarning
    try:
        course.reader_warnings()
        text = warnings.formatwarning("run x: few volumes", UserWarning, "/some/where/preprocess.py", 12, "x = 1")
        assert text == "UserWarning: run x: few volumes\n"
    finally:
        warnings.formatwarning = old


def test_kernel_seconds_positive():
    assert 0 < course.kernel_seconds() < 7 * 24 * 3600


def test_prose_plurals():
    assert prose.count(1, "run") == "1 run"
    assert prose.count(0, "run") == "0 runs"
    assert prose.count(np.int64(3), "resting-state run") == "3 resting-state runs"
    assert prose.plural(2, "analysis", "analyses") == "analyses"


def test_percent_identification_columns_and_rows():
    import pandas as pd

    df = pd.DataFrame({"identification": [0.5, 1.0], "iself": [0.2, 0.3], "chance": [0.25, 0.25]})
    out = prose.percent_identification(df)
    assert list(out.columns) == ["identification (%)", "iself", "chance (%)"]
    assert out["identification (%)"].tolist() == [50.0, 100.0] and out["iself"].tolist() == [0.2, 0.3]
    col = pd.Series({"identification": 0.625, "idiff": 19.0}).to_frame("base")
    out = prose.percent_identification(col)
    assert out.loc["identification (%)", "base"] == 62.5 and out.loc["idiff", "base"] == 19.0
    assert df["identification"].tolist() == [0.5, 1.0], "the input is not modified"


def test_identification_tables_in_percent():
    """Tables of identification rates are shown in percent (as the prose and figures)."""
    for path in NOTEBOOKS:
        for c in _nb(path).cells:
            # (fingerprint.summary_table is in percent already; sweep and caution tables are fractions)
            if c.cell_type == "code" and '"identification"' in c.source:
                last = c.source.strip().split("\n\n")[-1]  # the displayed expression (last block)
                if ".round(" in last and not last.lstrip().startswith(("glue", "fig")):
                    assert "percent_identification" in last, f"{path.name}: fractions shown: {last}"


def test_glossary_lists_only_terms_the_book_uses():
    glossary = (ROOT / "book" / "glossary.md").read_text()
    body = glossary.split("```{glossary}")[1].split("```")[0]
    terms = re.findall(r"^(\S[^\n]*)$", body, re.M)
    assert len(terms) > 10
    text = "\n".join(p.read_text() for p in (ROOT / "book").glob("*.md") if p.name != "glossary.md")
    for path in NOTEBOOKS:
        text += "\n".join(c.source for c in _nb(path).cells if c.cell_type == "markdown")
    for term in terms:
        key = re.sub(r"\s*\(.*\)", "", term).strip()
        assert re.search(r"\b" + re.escape(key) + r"s?\b", text, re.I), f"glossary term {term!r} not used in the book"


# ------------------------------------------------------------ teaching plan
def _plan_rows():
    """(session, minutes, activity, notebook stem or None) of the teaching page's plan tables."""
    text = (ROOT / "book" / "teaching.md").read_text()
    rows, session = [], None
    for line in text.splitlines():
        m = re.match(r"^### Session (\d)", line)
        if m:
            session = int(m.group(1))
        elif line.startswith("## "):
            session = None
        elif session and re.match(r"^\| *\d+ *\|", line):
            cells = [c.strip() for c in line.strip("|").split("|")]
            nb = re.search(r"notebooks/(\w+)>", cells[2])
            rows.append((session, int(cells[0]), cells[1], nb.group(1) if nb else None))
    return rows


def test_teaching_plan_fits_the_sessions_and_the_measured_run_times():
    times = json.loads((ROOT / "benchmarks" / "notebook_times.json").read_text())["notebooks"]
    rows = _plan_rows()
    assert {r[0] for r in rows} == {1, 2}, "two sessions"
    for session in (1, 2):
        total = sum(r[1] for r in rows if r[0] == session)
        assert total <= 180, f"session {session}: {total} min planned in 3 hours"
    runs = {r[3]: r[1] for r in rows if r[2].startswith("run all cells")}
    assert set(runs) == {p.stem for p in NOTEBOOKS}, "every chapter has a run slot"
    for stem, minutes in runs.items():
        need = times[stem].get("cpu_seconds", times[stem]["seconds"]) / 60
        assert minutes >= need, f"{stem}: {minutes} min planned, {need:.1f} min measured on one core"


def test_chapter_numbers_in_prose_are_the_table_of_contents_numbers():
    """Prose says "chapter 3", never the notebook's file number ("chapter 02"), and no number
    beyond the numbered chapters."""
    n_chapters = len(NOTEBOOKS)
    texts = {p.name: "\n".join(c.source for c in _nb(p).cells if c.cell_type == "markdown") for p in NOTEBOOKS}
    texts.update({p.name: p.read_text() for p in (ROOT / "book").glob("*.md")})
    for name, text in texts.items():
        assert not re.search(r"\bchapters? 0\d", text, re.I), f"{name}: file number used as a chapter number"
        for n in re.findall(r"\bchapters? (\d+)", text, re.I):
            assert 1 <= int(n) <= n_chapters, f"{name}: chapter {n} does not exist"


def test_table_helpers_change_labels_not_values():
    """prose.run_label / readable / text_table: shorter labels, wrapping HTML, same values."""
    import pandas as pd

    from spineprint_utils import prose

    assert prose.run_label("sub-01_ses-02_task-rest_run-1") == "sub-01 ses-02 run-1"
    assert prose.run_label("sub-ZS001_task-rest_acq-autozshim_bold") == "sub-ZS001 acq-autozshim"
    df = pd.DataFrame({"tsnr_pre_cord": [1.5, 2.0], "mean_fd_mm": [0.1, 0.2]},
                      index=pd.Index(["a", "b"], name="run_name"))
    out = prose.readable(df)
    assert list(out.columns) == ["tsnr pre cord", "mean fd mm"] and out.index.name == "run name"
    assert (out.to_numpy() == df.to_numpy()).all() and list(df.columns) == ["tsnr_pre_cord", "mean_fd_mm"]
    multi = df.set_index(pd.MultiIndex.from_tuples([("n_volumes", 1.0), ("n_volumes", 2.0)], names=["param_name", None]))
    out = prose.readable(multi)
    assert list(out.index) == [("n volumes", 1.0), ("n volumes", 2.0)] and list(out.index.names) == ["param name", None]
    html = prose.text_table(df).data
    assert 'class="dataframe text-table"' in html and "1.5" in html

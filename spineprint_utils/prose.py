"""Small helpers for the book's prose: counts with the right plural.

Glued sentences read "1 run" and "2 runs", never "run(s)".
"""

from __future__ import annotations

__all__ = ["plural", "count", "own_dataset_note", "KEEPS_SIMULATION", "no_ground_truth", "skipped"]


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """The noun for *n* items: ``singular`` for 1, else ``plural_form`` (default ``singular + "s"``).

    Only the last word is inflected by default (``"resting-state run"`` -> ``"resting-state runs"``).
    """
    n = int(n)
    if n == 1:
        return singular
    return plural_form if plural_form is not None else singular + "s"


def count(n: int, singular: str, plural_form: str | None = None) -> str:
    """``"1 run"``, ``"0 runs"``, ``"2 subjects"``."""
    return f"{int(n)} {plural(n, singular, plural_form)}"


#: identification-type quantities that the package returns as fractions (0-1): the
#: drivers' sweep and physiology tables (fingerprint.summary_table is in percent already)
IDENTIFICATION_LABELS = ("identification", "identification_ab", "identification_ba", "identification_truth", "chance")


def percent_identification(table, labels=IDENTIFICATION_LABELS):
    """Copy of *table* with identification rates in percent, labelled ``"... (%)"``.

    The sweep tables of :mod:`spineprint_utils.drivers` hold identification rates
    and chance levels as fractions (0-1); the book reports them in percent
    everywhere, as :func:`spineprint_utils.fingerprint.summary_table` does.
    Works on columns, or on the index when the quantities are rows (a Series or a
    transposed table).

    Parameters
    ----------
    table : pandas.DataFrame or pandas.Series
    labels : sequence of str
        Column (or index) names holding fractions.

    Returns
    -------
    Same type as *table*.
    """
    import pandas as pd

    out = table.copy()
    if isinstance(out, pd.DataFrame) and any(c in labels for c in out.columns):
        cols = [c for c in out.columns if c in labels]
        out[cols] = out[cols].astype(float) * 100.0
        return out.rename(columns={c: f"{c} (%)" for c in cols})
    rows = [i for i in out.index if i in labels]
    if not rows:
        return out
    if isinstance(out, pd.DataFrame):
        out = out.astype({c: float for c in out.columns})
    out.loc[rows] = out.loc[rows] * 100.0
    return out.rename(index={i: f"{i} (%)" for i in rows})


#: why each chapter that keeps the simulated study does so (the sentence it shows when the book
#: is built on a dataset of the reader's)
KEEPS_SIMULATION = {
    "00": ("this chapter describes it through the dataset index (the table below) and then shows the "
           "simulated default study, which the book keeps here on purpose: only a simulation comes with "
           "the ground truth that the later chapters check the pipeline against"),
    "04b": ("this chapter keeps the simulated default study on purpose: it sets the real regional time "
            "series beside a study whose planted spine-print is known"),
    "05": ("this chapter keeps simulated studies on purpose: each point of its sweeps is a study "
           "simulated with one factor changed, which a recorded dataset cannot provide"),
}


def own_dataset_note(description: dict, chapter: str) -> str:
    """The sentence a chapter that keeps the simulated study shows when the book runs on the
    reader's dataset (markdown).

    Parameters
    ----------
    description : dict
        :func:`spineprint_utils.layout.describe` of the book's dataset.
    chapter : str
        A key of :data:`KEEPS_SIMULATION` (``"00"``, ``"04b"``, ``"05"``).
    """
    return (f"**Your dataset.** This build runs the book on your dataset *{description['name']}*: "
            f"{description['facts']}. The "
            f"acquisition, preprocessing, connectivity and fingerprinting chapters use it; "
            f"{KEEPS_SIMULATION[chapter]}.")


def no_ground_truth(comparison: str) -> str:
    """The sentence a chapter shows instead of a comparison with the simulator's planted
    signals when the book runs on a recorded dataset (markdown), so that no "nan" is printed.

    Parameters
    ----------
    comparison : str
        What would be compared, as the subject of the sentence (``"the comparison of the
        recovered translations with the planted motion"``).
    """
    text = str(comparison)
    return (f"{text[:1].upper()}{text[1:]} needs a simulated study: this dataset has no ground "
            f"truth (the simulator's `derivatives/groundtruth`), so it is not made here.")


def skipped(section: str, reason: str) -> str:
    """The sentence a chapter shows in place of the results of a section that did not run
    (markdown), e.g. ``skipped("the native-space demo", "`native_demo = False`")``.

    Parameters
    ----------
    section : str
        The section, as the subject of the sentence.
    reason : str
        Why it did not run (a parameter setting, missing data).
    """
    text = str(section)
    return f"*{text[:1].upper()}{text[1:]} did not run in this build: {reason}.*"


def run_label(name: str) -> str:
    """Short label of a BIDS run for a table: its entities without the task, space-separated
    (``sub-01_ses-02_task-rest_run-1`` -> ``sub-01 ses-02 run-1``), so that a column of run
    names stays narrow and on one line per run.

    Parameters
    ----------
    name : str
        BIDS run prefix (``sub-<label>[_ses-<label>]_task-<label>..._run-<index>``).
    """
    parts = [p for p in str(name).split("_") if "-" in p and not p.startswith("task-")]
    return " ".join(parts) if parts else str(name)


def text_table(table, break_words: bool = False):
    """A table for a book page whose cells wrap at spaces (CSS class ``text-table``,
    ``spineprint_utils/static/spineprint.css``), so that it fits the page column instead of
    scrolling sideways; numbers stay whole.

    Parameters
    ----------
    table : pandas.DataFrame
    break_words : bool
        Also break long words anywhere (class ``break-words``): only for tables of words
        (protocol descriptions, file names), never for tables of numbers.

    Returns
    -------
    IPython.display.HTML
    """
    from IPython.display import HTML

    classes = "text-table break-words" if break_words else "text-table"
    return HTML(table.to_html(classes=classes, na_rep="n/a", border=0))


def readable(table):
    """Copy of *table* for display with readable labels: underscores in the column headers,
    the index names and string index labels become spaces (``tsnr_pre_cord`` ->
    ``tsnr pre cord``), so that headers wrap at their spaces and a table of numbers fits the
    page column. Only the labels change, never the values.

    Parameters
    ----------
    table : pandas.DataFrame

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    def words(label):
        return label.replace("_", " ") if isinstance(label, str) else label

    out = table.copy()
    out.columns = out.columns.map(lambda c: tuple(words(x) for x in c) if isinstance(c, tuple) else words(c))
    out.columns.names = [words(n) for n in out.columns.names]
    names = [words(n) for n in table.index.names]
    if isinstance(table.index, pd.MultiIndex):
        out.index = pd.MultiIndex.from_tuples([tuple(words(x) for x in i) for i in table.index], names=names)
    else:
        out.index = pd.Index([words(i) for i in table.index], name=names[0])
    return out

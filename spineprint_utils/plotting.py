"""One matplotlib style for every figure of the book, sized for the page column.

The book's HTML theme (sphinx-book-theme) gives a cell's output area 672 CSS
pixels at a 1280 px wide window (measured in headless Chromium). A figure ``w`` inches wide saved at ``dpi``
is ``w * dpi`` pixels wide; wider than the column, the browser shrinks it and
every label with it. The style therefore fixes

* the resolution, :data:`DPI` = 96 (the CSS pixel density), so that a figure
  of the column width :data:`COLUMN_WIDTH_IN` (7 in) is 672 px: shown at its
  natural size, one point of the figure is one CSS point on the page;
* font sizes of at least :data:`MIN_FONT_PT` (10 pt). A font of ``f`` points
  occupies ``f * DPI / 72`` image pixels, 13.3 px for 10 pt, so a figure may be
  shrunk down to :data:`MIN_DISPLAY_SCALE` (90 %) of its natural size and still
  show every label at >= 9 pt (12 CSS px); the browser test checks that scale.

Notebooks call :func:`use_book_style` once (a hidden cell at the top); the
plotting functions of the package size their figures with :func:`figsize`.
"""

from __future__ import annotations

import contextlib
import functools

__all__ = [
    "COLUMN_WIDTH_IN",
    "DPI",
    "MIN_FONT_PT",
    "MIN_DISPLAY_SCALE",
    "BOOK_RC",
    "figsize",
    "book_style",
    "styled",
    "use_book_style",
    "centred_limits",
    "label_regions",
]

#: width of a cell's output area in the book, inches at :data:`DPI` (672 px)
COLUMN_WIDTH_IN = 7.0
#: resolution of the figures embedded in the pages (dots per inch)
DPI = 96
#: smallest font size of the style (points at the figure's natural size)
MIN_FONT_PT = 10.0
#: smallest display scale (shown width / natural width) that keeps MIN_FONT_PT
#: at >= 9 CSS points (12 CSS px): 12 / (MIN_FONT_PT * DPI / 72) = 0.9
MIN_DISPLAY_SCALE = 12.0 / (MIN_FONT_PT * DPI / 72.0)

#: rcParams of the book style
BOOK_RC = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.figsize": (COLUMN_WIDTH_IN, 0.6 * COLUMN_WIDTH_IN),
    "figure.constrained_layout.use": False,
    "font.size": 10.5,
    "axes.titlesize": 11.0,
    "axes.labelsize": 10.5,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": MIN_FONT_PT,
    "figure.titlesize": 11.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.cmap": "viridis",
    "legend.framealpha": 0.9,
}


def figsize(width: float = 1.0, aspect: float = 0.6) -> tuple[float, float]:
    """Figure size (inches) for a fraction of the page column.

    Parameters
    ----------
    width : float
        Fraction of :data:`COLUMN_WIDTH_IN` (0 < width <= 1).
    aspect : float
        Height / width.

    Returns
    -------
    (float, float)
        ``(width_in, height_in)`` for ``plt.subplots(figsize=...)``.
    """
    if not 0 < width <= 1:
        raise ValueError(f"width must be a fraction of the column in (0, 1], got {width}")
    if aspect <= 0:
        raise ValueError(f"aspect must be positive, got {aspect}")
    w = width * COLUMN_WIDTH_IN
    return (round(w, 3), round(w * aspect, 3))


def centred_limits(values, quantile: float | None = None) -> tuple[float, float]:
    """Symmetric colour limits ``(-m, m)`` so that a diverging map is centred on 0.

    Parameters
    ----------
    values : array_like
        Values to be shown (NaNs ignored).
    quantile : float, optional
        Use this quantile of ``|values|`` instead of the maximum (robust to outliers).

    Returns
    -------
    (float, float)
    """
    import numpy as np

    a = np.abs(np.asarray(values, dtype=float))
    a = a[np.isfinite(a)]
    if a.size == 0:
        return (-1.0, 1.0)
    m = float(np.quantile(a, quantile) if quantile is not None else a.max())
    m = m if m > 0 else 1.0
    return (-m, m)


@contextlib.contextmanager
def book_style():
    """Context manager applying :data:`BOOK_RC` (``with plotting.book_style(): ...``)."""
    import matplotlib as mpl

    with mpl.rc_context(BOOK_RC):
        yield


def styled(func):
    """Decorator: draw the figure of a plotting function inside :func:`book_style`.

    Fonts and resolution are fixed when text and figures are created, so the
    whole function runs in the style (callers' own rcParams are restored after).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with book_style():
            return func(*args, **kwargs)

    return wrapper


def use_book_style() -> None:
    """Apply :data:`BOOK_RC` for the rest of the session (notebooks call this once).

    In a Jupyter kernel the inline backend is switched on first (``%matplotlib
    inline``): a headless ``MPLBACKEND=Agg`` inherited from the environment that
    started the kernel (a test runner, a CI job) would otherwise silently drop
    every figure from the book. ``matplotlib.pyplot`` is imported before the
    style so that the backend's own defaults do not override it afterwards.
    """
    import matplotlib as mpl

    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython comes with the book's tools
        shell = None
    if shell is not None and hasattr(shell, "kernel"):
        shell.run_line_magic("matplotlib", "inline")
    import matplotlib.pyplot as plt  # noqa: F401  (activates the backend before the style)

    mpl.rcParams.update(BOOK_RC)  # IPython saves inline figures at fig.dpi, i.e. DPI


def label_regions(ax, regions, axis: str = "both") -> list[str]:
    """Label the rows/columns of a region x region matrix by spinal segment.

    Regions named ``<segment>_<horn>`` (e.g. ``C5_LV``) and ordered segment by
    segment are labelled once per segment, at the centre of its block, with thin
    lines between segments; the horn order inside a block goes into the axis
    label. Twenty-four region names at 6 pt become six segment names at the
    style's tick size.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes showing a matrix with ``imshow`` (one row/column per region).
    regions : sequence of str
    axis : {"both", "x", "y"}

    Returns
    -------
    list of str
        The segments, in order.
    """
    import numpy as np

    names = [str(r) for r in regions]
    seg = [n.split("_", 1)[0] for n in names]
    horn = [n.split("_", 1)[1] if "_" in n else "" for n in names]
    starts = [i for i in range(len(seg)) if i == 0 or seg[i] != seg[i - 1]]
    bounds = starts + [len(seg)]
    centres = [(a + b - 1) / 2 for a, b in zip(bounds[:-1], bounds[1:])]
    labels = [seg[i] for i in starts]
    horns = list(dict.fromkeys(horn[starts[0]:bounds[1]])) if starts else []
    what = f"segment ({' '.join(horns)})" if any(horns) and len(horns) <= 4 else "segment"
    edges = np.asarray(bounds[1:-1], dtype=float) - 0.5
    if axis in ("both", "x"):
        ax.set_xticks(centres, labels, rotation=0)
        ax.set_xlabel(what)
        for e in edges:
            ax.axvline(e, color="0.3", lw=0.5)
    if axis in ("both", "y"):
        ax.set_yticks(centres, labels)
        ax.set_ylabel(what)
        for e in edges:
            ax.axhline(e, color="0.3", lw=0.5)
    ax.tick_params(length=0)
    return labels

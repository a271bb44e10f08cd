"""Sphinx extension of the book: page-column CSS and MathJax served with the book.

Enabled in ``_config.yml`` (``sphinx: extra_extensions: [spineprint_utils.sphinx_ext]``).

* **Offline math.** Sphinx loads MathJax from a CDN by default, so a page read
  offline shows raw TeX. The extension points ``mathjax_path`` at
  ``_static/mathjax/tex-mml-chtml.js`` and, after the HTML is written, copies
  the MathJax 3 browser build (``es5``: the combined TeX/MathML-to-CHTML
  component, its fonts, TeX extensions, menu and accessibility components;
  not the 4 MB speech-rule data, only fetched when a reader turns speech on)
  from the ``django-static-mathjax`` wheel (MathJax 3.2.2, Apache-2.0) into
  the book. No network is needed to read the book.
* **Legible pages.** ``static/spineprint.css``: wide tables scroll inside
  their output with a visible shadow at the edge that hides columns, code
  blocks fit the column, figures never exceed it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
MATHJAX_ENTRY = "mathjax/tex-mml-chtml.js"
#: parts of MathJax's es5 folder copied into the book (relative to es5/)
MATHJAX_PARTS = ("tex-mml-chtml.js", "output", "input", "ui", "a11y", "adaptors")


def mathjax_source() -> Path:
    """The ``es5`` folder of the MathJax 3 copy shipped by ``django-static-mathjax``."""
    from sphinx.errors import ExtensionError

    try:
        import mathjax  # the django-static-mathjax distribution's package
    except ImportError:
        raise ExtensionError(
            "MathJax for offline pages not installed: pip install 'django-static-mathjax>=3.2.2,<4'"
        ) from None
    es5 = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise ExtensionError(f"{es5}: no tex-mml-chtml.js (unexpected django-static-mathjax layout)")
    return es5


def copy_mathjax(dest: Path) -> Path:
    """Copy MathJax's browser build into *dest* (``<html>/_static/mathjax``); returns *dest*."""
    es5 = mathjax_source()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for part in MATHJAX_PARTS:
        src = es5 / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dest / part)
    return dest


def _config_inited(app, config) -> None:
    mathjax_source()  # fail early, with the install command, when MathJax is missing
    config.mathjax_path = MATHJAX_ENTRY
    config.html_static_path = [*config.html_static_path, str(STATIC)]
    config.html_css_files = [*config.html_css_files, "spineprint.css"]


def _build_finished(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        copy_mathjax(Path(app.outdir) / "_static" / "mathjax")


def setup(app):
    app.connect("config-inited", _config_inited)
    app.connect("build-finished", _build_finished)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

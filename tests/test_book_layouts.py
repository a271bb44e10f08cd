"""The whole book on real layouts by parameters alone (issue 12, "The book on any layout").

Two datasets are made by fixtures (``tests/bids_corpus.py``), each with small synthetic
images:

- **no session level**: the real layout and sidecars of OpenNeuro ds004386 (two participants,
  two runs each differing only by ``acq-autozshim`` / ``acq-manualzshim``, a top-level
  ``task-rest_bold.json`` inherited by every run, ``.bidsignore``), images in PAM50 space;
- **native space**: per participant the REAL T2w, manual cord segmentation
  (``derivatives/manual/.../<T2w>_label-SC_seg.nii.gz``, the own-data page's form) and C3/C5
  vertebral labels of the Spinal Cord Toolbox testing data (read through
  ``$SPINEPRINT_DATA_DIR``, copied into ``tmp_path``), two runs ``run-1``/``run-2`` per
  participant (no session level) on a native EPI grid whose contrast is the real T2w.

``spineprint build --params P.yml`` with ``all: bids_dir: <dataset>`` (and the tiny
parameters of ``tests/smoke_params.yml``) executes EVERY notebook of ``_toc.yml`` with
papermill on both datasets; the HTML (``jupyter-book build -W``) is built for the
**native-space** dataset only (the no-session build stops after execution, ``--no-html``), to
keep both builds within a few minutes in CI. Checked on the executed notebooks / pages:
chapter 4 pairs what the dataset has and says which pairing it used; chapters 00, 04b and 05
(which keep the simulated study on purpose) say so in a sentence naming the dataset; chapter 3
draws the native-space regions on the run's own mean image; no page shows a "nan" (a recorded
dataset has no ground truth: the chapters say so) and every ``{glue:}`` reference of the
parameter branch that ran has its value (chapter 2 with ``native_demo: false`` on the
no-session build); chapter 1 names the dataset, not its local path. The raw dataset is byte-identical
after the build (every file outside ``derivatives/spineprint``, the pipeline's own output).

Cost (3 December 2026, 2-core machine shared with other jobs, fresh cache, this file alone with
test_notebook_format/test_params/test_course/test_layout): fixture set-up 160 s (no session,
including the simulation of the default study for chapters 00/04b and chapter 5's sweep points)
+ 106 s (native space, with the HTML build) wall; 162 s CPU (user + system) for the whole
pytest process and its kernels. After ``tests/test_book.py`` in the same session the default
study and chapter 5's points come from the cache.
"""

from __future__ import annotations

import hashlib
import re
import json
from pathlib import Path

import nbformat
import pytest
import yaml

from spineprint_utils import build
from spineprint_utils._io import SpineprintError

import bids_corpus

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.book

OWN_NOTE = "This build runs the book on your dataset"


def _tree_state(root: Path) -> dict:
    """SHA-256 of every file of the raw dataset (the pipeline's own derivatives excluded)."""
    own = root / "derivatives" / "spineprint"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and own not in p.parents}


def _params(tmp: Path, bids_dir: Path, html: bool = False) -> Path:
    params = yaml.safe_load((ROOT / "tests" / "smoke_params.yml").read_text())
    params["all"]["bids_dir"] = str(bids_dir)
    # chapter 2's sections on other data (the real SCT run, the choice comparisons, the simulated
    # native-space demo) are exercised by the default smoke build (tests/test_book.py); the
    # native-space demo stays on for an HTML build (its prose glues its numbers)
    params["02_preprocessing"] = {"native_demo": html, "real_run": False, "compare_choices": False, "n_jobs": 1}
    # these chapters keep the simulated study on purpose (as params/ds004386.yml says); chapter
    # 00 needs no such line: a bids_dir that is not a simulated study is described, not used
    params["04b_real_spineprint"]["bids_dir"] = None
    params["05_drivers"]["bids_dir"] = None
    path = tmp / "params.yml"
    path.write_text(yaml.safe_dump(params))
    return path


def _build(tmp: Path, bids_dir: Path, html: bool):
    before = _tree_state(bids_dir)
    out = tmp / "book"
    result = build.build_book(ROOT, output=out, params_file=_params(tmp, bids_dir, html), progress=False,
                              html=html)
    after = _tree_state(bids_dir)
    assert after == before, "the build wrote into the raw dataset: " + ", ".join(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)))
    assert (bids_dir / "derivatives" / "spineprint" / "qc.tsv").is_file()
    return out / "source" / "notebooks", result


def _outputs(nb_path: Path) -> str:
    """Every text and markdown output of an executed notebook, and its glued values."""
    nb = nbformat.read(str(nb_path), as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            parts += [str(data.get(k, "")) for k in ("text/plain", "text/markdown", "text/html")]
            parts.append(str(out.get("text", "")))
    return "\n".join(parts)


def _glued(nb_path: Path, name: str) -> str:
    nb = nbformat.read(str(nb_path), as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                data = out["data"]
                return str(data.get("application/papermill.record/text/plain", data.get("text/plain", ""))).strip("'\"")
    raise AssertionError(f"{nb_path.name}: nothing glued as {name!r}")


NAN = re.compile(r"\bnan\b", re.IGNORECASE)


#: chapter 05 keeps simulated studies on purpose, and its sweeps that the smoke parameters switch
#: off (``tsnr_values: []``, ``motion_amplitudes: []``) still glue "nan": not a matter of the
#: dataset's layout, left to the drivers chapter
NAN_EXEMPT = ("05_drivers",)


def _nan_shown(executed: Path) -> list[str]:
    """Where an executed notebook shows "nan" as a number to the reader: a glued value
    (what ``{glue:text}`` prints on the page) or a Markdown output (a sentence displayed by a
    ``remove-input`` cell). A dataset without ground truth gets a sentence saying so, never a
    "nan"."""
    hits = []
    for nb_path in sorted(p for p in executed.glob("*.ipynb") if p.stem not in NAN_EXEMPT):
        nb = nbformat.read(str(nb_path), as_version=4)
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                name = out.get("metadata", {}).get("scrapbook", {}).get("name")
                texts = [str(data.get("text/markdown", ""))]
                if name:  # myst_nb.glue(..., display=False) under papermill: a record
                    texts += [str(v) for k, v in data.items() if k.endswith("text/plain")]
                for text in texts:
                    if NAN.search(text):
                        hits.append(f"{nb_path.stem}: {name or cell.get('id')}: {text[:80]!r}")
    return hits


GLUE_REF = re.compile(r"\{glue(?::\w+)?\}`([^`]+)`")


def _unresolved_glue(executed: Path) -> list[str]:
    """Every ``{glue:...}`` reference the HTML build would resolve (in a markdown cell, or in a
    Markdown output parsed as MyST) whose key the executed notebook did not glue: the page
    would fail the ``jupyter-book build -W``. Checks the parameter branch that ran (e.g. chapter
    2 with ``native_demo: false``) without building the HTML."""
    missing = []
    for nb_path in sorted(executed.glob("*.ipynb")):
        nb = nbformat.read(str(nb_path), as_version=4)
        glued, refs = set(), []
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                refs += GLUE_REF.findall(cell.source)
            for out in cell.get("outputs", []):
                name = out.get("metadata", {}).get("scrapbook", {}).get("name")
                if name:
                    glued.add(name)
                refs += GLUE_REF.findall(str(out.get("data", {}).get("text/markdown", "")))
        for ref in refs:
            key = ref.split(":")[0]  # key[:format]
            if "::" not in ref and key not in glued:  # "other.ipynb::key" is another page's
                missing.append(f"{nb_path.stem}: {key}")
    return sorted(set(missing))


@pytest.fixture(scope="module")
def no_session_book(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("book_nosession")
    bids = bids_corpus.make_dataset("ds004386", tmp / "ds004386", n_volumes=60)
    executed, _ = _build(tmp, bids, html=False)
    return bids, executed


@pytest.fixture(scope="module")
def native_book(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("book_native")
    bids = bids_corpus.make_native_dataset(tmp / "native", n_volumes=60)
    executed, html = _build(tmp, bids, html=True)
    return bids, executed, html


def test_no_session_dataset_builds_every_notebook(no_session_book):
    bids, executed = no_session_book
    for nb in build.toc_notebooks(ROOT):
        assert (executed.parent / nb).is_file(), nb
    # chapter 4 pairs the two acquisitions (there are no sessions) and says so
    assert _glued(executed / "04_fingerprinting.ipynb", "between_title") == \
        "between-acquisition (acq-autozshim vs acq-manualzshim)"
    # chapters that keep the simulated study say so, naming the dataset
    name = json.loads((bids / "dataset_description.json").read_text(encoding="utf-8-sig"))["Name"]
    for stem in ("00_simulated_study", "04b_real_spineprint", "05_drivers"):
        text = _outputs(executed / f"{stem}.ipynb")
        assert OWN_NOTE in text and name in text, stem
        assert "on purpose" in text, stem
    # chapter 01's sources box names the dataset and its folder, not the builder's local path
    text = _outputs(executed / "01_acquisition.ipynb")
    assert f"your dataset {name} (folder ds004386)" in text and str(bids) not in text
    # chapter 00 describes the dataset through the index: both acq- runs of both participants
    text = _outputs(executed / "00_simulated_study.ipynb")
    assert "sub-ZS002_task-rest_acq-manualzshim" in text and "no session level" in text
    # the pipeline chapters processed the user's runs (qc.tsv lists them, all ok)
    qc = (bids / "derivatives" / "spineprint" / "qc.tsv").read_text()
    assert qc.count("_acq-") == 4
    # no ground truth in a recorded dataset: the chapters say so instead of printing "nan"
    assert _nan_shown(executed) == []
    # chapter 2 ran with native_demo, compare_choices and real_run off: its prose needs no
    # value of the sections that did not run (the HTML build would fail on a missing glue)
    assert _unresolved_glue(executed) == []


def test_native_space_dataset_builds_the_book(native_book):
    bids, executed, html = native_book
    for nb in build.toc_notebooks(ROOT):
        assert (html / nb.with_suffix(".html")).is_file(), nb
    assert _glued(executed / "04_fingerprinting.ipynb", "between_title") == "between-run (run-1 vs run-2)"
    page = (html / "notebooks" / "04_fingerprinting.html").read_text()
    assert "between-run (run-1 vs run-2)" in page
    # chapter 3: regions in each participant's own space, drawn on the run's own mean image
    page = (html / "notebooks" / "03_connectivity.html").read_text()
    assert "native) space here" in page
    assert _glued(executed / "03_connectivity.ipynb", "anatomy_source").startswith(
        "PAM50 regions registered to run sub-01_task-rest_run-1")
    # the T2w registration was used (native-space pipeline), not the PAM50 shortcut
    qc = (bids / "derivatives" / "spineprint" / "qc.tsv").read_text()
    assert "not needed: run in PAM50 space" not in qc
    for stem in ("00_simulated_study", "04b_real_spineprint", "05_drivers"):
        text = (html / "notebooks" / f"{stem}.html").read_text()
        assert OWN_NOTE in text and "in native space" in text, stem
    for p in html.rglob("*.html"):
        text = p.read_text(errors="replace")
        assert "Traceback (most recent call last)" not in text, p.name
    assert _nan_shown(executed) == []


def test_a_dataset_without_runs_fails_with_one_line_naming_it(tmp_path, shared_data):
    """Bad input: the build stops with the folder named, writes no HTML and leaves no
    half-written executed notebook; the dataset itself is untouched."""
    bids = tmp_path / "empty"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "empty", "BIDSVersion": "1.9.0"}')
    before = _tree_state(bids)
    out = tmp_path / "book"
    with pytest.raises(SpineprintError, match=re.escape(f"{bids}: no BOLD runs")):
        build.build_book(ROOT, output=out, params_file=_params(tmp_path, bids), progress=False)
    assert _tree_state(bids) == before and not (bids / "derivatives").exists()
    assert not (out / "html").exists()
    staged = out / "source" / "notebooks"
    assert not list(staged.glob("*.ipynb")) and not list(staged.glob(".*running*"))

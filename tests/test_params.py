"""Never run the wrong study: a parameters file is checked whole before anything runs
(``spineprint build --params``), against the book's real notebooks (issue 13)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from spineprint_utils import build, cli
from spineprint_utils._io import SpineprintError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = build.toc_notebooks(ROOT)


def _plan(tmp_path, text, base=None):
    path = tmp_path / "params.yml"
    path.write_text(text)
    return dict(build.plan_params(ROOT, NOTEBOOKS, build.load_params(path), str(path), base=base or tmp_path))


def _stem(plan, stem):
    return next(p for nb, p in plan.items() if nb.stem == stem)


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("text, message", [
    ("all:\n  bids_dirr: /tmp\n", "section 'all:': no notebook declares a parameter 'bids_dirr'; did you mean 'bids_dir'?"),
    ("all:\n  bids-dir: /tmp\n", "did you mean 'bids_dir'?"),
    ("04_fingerprinting:\n  n_permutation: 10\n", "unknown parameter 'n_permutation'; did you mean 'n_permutations'?"),
    ("06_clinical:\n  lesion_strenght: 0.9\n", "did you mean 'lesion_strength'?"),
    ("04_fingerprint:\n  seed: 1\n", "no notebook in _toc.yml called '04_fingerprint'; did you mean '04_fingerprinting'?"),
    ("all:\n  study_params: {n_subject: 4}\n", "unknown key 'n_subject'; did you mean 'n_subjects'?"),
    ("05_drivers:\n  preprocess_params: {n_csf_component: 2}\n", "did you mean 'n_csf_components'?"),
])
def test_misspelt_keys_are_rejected_with_a_suggestion(tmp_path, text, message):
    with pytest.raises(SpineprintError) as info:
        _plan(tmp_path, text)
    assert message in str(info.value)
    assert "params.yml" in str(info.value)


def test_misspelt_key_through_the_cli_runs_nothing(tmp_path, capsys):
    (tmp_path / "p.yml").write_text("all:\n  bids_dirr: /tmp\n")
    out = tmp_path / "out"
    rc = cli.main(["build", "--root", str(ROOT), "--output", str(out), "--params", str(tmp_path / "p.yml"),
                   "--no-html", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "did you mean 'bids_dir'" in err and "Traceback" not in err
    assert not out.exists()  # nothing staged, nothing executed


# ------------------------------------------------------------------ types
def test_types_follow_the_notebook_defaults(tmp_path):
    plan = _plan(tmp_path, "02_preprocessing:\n  high_pass: 1e-2\n  low_pass: 1.3E-1\n  spike_threshold: 1\n"
                           "05_drivers:\n  tsnr_values: [6, 1.2e1]\n  scan_lengths: [30, 60]\n"
                           "06_clinical:\n  lesion_strength: 0.9\n  lesion_horns: [LV, RV]\n")
    pre = _stem(plan, "02_preprocessing")
    assert pre["high_pass"] == pytest.approx(0.01) and isinstance(pre["high_pass"], float)
    assert pre["low_pass"] == pytest.approx(0.13) and pre["spike_threshold"] == 1
    assert _stem(plan, "05_drivers")["tsnr_values"] == [6, 12.0]
    assert _stem(plan, "06_clinical") == {"lesion_strength": 0.9, "lesion_horns": ["LV", "RV"]}
    for text, message in (
        ("02_preprocessing:\n  high_pass: null\n", "'high_pass' expects float (default 0.01), got null; null is only"),
        ("06_clinical:\n  n_subjects: null\n", "got null"),
        ("06_clinical:\n  n_subjects: 12.5\n", "'n_subjects' expects int"),
        ("06_clinical:\n  n_subjects: yes\n", "expects int"),
        ("02_preprocessing:\n  native_demo: 'no'\n", "expects bool"),
        ("02_preprocessing:\n  high_pass: fast\n", "'high_pass' expects float"),
        ("05_drivers:\n  scan_lengths: [30, sixty]\n", "'scan_lengths[1]' expects int"),
        ("03_connectivity:\n  segments: C3\n", "'segments' expects list"),
        ("all:\n  study_params: {n_subjects: 0}\n", "n_subjects must be an integer >= 1"),
    ):
        with pytest.raises(SpineprintError, match=re.escape(message)):
            _plan(tmp_path, text)
    # null where the default is None: accepted
    assert _stem(_plan(tmp_path, "06_clinical:\n  lesion_horns: null\n"), "06_clinical") == {"lesion_horns": None}


# ------------------------------------------------------------------ paths
def test_bids_dir_must_exist_and_is_resolved_against_the_callers_folder(tmp_path, monkeypatch):
    data = tmp_path / "work" / "mydata"
    data.mkdir(parents=True)
    plan = _plan(tmp_path, "all:\n  bids_dir: mydata\n", base=tmp_path / "work")
    declaring = [nb.stem for nb in NOTEBOOKS if "bids_dir" in build.declared_parameters(ROOT / nb)]
    assert "00_simulated_study" in declaring and len(declaring) >= 5
    for stem in declaring:
        assert _stem(plan, stem)["bids_dir"] == str(data)  # absolute, not relative to the staged notebooks
    assert "bids_dir" not in _stem(plan, "06_clinical")  # not declared there: the 'all:' value is not applied
    with pytest.raises(SpineprintError, match=r"parameter 'bids_dir': folder .*missing not found \(relative paths "
                                              r"are resolved against"):
        _plan(tmp_path, "all:\n  bids_dir: missing\n", base=tmp_path / "work")
    with pytest.raises(SpineprintError, match="folder /nonexistent/bids not found"):
        _plan(tmp_path, "00_simulated_study:\n  bids_dir: /nonexistent/bids\n")
    with pytest.raises(SpineprintError, match="'connectome_file': file"):
        _plan(tmp_path, "04_fingerprinting:\n  connectome_file: nope.npz\n")
    # build_book resolves against the current working folder of the caller
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "p.yml").write_text("02_preprocessing:\n  bids_dir: mydata\n")
    staged = build.build_book(ROOT, output=tmp_path / "out", params_file=tmp_path / "p.yml", execute=False,
                              html=False, progress=False)
    assert staged.is_dir()
    got = build.plan_params(ROOT, NOTEBOOKS, build.load_params(tmp_path / "p.yml"))
    assert dict(got)[Path("notebooks/02_preprocessing.ipynb")]["bids_dir"] == str(data)


# ------------------------------------------------------------------ what the docs promise
def test_chapters_that_keep_the_simulation_learn_the_books_dataset(tmp_path):
    """``all: bids_dir`` reaches the chapters that keep the simulated study on purpose as
    ``book_bids_dir`` (resolved like bids_dir), also when their own section sets
    ``bids_dir: null``, so that they can say so; an explicit ``book_bids_dir`` wins."""
    data = tmp_path / "work" / "mydata"
    data.mkdir(parents=True)
    plan = _plan(tmp_path, "all:\n  bids_dir: mydata\n04b_real_spineprint:\n  bids_dir: null\n"
                 "05_drivers:\n  bids_dir: null\n", base=tmp_path / "work")
    keepers = [nb.stem for nb in NOTEBOOKS if "book_bids_dir" in build.declared_parameters(ROOT / nb)]
    assert keepers == ["00_simulated_study", "04b_real_spineprint", "05_drivers"]
    for stem in keepers:
        assert _stem(plan, stem)["book_bids_dir"] == str(data)
    assert _stem(plan, "05_drivers")["bids_dir"] is None
    assert "book_bids_dir" not in _stem(plan, "02_preprocessing")
    assert all("book_bids_dir" not in p for p in _plan(tmp_path, "all:\n  n_jobs: 1\n").values())
    other = tmp_path / "other"
    other.mkdir()
    plan = _plan(tmp_path, f"all:\n  bids_dir: {data}\n05_drivers:\n  book_bids_dir: {other}\n")
    assert _stem(plan, "05_drivers")["book_bids_dir"] == str(other)


def test_every_notebook_parameter_is_known_to_papermill_without_warnings(caplog):
    """The ast reading of the parameters cell and papermill's agree, and papermill logs no
    'Unable to parse line' (comments with '=' used to hide lesion_strength and bids_dir)."""
    with caplog.at_level(logging.WARNING, logger="papermill"):
        for nb in NOTEBOOKS:
            ours = build.declared_parameters(ROOT / nb)
            theirs = pm.inspect_notebook(str(ROOT / nb))
            assert set(ours) == set(theirs), nb
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert "lesion_strength" in build.declared_parameters(ROOT / "notebooks/06_clinical.ipynb")
    assert "bids_dir" in build.declared_parameters(ROOT / "notebooks/00_simulated_study.ipynb")


def test_build_log_has_no_papermill_parse_warnings(tmp_path):
    """The log of a real (tiny) build: papermill executes a book notebook with parameters."""
    import subprocess
    import sys

    book = tmp_path / "book"
    (book / "notebooks").mkdir(parents=True)
    (book / "_config.yml").write_text("title: t\nexecute:\n  execute_notebooks: 'off'\n")
    (book / "_toc.yml").write_text("format: jb-book\nroot: notebooks/06_clinical\n")
    nb = nbformat.read(str(ROOT / "notebooks" / "06_clinical.ipynb"), as_version=4)
    nb.cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    nb.cells.append(nbformat.v4.new_code_cell("print('strength', lesion_strength)"))
    nbformat.write(nb, str(book / "notebooks" / "06_clinical.ipynb"))
    (tmp_path / "p.yml").write_text("06_clinical:\n  lesion_strength: 0.9\n")
    proc = subprocess.run([sys.executable, "-m", "spineprint_utils.cli", "build", "--root", str(book), "--output",
                           str(tmp_path / "out"), "--params", str(tmp_path / "p.yml"), "--no-html", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "Unable to parse" not in log and "Passed unknown parameter" not in log, log
    executed = (tmp_path / "out" / "source" / "notebooks" / "06_clinical.ipynb").read_text()
    assert "strength 0.9" in executed


def _doc_parameters():
    """(notebook stem, parameter) pairs the docs name: the bullets of teaching.md that link
    a chapter and list its parameters, and every 'name = value' next to a chapter link."""
    pairs = []
    text = (ROOT / "book" / "teaching.md").read_text()
    for block in re.split(r"\n(?=- )|\n\n", text):
        block = " ".join(block.split())
        links = re.findall(r"<\.\./notebooks/(\d\d_\w+)>", block)
        if len(links) != 1:
            continue
        if block.startswith("- "):
            names = re.findall(r"`([a-z][a-z0-9_]*)`", block.split(":", 1)[1] if ":" in block else block)
        else:
            names = re.findall(r"`([a-z][a-z0-9_]*) = ", block)
        pairs += [(links[0], n) for n in names]
    return pairs


def test_every_documented_parameter_is_accepted(tmp_path):
    pairs = _doc_parameters()
    assert ("06_clinical", "lesion_strength") in pairs and len(pairs) >= 8
    for stem, name in pairs:
        assert name in build.declared_parameters(ROOT / "notebooks" / f"{stem}.ipynb"), (stem, name)
    # the YAML examples of the README and the own-data page are valid parameters files
    for page in (ROOT / "README.md", ROOT / "book" / "own_data.md"):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.S):
            params = yaml.safe_load(block)
            for section in params.values():
                if "bids_dir" in section:
                    section["bids_dir"] = str(tmp_path)
            path = tmp_path / "doc.yml"
            path.write_text(yaml.safe_dump(params))
            build.plan_params(ROOT, NOTEBOOKS, build.load_params(path), str(path))

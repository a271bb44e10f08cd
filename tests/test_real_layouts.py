"""Real BIDS layouts end to end (issue 12): the corpus of tests/bids_corpus.py (the REAL
sidecars and layouts of ds004386, ds005883 and ds005884 with small synthetic images)
through preprocess -> connectivity -> fingerprint designs, and every case of the issue's
"Why" list on copies of it. Marked ``slow`` (about 2-3 minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from spineprint_utils import cli, connectivity, fingerprint, preprocess
from spineprint_utils._io import SpineprintError

import bids_corpus

pytestmark = pytest.mark.slow

FAST = dict(motion=False, figures=False)  # the index, not motion correction, is under test


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return bids_corpus.make_corpus(tmp_path_factory.mktemp("corpus"))


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _qc(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "qc.tsv", sep="\t", keep_default_na=False, dtype=str).set_index("run")


EXPECTED = {
    # dataset: (runs, physio model applied, between-design title)
    "ds004386": (["sub-ZS001_task-rest_acq-autozshim", "sub-ZS001_task-rest_acq-manualzshim",
                  "sub-ZS002_task-rest_acq-autozshim", "sub-ZS002_task-rest_acq-manualzshim"], "no",
                 "between-acquisition (acq-autozshim vs acq-manualzshim)"),
    "ds005883": (["sub-02_task-pain", "sub-04_task-pain"], "yes", None),
    "ds005884": (["sub-02_task-motorL", "sub-02_task-motorR", "sub-03_task-motorL", "sub-03_task-motorR"], "yes",
                 "between-task (task-motorL vs task-motorR)"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_end_to_end(corpus, name, tmp_path):
    runs, physio_applied, between = EXPECTED[name]
    bids = corpus[name]
    before = {p: p.stat().st_mtime_ns for p in bids.rglob("*") if p.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = preprocess.preprocess_dataset(bids, tmp_path / "deriv", progress=False, **FAST)
    qc = _qc(out)
    assert list(qc.index) == runs
    assert (qc["status"] == "ok").all(), qc["reason"]
    assert (qc["physio_model_applied"] == physio_applied).all(), qc["physio_model"]
    if physio_applied == "yes":  # CoSpine: pulse + respiratory recordings merged on the trigger clock
        assert qc["physio_model"].str.contains("cardiac and respiratory").all()
        assert qc["physio_model"].str.contains("recording-pulse_physio.tsv.gz").all()
        assert (qc["heart_rate_bpm"].astype(float).between(50, 80)).all()
    # the derivative header carries the sidecar TR
    first = preprocess.run_outputs(preprocess.find_runs(bids)[0].path, out)["preproc"]
    tr = json.loads(preprocess.find_runs(bids)[0].path.with_name(runs[0] + "_bold.json").read_text())["RepetitionTime"]
    assert nib.load(str(first)).header.get_zooms()[3] == pytest.approx(tr)
    # connectivity finds the runs without a session level and keeps every entity
    data = connectivity.load_connectomes(connectivity.connectivity_dataset(out))
    ent = data["entities"]
    assert ["sub-" + s + "_" + "_".join(f"{k}-{r[k]}" for k in ("task", "acq") if r[k])
            for s, (_, r) in zip(ent["sub"], ent.iterrows())] == runs
    assert (ent["ses"] == "").all()
    designs = fingerprint.designs_from_connectomes(data, "available")
    assert designs["within"].subjects.size == 2
    if between is None:
        assert "between" not in designs
        with pytest.raises(SpineprintError, match="two scans per subject"):
            fingerprint.designs_from_connectomes(data, "between")
    else:
        assert designs["between"].title == between
        d = designs["between"]
        a = ent.iloc[d.idx_a]
        b = ent.iloc[d.idx_b]
        assert list(a["sub"]) == list(b["sub"]) == list(d.subjects)
        key = "acq" if "acq" in between else "task"
        assert a[key].nunique() == b[key].nunique() == 1 and a[key].iloc[0] != b[key].iloc[0]
    # raw data never written
    assert {p: p.stat().st_mtime_ns for p in bids.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("keep", ["pulse", "respiratory"])
def test_one_physio_trace_gets_its_own_model(corpus, tmp_path, keep):
    bids = _copy(corpus["ds005883"], tmp_path / "ds")
    drop = "respiratory" if keep == "pulse" else "pulse"
    for p in bids.glob(f"sub-02/func/*recording-{drop}_physio.*"):
        p.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = preprocess.preprocess_dataset(bids, tmp_path / "deriv", participants=["02"], progress=False, **FAST)
    row = _qc(out).loc["sub-02_task-pain"]
    only = "cardiac only" if keep == "pulse" else "respiratory only"
    assert row["physio_model_applied"] == "yes" and only in row["physio_model"]
    conf = json.loads(preprocess.run_outputs(preprocess.find_runs(bids, ["02"])[0].path, out)["confounds_json"]
                      .read_text())
    assert only in conf["PhysiologicalModel"]
    cols = pd.read_csv(preprocess.run_outputs(preprocess.find_runs(bids, ["02"])[0].path, out)["confounds"], sep="\t")
    phys = [c for c in cols.columns if c.startswith("physio_") and c.endswith("_slice00")]
    assert phys and all(c.startswith("physio_card" if keep == "pulse" else "physio_resp") for c in phys), phys


def test_messy_dataset_under_derivatives_bids_app(corpus, tmp_path, capsys):
    """A dataset under a folder named derivatives, with macOS ._ files, a broken git-annex link,
    one corrupt run, an uncompressed run and part-phase images, through the BIDS-App form:
    every good run is processed, each bad one recorded (file, reason), exit status 1."""
    bids = _copy(corpus["ds004386"], tmp_path / "derivatives" / "ds004386")
    func1, func2 = bids / "sub-ZS001" / "func", bids / "sub-ZS002" / "func"
    (func1 / "._sub-ZS001_task-rest_acq-autozshim_bold.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    corrupt = func2 / "sub-ZS002_task-rest_acq-manualzshim_bold.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:5000])
    os.symlink(bids / ".git" / "annex" / "objects" / "XX" / "SHA256E-s1--0.nii.gz",
               func2 / "sub-ZS002_task-rest_acq-annexed_bold.nii.gz")
    img = nib.load(str(func2 / "sub-ZS002_task-rest_acq-autozshim_bold.nii.gz"))
    nib.save(img, str(func2 / "sub-ZS002_task-rest_acq-autozshim_part-phase_bold.nii.gz"))
    plain = func1 / "sub-ZS001_task-rest_acq-manualzshim_bold.nii.gz"
    nib.save(nib.load(str(plain)), str(plain.with_name(plain.name[:-3])))
    plain.unlink()
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main([str(bids), str(out), "participant", "--no-motion"])
    err = capsys.readouterr().err
    assert rc == 1
    qc = _qc(out)
    assert dict(qc["status"]) == {
        "sub-ZS001_task-rest_acq-autozshim": "ok", "sub-ZS001_task-rest_acq-manualzshim": "ok",
        "sub-ZS002_task-rest_acq-annexed": "failed", "sub-ZS002_task-rest_acq-autozshim": "ok",
        "sub-ZS002_task-rest_acq-autozshim_part-phase": "skipped", "sub-ZS002_task-rest_acq-manualzshim": "failed"}
    assert "broken symbolic link" in qc.loc["sub-ZS002_task-rest_acq-annexed", "reason"]
    assert f"{corrupt}: corrupt or truncated" in qc.loc["sub-ZS002_task-rest_acq-manualzshim", "reason"]
    assert "FAILED: 2 run(s)" in err and corrupt.name in err
    # group level on the same output: connectivity of the good runs, all entities kept
    rc = cli.main([str(bids), str(out), "group"])
    assert rc == 0
    data = connectivity.load_connectomes(out / "group" / "atlas-PAM50horns_connectomes.npz")
    assert list(data["entities"]["acq"]) == ["autozshim", "manualzshim", "autozshim"]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_failing_run_isolated_serial_and_pool(corpus, tmp_path, n_jobs):
    bids = _copy(corpus["ds005884"], tmp_path / "ds")
    bad = bids / "sub-02" / "func" / "sub-02_task-motorL_bold.nii.gz"
    img = nib.load(str(bad))
    data = np.asarray(img.dataobj)
    data[:, :, 3] = 0  # an all-zero slice
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(bad))
    with pytest.warns(UserWarning, match=r"1 of 2 run\(s\) failed"):
        out = preprocess.preprocess_dataset(bids, tmp_path / "deriv", participants=["02"], n_jobs=n_jobs,
                                            progress=False, **FAST)
    qc = _qc(out)
    assert qc.loc["sub-02_task-motorL", "status"] == "failed"
    assert qc.loc["sub-02_task-motorL", "reason"].startswith(f"{bad}: slice(s) 3 of 70 are zero")
    assert qc.loc["sub-02_task-motorR", "status"] == "ok"
    assert not list((out / "sub-02").rglob("*task-motorL*"))  # nothing half-written
    assert list(preprocess.failed_runs(out)["run"]) == ["sub-02_task-motorL"]


def test_multi_echo_runs_share_physio(corpus, tmp_path):
    bids = _copy(corpus["ds005883"], tmp_path / "ds")
    func = bids / "sub-02" / "func"
    for ext in (".nii.gz", ".json"):
        src = func / f"sub-02_task-pain_bold{ext}"
        for e in (1, 2):
            shutil.copyfile(src, func / f"sub-02_task-pain_echo-{e}_bold{ext}")
        src.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = preprocess.preprocess_dataset(bids, tmp_path / "deriv", participants=["02"], progress=False, **FAST)
    qc = _qc(out)
    assert list(qc.index) == ["sub-02_task-pain_echo-1", "sub-02_task-pain_echo-2"]
    assert (qc["physio_model_applied"] == "yes").all()


def test_real_sct_run_too_short_is_refused(shared_data, tmp_path, capsys):
    """The real 30-volume SCT run with a physio recording: the default cleaning (RETROICOR 4/4/(2,2),
    5 aCompCor, motion) needs 39 regressors per slice; refused before any computation with the
    reason (it used to be "preprocessed" with negative degrees of freedom into a constant image)."""
    func = tmp_path / "bids" / "sub-01" / "func"
    func.mkdir(parents=True)
    (tmp_path / "bids" / "dataset_description.json").write_text('{"Name": "sct", "BIDSVersion": "1.9.0"}')
    shutil.copyfile(shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz", func / "sub-01_task-rest_bold.nii.gz")
    tr = 1.13  # the header's
    (func / "sub-01_task-rest_bold.json").write_text(json.dumps(
        {"RepetitionTime": tr, "SliceTiming": [0.0, 0.565, 0.188, 0.753, 0.377, 0.942]}))
    pulse, resp, trig = bids_corpus._physio_tables(30, tr, 100.0, 5.0, 0)
    (func / "sub-01_task-rest_physio.json").write_text(json.dumps(
        {"SamplingFrequency": 100.0, "StartTime": -5.0, "Columns": ["cardiac", "respiratory", "trigger"]}))
    bids_corpus._write_tsv_gz(func / "sub-01_task-rest_physio.tsv.gz", [pulse, resp, trig])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main(["preprocess", str(tmp_path / "bids"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "sub-01_task-rest_bold.nii.gz: run too short for the requested cleaning: 30 volumes (TR 1.13 s)" in err
    assert "regression of 39 regressors per slice and a linear trend (minimum 10)" in err
    assert not (tmp_path / "out" / "sub-01").exists()
    # a lighter model fits: the same run goes through
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main(["preprocess", str(tmp_path / "bids"), "--out", str(tmp_path / "out"), "--no-physio"])
    assert rc == 0


def test_repetition_time_in_ms_names_field_and_file(corpus, tmp_path, capsys):
    bids = _copy(corpus["ds004386"], tmp_path / "ds")
    side = bids / "sub-ZS001" / "func" / "sub-ZS001_task-rest_acq-autozshim_bold.json"
    meta = json.loads(side.read_text())
    meta["RepetitionTime"] = 2312
    side.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main(["preprocess", str(bids), "--out", str(tmp_path / "out"), "--participant-label", "ZS001",
                       "--no-motion"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{side}: RepetitionTime 2312 looks like milliseconds" in err


@pytest.mark.parametrize("name, only, expected", [
    ("ds004386", ["02_", "03_", "04_"], "between-acquisition (acq-autozshim vs acq-manualzshim)"),
    ("ds005883", ["04_"], "designs: within-session (split half)\n"),
])
def test_book_chapters_on_real_layouts(corpus, tmp_path, name, only, expected):
    """Chapters 2-4 executed by parameters alone on a no-session dataset (ds004386 layout), and
    chapter 4 on a one-run-per-subject dataset (ds005883): the pairing comes from the dataset."""
    import nbformat
    import yaml

    from spineprint_utils import build

    bids = _copy(corpus[name], tmp_path / name)
    params = {"all": {"bids_dir": str(bids)}, "02_preprocessing": {"native_demo": False, "n_jobs": 1},
              "04_fingerprinting": {"n_permutations": 20, "n_bootstrap": 20}}
    (tmp_path / "params.yml").write_text(yaml.safe_dump(params))
    root = Path(__file__).resolve().parents[1]
    staged = build.build_book(root, output=tmp_path / "out", params_file=tmp_path / "params.yml", only=only,
                              html=False, progress=False)
    nb = nbformat.read(staged / "notebooks" / "04_fingerprinting.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert expected in text, text

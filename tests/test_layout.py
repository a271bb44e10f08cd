"""The dataset index (spineprint_utils.layout) on the REAL layouts and sidecars of ds004386,
ds005883 and ds005884 (../shared/data/openneuro), and on the cases of issue 12: sessions
optional, inheritance of every sidecar, all entities kept, .nii and .nii.gz, hidden files,
.bidsignore, part-phase, echoes sharing physio, broken git-annex links, a dataset under a
folder named derivatives, derivatives never taken as raw runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from spineprint_utils import acquisition, layout, preprocess
from spineprint_utils._io import SpineprintError


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _json(path: Path, obj) -> Path:
    return _touch(path, json.dumps(obj))


@pytest.fixture
def openneuro(shared_data) -> Path:
    return shared_data / "openneuro"


# ------------------------------------------------------------------ names
def test_parse_name():
    assert layout.parse_name("sub-01_ses-1_task-rest_acq-auto_echo-2_part-mag_bold.nii.gz") == (
        {"sub": "01", "ses": "1", "task": "rest", "acq": "auto", "echo": "2", "part": "mag"}, "bold", ".nii.gz")
    assert layout.parse_name("task-rest_bold.json") == ({"task": "rest"}, "bold", ".json")
    assert layout.parse_name("sub-02_task-pain_recording-pulse_physio.tsv.gz") == (
        {"sub": "02", "task": "pain", "recording": "pulse"}, "physio", ".tsv.gz")
    assert layout.build_name({"task": "rest", "sub": "01", "acq": "a"}, "bold", ".nii") == "sub-01_task-rest_acq-a_bold.nii"


# ------------------------------------------------------------------ real metadata-only layouts
def test_real_ds004386_inheritance_without_sessions(openneuro):
    """ds004386: no session level; TaskName only in the top-level task-rest_bold.json."""
    root = openneuro / "ds004386"
    bold = root / "sub-ZS001" / "func" / "sub-ZS001_task-rest_acq-autozshim_bold.nii.gz"  # not on disk: fine
    meta, sources = layout.metadata(bold)
    assert sources == [root / "task-rest_bold.json", bold.with_name(bold.name.replace(".nii.gz", ".json"))]
    assert meta["TaskName"] == "rest"  # only in the top-level file
    own = json.loads(sources[-1].read_text())
    assert meta["RepetitionTime"] == own["RepetitionTime"] == 2.312
    assert len(meta["SliceTiming"]) == 24


def test_real_fieldmap_and_physio_inheritance(openneuro, tmp_path):
    """CoSpine fieldmap and physio sidecars through the same inheritance rule; a top-level
    physio sidecar fills what the run's own lacks."""
    root = openneuro / "ds005884"
    epi = root / "sub-02" / "fmap" / "sub-02_acq-motorL_dir-AP_epi.nii.gz"
    meta, sources = layout.metadata(epi)
    assert sources == [epi.with_name(epi.name.replace(".nii.gz", ".json"))]
    assert meta["PhaseEncodingDirection"] in ("j", "j-")
    # a copy with the physio sampling rate moved to a top-level sidecar
    ds = tmp_path / "ds"
    src = root / "sub-02" / "func" / "sub-02_task-motorL_recording-pulse_physio.json"
    pm = json.loads(src.read_text())
    _json(ds / "task-motorL_physio.json", {"SamplingFrequency": pm.pop("SamplingFrequency")})
    _json(ds / "sub-02" / "func" / src.name, pm)
    merged, used = layout.metadata(ds / "sub-02" / "func" / src.name.replace(".json", ".tsv.gz"))
    assert merged["SamplingFrequency"] == 400 and merged["Columns"] == ["PULS", "Trigger"]
    assert [p.name for p in used] == ["task-motorL_physio.json", src.name]


def test_more_specific_sidecar_wins_and_deeper_wins(tmp_path):
    _json(tmp_path / "task-rest_bold.json", {"RepetitionTime": 1.0, "A": "top"})
    _json(tmp_path / "task-rest_acq-x_bold.json", {"RepetitionTime": 2.0})
    _json(tmp_path / "sub-01" / "sub-01_task-rest_bold.json", {"A": "subject"})
    bold = tmp_path / "sub-01" / "func" / "sub-01_task-rest_acq-x_bold.nii.gz"
    meta, used = layout.metadata(bold)
    assert meta == {"RepetitionTime": 2.0, "A": "subject"}
    other = tmp_path / "sub-01" / "func" / "sub-01_task-rest_acq-y_bold.nii.gz"
    assert layout.metadata(other)[0] == {"RepetitionTime": 1.0, "A": "subject"}  # acq-x does not apply
    _touch(tmp_path / "sub-01" / "func" / "sub-01_task-rest_acq-x_bold.json", "{not json")
    with pytest.raises(SpineprintError, match="sub-01_task-rest_acq-x_bold.json: not valid JSON"):
        layout.metadata(bold)


# ------------------------------------------------------------------ the index
def _nii(path: Path) -> Path:
    return _touch(path, "x")


def test_index_cases(tmp_path):
    """Every case of issue 12 in one messy dataset."""
    ds = tmp_path / "derivatives" / "mydata"  # a dataset inside a folder named derivatives
    _json(ds / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.9.0"})
    _touch(ds / ".bidsignore", "sub-*/func/*_sbref.nii.gz\nextra/\n")
    f1 = ds / "sub-01" / "func"
    _nii(f1 / "sub-01_task-rest_acq-autozshim_bold.nii.gz")
    _nii(f1 / "sub-01_task-rest_acq-manualzshim_bold.nii")  # uncompressed
    _nii(f1 / "._sub-01_task-rest_acq-autozshim_bold.nii.gz")  # macOS resource fork
    _nii(f1 / "sub-01_task-rest_sbref.nii.gz")
    _nii(ds / "sub-01" / "extra" / "sub-01_task-rest_bold.nii.gz")  # .bidsignore'd folder
    f2 = ds / "sub-02" / "ses-1" / "func"
    for e in (1, 2):
        _nii(f2 / f"sub-02_ses-1_task-motorL_echo-{e}_part-mag_bold.nii.gz")
        _nii(f2 / f"sub-02_ses-1_task-motorL_echo-{e}_part-phase_bold.nii.gz")
    _touch(f2 / "sub-02_ses-1_task-motorL_physio.tsv.gz")
    os.symlink(ds / ".git" / "annex" / "objects" / "missing", f2 / "sub-02_ses-1_task-motorR_bold.nii.gz")
    _nii(ds / "derivatives" / "spineprint" / "sub-01" / "func" / "sub-01_task-rest_desc-preproc_bold.nii.gz")
    _nii(f1 / "sub-01_task-rest_acq-autozshim_desc-preproc_bold.nii.gz")  # a derivative left in the raw tree
    _nii(ds / ".git" / "sub-09" / "func" / "sub-09_task-rest_bold.nii.gz")

    idx = layout.DatasetIndex(ds)
    runs = idx.bold_runs()
    names = [r.path.name for r in runs]
    assert names == [
        "sub-01_task-rest_acq-autozshim_bold.nii.gz",
        "sub-01_task-rest_acq-manualzshim_bold.nii",
        "sub-02_ses-1_task-motorL_echo-1_part-mag_bold.nii.gz",
        "sub-02_ses-1_task-motorL_echo-2_part-mag_bold.nii.gz",
        "sub-02_ses-1_task-motorR_bold.nii.gz",
    ]
    # runs that differ only by acq-/echo- stay distinct; every entity kept
    keys = [tuple(r.key.values()) for r in runs]
    assert len(set(keys)) == len(keys)
    assert runs[0].key["acq"] == "autozshim" and runs[0].key["ses"] == ""
    assert runs[3].key["echo"] == "2" and runs[3].key["part"] == "mag"
    assert runs[1].prefix == "sub-01_task-rest_acq-manualzshim"
    # part-phase is listed with a reason only when asked
    phase = [r for r in idx.bold_runs(include_skipped=True) if r.skip_reason]
    assert [r.key["part"] for r in phase] == ["phase", "phase"] and "phase" in phase[0].skip_reason
    # every echo finds the run's physio
    assert runs[2].physio_files() == runs[3].physio_files() == [f2 / "sub-02_ses-1_task-motorL_physio.tsv.gz"]
    assert runs[0].physio_files() == []
    # the broken annex link is reported per run, not fatal
    assert runs[4].problem and "broken symbolic link" in runs[4].problem
    assert idx.problems == [(runs[4].path, runs[4].problem)]
    assert idx.subjects() == ["01", "02"]
    assert [r.subject for r in idx.bold_runs(["sub-02"])] == ["02"] * 3
    with pytest.raises(SpineprintError, match="participant.s. 07 not found"):
        idx.bold_runs(["07"])
    with pytest.raises(SpineprintError, match="alphanumeric"):
        idx.bold_runs(["../x"])
    # preprocess uses the same index
    assert preprocess.find_bold_runs(ds) == [r.path for r in runs]


def test_index_both_extensions_and_errors(tmp_path):
    _nii(tmp_path / "sub-01" / "func" / "sub-01_task-rest_bold.nii")
    _nii(tmp_path / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    assert [r.path.name for r in layout.DatasetIndex(tmp_path).bold_runs()] == ["sub-01_task-rest_bold.nii.gz"]
    with pytest.raises(SpineprintError, match="BIDS folder not found"):
        layout.DatasetIndex(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpineprintError, match="no BOLD runs .* no dataset_description.json"):
        layout.DatasetIndex(empty).bold_runs()


def test_physio_most_specific_and_recordings(tmp_path):
    f = tmp_path / "sub-01" / "func"
    _touch(f / "sub-01_task-rest_physio.tsv.gz")
    _touch(f / "sub-01_task-rest_acq-a_recording-pulse_physio.tsv.gz")
    _touch(f / "sub-01_task-rest_acq-a_recording-resp_physio.tsv.gz")
    _touch(f / "sub-01_task-motor_physio.tsv.gz")
    a = layout.physio_files(f / "sub-01_task-rest_acq-a_echo-1_bold.nii.gz")
    assert [p.name for p in a] == ["sub-01_task-rest_acq-a_recording-pulse_physio.tsv.gz",
                                   "sub-01_task-rest_acq-a_recording-resp_physio.tsv.gz"]
    b = layout.physio_files(f / "sub-01_task-rest_acq-b_bold.nii.gz")
    assert [p.name for p in b] == ["sub-01_task-rest_physio.tsv.gz"]


def test_preprocessed_runs_from_run_outputs(tmp_path):
    """Connectivity finds preprocessing outputs by the names run_outputs gives them, any layout."""
    for bold in ("sub-ZS001/func/sub-ZS001_task-rest_acq-autozshim_bold.nii.gz",
                 "sub-01/ses-2/func/sub-01_ses-2_task-motorL_bold.nii"):
        out = preprocess.run_outputs(tmp_path / "raw" / bold, tmp_path / "deriv")["preproc"]
        _nii(out)
    runs = preprocess.find_preprocessed_runs(tmp_path / "deriv")
    assert [r.key["acq"] for r in runs] == ["", "autozshim"]
    assert [r.key["ses"] for r in runs] == ["2", ""]


def test_acquisition_reads_through_the_index(openneuro, tmp_path):
    """The acquisition chapter sees the same runs (hidden files, derivatives and .bidsignore skipped)."""
    ds = tmp_path / "ds004386"
    shutil.copytree(openneuro / "ds004386", ds, ignore=shutil.ignore_patterns("sub-ZS0[1-4]*", "annexed_files.tsv"))
    _touch(ds / "sub-ZS001" / "func" / "._sub-ZS001_task-rest_acq-autozshim_bold.json", "\x00\x05junk")
    _json(ds / "derivatives" / "x" / "sub-ZS001" / "func" / "sub-ZS001_task-rest_acq-x_bold.json", {})
    with pytest.warns(acquisition.MetadataWarning, match="participants.tsv and subject folders"):
        meta = acquisition.read_bids_metadata(ds)  # the copy keeps 9 of the 48 listed participants
    keys = [r.key for r in meta.runs]
    assert len(keys) == 2 * 9 and all("acq-" in k for k in keys)
    assert {r.entities["acq"] for r in meta.runs} == {"autozshim", "manualzshim"}
    assert all(r.meta["TaskName"] == "rest" for r in meta.runs)  # inherited from the top level


def test_tr_and_slice_encoding_checks(tmp_path):
    f = tmp_path / "sub-01" / "func"
    bold = f / "sub-01_task-rest_bold.nii.gz"
    st = [0.0, 0.5, 1.0, 1.5]
    _json(tmp_path / "task-rest_bold.json", {"RepetitionTime": 2.0, "SliceTiming": st})
    meta, tr, got, sidecar = preprocess._read_meta(bold, None, None)
    assert tr == 2.0 and got == st and sidecar == tmp_path / "task-rest_bold.json"
    _json(f / "sub-01_task-rest_bold.json", {"SliceEncodingDirection": "k-"})
    assert preprocess._read_meta(bold, None, None)[2] == st[::-1]  # first entry = last image slice
    _json(f / "sub-01_task-rest_bold.json", {"SliceEncodingDirection": "j"})
    with pytest.raises(SpineprintError, match="sub-01_task-rest_bold.json: SliceEncodingDirection 'j'"):
        preprocess._read_meta(bold, None, None)
    _json(f / "sub-01_task-rest_bold.json", {"RepetitionTime": 2312})
    with pytest.raises(SpineprintError, match=r"sub-01_task-rest_bold.json: RepetitionTime 2312 looks like milliseconds"):
        preprocess._read_meta(bold, None, None)
    os.remove(f / "sub-01_task-rest_bold.json")
    os.remove(tmp_path / "task-rest_bold.json")
    with pytest.raises(SpineprintError, match="sub-01_task-rest_bold.json: RepetitionTime missing"):
        preprocess._read_meta(bold, None, None)


def test_header_tr_mismatch_reported(tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    img.header.set_zooms((1, 1, 1, 3.0))
    img.header.set_xyzt_units("mm", "sec")
    notes = []
    with pytest.warns(UserWarning, match="header TR 3 s differs from RepetitionTime 2.312 s"):
        preprocess._check_header_tr(img, 2.312, Path("x_bold.nii.gz"), Path("x_bold.json"), notes)
    assert len(notes) == 1
    img.header.set_zooms((1, 1, 1, 2312.0))
    img.header.set_xyzt_units("mm", "msec")
    preprocess._check_header_tr(img, 2.312, Path("x_bold.nii.gz"), Path("x_bold.json"), notes)  # ms header: agrees
    assert len(notes) == 1


def test_fieldmap_sidecars_inherit(openneuro, tmp_path):
    """Real CoSpine fieldmap sidecars with TotalReadoutTime moved to a top-level acq-motorL_epi.json:
    the pair still reads (inheritance), and without the top-level file the error names the sidecar."""
    from spineprint_utils import distortion

    src = openneuro / "ds005884" / "sub-02" / "fmap"
    fmap = tmp_path / "sub-02" / "fmap"
    trt = None
    for d in ("AP", "PA"):
        meta = json.loads((src / f"sub-02_acq-motorL_dir-{d}_epi.json").read_text())
        trt = meta.pop("TotalReadoutTime")
        _json(fmap / f"sub-02_acq-motorL_dir-{d}_epi.json", meta)
        _nii(fmap / f"sub-02_acq-motorL_dir-{d}_epi.nii.gz")
    _json(tmp_path / "acq-motorL_epi.json", {"TotalReadoutTime": trt})
    pair = distortion.read_fieldmap_pair(fmap)
    assert pair.total_readout_time == pytest.approx(trt)
    os.remove(tmp_path / "acq-motorL_epi.json")
    with pytest.raises(SpineprintError, match="sub-02_acq-motorL_dir-.._epi.json"):
        distortion.read_fieldmap_pair(fmap)


def test_bids_app_form_translates_to_the_sub_commands():
    from spineprint_utils import cli

    assert cli.bids_app_argv(["/d", "/o", "participant", "--participant-label", "01", "--n-jobs", "2"]) == [
        "preprocess", "/d", "--out", "/o", "--participant-label", "01", "--n-jobs", "2"]
    assert cli.bids_app_argv(["/d", "/o", "group", "--kind", "partial"]) == ["connectivity", "/o", "--kind", "partial"]
    assert cli.bids_app_argv(["preprocess", "/d"]) is None
    assert cli.bids_app_argv(["/d", "/o", "session"]) is None
    with pytest.raises(SystemExit):  # an unknown level is an argparse error, not a crash
        cli.main(["/d", "/o", "session"])


def test_derivative_files_and_find_anat_through_the_index(tmp_path):
    """The anatomy of a run is found by the dataset index: the participant's T2w (``.nii`` too),
    the segmentation of another pipeline by preference order (not the package's own
    ``derivatives/spineprint``, not hidden macOS ``._*`` copies, not ``.bidsignore``d files)."""
    from spineprint_utils import layout, levels, preprocess

    root = tmp_path / "ds"
    _json(root / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.9.0"})
    _nii(root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    _nii(root / "sub-01" / "anat" / "sub-01_T2w.nii")  # uncompressed
    _nii(root / "sub-02" / "anat" / "sub-02_T2w.nii.gz")
    seg_dir = root / "derivatives" / "sct" / "sub-01" / "anat"
    _nii(seg_dir / "sub-01_T2w_seg.nii.gz")
    _nii(seg_dir / "._sub-01_T2w_label-SC_seg.nii.gz")  # macOS resource fork: never taken
    _nii(root / "derivatives" / "spineprint" / "sub-01" / "anat" / "sub-01_T2w_label-SC_seg.nii.gz")  # ours
    _nii(root / "derivatives" / "old" / "sub-01" / "anat" / "sub-01_T2w_label-SC_seg.nii.gz")
    (root / "derivatives" / "old" / ".bidsignore").write_text("sub-01/anat/*\n")
    _nii(root / "derivatives" / "labels" / "sub-01" / "anat" / "sub-01_T2w_labels.nii.gz")
    bold = root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    t2w, seg, reason = preprocess.find_anat(bold)
    assert reason is None
    assert t2w == root / "sub-01" / "anat" / "sub-01_T2w.nii"
    assert seg == seg_dir / "sub-01_T2w_seg.nii.gz"  # _label-SC_seg is preferred, but only ours / ignored ones exist
    _nii(root / "derivatives" / "manual" / "sub-01" / "anat" / "sub-01_T2w_label-SC_seg.nii.gz")
    assert preprocess.find_anat(bold)[1] == root / "derivatives" / "manual" / "sub-01" / "anat" / \
        "sub-01_T2w_label-SC_seg.nii.gz"
    assert layout.derivative_files(root, "sub-02", ("*_seg.nii*",)) == []
    assert layout.derivative_files(root, "01", ("*_labels.nii*",), datatype="func") == []
    with pytest.raises(SpineprintError):  # the zero-filled test image has no labels: an error, not silence
        levels.find_vertebral_labels(t2w, root, "01")
    shutil.rmtree(root / "derivatives")
    assert "no cord segmentation" in preprocess.find_anat(bold)[2]


def test_describe_reads_the_dataset_through_the_index(tmp_path):
    """What chapter 00 shows of a reader's dataset: every run with its entities, the inherited
    TR, the header's volumes, physio and T2w presence, and the pairing chapter 4 would use."""
    import nibabel as nib

    root = tmp_path / "ds"
    _json(root / "dataset_description.json", {"Name": "two sessions", "BIDSVersion": "1.9.0"})
    _json(root / "task-rest_bold.json", {"RepetitionTime": 1.5})
    for sub in ("01", "02"):
        for ses in ("1", "2"):
            func = root / f"sub-{sub}" / f"ses-{ses}" / "func"
            func.mkdir(parents=True)
            nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 7 + int(ses)), np.float32), np.eye(4)),
                     str(func / f"sub-{sub}_ses-{ses}_task-rest_bold.nii.gz"))
    _nii(root / "sub-01" / "ses-1" / "func" / "sub-01_ses-1_task-rest_physio.tsv.gz")
    _nii(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz")
    _nii(root / "sub-02" / "ses-1" / "func" / "._sub-02_ses-1_task-rest_bold.nii.gz")  # hidden: not a run
    d = layout.describe(root)
    t = d["table"]
    assert list(t["file"]) == [f"sub-{s}_ses-{e}_task-rest" for s in ("01", "02") for e in ("1", "2")]
    assert list(t.columns) == ["file", "sub", "ses", "task", "tr_s", "n_volumes", "physio", "T2w"]
    assert (t["tr_s"] == 1.5).all() and list(t["n_volumes"]) == [8, 9, 8, 9]
    assert list(t["physio"]) == ["yes", "no", "no", "no"] and list(t["T2w"]) == ["no", "no", "yes", "yes"]
    assert d["sessions"] == ["1", "2"] and d["space"] == "native" and d["n_subjects"] == 2
    assert d["pairing"] == "between-session (ses-1 vs ses-2)"
    assert d["text"] == ("two sessions: 2 participants, 4 BOLD runs, 2 sessions, in native space; "
                         "between-scan pairing: between-session (ses-1 vs ses-2)")

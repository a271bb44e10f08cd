"""Tests for chapter 1 helpers: BIDS metadata, protocol, slice timing, defects."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from spineprint_utils import acquisition as acq
from spineprint_utils import datasets
from spineprint_utils._io import SpineprintError


# ------------------------------------------------------------------ helpers
def _planted_slice_timing(n: int, mb: int, order: str, tr: float) -> list:
    """Brute-force generator: loop over excitations, assign the time to each band's slice."""
    package = n // mb
    idx = list(range(package))
    if order == "sequential ascending":
        acq_order = idx
    elif order == "sequential descending":
        acq_order = idx[::-1]
    elif order == "interleaved ascending (even first)":
        acq_order = idx[0::2] + idx[1::2]
    elif order == "interleaved ascending (odd first)":
        acq_order = idx[1::2] + idx[0::2]
    else:
        raise AssertionError(order)
    times = [None] * n
    for k, s in enumerate(acq_order):
        for b in range(mb):
            times[s + b * package] = k * tr / package
    return times


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def _mini_bids(root: Path, n_sub=2, top=None, sub_meta=None, readme=None, physio=True) -> Path:
    """A minimal BIDS dataset with one task-rest run per subject."""
    _write(root / "dataset_description.json", {"Name": "mini", "BIDSVersion": "1.8.0"})
    top = {"TaskName": "rest", "RepetitionTime": 2.0, "EchoTime": 0.03, "FlipAngle": 80,
           "SliceTiming": _planted_slice_timing(4, 1, "sequential ascending", 2.0)} if top is None else top
    _write(root / "task-rest_bold.json", top)
    for i in range(1, n_sub + 1):
        func = root / f"sub-{i:02d}" / "func"
        _write(func / f"sub-{i:02d}_task-rest_bold.json", (sub_meta or {}).get(i, {}))
        if physio and not (physio == "first" and i > 1):
            _write(func / f"sub-{i:02d}_task-rest_physio.json",
                   {"SamplingFrequency": 100, "Columns": ["cardiac", "respiratory", "trigger"]})
    if readme is not None:
        _write(root / "README", readme)
    return root


def _meta_quiet(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", acq.MetadataWarning)
        return acq.read_bids_metadata(path)


@pytest.fixture(scope="module")
def real(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", acq.MetadataWarning)
        return {ds: acq.read_bids_metadata(datasets.fetch_openneuro(ds)) for ds in ("ds005884", "ds005883", "ds004386")}


# ------------------------------------------------------------------ slice timing
@pytest.mark.parametrize("order", ["sequential ascending", "sequential descending",
                                   "interleaved ascending (even first)", "interleaved ascending (odd first)"])
@pytest.mark.parametrize("n,mb", [(24, 1), (70, 2), (36, 3), (15, 1)])
def test_slice_timing_info_recovers_planted_order_and_multiband(order, n, mb):
    tr = 2.5
    info = acq.slice_timing_info(_planted_slice_timing(n, mb, order, tr), tr, n_slices=n)
    assert info["multiband"] == mb
    assert info["n_distinct"] == n // mb
    assert info["order"] == order
    assert info["slice_gap"] == pytest.approx(tr / (n // mb))


def test_slice_timing_info_random_order_is_other():
    rng = np.random.default_rng(0)
    t = rng.permutation(20) * 0.1
    info = acq.slice_timing_info(t, 2.0)
    assert info["multiband"] == 1 and info["order"] == "other"
    assert info["acquisition_order"] == np.argsort(t).tolist()


def test_slice_timing_uneven_groups_have_no_multiband():
    info = acq.slice_timing_info([0, 0, 0.5, 1.0, 1.0, 1.0], 2.0)
    assert info["multiband"] is None and info["n_distinct"] == 3


def test_slice_timing_table_groups_match_brute_force():
    st = _planted_slice_timing(12, 3, "interleaved ascending (even first)", 1.2)
    tab = acq.slice_timing_table(st, 1.2)
    assert list(tab.columns) == ["slice", "time_s", "excitation", "band"]
    for i in range(12):  # slices sharing a time share an excitation, and only those
        for j in range(12):
            assert (tab.excitation[i] == tab.excitation[j]) == (abs(st[i] - st[j]) < 1e-9)
    # band = position among the simultaneous slices: slice s + b*package has band b
    assert tab.band.tolist() == [s // 4 for s in range(12)]


@pytest.mark.parametrize("bad,match", [
    ([0.0, 2.0, 1.0], r"\[0, TR=2 s\)"),
    ([0.0, -0.1, 1.0], "negative"),
    ([], "empty"),
    (["a", 1], "not a list of numbers"),
])
def test_slice_timing_info_bad_values(bad, match):
    with pytest.raises(SpineprintError, match=match):
        acq.slice_timing_info(bad, 2.0, source="x_bold.json")


def test_slice_timing_info_length_mismatch_names_file():
    with pytest.raises(SpineprintError, match=r"x_bold\.json: SliceTiming has 3 entries but the image has 4"):
        acq.slice_timing_info([0, 0.5, 1.0], 2.0, n_slices=4, source="x_bold.json")


# ------------------------------------------------------------------ real datasets
def _brute_distinct(st):
    return len({round(float(t), 6) for t in st})


def test_cospine_protocol_from_metadata(real, shared_data):
    for ds in ("ds005884", "ds005883"):
        p = acq.protocol(real[ds])
        assert p["tr_s"] == pytest.approx(2.68)
        assert p["te_s"] == pytest.approx(0.027)
        assert p["n_slices"] == 70
        assert p["multiband"] == 2
        assert p["multiband_source"].startswith("SliceTiming")
        assert p["flip_angle_deg"] == 80 and p["slice_thickness_mm"] == 4
        assert p["phase_encoding_direction"] == "j"
        assert p["fieldmaps"].startswith("reverse-PE")
        assert p["physio_sampling_hz"] == 400
        assert p["slice_order"] == "interleaved ascending (odd first)"
        # 35 excitations spread over the TR: median step of the sorted distinct times
        distinct = np.unique(np.round(real[ds].runs[0].meta["SliceTiming"], 3))
        assert p["excitation_interval_s"] == pytest.approx(np.median(np.diff(distinct)), abs=2e-3)
        assert p["excitation_interval_s"] == pytest.approx(2.68 / 35, abs=2e-3)
    # independent reading of one raw sidecar with json only
    raw = json.loads((shared_data / "openneuro/ds005884/sub-01/func/sub-01_task-motorL_bold.json").read_text())
    assert len(raw["SliceTiming"]) / _brute_distinct(raw["SliceTiming"]) == 2
    assert "MultibandAccelerationFactor" not in raw
    p = acq.protocol(real["ds005884"])
    assert (p["n_subjects"], p["n_runs"], p["runs_with_physio"]) == (22, 44, "43/44")
    assert acq.protocol(real["ds005883"])["n_subjects"] == 39


def test_kaptan_protocol_uses_inheritance(real, shared_data):
    meta = real["ds004386"]
    p = acq.protocol(meta)
    assert p["tr_s"] == pytest.approx(2.312)
    assert p["n_slices"] == 24 and p["multiband"] == 1
    assert p["slice_order"] == "sequential descending"
    assert (p["n_subjects"], p["n_runs"]) == (48, 96)
    assert p["acq_labels"] == "autozshim, manualzshim"
    # TaskName only lives in the top-level task-rest_bold.json: inherited
    run = meta.runs[0]
    assert "TaskName" not in json.loads(run.sidecar.read_text())
    assert run.meta["TaskName"] == "rest"
    assert run.sources[0] == (shared_data / "openneuro/ds004386/task-rest_bold.json").resolve()


def _problems(meta):
    return " || ".join(i["problem"] for i in meta.issues)


def test_real_defects_detected(real):
    motor = _problems(real["ds005884"])
    assert "MultibandAccelerationFactor missing in 44/44" in motor
    assert "TaskDescription of 44/44 runs" in motor and "Thermal pain" in motor
    assert "task-motor_events.json" in motor  # README names a file that is not there
    assert "task-motorL_events.json" not in motor  # ... but the real ones are not flagged
    assert "missing for 1/44 runs: sub-08_task-motorL" in motor
    assert "sub-17_acq-motorR_dir-AP_epi" in " ".join(i["file"] for i in real["ds005884"].issues)
    pain = _problems(real["ds005883"])
    assert "Thermal pain" not in pain  # correct TaskDescription there
    assert "missing for 1/39 runs: sub-22_task-pain" in pain
    rest = real["ds004386"]
    assert all(i["severity"] == "info" for i in rest.issues)  # no multiband, nothing missing


def test_defects_emit_visible_warnings(shared_data):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        acq.read_bids_metadata(shared_data / "openneuro" / "ds005883")
    messages = [str(w.message) for w in record if issubclass(w.category, acq.MetadataWarning)]
    assert len(messages) == 3
    assert any("MultibandAccelerationFactor missing" in m for m in messages)
    assert all(w.filename == __file__ for w in record)  # points at the caller's line


def test_protocol_and_issues_tables(real):
    tab = acq.protocol_table(real)
    assert list(tab.columns) == ["ds005884", "ds005883", "ds004386"]
    assert tab.loc["TR (s)", "ds004386"] == pytest.approx(2.312)
    assert tab.loc["Slices", "ds005884"] == 70
    assert tab.loc["In-plane resolution (mm)", "ds005884"] == "n/a"  # no image header in a text-only copy
    issues = acq.issues_table(real)
    assert set(issues.columns) == {"dataset", "severity", "file", "problem"}
    assert (issues.dataset == "ds005884").sum() >= 5


def test_slice_timing_figure(real):
    import matplotlib

    matplotlib.use("Agg")
    fig = acq.slice_timing_figure(real)
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 3
    assert "MB 2" in axes[0].get_title() and "MB 1" in axes[2].get_title()
    # the plotted points are the sidecar's SliceTiming: 70 points in two bands of 35
    offsets = np.vstack([c.get_offsets() for c in axes[0].collections])
    from collections import Counter

    st = Counter(tuple(r.meta["SliceTiming"]) for r in real["ds005884"].runs).most_common(1)[0][0]
    assert sorted(map(tuple, offsets.tolist())) == sorted((float(t), float(i)) for i, t in enumerate(st))
    import matplotlib.pyplot as plt

    plt.close(fig)


# ------------------------------------------------------------------ synthetic datasets
def test_inheritance_deeper_sidecar_wins(tmp_path):
    root = _mini_bids(tmp_path / "ds", sub_meta={2: {"RepetitionTime": 1.5, "SliceTiming": [0, 0.3, 0.6, 0.9]}})
    meta = _meta_quiet(root)
    tr = {r.entities["sub"]: r.meta["RepetitionTime"] for r in meta.runs}
    assert tr == {"01": 2.0, "02": 1.5}
    assert meta.runs[1].meta["EchoTime"] == 0.03  # still inherited
    assert "RepetitionTime differs across runs" in _problems(meta)


def test_inplane_resolution_and_volumes_from_header(tmp_path):
    root = _mini_bids(tmp_path / "ds", n_sub=1, physio=False)
    img = nib.Nifti1Image(np.zeros((5, 6, 4, 7), np.int16), np.diag([1.5, 1.5, 4.0, 1.0]))
    img.header.set_zooms((1.5, 1.5, 4.0, 2.0))
    nib.save(img, root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    p = acq.protocol(_meta_quiet(root))
    assert p["inplane_resolution_mm"] == "1.5 x 1.5"
    assert p["n_volumes"] == 7 and p["n_slices"] == 4
    assert p["slice_thickness_mm"] == 4.0  # no SliceThickness field: from the header


def test_slice_count_mismatch_with_header_names_file(tmp_path):
    root = _mini_bids(tmp_path / "ds", n_sub=1, physio=False)
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 3, 2), np.int16), np.eye(4)), root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    with pytest.raises(SpineprintError, match=r"sub-01_task-rest_bold\.json: SliceTiming has 4 entries but the image has 3"):
        acq.read_bids_metadata(root)


def test_image_without_own_sidecar_inherits(tmp_path):
    root = _mini_bids(tmp_path / "ds", n_sub=1, physio=False)
    (root / "sub-01/func/sub-01_task-rest_bold.json").unlink()
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 4, 3), np.int16), np.eye(4)), root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    meta = _meta_quiet(root)
    assert meta.runs[0].sidecar is None and meta.runs[0].meta["RepetitionTime"] == 2.0


def test_missing_dataset_description(tmp_path):
    root = _mini_bids(tmp_path / "ds")
    (root / "dataset_description.json").unlink()
    with pytest.raises(SpineprintError, match=r"ds: not a BIDS dataset \(no dataset_description\.json\)"):
        acq.read_bids_metadata(root)
    with pytest.raises(SpineprintError, match="BIDS folder not found"):
        acq.read_bids_metadata(tmp_path / "nowhere")


def test_sidecar_not_json_names_file(tmp_path):
    root = _mini_bids(tmp_path / "ds")
    _write(root / "sub-02/func/sub-02_task-rest_bold.json", "{RepetitionTime: 2")
    with pytest.raises(SpineprintError, match=r"sub-02_task-rest_bold\.json: not valid JSON"):
        acq.read_bids_metadata(root)


def test_missing_repetition_time_names_file(tmp_path):
    root = _mini_bids(tmp_path / "ds", top={"TaskName": "rest", "SliceTiming": [0, 1, 2, 3]})
    _write(root / "sub-01/func/sub-01_task-rest_bold.json", {"RepetitionTime": 4.0})
    with pytest.raises(SpineprintError, match=r"sub-02_task-rest_bold\.json: no RepetitionTime"):
        acq.read_bids_metadata(root)


def test_slice_timing_beyond_tr_names_file(tmp_path):
    root = _mini_bids(tmp_path / "ds", sub_meta={1: {"SliceTiming": [0, 0.5, 1.0, 2.0]}})
    with pytest.raises(SpineprintError, match=r"sub-01_task-rest_bold\.json: SliceTiming values must lie in \[0, TR=2 s\)"):
        acq.read_bids_metadata(root)


def test_no_functional_runs(tmp_path):
    root = tmp_path / "ds"
    _write(root / "dataset_description.json", {"Name": "x"})
    with pytest.raises(SpineprintError, match="no functional runs"):
        acq.read_bids_metadata(root)


def test_generic_defects_on_synthetic_dataset(tmp_path):
    top = {"TaskName": "rest", "TaskDescription": "Finger tapping blocks", "RepetitionTime": 2.0,
           "SliceTiming": _planted_slice_timing(6, 2, "sequential ascending", 2.0)}
    root = _mini_bids(tmp_path / "ds", n_sub=3, top=top, physio="first",
                      readme="Files: `task-rest_bold.json`, `sub-01_task-rest_physio.json`, `task-rest_events.json`.")
    with pytest.warns(acq.MetadataWarning) as record:
        meta = acq.read_bids_metadata(root)
    text = _problems(meta)
    assert "MultibandAccelerationFactor missing in 3/3" in text and "multiband 2 is inferred" in text
    assert "TaskDescription of 3/3 runs" in text
    assert "README names a file that does not exist in the dataset: task-rest_events.json" in text
    assert "missing for 2/3 runs: sub-02_task-rest, sub-03_task-rest" in text
    assert len(record) == sum(i["severity"] == "warning" for i in meta.issues)


def test_clean_synthetic_dataset_has_no_warnings(tmp_path):
    top = {"TaskName": "rest", "TaskDescription": "Resting state, eyes open", "RepetitionTime": 2.0,
           "MultibandAccelerationFactor": 2, "SliceTiming": _planted_slice_timing(6, 2, "sequential ascending", 2.0)}
    root = _mini_bids(tmp_path / "ds", top=top, readme="See task-rest_bold.json.")
    _write(root / "participants.tsv", "participant_id\nsub-01\nsub-02\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", acq.MetadataWarning)
        meta = acq.read_bids_metadata(root)
    assert meta.issues == []
    assert acq.protocol(meta)["multiband_source"] == "sidecar"


# ------------------------------------------------------------------ offline fallback
def test_example_sidecars_cospine_like(tmp_path):
    root = acq.example_sidecars(path=tmp_path / "ex")
    meta = _meta_quiet(root)
    p = acq.protocol(meta)
    assert (p["tr_s"], p["te_s"], p["n_slices"], p["multiband"]) == (2.68, 0.027, 70, 2)
    assert p["slice_order"] == "interleaved ascending (odd first)"
    assert "GENERATED" in meta.name
    assert "'respiratory' physiological recording missing for 1/3" in _problems(meta)
    # byte-reproducible
    first = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    acq.example_sidecars(path=root)
    assert first == {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_load_datasets_local_copy(shared_data):
    paths, sources = acq.load_datasets(["ds004386"])
    assert paths == {"ds004386": (shared_data / "openneuro" / "ds004386").resolve()}
    assert sources["ds004386"] == "pinned OpenNeuro snapshot v1.1.2"


def test_load_datasets_offline_falls_back(tmp_path, monkeypatch):
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))

    def fail(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets.pooch, "retrieve", fail)
    with pytest.warns(acq.MetadataWarning, match="unavailable"):
        paths, sources = acq.load_datasets(["ds005884", "ds004386"])
    assert list(paths) == ["example"]
    assert sources["example"].startswith("GENERATED")
    assert paths["example"].is_relative_to(tmp_path / "cache")
    with pytest.raises(SpineprintError, match="SPINEPRINT_DATA_DIR"):
        acq.load_datasets(["ds005884"], fallback=False)
    with pytest.raises(SpineprintError, match="unknown OpenNeuro dataset"):
        acq.load_datasets(["ds000001"])


def test_admonitions_escape_and_flag():
    box = acq.sources_admonition({"ds1": "pinned <v1>"})
    assert 'class="admonition note"' in box and "&lt;v1&gt;" in box
    box = acq.sources_admonition({"example": "GENERATED CoSpine-like example sidecars"})
    assert 'class="admonition warning"' in box
    issues = pd.DataFrame([{"dataset": "d", "severity": "warning", "file": "a<b>.json", "problem": "x"},
                           {"dataset": "d", "severity": "info", "file": ".", "problem": "y"}])
    box = acq.issues_admonition(issues)
    assert "1 warning, 1 note" in box and "a&lt;b&gt;.json" in box
    assert "No issues" in acq.issues_admonition(issues.iloc[:0])


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=60, deadline=None)
@given(package=st.integers(3, 40), mb=st.integers(1, 4), tr=st.floats(0.5, 4.0),
       order=st.sampled_from(["sequential ascending", "sequential descending",
                              "interleaved ascending (even first)", "interleaved ascending (odd first)"]))
def test_slice_timing_property(package, mb, tr, order):
    n = package * mb
    info = acq.slice_timing_info(_planted_slice_timing(n, mb, order, tr), tr, n_slices=n)
    assert (info["multiband"], info["n_distinct"], info["order"]) == (mb, package, order)


def test_cli_protocol(shared_data, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    acq.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["protocol", str(shared_data / "openneuro" / "ds004386"), "--issues"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2.312" in out and "sequential descending" in out and "no physiological recordings" in out

"""Tests of spineprint_utils.simulate: every model piece against an independent computation,
the written BIDS dataset against its own ground truth, and a real BIDS validator."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from spineprint_utils import atlas, cli
from spineprint_utils import simulate as sim
from spineprint_utils._io import SpineprintError

ROOT = Path(__file__).resolve().parents[1]

SMALL = dict(n_subjects=2, n_sessions=2, n_runs=1, n_volumes=40, multiband=2, slice_order="interleaved")


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    return sim.simulate_dataset(tmp_path_factory.mktemp("sim") / "small", **SMALL)


def _identification(fc_a, fc_b):
    """Finn et al. 2015 identification accuracy, written independently of the package."""
    iu = np.triu_indices(fc_a[0].shape[0], 1)
    a = np.array([m[iu] for m in fc_a])
    b = np.array([m[iu] for m in fc_b])
    hits = 0
    for i in range(len(a)):
        r = [np.corrcoef(a[i], b[j])[0, 1] for j in range(len(b))]
        hits += int(np.argmax(r) == i)
    return hits / len(a)


# ------------------------------------------------------------------ slice timing
def test_slice_timing_orders_by_hand():
    np.testing.assert_allclose(sim.slice_timing(4, 2.0, "sequential"), [0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(sim.slice_timing(4, 2.0, "descending"), [1.5, 1.0, 0.5, 0])
    # interleaved: slices 0, 2, 4 then 1, 3
    np.testing.assert_allclose(sim.slice_timing(5, 1.0, "interleaved"), [0, 0.6, 0.2, 0.8, 0.4])
    # multiband 2 on 6 slices: 3 shots, slice k and k+3 together, interleaved 0,2,1
    np.testing.assert_allclose(sim.slice_timing(6, 3.0, "interleaved", 2), [0, 2, 1, 0, 2, 1])


@pytest.mark.parametrize("order", ["sequential", "interleaved", "descending"])
@pytest.mark.parametrize("mb", [1, 2, 4])
def test_slice_timing_properties(order, mb):
    st = sim.slice_timing(20, 2.5, order, mb)
    assert st.min() == 0 and st.max() < 2.5
    assert len(np.unique(st)) == 20 // mb
    assert np.all(np.bincount(np.rint(st / (2.5 / (20 // mb))).astype(int)) == mb)


def test_slice_timing_errors():
    with pytest.raises(SpineprintError, match="multiband"):
        sim.slice_timing(5, 2.0, multiband=2)
    with pytest.raises(SpineprintError, match="repetition time"):
        sim.slice_timing(5, 0.0)
    with pytest.raises(SpineprintError, match="slice_order"):
        sim.slice_timing(5, 2.0, "random")


# ------------------------------------------------------------------ connectivity model
def test_group_pattern_brute_force():
    segs = ["C3"] * 4 + ["C4"] * 4 + ["C6"] * 4
    horns = list(sim.HORNS) * 3
    g = sim.group_fc_pattern(segs, horns, rho=0.5)
    a = sim.horn_coupling()
    num = {"C3": 3, "C4": 4, "C6": 6}
    for i in range(12):
        for j in range(12):
            expect = a[sim.HORNS.index(horns[i]), sim.HORNS.index(horns[j])] * 0.5 ** abs(num[segs[i]] - num[segs[j]])
            assert g[i, j] == pytest.approx(expect)
    assert np.linalg.eigvalsh(g).min() > 0
    # the organisation of Kowalczyk et al. 2024 within a segment: same-side dorsal-ventral (LV-LD, RV-RD) strongest,
    # then left-right ventral-ventral (LV-RV) and dorsal-dorsal (LD-RD), then dorsal-ventral across sides (LV-RD)
    assert g[0, 2] > g[0, 1] and g[1, 3] > g[2, 3]
    assert min(g[0, 1], g[2, 3]) > g[0, 3] and min(g[0, 1], g[2, 3]) > g[1, 2]
    # decays across segments
    assert g[0, 1] > g[0, 5] > g[0, 9]


def test_planted_correlations_formula():
    g = sim.group_fc_pattern(["C5"] * 4 + ["C6"] * 4, list(sim.HORNS) * 2)
    c = sim.planted_correlations(g, 3, 2, 0.7, 0.4, seed=5)
    assert c.shape == (3, 2, 8, 8)
    # independent recomputation of subject 1, session 1
    w_n = sim.random_correlation(sim._rng(5, sim._T_SUBJ_FC, 1), 8)
    w_ne = sim.random_correlation(sim._rng(5, sim._T_SESS_FC, 1, 1), 8)
    np.testing.assert_allclose(c[1, 1], (g + 0.7 * w_n + 0.4 * w_ne) / 2.1)
    for m in c.reshape(-1, 8, 8):
        np.testing.assert_allclose(np.diag(m), 1.0)
        np.testing.assert_allclose(m, m.T)
        assert np.linalg.eigvalsh(m).min() > 0
    np.testing.assert_allclose(sim.planted_correlations(g, 2, 2, 0.0, 0.0)[1, 0], g)


def test_neural_timeseries_has_planted_correlation():
    g = sim.group_fc_pattern(["C5"] * 4 + ["C6"] * 4, list(sim.HORNS) * 2)
    x = sim.neural_timeseries(g, 3000, 2.0, 1, np.random.default_rng(0))
    assert x.shape == (3000, 8)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(x.std(0), 1, rtol=1e-9)
    assert np.abs(np.corrcoef(x.T) - g).max() < 0.12
    # BOLD-like: low-pass (HRF) -> strong lag-1 autocorrelation at TR 2 s
    assert np.corrcoef(x[:-1, 0], x[1:, 0])[0, 1] > 0.5


def test_canonical_hrf_peak():
    h = sim.canonical_hrf(0.1)
    assert h.sum() == pytest.approx(1.0)
    assert 4.0 < np.argmax(h) * 0.1 < 6.0  # peak at (shape - 1) * scale = 5 s (spm_hrf default)
    assert h.min() < 0  # undershoot


def _gt_fc(fingerprint, session, n=12, t=200, seed=1):
    segs = [s for s in ("C4", "C5", "C6") for _ in range(4)]
    g = sim.group_fc_pattern(segs, list(sim.HORNS) * 3)
    c = sim.planted_correlations(g, n, 2, fingerprint, session, seed=seed)
    fc = np.empty((n, 2, 12, 12))
    for i in range(n):
        for e in range(2):
            x = sim.neural_timeseries(c[i, e], t, 2.0, 1, np.random.default_rng([seed, i, e]))
            fc[i, e] = np.corrcoef(x.T)
    return g, fc


def test_ground_truth_fc_recovers_group_and_identification():
    iu = np.triu_indices(12, 1)
    g, strong = _gt_fc(3.0, 0.0)
    _, none = _gt_fc(0.0, 1.0)
    _, weak_group = _gt_fc(0.2, 0.2)
    assert np.corrcoef(weak_group.mean((0, 1))[iu], g[iu])[0, 1] > 0.9
    assert _identification(strong[:, 0], strong[:, 1]) >= 0.9
    assert _identification(none[:, 0], none[:, 1]) <= 0.34  # chance is 1/12


# ------------------------------------------------------------------ physiology
def test_retroicor_basis_closed_form():
    phi = np.linspace(0, 7, 11)
    b = sim.retroicor_basis(phi, 3)
    np.testing.assert_allclose(b, np.column_stack([np.cos(phi), np.sin(phi), np.cos(2 * phi), np.sin(2 * phi),
                                                   np.cos(3 * phi), np.sin(3 * phi)]))


def _physio_text_reference(cardiac, respiratory, trigger) -> str:
    """The former sample-by-sample writer: Python's own formatting of every value."""
    return "".join(f"{c:.4f}\t{r:.4f}\t{t}\n" for c, r, t in zip(np.asarray(cardiac).tolist(),
                                                                 np.asarray(respiratory).tolist(),
                                                                 np.asarray(trigger).astype(int).tolist()))


def test_physio_text_bytes_identical_to_python_formatting():
    # the column-wise writer must give the bytes of f"{v:.4f}" exactly: signs of values that round
    # to zero ("-0.0000"), exact binary ties (ties to even: 1/32 -> 0.0312), near ties, carries
    # (9.99995 -> 10.0000), large values, integer triggers of several digits and of either sign
    rng = np.random.default_rng(11)
    special = np.array([0.0, -0.0, -4e-5, 5e-5, 1.5e-4, 0.03125, -0.03125, 2.5e-5, 1.00005, -1.00005,
                        0.12345, 0.99995, 9.99995, -9.99995, 123456.78905, 1e9 + 0.00005])
    for scale in (1e-6, 1e-3, 1.0, 3.0, 1e4, 1e10):
        n = 2000
        card, resp = rng.standard_normal(n) * scale, rng.standard_normal(n)
        card[:special.size], resp[-special.size:] = special, -special
        trig = (rng.random(n) < 0.05) * rng.integers(-12, 300, n)
        assert sim._physio_text(card, resp, trig) == _physio_text_reference(card, resp, trig)
    grid = np.arange(-8192, 8192) / 2.0 ** 15  # every value an exact binary fraction, many exact ties
    assert sim._physio_text(grid, grid[::-1], np.zeros(grid.size)) == _physio_text_reference(
        grid, grid[::-1], np.zeros(grid.size))
    bad = np.array([np.nan, 1.0, np.inf])  # not formatted column-wise: same text as before
    assert sim._physio_text(bad, bad, [0, 1, 0]) == _physio_text_reference(bad, bad, [0, 1, 0])
    assert sim._physio_text([], [], []) == ""
    # a simulated recording, as the simulator writes it
    ph = sim.physio_traces(60.0, 100.0, 72.0, 15.0, 1.0, np.random.default_rng(3))
    trig = np.zeros(ph["cardiac"].size)
    trig[::200] = 1
    text = sim._physio_text(ph["cardiac"], ph["respiratory"], trig)
    assert text == _physio_text_reference(ph["cardiac"], ph["respiratory"], trig)
    assert text.count("\n") == ph["cardiac"].size


def test_physio_traces_rates_and_phases():
    from scipy.signal import find_peaks

    tr = sim.physio_traces(120.0, 100.0, 72.0, 15.0, 1.0, np.random.default_rng(3))
    assert tr["time"][0] == pytest.approx(-5.0)
    peaks, _ = find_peaks(tr["cardiac"], distance=40, prominence=0.5)
    assert abs(len(peaks) - 72 * 2) <= 6
    # pulse peaks sit at cardiac phase ~ 0 (mod 2 pi)
    wrapped = np.angle(np.exp(1j * tr["cardiac_phase"][peaks]))
    assert np.median(np.abs(wrapped)) < 0.2
    # respiration: ~15 breaths/min, end-expiration (belt minimum) at phase 0
    breaths = tr["respiratory_phase"][-1] / (2 * np.pi)
    assert 25 <= breaths <= 35
    assert np.corrcoef(tr["respiratory"], -np.cos(tr["respiratory_phase"]))[0, 1] > 0.9


# ------------------------------------------------------------------ motion
def test_shift_slices_matches_scipy():
    rng = np.random.default_rng(0)
    data = ndimage.gaussian_filter(rng.standard_normal((16, 12, 3, 4)), (2, 2, 0, 0)).astype(np.float64)
    shift = rng.uniform(-2, 2, (4, 3, 2))
    out = sim.shift_slices(data, shift)
    for t in range(4):
        for z in range(3):
            ref = ndimage.shift(data[:, :, z, t], shift[t, z], order=1, mode="nearest")
            np.testing.assert_allclose(out[:, :, z, t], ref, atol=1e-10)


def test_slicewise_motion_statistics():
    m = sim.slicewise_motion(400, 10, 0.3, np.random.default_rng(1), spike_rate=0.0)
    assert m.shape == (400, 10, 2)
    assert 0.2 < m[:, :, 0].mean(1).std() < 0.5
    assert np.all(sim.slicewise_motion(50, 4, 0.0, np.random.default_rng(1)) == 0)
    spiky = sim.slicewise_motion(400, 10, 0.3, np.random.default_rng(1), spike_rate=0.05)
    jumps = np.abs(np.diff(spiky.mean(1), axis=0)).max(1)
    assert (jumps > 0.9).sum() >= 5


# ------------------------------------------------------------------ tSNR
def test_tsnr_measure_and_sigma_closed_form():
    rng = np.random.default_rng(0)
    data = 500 + 25 * rng.standard_normal((3, 3, 2, 400))
    mask = np.ones((3, 3, 2), bool)
    expect = np.median([data[i, j, k].mean() / data[i, j, k].std() for i in range(3) for j in range(3) for k in range(2)])
    assert sim.measure_tsnr(data, mask) == pytest.approx(expect)
    # no other fluctuation: sigma = mean / tsnr; with variance v: sqrt((mean/tsnr)^2 - v)
    assert sim.thermal_sigma_for_tsnr(np.full(5, 600.0), np.zeros(5), 20.0) == pytest.approx(30.0, rel=1e-6)
    assert sim.thermal_sigma_for_tsnr(np.full(5, 600.0), np.full(5, 500.0), 20.0) == pytest.approx(20.0, rel=1e-6)
    with pytest.raises(SpineprintError, match="not reachable"):
        sim.thermal_sigma_for_tsnr(np.full(5, 600.0), np.full(5, 3600.0), 20.0)


# ------------------------------------------------------------------ the dataset
def test_bids_layout_and_sidecars(small_ds):
    root = small_ds
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.8.0" and desc["DatasetType"] == "raw"
    gt_desc = json.loads((root / "derivatives/groundtruth/dataset_description.json").read_text())
    assert gt_desc["DatasetType"] == "derivative" and gt_desc["GeneratedBy"]
    parts = pd.read_csv(root / "participants.tsv", sep="\t")
    assert list(parts["participant_id"]) == ["sub-01", "sub-02"]
    prefix = "sub-02_ses-01_task-rest_run-1"
    func = root / "sub-02" / "ses-01" / "func"
    t2w = nib.load(root / "sub-02/ses-01/anat/sub-02_ses-01_T2w.nii.gz").get_fdata()
    csf = nib.load(root / "derivatives/groundtruth/space-PAM50_label-csf_probseg.nii.gz").get_fdata() > 0.9
    cord_t2 = nib.load(root / "derivatives/groundtruth/space-PAM50_label-cord_probseg.nii.gz").get_fdata() > 0.9
    assert t2w[csf].mean() > 2 * t2w[cord_t2].mean()  # T2 contrast: bright CSF
    side = json.loads((func / f"{prefix}_bold.json").read_text())
    img = nib.load(func / f"{prefix}_bold.nii.gz")
    assert img.get_data_dtype() == np.int16
    nx, ny, nz, nt = img.shape
    assert nt == 40
    assert img.header.get_zooms()[3] == pytest.approx(side["RepetitionTime"]) and side["RepetitionTime"] == 2.0
    assert side["MultibandAccelerationFactor"] == 2
    np.testing.assert_allclose(side["SliceTiming"], sim.slice_timing(nz, 2.0, "interleaved", 2), atol=1e-6)
    for key in ("TaskName", "EchoTime", "FlipAngle", "PhaseEncodingDirection", "TotalReadoutTime"):
        assert key in side
    data = np.asarray(img.dataobj)
    cord = nib.load(root / "derivatives/groundtruth/space-PAM50_label-cord_probseg.nii.gz").get_fdata() >= 0.5
    assert 450 < data[cord].mean() < 1000  # realistic baseline
    np.testing.assert_allclose(img.affine, nib.load(root / "derivatives/groundtruth/space-PAM50_atlas-PAM50horns_dseg.nii.gz").affine)
    # physio: columns, StartTime, one trigger per volume at t = k * TR
    pj = json.loads((func / f"{prefix}_physio.json").read_text())
    assert pj["Columns"] == ["cardiac", "respiratory", "trigger"] and pj["SamplingFrequency"] == 100.0
    assert -10 < pj["StartTime"] < 0
    phys = pd.read_csv(func / f"{prefix}_physio.tsv.gz", sep="\t", header=None).to_numpy()
    trig = np.flatnonzero(phys[:, 2] == 1)
    assert len(trig) == 40
    np.testing.assert_allclose(pj["StartTime"] + trig / pj["SamplingFrequency"], np.arange(40) * 2.0, atol=0.01)


def test_regions_are_the_atlas_regions(small_ds):
    gt = sim.load_ground_truth(small_ds)
    labels_img = nib.load(gt["labels"])
    ref = nib.Nifti1Image(np.zeros(labels_img.shape, np.float32), labels_img.affine)
    lab, regions = atlas.region_labels(ref)
    np.testing.assert_array_equal(np.asarray(labels_img.dataobj), np.asarray(lab.dataobj))
    assert list(gt["regions"]["name"]) == list(regions["name"])
    affine, shape = atlas.pam50_epi_grid(voxel_size=(1.0, 1.0, 5.0), fov_mm=sim.DEFAULTS["fov_mm"])
    np.testing.assert_allclose(labels_img.affine, affine)
    assert labels_img.shape == tuple(shape)


def test_ground_truth_contents(small_ds):
    gt = sim.load_ground_truth(small_ds)
    r = len(gt["regions"])
    nz = gt["params"]["grid_shape"][2]
    assert set(gt["neural"]) == {f"sub-{s}_ses-{e}_task-rest_run-1" for s in ("01", "02") for e in ("01", "02")}
    for key, x in gt["neural"].items():
        assert x.shape == (40, r)
        np.testing.assert_allclose(gt["fc"][key], np.corrcoef(x.T), atol=1e-5)
        assert gt["motion"][key].shape == (40, nz, 2)
        assert gt["cardiac_phase"][key].shape == (40, nz)
        assert np.all((gt["cardiac_phase"][key] >= 0) & (gt["cardiac_phase"][key] < 2 * np.pi + 1e-4))
        assert np.all(np.abs(gt["respiratory_phase"][key]) <= np.pi + 1e-4)
        st = sim.slice_timing(nz, 2.0, "interleaved", 2)
        np.testing.assert_allclose(gt["acquisition_time"][key], np.arange(40)[:, None] * 2.0 + st, atol=1e-4)
        np.testing.assert_allclose(np.diag(gt["model_fc"][key]), 1.0, atol=1e-6)
    g = gt["group_fc"]
    np.testing.assert_allclose(g, sim.group_fc_pattern(gt["regions"]["segment"], gt["regions"]["horn"]), atol=1e-6)


def test_load_ground_truth_errors(tmp_path, small_ds):
    with pytest.raises(SpineprintError, match="groundtruth"):
        sim.load_ground_truth(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(small_ds, broken)
    (broken / "derivatives/groundtruth/regions.tsv").unlink()
    with pytest.raises(SpineprintError, match="regions.tsv"):
        sim.load_ground_truth(broken)


def test_tsnr_within_15_percent(small_ds):
    gt = sim.load_ground_truth(small_ds)
    cord = nib.load(gt["tissues"]["cord"]).get_fdata() >= 0.5
    target = sim.DEFAULTS["tsnr"]  # SMALL leaves the tSNR at its default
    assert gt["params"]["params"]["tsnr"] == target
    for key in gt["neural"]:
        sub, ses = key.split("_")[:2]
        data = np.asarray(nib.load(small_ds / sub / ses / "func" / f"{key}_bold.nii.gz").dataobj, float)
        ts = data[cord]
        tsnr = np.median(ts.mean(1) / ts.std(1))
        assert abs(tsnr / target - 1) < 0.15, (key, tsnr)


@pytest.mark.parametrize("target", [6.0, 30.0])
def test_tsnr_range_ends(tmp_path, target):
    """The realistic range 5-30 is reachable with the default amplitudes."""
    out = sim.simulate_dataset(tmp_path / "t", n_subjects=1, n_sessions=1, n_volumes=30, tsnr=target)
    gt = sim.load_ground_truth(out)
    cord = nib.load(gt["tissues"]["cord"]).get_fdata() >= 0.5
    data = np.asarray(nib.load(out / "sub-01/ses-01/func/sub-01_ses-01_task-rest_run-1_bold.nii.gz").dataobj, float)
    ts = data[cord]
    assert abs(np.median(ts.mean(1) / ts.std(1)) / target - 1) < 0.15


def test_motion_and_physio_are_in_the_images(tmp_path):
    """Planted motion is recovered by brute-force registration (scipy), planted cardiac noise by RETROICOR."""
    small = dict(anatomy="phantom", segments=("C5", "C6", "C7"))
    out = sim.simulate_dataset(tmp_path / "m", n_subjects=1, n_sessions=1, n_volumes=24, motion_amplitude=0.5, **small,
                               physio_amplitude=0.0, neural_amplitude=0.0, tsnr=8.0, slice_order="sequential")
    gt = sim.load_ground_truth(out)
    key = "sub-01_ses-01_task-rest_run-1"
    data = np.asarray(nib.load(out / "sub-01/ses-01/func" / f"{key}_bold.nii.gz").dataobj, float)
    true = gt["motion"][key]  # mm = voxels (1 mm in-plane)
    grid = np.arange(-4.0, 4.01, 0.1)
    est, ref_shift = [], []
    z = data.shape[2] // 2
    for t in range(1, 24, 3):
        best, arg = np.inf, None
        for dx in grid[::5]:  # coarse
            for dy in grid[::5]:
                err = np.sum((ndimage.shift(data[:, :, z, 0], (dx, dy), order=1, mode="nearest") - data[:, :, z, t])[4:-4, 4:-4] ** 2)
                if err < best:
                    best, arg = err, (dx, dy)
        for dx in arg[0] + np.arange(-0.5, 0.51, 0.1):  # fine
            for dy in arg[1] + np.arange(-0.5, 0.51, 0.1):
                err = np.sum((ndimage.shift(data[:, :, z, 0], (dx, dy), order=1, mode="nearest") - data[:, :, z, t])[4:-4, 4:-4] ** 2)
                if err < best:
                    best, arg = err, (dx, dy)
        est.append(arg)
        ref_shift.append(true[t, z] - true[0, z])
    est, ref_shift = np.array(est), np.array(ref_shift)
    assert np.abs(est - ref_shift).max() < 0.3, (est, ref_shift)

    out = sim.simulate_dataset(tmp_path / "p", n_subjects=1, n_sessions=1, n_volumes=80, motion_amplitude=0.0, **small,
                               physio_amplitude=1.0, neural_amplitude=0.0, tsnr=40.0)
    gt = sim.load_ground_truth(out)
    data = np.asarray(nib.load(out / "sub-01/ses-01/func" / f"{key}_bold.nii.gz").dataobj, float)
    csf = nib.load(gt["tissues"]["csf"]).get_fdata() > 0.9
    r2_true, r2_shuffled = [], []
    for z in range(data.shape[2]):
        y = data[:, :, z][csf[:, :, z]].T  # (T, V)
        if y.shape[1] == 0:
            continue
        for phase, bucket in ((gt["cardiac_phase"][key][:, z], r2_true), (np.roll(gt["cardiac_phase"][key][:, z], 7), r2_shuffled)):
            x = np.column_stack([np.ones(80), sim.retroicor_basis(phase, 2), sim.retroicor_basis(gt["respiratory_phase"][key][:, z], 2)])
            resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
            bucket.append(1 - resid.var(0).sum() / y.var(0).sum())
    assert np.mean(r2_true) > 0.5 and np.mean(r2_true) > np.mean(r2_shuffled) + 0.1


def test_physio_subject_specificity_maps():
    affine, shape = atlas.pam50_epi_grid(fov_mm=(16.0, 16.0), segments=("C5",), source="phantom")
    tissues = atlas.tissue_maps(affine, shape, source="phantom")
    same = [sim._physio_maps(tissues, affine, shape, 0.0, 1.0, 0, s) for s in (0, 1)]
    diff = [sim._physio_maps(tissues, affine, shape, 1.0, 1.0, 0, s) for s in (0, 1)]
    for a, b in zip(*same):
        np.testing.assert_allclose(a, b)
    assert np.abs(diff[0][0] - diff[1][0]).max() > 1e-3


def test_deterministic_and_cached(tmp_path, small_ds):
    again = sim.simulate_dataset(tmp_path / "again", **SMALL)
    cmp = filecmp.dircmp(small_ds, again)

    def same(c):
        assert not c.left_only and not c.right_only and not c.diff_files and not c.funny_files, c.report()
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors, mismatch
        for sub in c.subdirs.values():
            same(sub)

    same(cmp)
    # cached: same parameters -> same folder, not regenerated
    small = dict(n_subjects=1, n_sessions=1, n_volumes=12)
    first = sim.default_dataset(**small)
    stamp = (first / "sub-01/ses-01/func/sub-01_ses-01_task-rest_run-1_bold.nii.gz").stat().st_mtime_ns
    assert sim.default_dataset(**small) == first
    assert (first / "sub-01/ses-01/func/sub-01_ses-01_task-rest_run-1_bold.nii.gz").stat().st_mtime_ns == stamp
    assert sim.default_dataset(**small, seed=1) != first
    assert str(first).startswith(os.environ["SPINEPRINT_CACHE_DIR"])
    # reusing an existing output folder with the same parameters is a no-op; different ones are refused
    assert sim.simulate_dataset(first, **small) == first
    with pytest.raises(SpineprintError, match="not empty"):
        sim.simulate_dataset(first, **small, seed=3)


@pytest.mark.parametrize("bad, match", [
    (dict(n_subjects=0), "n_subjects"),
    (dict(tr=0.0), "tr must be"),
    (dict(tr=-2.0), "tr must be"),
    (dict(fingerprint_strength=-0.1), "fingerprint_strength"),
    (dict(session_strength=-1), "session_strength"),
    (dict(tsnr=0), "tsnr"),
    (dict(physio_subject_specificity=1.5), "physio_subject_specificity"),
    (dict(n_slices=500), "n_slices=500"),
    (dict(multiband=3), "multiband"),
    (dict(segments=("C3", "X9")), "X9"),
    (dict(slice_order="random"), "slice_order"),
    (dict(n_subject=3), "unknown simulation parameter"),
    (dict(tsnr=500.0), "not reachable"),
])
def test_bad_parameters(tmp_path, bad, match):
    kw = dict(n_subjects=1, n_sessions=1, n_volumes=12)
    kw.update(bad)
    with pytest.raises(SpineprintError, match=match):
        sim.simulate_dataset(tmp_path / "bad", **kw)
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob(".bad.*"))  # no temporary folder left behind


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["simulate", str(out), "--n-subjects", "1", "--n-sessions", "1", "--n-volumes", "12",
                     "--slice-order", "sequential"]) == 0
    assert (out / "sub-01/ses-01/func/sub-01_ses-01_task-rest_run-1_bold.nii.gz").is_file()
    side = json.loads((out / "sub-01/ses-01/func/sub-01_ses-01_task-rest_run-1_bold.json").read_text())
    assert side["SliceTiming"] == sorted(side["SliceTiming"])
    assert cli.main(["simulate", str(tmp_path / "x"), "--n-subjects", "0"]) == 1
    assert "n_subjects" in capsys.readouterr().err


# ------------------------------------------------------------------ BIDS validator
def _validator():
    local = ROOT / ".tools" / "node_modules" / ".bin" / "bids-validator"
    if local.is_file():
        return [str(local)]
    npx = shutil.which("npx")
    if npx and (ROOT / ".tools").is_dir():
        return [npx, "--prefix", str(ROOT / ".tools"), "--no-install", "bids-validator"]
    return None


@pytest.mark.parametrize("extra", [{}, {"space": "native", "distortion": True, "n_subjects": 1, "n_sessions": 2,
                                        "segments": ("C4", "C5")}], ids=["PAM50", "native+distortion"])
def test_bids_validator(tmp_path, extra):
    cmd = _validator()
    if cmd is None:
        pytest.skip("bids-validator not installed: run `npm install --prefix .tools bids-validator@1.15.0`")
    out = sim.simulate_dataset(tmp_path / "bids", **{"n_subjects": 2, "n_sessions": 2, "n_volumes": 20, **extra})
    if extra:
        assert sorted(p.name for p in out.glob("sub-01/ses-02/fmap/*")) == [
            "sub-01_ses-02_dir-AP_epi.json", "sub-01_ses-02_dir-AP_epi.nii.gz",
            "sub-01_ses-02_dir-PA_epi.json", "sub-01_ses-02_dir-PA_epi.nii.gz"]
    proc = subprocess.run(cmd + [str(out), "--json"], capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"bids-validator gave no JSON (rc {proc.returncode}): {proc.stdout[:500]} {proc.stderr[:500]}")
    errors = report["issues"]["errors"]
    warnings = [w["key"] for w in report["issues"]["warnings"]]
    print("bids-validator warnings:", warnings)
    assert not errors, [(e["key"], e.get("reason")) for e in errors]


def test_physiological_noise_alone_can_fake_a_fingerprint(tmp_path):
    """No neural signal at all: region FC of the raw images is physiological noise (+ thermal).
    With participant-specific physio maps, participants are identified across sessions, and
    their self-similarity margin is larger than with shared maps."""
    def margin_and_rate(spec):
        root = sim.simulate_dataset(tmp_path / f"s{spec}", n_subjects=6, n_sessions=2, n_volumes=60, anatomy="phantom",
                                    segments=("C5", "C6"), fov_mm=(20.0, 16.0), fingerprint_strength=0.0,
                                    neural_amplitude=0.0, motion_amplitude=0.0, physio_amplitude=2.0,
                                    physio_subject_specificity=spec, tsnr=20.0)
        gt = sim.load_ground_truth(root)
        lab = np.asarray(nib.load(gt["labels"]).dataobj)
        fcs = {}
        for k in gt["neural"]:
            sub, ses = k.split("_")[:2]
            d = np.asarray(nib.load(root / sub / ses / "func" / f"{k}_bold.nii.gz").dataobj, float)
            fcs[k] = np.corrcoef(np.array([d[lab == r].mean(0) for r in range(1, lab.max() + 1)]))
        a = [fcs[k] for k in sorted(fcs) if "ses-01" in k]
        b = [fcs[k] for k in sorted(fcs) if "ses-02" in k]
        iu = np.triu_indices(a[0].shape[0], 1)
        c = np.corrcoef(np.array([m[iu] for m in a]), np.array([m[iu] for m in b]))[:6, 6:]
        return np.diag(c).mean() - c[~np.eye(6, dtype=bool)].mean(), _identification(a, b)

    margin_specific, rate_specific = margin_and_rate(1.0)
    margin_shared, _ = margin_and_rate(0.0)
    assert rate_specific >= 0.8
    assert margin_specific > 1.5 * margin_shared


def test_group_pattern_recovered_from_dataset(tmp_path):
    """Without individual deviations, the written ground truth and the raw images' region averages
    both recover the planted group pattern; a permuted pattern does not match."""
    out = sim.simulate_dataset(tmp_path / "g", n_subjects=3, n_sessions=1, n_volumes=100, anatomy="phantom",
                               segments=("C5", "C6"), fov_mm=(20.0, 16.0), fingerprint_strength=0.0,
                               session_strength=0.0, physio_amplitude=0.0, motion_amplitude=0.0, tsnr=12.0)
    gt = sim.load_ground_truth(out)
    g = gt["group_fc"]
    iu = np.triu_indices(len(g), 1)
    perm = np.random.default_rng(0).permutation(len(g))
    truth_fc = np.mean(list(gt["fc"].values()), axis=0)
    assert np.corrcoef(truth_fc[iu], g[iu])[0, 1] > 0.8
    lab = np.asarray(nib.load(gt["labels"]).dataobj)
    raw = []
    for key in gt["neural"]:
        sub, ses = key.split("_")[:2]
        d = np.asarray(nib.load(out / sub / ses / "func" / f"{key}_bold.nii.gz").dataobj, float)
        roi = np.array([d[lab == r].mean(0) for r in range(1, len(g) + 1)])
        raw.append(np.corrcoef(roi))
        # each region's average follows its own planted neural signal
        own = [np.corrcoef(roi[r], gt["neural"][key][:, r])[0, 1] for r in range(len(g))]
        assert np.median(own) > 0.5
    raw_fc = np.mean(raw, axis=0)
    assert np.corrcoef(raw_fc[iu], g[iu])[0, 1] > 0.6
    assert np.corrcoef(raw_fc[iu], g[np.ix_(perm, perm)][iu])[0, 1] < 0.5


def test_thermal_tsnr_reference_keeps_the_thermal_noise_fixed(tmp_path):
    """tsnr_reference="thermal": the thermal SD is median cord mean / tsnr whatever the physiological noise and
    motion, so sweeping them changes one factor at a time; the default ("raw") lowers it when they grow."""
    small = dict(n_subjects=1, n_sessions=1, n_volumes=20, anatomy="phantom", segments=("C5",), fov_mm=(20.0, 16.0))
    sig = {}
    for ref in ("raw", "thermal"):
        for amp in (0.0, 3.0):
            root = sim.simulate_dataset(tmp_path / f"{ref}{amp}", tsnr=4.0, tsnr_reference=ref, physio_amplitude=amp,
                                        motion_amplitude=0.3 * amp, **small)
            runs = pd.read_csv(root / "derivatives/groundtruth/runs.tsv", sep="\t")
            sig[ref, amp] = float(runs["thermal_sigma"].iloc[0])
    assert sig["thermal", 3.0] == pytest.approx(sig["thermal", 0.0], rel=0.02)
    assert sig["raw", 3.0] < 0.9 * sig["raw", 0.0]
    with pytest.raises(SpineprintError, match="tsnr_reference"):
        sim.simulate_dataset(tmp_path / "bad", tsnr_reference="both", **small)

"""End-to-end tests of spineprint_utils.preprocess on simulated ground truth and real data."""

import gzip
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from spineprint_utils import motion, preprocess, simulate
from spineprint_utils._io import SpineprintError, load_nifti
from spineprint_utils.parallel import parallel_map

N_VOL = 120


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """2 subjects x 1 session, phantom anatomy; sub-02 has its physio removed (copy, not the cache)."""
    root = tmp_path_factory.mktemp("sim") / "bids"
    # strong planted physiological noise (3 x the default) so that its removal matters
    simulate.simulate_dataset(root, n_subjects=2, n_sessions=1, n_volumes=N_VOL, anatomy="phantom", seed=3,
                              physio_amplitude=3.0)
    for f in (root / "sub-02").rglob("*_physio.*"):
        f.unlink()
    return root


@pytest.fixture(scope="module")
def deriv(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("deriv") / "spineprint"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        path = preprocess.preprocess_dataset(sim, out, progress=False)
    return path, [str(w.message) for w in rec]


def _prefix(sub):
    return f"sub-{sub}_ses-01_task-rest_run-1"


def test_outputs_and_qc_table(sim, deriv):
    out, _ = deriv
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "spineprint"
    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    assert list(qc["run"]) == [_prefix("01"), _prefix("02")]
    native_only = {"fieldmap", "fieldmap_json", "magnitude", "magnitude_json", "dseg", "dseg_tsv", "dseg_json", "xfm",
                   "fig_native", "fig_funcanat", "xfm_itk", "xfm_f2a_itk"}  # native-space runs (tests/test_native.py)
    for key, path in preprocess.run_outputs(sim / "sub-01/ses-01/func" / f"{_prefix('01')}_bold.nii.gz", out).items():
        assert path.is_file() != (key in native_only), key
    assert qc["registration"].eq("not needed: run in PAM50 space").all()
    assert qc["distortion_correction"].str.startswith("skip: no reverse phase-encoding").all()
    # no physio QC figure for the run without physio
    assert not preprocess.run_outputs(sim / "sub-02/ses-01/func" / f"{_prefix('02')}_bold.nii.gz",
                                      out)["fig_physio"].exists()
    img = nib.load(out / "sub-01/ses-01/func" / f"{_prefix('01')}_desc-preproc_bold.nii.gz")
    raw = nib.load(sim / "sub-01/ses-01/func" / f"{_prefix('01')}_bold.nii.gz")
    assert img.shape == raw.shape and np.allclose(img.affine, raw.affine)
    conf = pd.read_csv(out / "sub-01/ses-01/func" / f"{_prefix('01')}_desc-confounds_timeseries.tsv", sep="\t")
    meta = json.loads((out / "sub-01/ses-01/func" / f"{_prefix('01')}_desc-confounds_timeseries.json").read_text())
    assert len(conf) == N_VOL
    assert all(c in meta for c in conf.columns)  # every column described
    assert meta["PhysiologicalModel"].startswith("RETROICOR")
    row = qc.set_index("run").loc[_prefix("01")]
    assert row["physio_model_applied"] == "yes"
    assert 40 < row["heart_rate_bpm"] < 120 and 5 < row["respiratory_rate_bpm"] < 40
    assert row["tsnr_post_cord"] > row["tsnr_pre_cord"]
    assert row["var_physio_pct"] > 5  # physiological noise is planted


def test_missing_physio_is_recorded_never_silent(sim, deriv):
    out, messages = deriv
    qc = pd.read_csv(out / "qc.tsv", sep="\t").set_index("run")
    assert qc.loc[_prefix("02"), "physio_model_applied"] == "no"
    assert "no physio file" in qc.loc[_prefix("02"), "physio_model"]
    assert np.isnan(qc.loc[_prefix("02"), "heart_rate_bpm"])
    meta = json.loads((out / "sub-02/ses-01/func" / f"{_prefix('02')}_desc-confounds_timeseries.json").read_text())
    assert meta["PhysiologicalModel"] == "none: no physio file found" and meta["PhysiologicalModelApplied"] is False
    assert any("WITHOUT the physiological noise model" in m for m in messages)


def test_motion_matches_ground_truth(tmp_path):
    """Default-amplitude simulation: recovered slice-wise translations vs the planted ones."""
    root = simulate.simulate_dataset(tmp_path / "bids", n_subjects=1, n_sessions=1, n_volumes=80, anatomy="phantom",
                                     seed=5, motion_amplitude=0.4)
    gt = simulate.load_ground_truth(root)
    p = _prefix("01")
    data = np.asarray(nib.load(root / "sub-01/ses-01/func" / f"{p}_bold.nii.gz").dataobj, dtype=np.float32)
    cord = np.asarray(nib.load(gt["tissues"]["cord"]).dataobj) >= 0.5
    csf = np.asarray(nib.load(gt["tissues"]["csf"]).dataobj) >= 0.5
    from scipy import ndimage

    est_mask = ndimage.binary_dilation(cord | csf, structure=np.ones((3, 3, 1), bool), iterations=3)
    res = motion.motion_correct(data, est_mask)  # voxels are 1 mm in-plane: voxel shifts = mm
    true = gt["motion"][p].transpose(1, 0, 2)
    # the reference is the mean image: compare displacements relative to their temporal mean
    err = (res.shifts - res.shifts.mean(1, keepdims=True)) - (true - true.mean(1, keepdims=True))
    rms = float(np.sqrt(np.mean(err**2)))
    assert rms < 0.1, rms  # voxel 1 mm; measured ~0.06 mm (true motion RMS ~0.4 mm)
    assert rms < 0.5 * float(np.sqrt(np.mean((true - true.mean(1, keepdims=True)) ** 2)))
    # temporal SD in the cord drops
    assert res.corrected.std(-1)[cord].mean() < data.std(-1)[cord].mean()


def test_retroicor_raises_correlation_with_true_neural_signal(sim, deriv, tmp_path):
    out, _ = deriv
    gt = simulate.load_ground_truth(sim)
    labels = np.asarray(nib.load(gt["labels"]).dataobj)
    p = _prefix("01")
    bold = sim / "sub-01/ses-01/func" / f"{p}_bold.nii.gz"
    # aCompCor captures much of the same CSF-borne noise, so compare the physio model alone. The model is the
    # 2/2/(0x0) RETROICOR of Glover et al. 2000 (8 regressors per slice): with the default simultaneous cleaning,
    # the 4/4/(2x2) model (32 per slice) leaves about 120 * 0.48 - 2 - 34 = 22 in-band degrees of freedom in
    # these 120 volumes and removes neural signal with the noise (chapter 02 shows the trade-off).
    phys = preprocess.preprocess_run(bold, tmp_path / "phys", n_csf_components=0, figures=False, cardiac_order=2,
                                     respiratory_order=2, interaction_order=(0, 0))
    nophys = preprocess.preprocess_run(bold, tmp_path / "nophys", physio=False, n_csf_components=0, figures=False)
    neural = gt["neural"][p]
    ids = sorted(int(v) for v in np.unique(labels) if v > 0)

    def mean_corr(path):
        d = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        rois = np.stack([d[labels == i].mean(0) for i in ids], axis=1)
        return np.mean([np.corrcoef(rois[:, k], neural[:, k])[0, 1] for k in range(len(ids))])

    with_phys = mean_corr(phys["preproc"])
    without = mean_corr(nophys["preproc"])
    assert json.loads(nophys["confounds_json"].read_text())["PhysiologicalModel"] == "none: disabled by the user"
    assert with_phys > without + 0.03, (with_phys, without)


def test_resumable_skips_finished_runs(sim, deriv):
    out, _ = deriv
    bold = sim / "sub-01/ses-01/func" / f"{_prefix('01')}_bold.nii.gz"
    before = preprocess.run_outputs(bold, out)["preproc"].stat().st_mtime_ns
    res = preprocess.preprocess_run(bold, out)
    assert res["skipped"] and preprocess.run_outputs(bold, out)["preproc"].stat().st_mtime_ns == before
    # the raw data are never modified
    assert not any(p.name.startswith(".") for p in bold.parent.iterdir())


def _copy_run(sim, dst, sub="01"):
    src = sim / f"sub-{sub}/ses-01/func"
    func = dst / f"sub-{sub}/ses-01/func"
    func.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, func / f.name)
    return func / f"{_prefix(sub)}_bold.nii.gz"


def _assert_no_outputs(bold, out):
    left = [p for p in preprocess.run_outputs(bold, out).values() if p.exists()]
    assert not left, left


def test_bad_inputs_clear_errors_no_partial_output(sim, tmp_path):
    out = tmp_path / "deriv"
    # NaN voxel
    bold = _copy_run(sim, tmp_path / "nan")
    img = nib.load(bold)
    d = np.asarray(img.dataobj, dtype=np.float32)
    d[5, 5, 2, 7] = np.nan
    nib.save(nib.Nifti1Image(d, img.affine), bold)
    with pytest.raises(SpineprintError, match=r"nan.*NaN"):
        preprocess.preprocess_run(bold, out)
    _assert_no_outputs(bold, out)
    # 3D image
    bold = _copy_run(sim, tmp_path / "3d")
    nib.save(nib.Nifti1Image(d[..., 0], img.affine), bold)
    with pytest.raises(SpineprintError, match="expected a 4D image"):
        preprocess.preprocess_run(bold, out)
    _assert_no_outputs(bold, out)
    # missing RepetitionTime
    bold = _copy_run(sim, tmp_path / "tr")
    side = bold.with_name(bold.name.replace(".nii.gz", ".json"))
    meta = json.loads(side.read_text())
    del meta["RepetitionTime"]
    side.write_text(json.dumps(meta))
    with pytest.raises(SpineprintError, match="RepetitionTime missing"):
        preprocess.preprocess_run(bold, out)
    _assert_no_outputs(bold, out)
    # physio shorter than the run
    bold = _copy_run(sim, tmp_path / "short")
    phys = bold.with_name(f"{_prefix('01')}_physio.tsv.gz")
    lines = gzip.decompress(phys.read_bytes()).decode().splitlines()
    phys.write_bytes(gzip.compress(("\n".join(lines[: len(lines) // 2]) + "\n").encode()))
    with pytest.raises(SpineprintError, match="physio_tsv|physio.tsv|does not cover"):
        preprocess.preprocess_run(bold, out)
    _assert_no_outputs(bold, out)
    # sampling rate missing from the physio JSON
    bold = _copy_run(sim, tmp_path / "fs")
    pj = bold.with_name(f"{_prefix('01')}_physio.json")
    meta = json.loads(pj.read_text())
    del meta["SamplingFrequency"]
    pj.write_text(json.dumps(meta))
    with pytest.raises(SpineprintError, match="SamplingFrequency"):
        preprocess.preprocess_run(bold, out)
    _assert_no_outputs(bold, out)


def test_real_sct_fmri_without_physio(shared_data, tmp_path):
    src = shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    func = tmp_path / "bids" / "sub-sct" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-sct_task-rest_bold.nii.gz"
    shutil.copy(src, bold)
    (func / "sub-sct_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    from spineprint_utils.cli import main

    with pytest.warns(UserWarning, match="WITHOUT the physiological noise model"):
        assert main(["preprocess", str(tmp_path / "bids"), "--out", str(tmp_path / "out")]) == 0
    qc = pd.read_csv(tmp_path / "out" / "qc.tsv", sep="\t")
    assert qc.loc[0, "physio_model_applied"] == "no"
    meta = json.loads((tmp_path / "out/sub-sct/func/sub-sct_task-rest_desc-confounds_timeseries.json").read_text())
    assert meta["PhysiologicalModel"] == "none: no physio file found"
    assert any("band-pass filter NOT applied" in n for n in meta["Notes"])  # 30 volumes: too short
    assert qc.loc[0, "tsnr_post_cord"] > qc.loc[0, "tsnr_pre_cord"]
    assert qc.loc[0, "mask_source"].startswith("mean image")
    # the CLI draws the QC figures and builds the reports by default
    assert (tmp_path / "out" / "sub-sct.html").is_file() and (tmp_path / "out" / "group.html").is_file()
    assert (tmp_path / "out" / "sub-sct" / "figures" / "sub-sct_task-rest_desc-carpet_qc.png").is_file()


def _square(x):
    return x * x


def test_parallel_map_order_and_backends():
    assert parallel_map(_square, range(7), progress=False) == [i * i for i in range(7)]
    assert parallel_map(_square, range(7), n_jobs=2, progress=False) == [i * i for i in range(7)]
    assert parallel_map(_square, [], progress=False) == []


def test_parallel_map_dask_scheduler(monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        assert parallel_map(_square, range(5), scheduler=cluster.scheduler_address,
                            progress=False) == [0, 1, 4, 9, 16]
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)  # the environment route
        assert parallel_map(_square, [3], progress=False) == [9]


def test_parameter_change_recomputes(sim, tmp_path):
    out = tmp_path / "d"
    bold = sim / "sub-02/ses-01/func" / f"{_prefix('02')}_bold.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=2)
        again = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=2)
        other = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=3)
    assert not first["skipped"] and again["skipped"] and not other["skipped"]
    conf = pd.read_csv(other["confounds"], sep="\t")
    assert [c for c in conf.columns if c.startswith("c_comp_cor")] == ["c_comp_cor_00", "c_comp_cor_01",
                                                                         "c_comp_cor_02"]


def test_hr_rvt_regressors_added_to_the_physio_model(sim, tmp_path):
    """--hr-rvt adds the CRF-convolved heart rate and RRF-convolved RVT of the physio module,
    identical for every slice, to the slice-wise physiological design; the default run is not
    recomputed by it (the option enters the completion key only when switched on)."""
    from spineprint_utils import physio

    out = tmp_path / "d"
    bold = sim / "sub-01/ses-01/func" / f"{_prefix('01')}_bold.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=2)
        base_columns = list(pd.read_csv(base["confounds"], sep="\t").columns)
        again = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=2, hr_rvt=False)
        extra = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=2, hr_rvt=True)
    assert not any("hr_crf" in c or "rvt_rrf" in c for c in base_columns)
    assert again["skipped"] and not extra["skipped"]
    conf = pd.read_csv(extra["confounds"], sep="\t")
    z_slices = nib.load(bold).shape[2]
    rec = physio.load_physio(physio.find_physio(bold))
    n_vol = nib.load(bold).shape[3]
    tr = json.loads(bold.with_name(f"{_prefix('01')}_bold.json").read_text())["RepetitionTime"]
    expected = physio.hr_rvt_regressors(rec, n_vol, tr)
    for name in ("hr_crf", "rvt_rrf"):
        cols = [f"physio_{name}_slice{z:02d}" for z in range(z_slices)]
        assert all(c in conf.columns for c in cols)
        for c in cols:
            np.testing.assert_allclose(conf[c].to_numpy(), expected[name].to_numpy(), rtol=1e-10, atol=1e-12)
    meta = json.loads(extra["confounds"].with_suffix(".json").read_text())
    assert "respiration volume per time" in meta["PhysiologicalModel"]


@pytest.mark.parametrize("anatomy", ["phantom", "pam50"])
def test_derivatives_do_not_depend_on_the_ground_truth(tmp_path, anatomy):
    """No stage reads derivatives/groundtruth: the same study with and without it on disk gives identical
    derivatives, and the anatomy source is found from the image itself (anatomy_fit) for either anatomy."""
    if anatomy == "pam50" and preprocess_atlas_kind() != "pam50":
        pytest.skip("the real PAM50 is not available")
    root = simulate.simulate_dataset(tmp_path / "with", n_subjects=1, n_sessions=1, n_volumes=60, anatomy=anatomy,
                                     seed=4)
    bare = tmp_path / "without"
    shutil.copytree(root, bare)
    shutil.rmtree(bare / "derivatives" / "groundtruth")
    outs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, r in (("with", root), ("without", bare)):
            outs[name] = preprocess.preprocess_dataset(r, tmp_path / f"deriv-{name}", progress=False)
    files = sorted(p.relative_to(outs["with"]) for p in outs["with"].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs["without"]) for p in outs["without"].rglob("*") if p.is_file())
    for rel in files:
        a, b = outs["with"] / rel, outs["without"] / rel
        if rel.name.endswith(".nii.gz"):
            np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj), str(rel))
        elif rel.suffix in (".tsv", ".json") and "qc" in rel.name:
            ta, tb = a.read_text(), b.read_text()
            if rel.suffix == ".tsv":
                da, db = (pd.read_csv(x, sep="\t").drop(columns=["runtime_s"]) for x in (a, b))
                pd.testing.assert_frame_equal(da, db)
            else:
                ja, jb = json.loads(ta), json.loads(tb)
                for j in (ja, jb):
                    j.get("qc_row", j).pop("runtime_s", None)
                    j.pop("runtime_s", None)
                assert ja == jb, rel
        elif rel.name == "dataset_description.json":  # DatasetLinks: each points to its own raw dataset
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            assert ja.pop("DatasetLinks") == {"raw": "../with"} and jb.pop("DatasetLinks") == {"raw": "../without"}
            assert ja == jb
        elif rel.suffix in (".tsv", ".json"):
            assert a.read_text() == b.read_text(), rel
    qc = pd.read_csv(outs["without"] / "qc.tsv", sep="\t")
    assert qc["mask_source"].eq(f"atlas ({anatomy})").all()  # the right anatomy, found from the image
    assert qc["registration"].eq("not needed: run in PAM50 space").all()


def preprocess_atlas_kind():
    from spineprint_utils import atlas

    return atlas.pam50_source("auto")[0]


def test_anatomy_fit_separates_right_and_wrong_anatomy(shared_data):
    """anatomy_fit against an independent computation, and the real SCT run (scanner coordinates) is not taken
    for a PAM50-space run."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(8, 8, 2))
    cord = np.zeros((8, 8, 2), bool)
    cord[3:5, 3:5] = True
    csf = np.zeros_like(cord)
    csf[2:6, 2:6] = True
    csf &= ~cord
    img[csf] += 10.0
    # independent eta^2: 1 - within-class SS / total SS over the three classes
    shell = np.zeros_like(cord)
    shell[0:8, 0:8] = True  # ring of 3 voxels around the 4x4 canal covers the whole 8x8 slice
    shell &= ~(cord | csf)
    groups = [img[cord], img[csf], img[shell]]
    allv = np.concatenate(groups)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups)
    expect = 1 - within / ((allv - allv.mean()) ** 2).sum()
    assert preprocess.anatomy_fit(img, cord, csf) == pytest.approx(expect)
    assert preprocess.anatomy_fit(rng.normal(size=(8, 8, 2)), cord, csf) < 0.2
    src = shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz"
    if src.is_file():
        real = nib.load(src)
        mean = np.asarray(real.dataobj, dtype=np.float32).mean(3)
        from pathlib import Path

        assert preprocess._atlas_source(Path("sub-x_task-rest_bold.nii.gz"), {}, real, mean) is None


def test_tsnr_uses_the_sample_sd_as_sct():
    """tSNR = temporal mean / sample SD (ddof=1, as sct_fmri_compute_tsnr), checked with statistics.stdev."""
    import statistics

    rng = np.random.default_rng(3)
    data = 50 + rng.normal(size=(2, 3, 2, 7))
    data[0, 0, 0] = 5.0  # constant voxel -> 0
    out = preprocess.tsnr(data)
    for idx in np.ndindex(data.shape[:3]):
        ts = data[idx].tolist()
        sd = statistics.stdev(ts)
        assert out[idx] == pytest.approx(statistics.fmean(ts) / sd if sd > 0 else 0.0, rel=1e-6)


def test_qc_dof_counts_the_filter_and_every_regressor(sim, deriv):
    """dof_remaining = band-pass share of T - 2 (detrend) - every regressor (denoise.effective_dof), whatever the
    cleaning order; the old sequential bookkeeping counted no regressor inside the pass band."""
    from spineprint_utils import denoise

    out, messages = deriv
    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    for _, row in qc.iterrows():
        expect = denoise.effective_dof(int(row["n_volumes"]), int(row["n_regressors"]), t_r=float(row["tr_s"]),
                                       high_pass=0.01, low_pass=0.13)
        assert row["dof_remaining"] == pytest.approx(expect)
        band = row["n_volumes"] * (0.13 - 0.01) / (0.5 / row["tr_s"])
        assert row["dof_remaining"] == pytest.approx(band - 2 - row["n_regressors"])
        if row["physio_model_applied"] == "yes":
            assert row["n_regressors"] > 32  # RETROICOR 4/4/(2x2) alone is 32 per slice
        if row["dof_remaining"] < max(10, 0.1 * row["n_volumes"]):
            assert any("degrees of freedom" in m and row["run"] in m for m in messages)


def test_clean_halves_recorded_keyed_and_refused_when_a_half_is_too_short(sim, tmp_path):
    """clean_halves fits the cleaning on each half (the derivative differs from the whole-run
    one, and is its own completion key), is recorded in the sidecar, the confounds JSON and the
    QC row, and is refused when a half keeps too few degrees of freedom (MIN_DOF) although the
    whole run would be accepted."""
    out = tmp_path / "d"
    bold = sim / "sub-02/ses-01/func" / f"{_prefix('02')}_bold.nii.gz"  # no physio: 2 motion + CSF
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=2)
        whole_data = np.asarray(nib.load(whole["preproc"]).dataobj)
        halves = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=2, clean_halves=True)
        again = preprocess.preprocess_run(bold, out, figures=False, n_csf_components=2, clean_halves=True)
    assert not halves["skipped"] and again["skipped"]
    half_data = np.asarray(nib.load(halves["preproc"]).dataobj)
    assert half_data.shape == whole_data.shape and not np.allclose(half_data, whole_data, atol=1e-2)
    assert halves["qc_row"]["clean_halves"] is True and whole["qc_row"]["clean_halves"] is False
    meta = json.loads(halves["preproc"].with_name(halves["preproc"].name.replace(".nii.gz", ".json")).read_text())
    assert meta["Parameters"]["clean_halves"] is True
    conf_meta = json.loads(halves["confounds"].with_suffix(".json").read_text())
    assert conf_meta["FitBlocks"].startswith("each half")
    # 120 volumes: 60 per half - 2 (trend) - 2 (motion) - 46 (CSF) = 10 <= MIN_DOF; the whole run keeps 70
    n_csf = N_VOL // 2 - 4 - preprocess.MIN_DOF
    with pytest.raises(SpineprintError, match=r"60 volumes per half.*clean_halves=True"):
        preprocess.preprocess_run(bold, tmp_path / "short", figures=False, n_csf_components=n_csf, clean_halves=True)
    _assert_no_outputs(bold, tmp_path / "short")


def test_cli_clean_halves_flag_reaches_the_pipeline(monkeypatch, tmp_path):
    """`spineprint preprocess --clean-halves` passes clean_halves=True; without it nothing is passed
    (the default, RUN_DEFAULTS["clean_halves"] = False, applies)."""
    import argparse

    seen = []

    def fake(bids_dir, out, **kw):
        seen.append(kw)
        raise SpineprintError("stop here")

    monkeypatch.setattr(preprocess, "preprocess_dataset", fake)
    parser = argparse.ArgumentParser()
    preprocess.register_cli(parser.add_subparsers(dest="command"))
    for argv in (["preprocess", str(tmp_path), "--clean-halves"], ["preprocess", str(tmp_path)]):
        args = parser.parse_args(argv)
        with pytest.raises(SpineprintError, match="stop here"):
            args.func(args)
    assert seen[0]["clean_halves"] is True and "clean_halves" not in seen[1]
    assert preprocess.RUN_DEFAULTS["clean_halves"] is False


def _png_pixels(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def _check_figures_drawn_later(bold, tmp_path, monkeypatch, **params):
    """figures=True in one pass vs figures=False then figures=True: the same figures (decoded
    pixels), and the second call draws them without recomputing the run."""
    one = preprocess.preprocess_run(bold, tmp_path / "one", figures=True, **params)
    later = preprocess.preprocess_run(bold, tmp_path / "later", figures=False, **params)
    keys = [k for k in one if k.startswith("fig_") and one[k].is_file()]
    assert {"fig_masks", "fig_motion", "fig_tsnr", "fig_carpet", "fig_confcorr"} <= set(keys)
    assert not any(later[k].exists() for k in later if k.startswith("fig_"))  # no figure drawn
    assert later["qcinputs"].is_file() and one["qcinputs"].is_file()
    marker, preproc = later["qc"].read_bytes(), later["preproc"].stat().st_mtime_ns
    # a recomputation would fail here: the rerun must only draw
    def _boom(*a, **k):
        raise AssertionError("the run was recomputed")

    def _no_raw(path, *a, **k):  # the raw series is not even read
        if Path(path) == Path(bold):
            raise AssertionError(f"{path} read again")
        return load_nifti(path, *a, **k)

    monkeypatch.setattr(preprocess.motion_mod, "motion_correct", _boom)
    monkeypatch.setattr(preprocess, "load_nifti", _no_raw)
    again = preprocess.preprocess_run(bold, tmp_path / "later", figures=True, **params)
    assert again["skipped"] and sorted(again["figures_drawn"]) == sorted(keys)
    assert later["qc"].read_bytes() == marker and later["preproc"].stat().st_mtime_ns == preproc
    for k in keys:
        a, b = _png_pixels(one[k]), _png_pixels(again[k])
        assert a.shape == b.shape and np.abs(a - b).max() == 0, k
    # all there now: a third call neither recomputes nor redraws
    assert preprocess.preprocess_run(bold, tmp_path / "later", figures=True, **params)["figures_drawn"] == []
    return keys


def test_figures_drawn_later_equal_one_pass_simulated(sim, tmp_path, monkeypatch):
    bold = _copy_run(sim, tmp_path / "raw", sub="01")  # with physio: the physio figure too
    keys = _check_figures_drawn_later(bold, tmp_path, monkeypatch)
    assert "fig_physio" in keys


def test_figures_drawn_later_equal_one_pass_real_sct(shared_data, tmp_path, monkeypatch):
    src = shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    func = tmp_path / "bids" / "sub-sct" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-sct_task-rest_bold.nii.gz"
    shutil.copy(src, bold)
    (func / "sub-sct_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = _check_figures_drawn_later(bold, tmp_path, monkeypatch, physio=False)
    assert "fig_physio" not in keys


def test_reports_built_when_figures_are_drawn(sim, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = preprocess.preprocess_dataset(sim, tmp_path / "d", participants=["02"], progress=False,
                                            figures=False)
        assert not list(out.glob("*.html")) and not list(out.glob("sub-*/figures/*.png"))
        assert list(out.glob("sub-02/figures/*_desc-qcinputs_arrays.npz"))
        # asked for explicitly, without figures: the reports say so
        preprocess.preprocess_dataset(sim, out, participants=["02"], progress=False, figures=False, reports=True)
        assert (out / "sub-02.html").is_file() and "figures=False" in (out / "sub-02.html").read_text()
        (out / "sub-02.html").unlink()
        (out / "group.html").unlink()
        # default with figures: the figures are drawn from the saved inputs, then the reports
        preprocess.preprocess_dataset(sim, out, participants=["02"], progress=False)
    assert (out / "sub-02.html").is_file() and (out / "group.html").is_file()
    assert "figures=False" not in (out / "sub-02.html").read_text()
    assert len(list(out.glob("sub-02/figures/*_qc.png"))) == 5  # no physio figure: sub-02 has no recording


def test_tsv_text_is_pandas_to_csv():
    """The fast writer of the run's float tables gives pandas' text exactly (NaN as n/a, signed
    zero, inf, extreme and round-trip values), and other tables go through pandas."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(40, 7)) * 10.0 ** rng.integers(-12, 12, size=(40, 7)),
                      columns=[f"c_comp_cor_{i:02d}" for i in range(7)])
    df.iloc[0, :] = np.nan
    df.iloc[1, :] = [0.0, -0.0, np.inf, -np.inf, 5e-324, 1e16, 0.1]
    ref = df.to_csv(sep="\t", index=False, na_rep="n/a")
    assert preprocess._tsv_text(df) == ref
    assert preprocess._tsv_text(df, na_rep="NA") == df.to_csv(sep="\t", index=False, na_rep="NA")
    mixed = df.assign(flag=np.arange(40), name="x y")
    assert preprocess._tsv_text(mixed) == mixed.to_csv(sep="\t", index=False, na_rep="n/a")
    odd = df.rename(columns={"c_comp_cor_00": 'a"b'})
    assert preprocess._tsv_text(odd) == odd.to_csv(sep="\t", index=False, na_rep="n/a")


def test_unusable_qc_inputs_recompute_the_run(sim, tmp_path):
    """Saved figure inputs that cannot be drawn from (here: one array missing, as from another
    version) make a rerun with figures=True recompute the run, with a warning, not fail it."""
    bold = _copy_run(sim, tmp_path / "raw", sub="02")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = preprocess.preprocess_run(bold, tmp_path / "d", figures=False)
    with np.load(res["qcinputs"]) as z:
        kept = {k: z[k] for k in z.files if k != "carpet_after"}
    np.savez(res["qcinputs"], **kept)
    with pytest.warns(UserWarning, match="recomputing the run"):
        again = preprocess.preprocess_run(bold, tmp_path / "d", figures=True)
    assert not again["skipped"] and again["fig_carpet"].is_file() and again["fig_masks"].is_file()


def test_compresslevel_changes_bytes_not_values_nor_the_completion_key(sim, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bold = sorted(sim.glob("sub-02/**/func/*_bold.nii.gz"))[0]
        stored = preprocess.preprocess_run(bold, tmp_path / "a", figures=False, compresslevel=0)
        packed = preprocess.preprocess_run(bold, tmp_path / "b", figures=False)
        # level 0 stores the series: the gzip member is larger than level 1's, the voxels are equal
        raw0, raw1 = (gzip.decompress(r["preproc"].read_bytes()) for r in (stored, packed))
        assert raw0 == raw1
        assert stored["preproc"].stat().st_size > packed["preproc"].stat().st_size
        # a rerun at the default level reuses the run (the level is not part of the key)
        again = preprocess.preprocess_run(bold, tmp_path / "a", figures=False)
        assert again["skipped"]
        with pytest.raises(SpineprintError, match="compresslevel must be an integer from 0 to 9"):
            preprocess.preprocess_run(bold, tmp_path / "c", compresslevel=12)

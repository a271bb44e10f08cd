"""Confounds in fMRIPrep's conventions (spineprint_utils.confounds), each formula against an
independent computation, and the table read by nilearn's load_confounds."""

import json

import numpy as np
import pytest

from spineprint_utils import confounds


def test_std_dvars_against_a_voxel_loop():
    rng = np.random.default_rng(0)
    X, Y, Z, T = 4, 3, 2, 50
    data = 100 + rng.normal(size=(X, Y, Z, T)).cumsum(axis=-1) * 0.3 + rng.normal(size=(X, Y, Z, T))
    data[..., 20] += 8  # an artefact at volume 20
    mask = np.zeros((X, Y, Z), bool)
    mask[1:3, :, :] = True
    dv, sd = confounds.std_dvars(data, mask)
    assert np.isnan(dv[0]) and np.isnan(sd[0])
    # independent: loops over voxels and volumes, AR(1) from np.correlate, IQR from np.quantile
    vox = [data[i, j, k] for i, j, k in zip(*np.nonzero(mask))]
    ref_dv = [np.sqrt(np.mean([(v[t] - v[t - 1]) ** 2 for v in vox])) for t in range(1, T)]
    np.testing.assert_allclose(dv[1:], ref_dv, rtol=1e-12)
    expected = []
    for v in vox:
        c = v - v.mean()
        rho = np.correlate(c, c, "full")[T] / np.dot(c, c)  # lag-1 autocovariance / variance (Yule-Walker)
        iqr = np.quantile(c, 0.75) - np.quantile(c, 0.25)
        expected.append(np.sqrt(2 * (1 - rho)) * iqr / 1.349)
    np.testing.assert_allclose(sd[1:], np.asarray(ref_dv) / np.mean(expected), rtol=1e-10)
    assert np.argmax(sd[1:]) + 1 in (20, 21)  # the artefact stands out
    # stationary white noise: std_dvars about 1 (its definition)
    noise = rng.normal(size=(6, 6, 2, 400))
    _, s = confounds.std_dvars(noise, np.ones((6, 6, 2), bool))
    assert abs(np.nanmean(s) - 1) < 0.05


def test_cosine_basis_matches_nilearn():
    from nilearn.signal import create_cosine_drift as _cosine_drift

    T, tr, hp = 120, 1.5, 0.01
    ours = confounds.cosine_basis(T, tr, hp)
    ref = _cosine_drift(hp, np.arange(T) * tr)[:, :-1]  # nilearn appends a constant column
    assert ours.shape == ref.shape and ours.shape[1] == int(np.floor(2 * T * tr * hp))
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert confounds.cosine_basis(T, tr, None).shape == (T, 0)


def _table(T=60, Z=3, seed=1, threshold=0.3):
    rng = np.random.default_rng(seed)
    shifts = rng.normal(scale=0.1, size=(Z, T, 2)).cumsum(axis=1)
    fd = np.r_[0.0, np.abs(np.diff(shifts.mean(0), axis=0)).sum(axis=1)]
    fd[[10, 30]] = [0.6, 0.9]  # two outliers
    comp = rng.normal(size=(T, 3))
    df, meta = confounds.confounds_table(shifts, fd, np.r_[np.nan, rng.random(T - 1)], np.r_[np.nan, rng.random(T - 1)],
                                         rng.normal(size=T), comp, np.array([0.5, 0.2, 0.1]), threshold,
                                         confounds.cosine_basis(T, 2.0, 0.01), rng.normal(size=(Z, T, 4)),
                                         ["card_cos1", "card_sin1", "resp_cos1", "resp_sin1"],
                                         regressed={"slice_motion", "physio", "compcor", "outliers"})
    return shifts, fd, df, meta


def test_confounds_table_columns_and_values():
    shifts, fd, df, meta = _table()
    assert set(meta) == set(df.columns)
    np.testing.assert_allclose(df["trans_x"], shifts[:, :, 0].mean(0))
    np.testing.assert_allclose(df["trans_y_derivative1"][1:], np.diff(shifts[:, :, 1].mean(0)))
    assert np.isnan(df.loc[0, "trans_y_derivative1"]) and np.isnan(df.loc[0, "framewise_displacement"])
    np.testing.assert_allclose(df["trans_x_power2"], shifts[:, :, 0].mean(0) ** 2)
    assert (df[["trans_z", "rot_x", "rot_y", "rot_z"]] == 0).all().all()
    assert "not estimated" in meta["rot_z"]["Description"]
    assert [c for c in df if c.startswith("motion_outlier")] == ["motion_outlier00", "motion_outlier01"]
    assert df["motion_outlier01"].to_numpy().nonzero()[0].tolist() == [30]
    assert meta["c_comp_cor_01"]["Mask"] == "CSF" and meta["c_comp_cor_01"]["CumulativeVarianceExplained"] == 0.7
    assert "trans_x_slice02" in df and "physio_resp_sin1_slice00" in df
    # the motion table uses the same names for the same values
    mt, mmeta = confounds.motion_table(shifts, fd)
    for col in mt:
        np.testing.assert_array_equal(mt[col].to_numpy(), df[col].to_numpy(), err_msg=col)
    assert set(mmeta) == set(mt.columns)


@pytest.mark.parametrize("strategy, expect", [
    (("motion",), {"trans_x", "trans_y", "rot_z_derivative1_power2"}),
    (("high_pass",), {"cosine00"}),
    (("high_pass", "compcor"), {"c_comp_cor_00", "c_comp_cor_02", "cosine00"}),
    (("scrub",), set()),
])
def test_load_confounds_reads_the_table(tmp_path, strategy, expect):
    """nilearn.interfaces.fmriprep.load_confounds on a written table (the derivatives of a real
    preprocessing run are read the same way in tests/test_derivatives.py)."""
    from nilearn.interfaces.fmriprep import load_confounds

    import nibabel as nib

    shifts, fd, df, meta = _table()
    T = len(df)
    img = tmp_path / "sub-01_task-rest_desc-preproc_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 3, T), np.float32), np.eye(4)), img)
    df.to_csv(tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    (tmp_path / "sub-01_task-rest_desc-confounds_timeseries.json").write_text(json.dumps(meta))
    kw = {"compcor": "anat_separated", "n_compcor": "all"} if "compcor" in strategy else {}
    if "scrub" in strategy:
        kw = {"fd_threshold": 0.5, "std_dvars_threshold": 100, "scrub": 0}
    conf, sample_mask = load_confounds(str(img), strategy=strategy, motion="full", **kw)
    assert expect <= set(conf.columns)
    assert len(conf) == T and not conf.isna().any().any()
    if "scrub" in strategy:
        assert sorted(set(range(T)) - set(sample_mask)) == [10, 30]  # FD 0.6 and 0.9 > 0.5
    else:
        assert sample_mask is None

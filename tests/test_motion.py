"""Tests for spineprint_utils.motion: planted shifts, independent interpolation, FD by hand, real data."""

import numpy as np
import pytest
from scipy import ndimage

from spineprint_utils import motion
from spineprint_utils._io import SpineprintError


def _phantom(X=36, Y=36, Z=6):
    xx, yy = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    base = np.empty((X, Y, Z))
    for z in range(Z):
        base[..., z] = (100 * np.exp(-((xx - 18) ** 2 / 20 + (yy - 19) ** 2 / 12))
                        + 50 * np.exp(-((xx - 13 - z * 0.3) ** 2 + (yy - 24) ** 2) / 8) + 20)
    mask = np.repeat(((xx - 18) ** 2 + (yy - 19) ** 2 < 100)[..., None], Z, axis=2)
    return base, mask


def _moving(base, true, noise, rng):
    """Anatomy displaced by true[z, t] (voxels): data_t(x) = base(x - d), by an independent resampler."""
    X, Y, Z = base.shape
    T = true.shape[1]
    data = np.empty((X, Y, Z, T))
    for t in range(T):
        for z in range(Z):
            data[:, :, z, t] = ndimage.shift(base[..., z], true[z, t], order=3, mode="nearest")
    return data + rng.normal(0, noise, data.shape)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    base, mask = _phantom()
    Z, T = base.shape[2], 24
    zz = np.linspace(-1, 1, Z)
    true = rng.normal(0, 0.8, (T, 2))[None] + rng.normal(0, 0.3, (T, 2))[None] * zz[:, None, None]
    return base, mask, true, _moving(base, true, 2.0, rng)


def test_recovers_planted_translations(planted):
    base, mask, true, data = planted
    res = motion.motion_correct(data, mask, reference=base, regularize="none")
    rms = np.sqrt(np.mean((res.shifts - true) ** 2))
    assert rms < 0.05, rms  # measured 0.016 voxel with noise SD 2 (peak 120)
    # the z-regularisation helps when the truth is smooth in z (here linear)
    res_poly = motion.motion_correct(data, mask, reference=base, regularize="poly")
    assert np.sqrt(np.mean((res_poly.shifts - true) ** 2)) < rms
    # temporal SD in the mask drops, and more than a same-size wrong correction would give
    sd_raw = data.std(-1)[mask].mean()
    sd_moco = res.corrected.std(-1)[mask].mean()
    wrong = motion.apply_translations(data, -res.shifts)
    assert sd_moco < 0.5 * sd_raw
    assert sd_moco < wrong.std(-1)[mask].mean()


def test_mean_reference_and_large_shift():
    rng = np.random.default_rng(1)
    base, mask = _phantom(Z=2)
    true = np.zeros((2, 6, 2))
    true[:, 3] = [2.6, -1.7]  # larger than a voxel: coarse-to-fine capture range
    data = _moving(base, true, 0.5, rng)
    res = motion.motion_correct(data, mask, reference=0, regularize="none")
    np.testing.assert_allclose(res.shifts, true, atol=0.05)
    res_mean = motion.motion_correct(data, mask, reference="mean", regularize="none")
    # relative to the mean image the shifts are known up to a common offset
    rel = res_mean.shifts - res_mean.shifts[:, :1]
    np.testing.assert_allclose(rel, true - true[:, :1], atol=0.08)


def test_apply_matches_scipy_shift():
    rng = np.random.default_rng(2)
    d = ndimage.gaussian_filter(rng.normal(size=(30, 28, 3, 4)), (2, 2, 0, 0))
    sh = rng.uniform(-2, 2, (3, 4, 2))
    out = motion.apply_translations(d, sh)
    for z in range(3):
        for t in range(4):
            ref = ndimage.shift(d[:, :, z, t], -sh[z, t], order=3, mode="mirror")
            np.testing.assert_allclose(out[..., z, t], ref, atol=1e-5)
    np.testing.assert_allclose(motion.apply_translations(d, np.zeros((3, 4, 2))), d, atol=1e-5)


def test_regularisation_closed_forms():
    rng = np.random.default_rng(3)
    Z, T = 8, 5
    z = np.linspace(-1, 1, Z)
    quad = (0.3 + 0.2 * z - 0.5 * z**2)[:, None, None] * np.ones((Z, T, 2))
    np.testing.assert_allclose(motion.regularize_translations(quad, "poly", poly_degree=2), quad, atol=1e-12)
    noisy = rng.normal(size=(Z, T, 2))
    fit = motion.regularize_translations(noisy, "poly", poly_degree=1)
    for t in range(T):
        for a in range(2):
            np.testing.assert_allclose(fit[:, t, a], np.polyval(np.polyfit(z, noisy[:, t, a], 1), z), atol=1e-10)
    g = motion.regularize_translations(noisy, "gaussian", sigma_z=1.0)
    np.testing.assert_allclose(g, ndimage.gaussian_filter1d(noisy, 1.0, axis=0, mode="nearest"))
    np.testing.assert_array_equal(motion.regularize_translations(noisy, "none"), noisy)
    with pytest.raises(SpineprintError, match="regularisation"):
        motion.regularize_translations(noisy, "spline")


def test_framewise_displacement_by_hand():
    sh = np.zeros((2, 4, 2))
    sh[0, :, 0] = [0, 1, 1, 3]
    sh[1, :, 0] = [0, 1, 3, 3]  # mean x: 0, 1, 2, 3
    sh[:, :, 1] = [[0, 0, -1, -1], [0, 0, -1, -1]]
    np.testing.assert_allclose(motion.framewise_displacement(sh), [0, 1, 2, 1])
    tab = motion.params_table(sh)
    assert list(tab.columns) == ["x_slice00", "x_slice01", "y_slice00", "y_slice01"]
    np.testing.assert_array_equal(motion.table_to_shifts(tab), sh)


def test_bad_input():
    with pytest.raises(SpineprintError, match="4D"):
        motion.motion_correct(np.zeros((4, 4, 4)))
    d = np.ones((4, 4, 2, 5))
    d[0, 0, 0, 0] = np.nan
    with pytest.raises(SpineprintError, match="NaN"):
        motion.motion_correct(d)
    with pytest.raises(SpineprintError, match="reference"):
        motion.motion_correct(np.ones((4, 4, 2, 5)), reference="first")


def test_real_sct_fmri_variance_drops(shared_data):
    """Real cervical cord EPI (sct_testing_data): the corrected series varies less in the cord."""
    from spineprint_utils._io import load_nifti

    path = shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    img, data = load_nifti(path, ndim=4)
    res = motion.motion_correct(data, voxel_size=img.header.get_zooms()[:2])
    m = res.mask
    assert 500 < m.sum() < 5000  # a cord-centred disk, not the whole field of view
    var_raw = data.var(-1)[m].mean()
    var_moco = res.corrected.var(-1)[m].mean()
    var_wrong = motion.apply_translations(data, -res.shifts).var(-1)[m].mean()
    assert var_moco < 0.9 * var_raw  # measured 6184 -> 5049 (poly)
    assert var_moco < var_wrong  # not just interpolation smoothing
    assert np.abs(res.shifts).max() < 3


def test_convergence_each_matches_all(planted, shared_data):
    """Stopping each slice-volume pair at its own convergence (the default, faster) gives the
    translations of iterating every pair until all have converged, within the tolerance
    (planted phantom motion and the real sct_testing_data run)."""
    base, mask, true, data = planted
    cases = [(data, mask)]
    path = shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz"
    if path.is_file():
        from spineprint_utils._io import load_nifti

        img, real = load_nifti(path, ndim=4)
        cases.append((real, motion.auto_cord_mask(real.mean(axis=3), img.header.get_zooms()[:2])))
    for series, m in cases:
        each = motion.estimate_translations(series, m)
        every = motion.estimate_translations(series, m, convergence="all")
        assert np.abs(each - every).max() < 1e-3  # tol; measured 2-4e-4 voxel on simulated runs
        assert np.abs(every).max() > 0.1  # there is motion to estimate
    with pytest.raises(SpineprintError, match="convergence"):
        motion.estimate_translations(data, mask, convergence="some")

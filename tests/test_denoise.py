"""Tests for spineprint_utils.denoise: each against an independent computation."""

import numpy as np
import pytest

from spineprint_utils import denoise
from spineprint_utils._io import SpineprintError


def _ols_residual(Y, C):
    """Closed form: residual of Y on [1, t, C] by numpy lstsq."""
    T = Y.shape[0]
    D = np.column_stack([np.ones(T), np.linspace(-1, 1, T), C])
    beta, *_ = np.linalg.lstsq(D, Y, rcond=None)
    return Y - D @ beta


def test_slicewise_regression_matches_closed_form():
    rng = np.random.default_rng(1)
    X, Y, Z, T = 3, 4, 2, 60
    slice_design = rng.normal(size=(Z, T, 2))
    shared = rng.normal(size=(T, 3))
    data = 100 + rng.normal(size=(X, Y, Z, T))
    # plant slice-specific and shared signals
    data += 5 * slice_design[None, None, :, :, 0] + 3 * shared[:, 1]
    out = denoise.slicewise_regression(data, slice_design, shared, keep_mean=False)
    for z in range(Z):
        Yz = data[:, :, z, :].reshape(-1, T).T
        expect = _ols_residual(Yz, np.hstack([slice_design[z], shared]))
        np.testing.assert_allclose(out[:, :, z, :].reshape(-1, T).T, expect, atol=1e-4)
    # keep_mean adds the temporal mean back
    out2 = denoise.slicewise_regression(data, slice_design, shared)
    np.testing.assert_allclose(out2.mean(-1), data.mean(-1), atol=1e-3)


def test_slicewise_filter_matches_nilearn():
    from nilearn.signal import clean

    rng = np.random.default_rng(2)
    X, Y, Z, T = 2, 3, 2, 120
    data = rng.normal(size=(X, Y, Z, T)) + 10
    shared = rng.normal(size=(T, 2))
    out = denoise.slicewise_regression(data, None, shared, t_r=2.0, high_pass=0.01, low_pass=0.13, keep_mean=False,
                                       strategy="simultaneous")
    seq = denoise.slicewise_regression(data, None, shared, t_r=2.0, high_pass=0.01, low_pass=0.13, keep_mean=False,
                                       strategy="sequential")
    for z in range(Z):
        Yz = data[:, :, z, :].reshape(-1, T).T
        ref = clean(Yz, confounds=shared, detrend=True, standardize=None, filter="butterworth",
                    low_pass=0.13, high_pass=0.01, t_r=2.0)
        np.testing.assert_allclose(out[:, :, z, :].reshape(-1, T).T, ref, atol=1e-4)
        # sequential = OLS residual on [1, t, C] (closed form), then nilearn's band-pass
        ref_seq = clean(_ols_residual(Yz, shared), detrend=True, standardize=None, filter="butterworth",
                        low_pass=0.13, high_pass=0.01, t_r=2.0)
        np.testing.assert_allclose(seq[:, :, z, :].reshape(-1, T).T, ref_seq, atol=1e-4)
    assert not np.allclose(out, seq, atol=1e-3)  # the two strategies really differ
    # the band-pass really removes a slow drift and a fast oscillation: power spectrum check
    t = np.arange(T) * 2.0
    sig = np.sin(2 * np.pi * 0.05 * t)
    noise = np.sin(2 * np.pi * 0.2 * t) + np.sin(2 * np.pi * 0.003 * t)
    d = np.broadcast_to(sig + noise, (1, 1, 1, T)).copy() + 50
    o = denoise.slicewise_regression(d, t_r=2.0, high_pass=0.01, low_pass=0.13, keep_mean=False)[0, 0, 0]
    assert np.corrcoef(o, sig)[0, 1] > 0.95


def test_acompcor_recovers_planted_components():
    rng = np.random.default_rng(3)
    T, V = 100, 200
    s1, s2 = np.sin(np.linspace(0, 12, T)), rng.normal(size=T)
    load = rng.normal(size=(2, V))
    ts = 10 * s1[:, None] * load[0] + 5 * s2[:, None] * load[1] + 0.1 * rng.normal(size=(T, V))
    data = np.zeros((V, 1, 1, T))
    data[:, 0, 0, :] = ts.T + 1000
    mask = np.ones((V, 1, 1), bool)
    comps, expl = denoise.acompcor(data, mask, 2, return_variance=True)
    assert comps.shape == (T, 2)
    np.testing.assert_allclose(comps.T @ comps, np.eye(2), atol=1e-8)
    # the planted signals lie in the span of the two components
    for s in (s1, s2):
        D = np.column_stack([np.ones(T), np.linspace(-1, 1, T)])
        s = s - D @ np.linalg.lstsq(D, s, rcond=None)[0]  # aCompCor detrends first
        beta, *_ = np.linalg.lstsq(comps, s, rcond=None)
        assert np.linalg.norm(comps @ beta - s) / np.linalg.norm(s) < 0.05
    assert expl.sum() > 0.9
    with pytest.raises(SpineprintError, match="components requested"):
        denoise.acompcor(data[:3], mask[:3], 5)


def test_dvars_and_spikes_bruteforce():
    rng = np.random.default_rng(4)
    data = rng.normal(size=(2, 2, 2, 10))
    dv = denoise.dvars(data)
    for t in range(1, 10):
        diff = [(data[i, j, k, t] - data[i, j, k, t - 1]) ** 2 for i in range(2) for j in range(2) for k in range(2)]
        assert dv[t] == pytest.approx(np.sqrt(np.mean(diff)))
    fd = np.array([0, 0.1, 0.6, 0.2, 0.9])
    sp = denoise.spike_regressors(fd, 0.5)
    assert sp.shape == (5, 2) and sp[2, 0] == 1 and sp[4, 1] == 1 and sp.sum() == 2
    assert denoise.spike_regressors(fd, None).shape == (5, 0)


def test_variance_removed_known_fraction():
    rng = np.random.default_rng(5)
    T = 400
    reg = rng.normal(size=(T, 1))
    noise = rng.normal(size=(3, 3, 1, T))
    data = noise + 2 * reg[:, 0]  # regressor variance 4, noise 1 -> 80 %
    mask = np.ones((3, 3, 1), bool)
    slice_reg = np.broadcast_to(rng.normal(size=(1, T, 1)), (1, T, 1))
    v = denoise.variance_removed(data, mask, {"shared": reg, "unrelated": slice_reg})
    assert v["shared"] == pytest.approx(80, abs=3)
    assert v["unrelated"] < 2
    # adjusted R^2: 40 pure-noise regressors explain ~0 %, not ~40/400 = 10 %
    junk = rng.normal(size=(T, 40))
    assert abs(denoise.variance_removed(data, mask, {"junk": junk})["junk"]) < 3
    raw = denoise.variance_removed(data, mask, {"junk": junk}, adjusted=False)["junk"]
    assert raw == pytest.approx(100 * 40 / 400, abs=3)


def test_effective_dof_closed_form():
    # 200 volumes, TR 2 s: Nyquist 0.25 Hz; 0.01-0.13 Hz keeps 200 * 0.12 / 0.25 = 96; minus detrend 2 and 10 regressors
    assert denoise.effective_dof(200, 10, t_r=2.0, high_pass=0.01, low_pass=0.13) == pytest.approx(84)
    assert denoise.effective_dof(200, 10) == pytest.approx(188)
    # a low-pass above Nyquist passes everything up to Nyquist
    assert denoise.effective_dof(100, 0, t_r=2.0, low_pass=1.0) == pytest.approx(98)
    # regressors are counted for the default strategy too: 41 regressors on 200 volumes leave 96 - 2 - 41
    assert denoise.effective_dof(200, 41, t_r=2.0, high_pass=0.01, low_pass=0.13) == pytest.approx(53)
    with pytest.raises(TypeError):  # the old positional order (n, t_r, hp, lp, n_reg) cannot be used by mistake
        denoise.effective_dof(200, 2.0, 0.01, 0.13, 10)
    with pytest.raises(SpineprintError, match="t_r"):
        denoise.effective_dof(200, 3, high_pass=0.01)
    with pytest.raises(SpineprintError, match="integer"):
        denoise.effective_dof(200, 2.5)
    assert denoise.filter_min_volumes(2.0, 0.01, 0.13) == 34  # scipy sosfiltfilt padlen 33 for 5 sections


def test_bandpass_checks_and_bad_design():
    assert denoise.check_bandpass(4.0, 0.01, 0.13)[1] is None  # Nyquist 0.125
    with pytest.raises(SpineprintError, match="Nyquist"):
        denoise.check_bandpass(4.0, 0.2, None)
    with pytest.raises(SpineprintError, match="slice design"):
        denoise.slicewise_regression(np.zeros((2, 2, 2, 5)), np.zeros((3, 5, 1)))
    with pytest.raises(SpineprintError, match="NaN"):
        denoise.slicewise_regression(np.zeros((2, 2, 2, 5)), None, np.full((5, 1), np.nan))


def _nuisance_design(T, t_r, rng):
    """Confounds like a run's: aliased cardiac/respiratory sinusoids, a motion random walk, a spike."""
    t = np.arange(T) * t_r
    cols = []
    for f in (0.02, 0.07, 0.11, 0.19, 0.23):  # in and out of the 0.01-0.13 Hz band (Nyquist 0.25 Hz)
        ph = rng.uniform(0, 2 * np.pi)
        cols += [np.sin(2 * np.pi * f * t + ph), np.cos(2 * np.pi * f * t + ph)]
    cols.append(np.cumsum(rng.normal(size=T)))
    spike = np.zeros(T)
    spike[T // 3] = 1.0
    cols.append(spike)
    return np.column_stack(cols)


def test_default_cleaning_does_not_reintroduce_nuisance():
    """Lindquist et al. (2019): after regression then band-pass, the cleaned data correlate again with the
    band-passed regressors; with the default (filter data and regressors, then project) they cannot.

    Measured on white noise, so any correlation with the regressors is re-introduced by the cleaning."""
    from scipy import signal as sp_signal

    rng = np.random.default_rng(11)
    T, t_r, hp, lp = 200, 2.0, 0.01, 0.13
    C = _nuisance_design(T, t_r, rng)
    data = rng.normal(size=(4, 4, 1, T)) + 100.0
    # band-passed regressors, computed independently: scipy Butterworth on the least-squares-detrended columns
    D = np.column_stack([np.ones(T), np.arange(T)])
    Cd = C - D @ np.linalg.lstsq(D, C, rcond=None)[0]
    sos = sp_signal.butter(5, [hp, lp], btype="band", output="sos", fs=1 / t_r)
    Cf = sp_signal.sosfiltfilt(sos, Cd, axis=0)

    def max_corr(strategy):
        out = denoise.slicewise_regression(data, None, C, t_r=t_r, high_pass=hp, low_pass=lp, keep_mean=False,
                                           strategy=strategy)
        Y = out[:, :, 0, :].reshape(-1, T).T.astype(np.float64)
        Yc, Cc = Y - Y.mean(0), Cf - Cf.mean(0)
        r = (Yc.T @ Cc) / np.outer(np.linalg.norm(Yc, axis=0), np.linalg.norm(Cc, axis=0))
        return np.abs(r).max(), np.abs(r).mean()

    assert denoise.STRATEGY_DEFAULT == "simultaneous"
    default_max, _ = max_corr(denoise.STRATEGY_DEFAULT)
    assert default_max < 1e-3  # float32 output: orthogonal up to rounding
    seq_max, seq_mean = max_corr("sequential")
    assert seq_max > 0.1 and seq_mean > 0.02  # the sequential order re-introduces nuisance: the test can fail


def test_spike_regressors_one_hot_and_power_neighbours():
    fd = np.array([0.0, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.7])
    one = denoise.spike_regressors(fd, 0.5)
    assert one.shape == (8, 2) and np.array_equal(np.flatnonzero(one.sum(1)), [2, 7])
    assert np.array_equal(one.sum(0), [1, 1])
    # Power et al. 2012: the volume before and the two after are censored too (clipped at the ends)
    pw = denoise.spike_regressors(fd, 0.5, neighbours=(1, 2))
    assert np.array_equal(np.flatnonzero(pw.sum(1)), [1, 2, 3, 4, 6, 7])
    assert np.array_equal(pw.sum(0), np.ones(6)) and np.array_equal(pw.sum(1), [0, 1, 1, 1, 1, 0, 1, 1])
    assert denoise.spike_regressors(fd, None).shape == (8, 0)


def test_clean_halves_cleans_each_half_on_its_own_as_nilearn():
    """clean_halves=True = nilearn.signal.clean applied to each half with that half's rows of the
    design (a spike column constant within a half is dropped there); the whole-run fit differs."""
    from nilearn.signal import clean

    rng = np.random.default_rng(12)
    X, Y, Z, T = 2, 2, 2, 121  # odd T: the middle volume goes with the second block
    data = rng.normal(size=(X, Y, Z, T)) + 10
    slice_design = rng.normal(size=(Z, T, 2))
    shared = np.column_stack([rng.normal(size=T), np.eye(T)[:, 5]])  # a spike in the first half only
    kw = {"t_r": 1.0, "high_pass": 0.01, "low_pass": 0.13, "keep_mean": False}
    out = denoise.slicewise_regression(data, slice_design, shared, clean_halves=True, **kw)
    whole = denoise.slicewise_regression(data, slice_design, shared, **kw)
    assert [(b.start, b.stop) for b in denoise.half_blocks(T)] == [(0, 60), (60, 121)]
    for z in range(Z):
        Yz = data[:, :, z, :].reshape(-1, T).T
        C = np.hstack([slice_design[z], shared])
        for rows in (np.arange(0, 60), np.arange(60, T)):
            Cb = C[rows][:, np.ptp(C[rows], axis=0) > 0]
            ref = clean(Yz[rows], confounds=Cb, detrend=True, standardize=None, filter="butterworth",
                        low_pass=0.13, high_pass=0.01, t_r=1.0)
            np.testing.assert_allclose(out[:, :, z, rows].reshape(-1, rows.size).T, ref, atol=1e-4)
    assert not np.allclose(out, whole, atol=1e-2)
    # keep_mean keeps each half's own mean
    kept = denoise.slicewise_regression(data, slice_design, shared, clean_halves=True)
    for b in denoise.half_blocks(T):
        np.testing.assert_allclose(kept[..., b].mean(-1), data[..., b].mean(-1), atol=1e-3)
    # a half too short for the filter is refused with the number of volumes of the half
    with pytest.raises(SpineprintError, match="half has 20"):
        denoise.slicewise_regression(data[..., :40], t_r=1.0, high_pass=0.01, low_pass=0.13, clean_halves=True)

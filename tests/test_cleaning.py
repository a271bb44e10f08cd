"""Tests for spineprint_utils.cleaning: the comparison of cleaning strategies and physiological models."""

import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import signal as sp_signal

from spineprint_utils import cleaning, preprocess, simulate
from spineprint_utils._io import SpineprintError


def test_reintroduced_nuisance_against_scipy():
    rng = np.random.default_rng(0)
    T, t_r = 120, 2.0
    C = np.column_stack([np.sin(2 * np.pi * 0.05 * np.arange(T) * t_r), rng.normal(size=T).cumsum()])
    Y = rng.normal(size=(T, 5))
    got = cleaning.reintroduced_nuisance(Y, C, t_r=t_r, high_pass=0.01, low_pass=0.13)
    # independent: least-squares detrend, scipy Butterworth (order 5, second-order sections, zero phase)
    D = np.column_stack([np.ones(T), np.arange(T)])
    Cd = C - D @ np.linalg.lstsq(D, C, rcond=None)[0]
    Cf = sp_signal.sosfiltfilt(sp_signal.butter(5, [0.01, 0.13], btype="band", output="sos", fs=1 / t_r), Cd, axis=0)
    expect = np.abs(np.array([[np.corrcoef(Y[:, v], Cf[:, p])[0, 1] for p in range(2)] for v in range(5)]))
    np.testing.assert_allclose(got, expect, atol=1e-10)
    with pytest.raises(SpineprintError, match="share T"):
        cleaning.reintroduced_nuisance(Y, C[:10], t_r=t_r)


def test_match_reference_signals_closed_form():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 2))
    labels = np.zeros((3, 3, 1), int)
    labels[0, :2] = 1
    labels[2, :] = 2
    data = rng.normal(size=(3, 3, 1, 50))
    data[labels == 1] += 3 * ref[:, 0]
    data[labels == 2] -= 3 * ref[:, 1]
    r1 = np.corrcoef(data[labels == 1].mean(0), ref[:, 0])[0, 1]
    r2 = np.corrcoef(data[labels == 2].mean(0), ref[:, 1])[0, 1]
    assert cleaning.match_reference_signals(data, labels, ref) == pytest.approx((r1 + r2) / 2)
    assert r1 > 0.8 and r2 < -0.8
    with pytest.raises(SpineprintError, match="reference"):
        cleaning.match_reference_signals(data, labels, ref[:10])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = simulate.simulate_dataset(tmp_path_factory.mktemp("cmp") / "bids", n_subjects=1, n_sessions=1,
                                     n_volumes=80, anatomy="phantom", segments=("C5", "C6"), seed=2)
    return root, sorted(root.rglob("*_bold.nii.gz"))[0]


def test_compare_cleaning_orders_and_models(small_run):
    root, bold = small_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cleaning.compare_cleaning(bold)
    t = res.table.set_index(["model", "strategy"])
    assert len(t) == len(cleaning.PHYSIO_MODELS) * len(cleaning.STRATEGIES)
    # the default order projects the filtered regressors out: nothing is re-introduced; the sequential order is not
    simul = t.xs("simultaneous", level="strategy")
    seq = t.xs("sequential", level="strategy")
    assert (simul["reintroduced_max"] < 1e-3).all()
    assert (seq["reintroduced_mean"] > 0.02).all()
    # bigger models cost degrees of freedom: 6, 8 and 32 RETROICOR regressors per slice on top of the others
    n = simul["n_regressors"]
    assert n["2/1/(0x0), FSL pnm_evs defaults"] - n["none"] == 6
    assert n["2/2/(0x0), Glover et al. 2000"] - n["none"] == 8
    assert n["4/4/(2x2), usual spinal setting"] - n["none"] == 32
    assert np.allclose(simul["dof"] + simul["n_regressors"], simul["dof"].iloc[0] + n.iloc[0])
    # every cleaned series still carries the planted neural signal of the regions
    labels = np.asarray(nib.load(simulate.load_ground_truth(root)["labels"]).dataobj)
    neural = simulate.load_ground_truth(root)["neural"][preprocess.run_prefix(bold)]
    match = {k: cleaning.match_reference_signals(v, labels, neural) for k, v in res.cleaned.items()}
    assert all(0 < m < 1 for m in match.values())


def test_compare_cleaning_real_run_short(shared_data, tmp_path):
    """The real SCT run has 30 volumes and no physio: the band-pass is refused, a high-pass works, and only the
    models without RETROICOR are compared (a note says why)."""
    src = shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    func = tmp_path / "bids" / "sub-sct" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-sct_task-rest_bold.nii.gz"
    shutil.copy(src, bold)
    with pytest.raises(SpineprintError, match="needs at least"):
        cleaning.compare_cleaning(bold, repetition_time=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cleaning.compare_cleaning(bold, repetition_time=2.0, low_pass=None)
    assert list(res.table["model"]) == ["none", "none"]
    assert any("no physio" in n for n in res.notes)
    t = res.table.set_index("strategy")
    assert t.loc["simultaneous", "reintroduced_max"] < 1e-3 < t.loc["sequential", "reintroduced_max"]

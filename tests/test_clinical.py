"""Tests of spineprint_utils.clinical: the lesion models and the simulated lesion study."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spineprint_utils import clinical as cl
from spineprint_utils import simulate
from spineprint_utils._io import SpineprintError

REGIONS4 = ["C1_LV", "C1_RV", "C2_LV", "C2_RV"]
C4 = np.array([
    [1.0, 0.6, 0.3, 0.2],
    [0.6, 1.0, 0.2, 0.3],
    [0.3, 0.2, 1.0, 0.5],
    [0.2, 0.3, 0.5, 1.0],
])


def _is_correlation(c, tol=1e-10):
    c = np.asarray(c)
    sym = np.allclose(c, np.swapaxes(c, -1, -2), atol=tol)
    diag = np.allclose(np.diagonal(c, axis1=-2, axis2=-1), 1.0, atol=tol)
    psd = np.linalg.eigvalsh(c).min() >= -tol
    return sym and diag and psd


# ------------------------------------------------------------------ lesion model
def test_coupling_hand_computed_small_case():
    # lesion C2 with strength 0.5: C1-C2 edges x 0.5, C2-C2 edge x 0.25, C1-C1 edge unchanged
    expected = np.array([
        [1.0, 0.6, 0.15, 0.10],
        [0.6, 1.0, 0.10, 0.15],
        [0.15, 0.10, 1.0, 0.125],
        [0.10, 0.15, 0.125, 1.0],
    ])
    out = cl.lesion_fc(C4, REGIONS4, ["C2"], 0.5)
    np.testing.assert_allclose(out, expected, atol=1e-15)
    assert _is_correlation(out)


def test_disconnection_hand_computed_small_case():
    # disconnection of C2 with strength 0.5: only C1-C2 edges x 0.5
    expected = C4.copy()
    expected[:2, 2:] *= 0.5
    expected[2:, :2] *= 0.5
    out = cl.lesion_fc(C4, REGIONS4, "C2", 0.5, kind="disconnection")
    np.testing.assert_allclose(out, expected, atol=1e-15)
    assert _is_correlation(out)


def test_coupling_matches_brute_force_loop_and_touches_only_lesion():
    segs = ["C3", "C4", "C5", "C6", "C7"]
    regions = [f"{s}_{h}" for s in segs for h in simulate.HORNS]
    c = simulate.group_fc_pattern([r[:2] for r in regions], [r[3:] for r in regions])
    les = {"C5", "C6"}
    s = 0.6
    out = cl.lesion_fc(c, regions, sorted(les), s)
    brute = np.empty_like(c)
    for i, ri in enumerate(regions):
        for j, rj in enumerate(regions):
            if i == j:
                brute[i, j] = 1.0
                continue
            f = (1 - s) ** ((ri[:2] in les) + (rj[:2] in les))
            brute[i, j] = f * c[i, j]
    np.testing.assert_allclose(out, brute, atol=1e-14)
    healthy = np.array([r[:2] not in les for r in regions])
    np.testing.assert_array_equal(out[np.ix_(healthy, healthy)], c[np.ix_(healthy, healthy)])
    changed = ~np.isclose(out, c)
    np.testing.assert_array_equal(changed, cl.lesion_edge_mask(regions, sorted(les)))
    # strength 0 is the identity, strength 1 decouples the lesion completely
    np.testing.assert_array_equal(cl.lesion_fc(c, regions, sorted(les), 0.0), c)
    full = cl.lesion_fc(c, regions, sorted(les), 1.0)
    lesioned = ~healthy
    np.testing.assert_array_equal(full[np.ix_(lesioned, lesioned)], np.eye(lesioned.sum()))
    np.testing.assert_array_equal(full[np.ix_(lesioned, healthy)], 0.0)


def test_coupling_is_the_covariance_of_the_signal_loss_model():
    """C' equals the correlation of x'_i = d x_i + sqrt(1 - d^2) e_i (lesioned i), by sampling."""
    rng = np.random.default_rng(1)
    n = 400_000
    x = rng.standard_normal((n, 4)) @ np.linalg.cholesky(C4).T
    d = np.array([1.0, 1.0, 0.4, 0.4])
    xl = x * d + np.sqrt(1 - d**2) * rng.standard_normal((n, 4))
    emp = np.corrcoef(xl, rowvar=False)
    np.testing.assert_allclose(cl.lesion_fc(C4, REGIONS4, ["C2"], 0.6), emp, atol=0.01)


def test_horn_restriction_and_stack():
    stack = np.stack([C4, np.eye(4)])
    out = cl.lesion_fc(stack, REGIONS4, ["C2"], 0.5, horns=["LV"])
    assert out.shape == (2, 4, 4)
    # only edges touching C2_LV (index 2) change
    exp = C4.copy()
    exp[2, [0, 1, 3]] *= 0.5
    exp[[0, 1, 3], 2] *= 0.5
    np.testing.assert_allclose(out[0], exp)
    np.testing.assert_array_equal(out[1], np.eye(4))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rank=st.integers(1, 8),
    strength=st.floats(0.0, 1.0),
    kind=st.sampled_from(cl.LESION_KINDS),
    lesion=st.sets(st.sampled_from(["C1", "C2", "C3"]), min_size=1),
)
def test_lesion_keeps_valid_correlation_matrix(seed, rank, strength, kind, lesion):
    regions = [f"{s}_{h}" for s in ("C1", "C2", "C3") for h in ("LV", "RV")]
    c = simulate.random_correlation(np.random.default_rng(seed), len(regions), rank=rank)  # PSD, possibly singular
    out = cl.lesion_fc(c, regions, sorted(lesion), strength, kind=kind)
    assert _is_correlation(out, tol=1e-9)
    # coupling never increases in magnitude
    assert np.all(np.abs(out) <= np.abs(c) + 1e-12)


@pytest.mark.parametrize(
    "kwargs, match, names_input",
    [
        ({"fc_or_corr": C4 * 2}, "diagonal is not 1", True),
        ({"fc_or_corr": np.arctanh(np.clip(C4, -0.99, 0.99))}, "diagonal", True),
        ({"fc_or_corr": C4 + np.triu(np.full((4, 4), 0.1), 1)}, "not symmetric", True),
        ({"fc_or_corr": np.array([[1, .9, -.9, 0], [.9, 1, .9, 0], [-.9, .9, 1, 0], [0, 0, 0, 1.0]])},
         "positive semi-definite", True),
        ({"fc_or_corr": C4[:3, :3]}, "3 regions in the matrix but 4", True),
        ({"fc_or_corr": np.ones(4)}, "square matrices", True),
        ({"fc_or_corr": np.where(np.eye(4) > 0, 1.0, np.nan)}, "NaN", True),
        ({"segments": ["C7"]}, r"not among the regions' segments", False),
        ({"segments": []}, "no lesioned segment", False),
        ({"strength": 1.5}, r"\[0, 1\]", False),
        ({"strength": "a lot"}, "number", False),
        ({"kind": "transection"}, "unknown lesion kind", False),
        ({"horns": ["XX"]}, "horn", False),
    ],
)
def test_bad_input(kwargs, match, names_input):
    args = {"fc_or_corr": C4, "regions": REGIONS4, "segments": ["C2"], "strength": 0.5, "name": "sub-01.tsv"}
    args.update(kwargs)
    with pytest.raises(SpineprintError, match=match) as err:
        cl.lesion_fc(**args)
    assert ("sub-01.tsv" in str(err.value)) == names_input


def test_bad_region_names():
    with pytest.raises(SpineprintError, match="<segment>_<horn>"):
        cl.lesion_fc(C4, ["C1LV", "C1_RV", "C2_LV", "C2_RV"], ["C2"], 0.5)


# ------------------------------------------------------------------ simulated study
SMALL = dict(n_subjects=8, segments=("C4", "C5", "C6", "C7"), lesion_segments=("C5", "C6"), n_volumes=240, seed=3)


def test_study_plants_the_lesion_and_is_paired():
    none = cl.simulate_lesion_study(timing="none", lesioned=(0, 1), **SMALL)
    between = cl.simulate_lesion_study(timing="between", lesioned=(0, 1), **SMALL)
    both = cl.simulate_lesion_study(timing="both", lesioned=(0, 1), **SMALL)
    r = none.regions
    assert len(r) == 16 and r[0] == "C4_LV"
    for n in (0, 1):
        np.testing.assert_array_equal(between.corr_test[n], none.corr_test[n])
        np.testing.assert_allclose(between.corr_retest[n], cl.lesion_fc(none.corr_retest[n], r, ["C5", "C6"], 0.6))
        np.testing.assert_allclose(both.corr_test[n], cl.lesion_fc(none.corr_test[n], r, ["C5", "C6"], 0.6))
    # other subjects: identical planted correlations and identical data (same random numbers)
    np.testing.assert_array_equal(between.fc_retest[2:], none.fc_retest[2:])
    np.testing.assert_array_equal(between.fc_test, none.fc_test)
    assert _is_correlation(between.fc_retest, tol=1e-9)
    # connectomes are the Pearson correlations of the returned time series
    emp = np.corrcoef(between.timeseries_retest[0], rowvar=False)
    np.testing.assert_allclose(between.fc_retest[0], emp, atol=1e-12)
    # deterministic
    again = cl.simulate_lesion_study(timing="between", lesioned=(0, 1), **SMALL)
    np.testing.assert_array_equal(again.fc_retest, between.fc_retest)


def test_lesion_between_sessions_lowers_self_identifiability():
    """Planted: the lesion changes subject 0's retest connectome only, so its A[0, 0] drops."""
    for seed in (0, 1, 2):
        kw = {**SMALL, "seed": seed}
        res = {}
        for timing in ("none", "between"):
            s = cl.simulate_lesion_study(timing=timing, lesioned=(0,), **kw)
            res[timing] = cl.lesion_fingerprint(s.fc_test, s.fc_retest, s.regions, s.lesion_segments, s.lesioned)
        assert res["between"].iself_lesioned < res["none"].iself_lesioned - 0.05
        assert res["between"].idiff_lesioned < res["none"].idiff_lesioned
        # other subjects' self-similarity is untouched (same data)
        np.testing.assert_allclose(res["between"].idiff.iself_subject[1:], res["none"].idiff.iself_subject[1:])


def test_lesion_between_sessions_lowers_icc_inside_lesion():
    res = {}
    for timing in ("none", "between"):
        s = cl.simulate_lesion_study(timing=timing, lesioned=(0, 1, 2), **{**SMALL, "n_subjects": 10})
        res[timing] = cl.lesion_fingerprint(s.fc_test, s.fc_retest, s.regions, s.lesion_segments, s.lesioned)
    drop_inside = res["none"].icc_inside - res["between"].icc_inside
    drop_outside = res["none"].icc_outside - res["between"].icc_outside
    assert drop_inside > 0.05
    assert drop_inside > drop_outside + 0.05


def _icc11_direct(a, b):
    """One-way random-effects ICC(1,1) for k = 2 (Shrout & Fleiss 1979), per edge."""
    y = np.stack([a, b], axis=1)  # (n, 2, E)
    n, k = y.shape[:2]
    grand = y.mean(axis=(0, 1))
    means = y.mean(axis=1)
    msb = k * ((means - grand) ** 2).sum(0) / (n - 1)
    msw = ((y - means[:, None]) ** 2).sum((0, 1)) / (n * (k - 1))
    return (msb - msw) / (msb + (k - 1) * msw)


def test_lesion_fingerprint_against_direct_computation():
    s = cl.simulate_lesion_study(timing="between", lesioned=(1, 4), **SMALL)
    r = cl.lesion_fingerprint(s.fc_test, s.fc_retest, s.regions, s.lesion_segments, [4, 1])
    iu = np.triu_indices(len(s.regions), 1)
    ea, eb = s.fc_test[:, iu[0], iu[1]], s.fc_retest[:, iu[0], iu[1]]
    A = np.corrcoef(ea, eb)[: len(ea), len(ea):]
    np.testing.assert_allclose(r.A, A, atol=1e-12)
    assert r.iself_lesioned == pytest.approx((A[1, 1] + A[4, 4]) / 2)
    others = [0, 2, 3, 5, 6, 7]
    assert r.iself_unlesioned == pytest.approx(np.mean(np.diag(A)[others]))
    icc = _icc11_direct(ea, eb)
    seg = np.array([x[:2] for x in s.regions])
    inside = np.isin(seg[iu[0]], ["C5", "C6"]) | np.isin(seg[iu[1]], ["C5", "C6"])
    assert r.icc_inside == pytest.approx(icc[inside].mean())
    assert r.icc_outside == pytest.approx(icc[~inside].mean())
    hits = [A[i].argmax() == i for i in (1, 4)] + [A[:, i].argmax() == i for i in (1, 4)]
    assert r.identified_lesioned == pytest.approx(np.mean(hits))


def test_no_lesioned_subject_gives_nan():
    s = cl.simulate_lesion_study(timing="none", lesioned=(), **SMALL)
    r = cl.lesion_fingerprint(s.fc_test, s.fc_retest, s.regions, ["C5"], [])
    assert np.isnan(r.iself_lesioned) and np.isnan(r.identified_lesioned)
    assert np.isfinite(r.iself_unlesioned)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"timing": "later"}, "unknown lesion timing"),
        ({"lesioned": (8,)}, r"0\.\.7"),
        ({"n_volumes": 10}, "n_volumes"),
        ({"n_subjects": 2}, "n_subjects"),
        ({"lesion_segments": ("T1",)}, "not among"),
        ({"kind": "cut"}, "unknown lesion kind"),
        ({"tr": 0}, "tr must"),
    ],
)
def test_study_bad_input(kwargs, match):
    with pytest.raises(SpineprintError, match=match):
        cl.simulate_lesion_study(**{**SMALL, **kwargs})


def test_lesion_fingerprint_bad_input():
    s = cl.simulate_lesion_study(timing="none", **SMALL)
    with pytest.raises(SpineprintError, match="fc_test"):
        cl.lesion_fingerprint(s.fc_test[:, :3, :3], s.fc_retest, s.regions, ["C5"], [0])
    with pytest.raises(SpineprintError, match="lesioned subject"):
        cl.lesion_fingerprint(s.fc_test, s.fc_retest, s.regions, ["C5"], [99])

"""Tests of spineprint_utils.fingerprint against independent computations.

- identifiability / identification / Idiff: plain double loops with numpy.corrcoef;
- PCA reconstruction: the direct (MATLAB-style) reconstruction for every m;
- ICC: pingouin.intraclass_corr, all six forms, random and degenerate data;
- permutation test and bootstrap: loops over the same permutations / resamples;
- planted ground truth: identical sessions, planted subject fingerprints.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spineprint_utils import fingerprint as fp
from spineprint_utils._io import SpineprintError


# ------------------------------------------------------------------ helpers
def planted(n=8, n_rois=7, signal=1.0, noise=1.0, seed=0, matrices=True):
    """Test/retest connectomes = subject-specific pattern + independent session noise."""
    rng = np.random.default_rng(seed)
    e = n_rois * (n_rois - 1) // 2
    base = rng.standard_normal(e)
    subj = signal * rng.standard_normal((n, e))
    a = base + subj + noise * rng.standard_normal((n, e))
    b = base + subj + noise * rng.standard_normal((n, e))
    if not matrices:
        return a, b
    return to_matrices(a, n_rois), to_matrices(b, n_rois)


def to_matrices(edges, n_rois):
    """Loop-based inverse of the upper-triangle extraction (independent of the module)."""
    out = np.ones((edges.shape[0], n_rois, n_rois))
    for s in range(edges.shape[0]):
        k = 0
        for i in range(n_rois):
            for j in range(i + 1, n_rois):
                out[s, i, j] = out[s, j, i] = edges[s, k]
                k += 1
    return out


def loop_edges(fc):
    n_rois = fc.shape[1]
    return np.array([[m[i, j] for i in range(n_rois) for j in range(i + 1, n_rois)] for m in fc])


def loop_A(a, b):
    n = a.shape[0]
    A = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            A[i, j] = np.corrcoef(a[i], b[j])[0, 1]
    return A


def loop_identification(A):
    n = A.shape[0]
    ab = [all(A[i, i] > A[i, j] for j in range(n) if j != i) for i in range(n)]
    ba = [all(A[i, i] > A[j, i] for j in range(n) if j != i) for i in range(n)]
    return np.mean(ab), np.mean(ba)


def loop_idiff(A):
    n = A.shape[0]
    iself = sum(A[i, i] for i in range(n)) / n
    others = [A[i, j] for i in range(n) for j in range(n) if i != j]
    iothers = sum(others) / len(others)
    return iself, iothers, 100 * (iself - iothers)


def naive_pca(a, b, m):
    """Direct reconstruction (Amico & Goñi): centre columns, SVD, keep m, add means back."""
    Y = np.concatenate([a, b]).T  # edges x 2n
    mu = Y.mean(axis=0)
    X = Y - mu
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    rec = U[:, :m] @ np.diag(s[:m]) @ Vt[:m] + mu
    n = a.shape[0]
    return rec[:, :n].T, rec[:, n:].T


# ------------------------------------------------------------ identifiability
def test_edges_from_matrices_matches_loop():
    a, _ = planted(n=3, n_rois=6)
    np.testing.assert_array_equal(fp.edges_from_matrices(a), loop_edges(a))
    np.testing.assert_array_equal(fp.matrices_from_edges(loop_edges(a)), a)


@pytest.mark.parametrize("matrices", [True, False])
def test_identifiability_matrix_matches_loop(matrices):
    a, b = planted(n=7, n_rois=8, matrices=matrices)
    A = fp.identifiability_matrix(a, b)
    ea, eb = (loop_edges(a), loop_edges(b)) if matrices else (a, b)
    np.testing.assert_allclose(A, loop_A(ea, eb), rtol=0, atol=1e-13)


def test_identifiability_blocks_and_float32(monkeypatch):
    """Blocked accumulation over edges gives the same matrix; float32 is close."""
    a, b = planted(n=5, n_rois=12, matrices=False)
    ref = loop_A(a, b)
    monkeypatch.setattr(fp, "_BLOCK", 7)
    np.testing.assert_allclose(fp.identifiability_matrix(a, b), ref, atol=1e-13)
    np.testing.assert_allclose(fp.identifiability_matrix(a, b, dtype=np.float32), ref, atol=1e-5)


def test_identification_and_idiff_match_loop():
    for seed, signal in [(0, 0.3), (1, 0.6), (2, 1.5)]:
        a, b = planted(n=9, n_rois=6, signal=signal, seed=seed)
        A = fp.identifiability_matrix(a, b)
        ident = fp.identification_rate(A)
        r_ab, r_ba = loop_identification(A)
        assert ident.rate_ab == pytest.approx(r_ab, abs=0)
        assert ident.rate_ba == pytest.approx(r_ba, abs=0)
        assert ident.rate_mean == pytest.approx((r_ab + r_ba) / 2)
        iself, iothers, idiff = loop_idiff(A)
        res = fp.differential_identifiability(A)
        assert res.iself == pytest.approx(iself, abs=1e-14)
        assert res.iothers == pytest.approx(iothers, abs=1e-14)
        assert res.idiff == pytest.approx(idiff, abs=1e-12)
        # Per-subject values: loops over row and column, and they average to the global values.
        n = A.shape[0]
        for i in range(n):
            others = [A[i, j] for j in range(n) if j != i] + [A[j, i] for j in range(n) if j != i]
            assert res.iothers_subject[i] == pytest.approx(np.mean(others), abs=1e-14)
        assert np.mean(res.idiff_subject) == pytest.approx(res.idiff, abs=1e-12)
        assert isinstance(res.idiff, float) and isinstance(ident.rate_mean, float)


def test_identification_tie_is_not_success_and_direction():
    A = np.array([[1.0, 1.0, 0.0], [0.2, 0.9, 0.3], [0.1, 0.95, 0.5]])
    res = fp.identification_rate(A)
    # rows: 0 tie -> fail, 1 ok (0.9 > 0.2, 0.3), 2 fail (0.95 > 0.5)
    np.testing.assert_array_equal(res.identified_ab, [False, True, False])
    # columns: 0 ok (1 > .2, .1), 1 fail (1.0 > 0.9), 2 ok (0.5 > 0, 0.3)
    np.testing.assert_array_equal(res.identified_ba, [True, False, True])
    np.testing.assert_array_equal(res.predicted_ab, [0, 1, 1])


def test_planted_fingerprint_is_found():
    a, b = planted(n=20, n_rois=10, signal=2.0, noise=0.5, seed=3)
    A = fp.identifiability_matrix(a, b)
    assert fp.identification_rate(A).rate_mean == 1.0
    assert fp.differential_identifiability(A).idiff > 30
    # Without any subject signal: near-chance identification, Idiff near 0.
    a0, b0 = planted(n=20, n_rois=10, signal=0.0, noise=1.0, seed=4)
    A0 = fp.identifiability_matrix(a0, b0)
    assert fp.identification_rate(A0).rate_mean < 0.3
    assert abs(fp.differential_identifiability(A0).idiff) < 10


# ------------------------------------------------------------------ properties
edge_arrays = hnp.arrays(
    np.float64,
    st.tuples(st.integers(2, 6), st.integers(3, 12)),
    elements=st.floats(-1, 1, allow_nan=False, allow_subnormal=False),
)


def _distinct(x):
    if np.any(np.ptp(x, axis=1) < 1e-3):
        return False
    A = np.corrcoef(x)
    return np.max(A - 2 * np.eye(len(x))) < 1 - 1e-6


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(a=edge_arrays, seed=st.integers(0, 2**16))
def test_property_identical_sessions(a, seed):
    assume(_distinct(a))
    A = fp.identifiability_matrix(a, a)
    assert fp.identification_rate(A).rate_mean == 1.0
    assert fp.differential_identifiability(A).idiff > 0


@settings(max_examples=40, deadline=None)
@given(a=edge_arrays, seed=st.integers(0, 2**16))
def test_property_subject_permutation_invariance(a, seed):
    assume(np.all(np.ptp(a, axis=1) > 1e-3))
    rng = np.random.default_rng(seed)
    b = a + rng.standard_normal(a.shape)
    perm = rng.permutation(a.shape[0])
    A = fp.identifiability_matrix(a, b)
    Ap = fp.identifiability_matrix(a[perm], b[perm])
    np.testing.assert_allclose(Ap, A[np.ix_(perm, perm)], atol=1e-12)
    r, rp = fp.identification_rate(A), fp.identification_rate(Ap)
    assert r.rate_ab == rp.rate_ab and r.rate_ba == rp.rate_ba
    assert fp.differential_identifiability(Ap).idiff == pytest.approx(fp.differential_identifiability(A).idiff, abs=1e-10)


# ------------------------------------------------------------ PCA reconstruction
@pytest.mark.parametrize("method", ["svd", "gram"])
@pytest.mark.parametrize("shape", [(5, 8), (6, 5)])  # edges >> 2n, and edges < 2n (rank-deficient)
def test_pca_sweep_matches_naive_reconstruction(method, shape):
    n, n_rois = shape
    a, b = planted(n=n, n_rois=n_rois, signal=0.8, seed=5, matrices=False)
    res = fp.pca_reconstruction(a, b, method=method)
    np.testing.assert_array_equal(res.m, np.arange(2, 2 * n + 1))
    rank = np.linalg.matrix_rank(np.concatenate([a, b]).T - np.concatenate([a, b]).mean(axis=1))
    ref_curve = []
    for m, idiff, iself in zip(res.m, res.idiff, res.iself):
        ra, rb = naive_pca(a, b, min(m, rank))
        _, _, ref = loop_idiff(loop_A(ra, rb))
        ref_curve.append(ref)
        assert idiff == pytest.approx(ref, abs=1e-8), m
        assert iself == pytest.approx(loop_idiff(loop_A(ra, rb))[0], abs=1e-10)
    assert res.m_opt == res.m[np.argmax(np.round(ref_curve, 6))]
    ra, rb = naive_pca(a, b, min(res.m_opt, rank))
    np.testing.assert_allclose(res.fc_a_opt, ra, atol=1e-10)
    np.testing.assert_allclose(res.fc_b_opt, rb, atol=1e-10)
    np.testing.assert_allclose(res.A_opt, loop_A(ra, rb), atol=1e-10)
    assert res.idiff_orig == pytest.approx(loop_idiff(loop_A(a, b))[2], abs=1e-10)
    assert res.explained_variance_ratio.sum() == pytest.approx(1.0)


def test_pca_full_rank_reproduces_original_and_matrices():
    a, b = planted(n=4, n_rois=9, seed=6)
    res = fp.pca_reconstruction(a, b, components=[3, 8])
    np.testing.assert_array_equal(res.m, [3, 8])
    full = fp.pca_reconstruction(a, b, components=[8])
    np.testing.assert_allclose(full.fc_a_opt, a, atol=1e-10)  # all 2n components: exact, diagonal kept
    np.testing.assert_allclose(full.fc_b_opt, b, atol=1e-10)
    assert full.idiff_opt == pytest.approx(full.idiff_orig, abs=1e-9)
    with pytest.raises(SpineprintError, match="components"):
        fp.pca_reconstruction(a, b, components=9)


def _pca_study(seed, fingerprint_sd):
    """Connectomes = group pattern + subject fingerprint (same in both sessions) + session noise (SD 2.5)."""
    rng = np.random.default_rng(seed)
    n, e = 15, 300
    group = rng.standard_normal(e)
    subj = rng.standard_normal((n, e)) * fingerprint_sd
    return [group + subj + 2.5 * rng.standard_normal((n, e)) for _ in range(2)]


def _pca_recovers(a, b):
    """What the PCA reconstruction must show when a fingerprint is planted (Amico & Goni 2018): a clearly
    positive Idiff at m*, well above the original, and subjects identified far above chance (1/15)."""
    res = fp.pca_reconstruction(a, b)
    acc = float(np.mean(np.argmax(res.A_opt, axis=1) == np.arange(a.shape[0])))
    return res.idiff_opt > 25 and res.idiff_opt - res.idiff_orig > 15 and acc >= 0.4


def test_pca_reconstruction_recovers_planted_fingerprint_and_not_noise():
    """Planted fingerprint (SD 1 under noise SD 2.5): on 30 seeds Idiff* 32-49 (original 10-15), identification at
    m* 0.47-0.87. Pure noise (no fingerprint): Idiff* <= 13 and identification at chance, so the test fails."""
    assert all(_pca_recovers(*_pca_study(seed, 1.0)) for seed in range(3))
    assert not any(_pca_recovers(*_pca_study(seed, 0.0)) for seed in range(3))


# ------------------------------------------------------------------ ICC
def pingouin_icc(a_vals, b_vals):
    pg = pytest.importorskip("pingouin")
    n = len(a_vals)
    df = pd.DataFrame(
        {
            "subject": np.tile(np.arange(n), 2),
            "session": np.repeat([0, 1], n),
            "value": np.concatenate([a_vals, b_vals]),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pg.intraclass_corr(df, targets="subject", raters="session", ratings="value")
    return dict(zip(out["Type"], out["ICC"].astype(float)))


PG_NAMES = {
    "ICC(1,1)": "ICC(1,1)",
    "ICC(2,1)": "ICC(A,1)",
    "ICC(3,1)": "ICC(C,1)",
    "ICC(1,k)": "ICC(1,k)",
    "ICC(2,k)": "ICC(A,k)",
    "ICC(3,k)": "ICC(C,k)",
}


def test_icc_matches_pingouin_random():
    rng = np.random.default_rng(8)
    n, e = 12, 6
    subj = rng.standard_normal((n, e)) * rng.uniform(0, 2, e)
    a = subj + rng.standard_normal((n, e))
    b = subj + 0.7 + rng.standard_normal((n, e))  # session bias: ICC(1), ICC(2), ICC(3) differ
    res = fp.edgewise_icc(a, b, kind="all")
    for edge in range(e):
        ref = pingouin_icc(a[:, edge], b[:, edge])
        for kind in fp.ICC_KINDS:
            assert res[kind][edge] == pytest.approx(ref[PG_NAMES[kind]], abs=1e-10), (kind, edge)
    # aliases give the same values
    np.testing.assert_array_equal(fp.edgewise_icc(a, b, kind="ICC(A,1)"), res["ICC(2,1)"])
    np.testing.assert_array_equal(fp.edgewise_icc(a, b, kind="icc3k"), res["ICC(3,k)"])


def test_icc_degenerate_cases_match_pingouin_or_nan():
    n = 6
    x = np.arange(n, dtype=float)
    cases = {
        "perfect agreement": (x, x.copy()),
        "constant offset": (x, x + 3.0),
        "no between-subject variance": (np.zeros(n), np.ones(n)),
        "all equal": (np.full(n, 2.0), np.full(n, 2.0)),
        "anti-correlated": (x, -x),
    }
    a = np.stack([c[0] for c in cases.values()], axis=1)
    b = np.stack([c[1] for c in cases.values()], axis=1)
    res = fp.edgewise_icc(a, b, kind="all")
    for edge, (name, (ca, cb)) in enumerate(cases.items()):
        ref = pingouin_icc(ca, cb)
        for kind in fp.ICC_KINDS:
            got, want = res[kind][edge], ref[PG_NAMES[kind]]
            if not np.isfinite(want):  # NaN (0/0) or -inf (x/0) exactly as pingouin
                assert np.array_equal(got, want, equal_nan=True), (name, kind, got, want)
            else:
                assert got == pytest.approx(want, abs=1e-10), (name, kind)
    # closed forms: perfect agreement -> 1 everywhere; all equal -> NaN (0/0)
    assert all(res[k][0] == pytest.approx(1.0) for k in fp.ICC_KINDS)
    assert all(np.isnan(res[k][3]) for k in fp.ICC_KINDS)
    assert res["ICC(1,k)"][2] == -np.inf and np.isnan(res["ICC(3,1)"][2])  # zero between-subject variance
    assert res["ICC(3,1)"][1] == pytest.approx(1.0)  # consistency ignores the offset
    assert res["ICC(1,1)"][1] < 1.0


def test_icc_matrix_layout_blocks_and_k_sessions(monkeypatch):
    a, b = planted(n=6, n_rois=5)
    monkeypatch.setattr(fp, "_BLOCK", 3)
    M = fp.edgewise_icc(a, b)
    assert M.shape == (5, 5) and np.all(np.isnan(np.diag(M)))
    np.testing.assert_allclose(M, M.T, equal_nan=True)
    flat = fp.edgewise_icc(loop_edges(a), loop_edges(b))
    np.testing.assert_allclose(fp.edges_from_matrices(M), flat, atol=1e-15)
    # k = 3 sessions against the textbook two-way ANOVA written as loops
    rng = np.random.default_rng(9)
    c = loop_edges(a) + rng.standard_normal((6, 10))
    Y = np.stack([loop_edges(a), loop_edges(b), c], axis=1)
    got = fp.edgewise_icc(loop_edges(a), loop_edges(b), "ICC(2,k)", more_sessions=[c])
    for edge in range(10):
        y = Y[:, :, edge]
        n, k = y.shape
        g = y.mean()
        msr = k * sum((y[i].mean() - g) ** 2 for i in range(n)) / (n - 1)
        msc = n * sum((y[:, j].mean() - g) ** 2 for j in range(k)) / (k - 1)
        sse = sum((y[i, j] - y[i].mean() - y[:, j].mean() + g) ** 2 for i in range(n) for j in range(k))
        mse = sse / ((n - 1) * (k - 1))
        assert got[edge] == pytest.approx((msr - mse) / (msr + (msc - mse) / n), abs=1e-12)


def test_cicchetti_category_boundaries():
    vals = [-0.2, 0.0, 0.399, 0.40, 0.59, 0.60, 0.7499, 0.75, 1.0, np.nan]
    want = ["poor", "poor", "poor", "fair", "fair", "good", "good", "excellent", "excellent", "undefined"]
    assert list(fp.cicchetti_category(vals)) == want
    assert fp.cicchetti_category(0.5) == "fair"
    assert fp.cicchetti_category(np.array([[0.1, 0.8]])).shape == (1, 2)


# ------------------------------------------------------ permutation / bootstrap
def test_permutation_test_matches_loop():
    a, b = planted(n=7, n_rois=6, signal=0.7, seed=10)
    A = fp.identifiability_matrix(a, b)
    rng = np.random.default_rng(0)
    perms = np.array([rng.permutation(7) for _ in range(50)] + [np.arange(7)])
    res = fp.permutation_test(A, permutations=perms)
    for p, perm in enumerate(perms):
        Ap = A[:, perm]  # retest subject labels permuted
        r_ab, r_ba = loop_identification(Ap)
        assert res.null_rate_ab[p] == r_ab and res.null_rate_ba[p] == r_ba
        assert res.null_idiff[p] == pytest.approx(loop_idiff(Ap)[2], abs=1e-10)
    # identity permutation reproduces the observed statistics
    assert res.null_idiff[-1] == pytest.approx(res.idiff)
    assert res.null_rate_mean[-1] == res.rate_mean
    count = np.sum(res.null_idiff >= res.idiff - 1e-12)
    assert res.p_idiff == pytest.approx((1 + count) / (1 + len(perms)))


def test_permutation_test_seeded_and_planted():
    a, b = planted(n=15, n_rois=8, signal=2.0, noise=0.5, seed=11)
    A = fp.identifiability_matrix(a, b)
    r1 = fp.permutation_test(A, n_permutations=200, seed=1)
    r2 = fp.permutation_test(A, n_permutations=200, seed=1)
    np.testing.assert_array_equal(r1.null_idiff, r2.null_idiff)
    assert r1.p_idiff == pytest.approx(1 / 201) and r1.p_rate_mean == pytest.approx(1 / 201)
    # null identification is at chance: about 1/n on average
    assert abs(np.mean(r1.null_rate_ab) - 1 / 15) < 0.03
    a0, b0 = planted(n=15, n_rois=8, signal=0.0, seed=12)
    r0 = fp.permutation_test(fp.identifiability_matrix(a0, b0), n_permutations=200, seed=1)
    assert r0.p_idiff > 0.01


def test_bootstrap_matches_loop():
    a, b = planted(n=6, n_rois=6, signal=0.7, seed=13)
    A = fp.identifiability_matrix(a, b)
    ident = fp.identification_rate(A)
    rng = np.random.default_rng(1)
    draws = rng.integers(0, 6, size=(40, 6))
    draws[0] = [0, 0, 0, 0, 0, 1]
    res = fp.bootstrap_ci(A, draws=draws, level=0.9)
    for k, idx in enumerate(draws):
        iself = np.mean([A[i, i] for i in idx])
        others = [A[i, j] for i in idx for j in idx if i != j]
        assert res.samples["iself"][k] == pytest.approx(iself, abs=1e-14)
        assert res.samples["iothers"][k] == pytest.approx(np.mean(others), abs=1e-14)
        assert res.samples["rate_ab"][k] == pytest.approx(np.mean(ident.identified_ab[idx]))
    lo, hi = res.idiff
    assert lo == pytest.approx(np.quantile(res.samples["idiff"], 0.05))
    assert hi == pytest.approx(np.quantile(res.samples["idiff"], 0.95))
    full = fp.bootstrap_ci(A, n_bootstrap=300, seed=2)
    obs = fp.differential_identifiability(A).idiff
    assert full.idiff[0] <= obs <= full.idiff[1]


# -------------------------------------------------------------------- designs
def test_split_half():
    ts = np.arange(2 * 11 * 3).reshape(2, 11, 3)
    h1, h2 = fp.split_half(ts)
    np.testing.assert_array_equal(h1, ts[:, :5])
    np.testing.assert_array_equal(h2, ts[:, 6:])
    h1, h2 = fp.split_half(ts[0].T, axis=-1)
    np.testing.assert_array_equal(h2, ts[0].T[:, 6:])
    with pytest.raises(SpineprintError, match="too short"):
        fp.split_half(np.zeros((5, 3)))


def records():
    return pd.DataFrame(
        {
            "subject": ["sub-01", "sub-01", "sub-02", "sub-02", "sub-03", "sub-03", "sub-03"],
            "session": ["1", "2", "2", "1", "1", "2", "2"],
            "run": [1, 1, 1, 1, 1, 1, 2],
        }
    )


def test_pair_sessions_and_runs():
    ia, ib, subjects = fp.pair_sessions(records(), "ses-1", "2", run="01")
    np.testing.assert_array_equal(subjects, ["01", "02", "03"])
    np.testing.assert_array_equal(ia, [0, 3, 4])
    np.testing.assert_array_equal(ib, [1, 2, 5])
    with pytest.raises(SpineprintError, match="03.*several runs"):
        fp.pair_sessions(records(), "1", "2")
    with pytest.raises(SpineprintError, match="no run matches session 3 .*sessions: 1, 2"):
        fp.pair_sessions(records(), "1", "3", run=1)
    # only sub-03 has a run 2
    with pytest.raises(SpineprintError, match="01, 02 missing from run 2"):
        fp.pair_runs(records(), 1, 2, session="2")
    rec = pd.DataFrame({"subject": ["a", "b", "b", "a"], "run": ["run-02", "1", "2", "01"]})
    ia, ib, subjects = fp.pair_runs(rec, 1, 2)
    np.testing.assert_array_equal(ia, [3, 1])
    np.testing.assert_array_equal(ib, [0, 2])


def test_pair_sessions_missing_subject():
    rec = records().iloc[:-2]  # sub-03 has no session 2
    with pytest.raises(SpineprintError, match="03 missing from session 2"):
        fp.pair_sessions(rec, "1", "2")
    with pytest.warns(UserWarning, match="03"):
        ia, ib, subjects = fp.pair_sessions(rec, "1", "2", on_missing="drop")
    np.testing.assert_array_equal(subjects, ["01", "02"])
    # mapping input as returned by the connectivity loader
    d = {"subjects": np.array(["01", "01", "02", "02"]), "sessions": np.array(["1", "2", "1", "2"])}
    ia, ib, _ = fp.pair_sessions(d, "1", "2")
    np.testing.assert_array_equal(ia, [0, 2])


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda a, b: (np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a), b), "NaN or infinite"),
        (lambda a, b: (a, np.where(np.arange(b.size).reshape(b.shape) == 7, np.inf, b)), "fc_b: NaN or infinite"),
        (lambda a, b: (a[:, :4, :4], b), "differently sized"),
        (lambda a, b: (a[:-1], b), "missing from one session"),
        (lambda a, b: (a[:1], b[:1]), "at least 2 subjects"),
        (lambda a, b: (a[..., 0], b), "differently sized|shape"),
        (lambda a, b: (np.ones_like(a), b), "constant connectome"),
        (lambda a, b: (a + np.triu(np.ones(a.shape[1]), 1), b), "not symmetric"),
        (lambda a, b: (a[0, 0], b[0, 0]), "expected"),
        (lambda a, b: (a, np.where(np.eye(5, dtype=bool), np.inf, b)), None),  # infinite diagonal is ignored
    ],
)
def test_bad_input(make, match):
    a, b = planted(n=4, n_rois=5)
    fa, fb = make(a, b)
    if match is None:
        np.testing.assert_allclose(fp.identifiability_matrix(fa, fb), fp.identifiability_matrix(a, b))
        return
    with pytest.raises(SpineprintError, match=match):
        fp.identifiability_matrix(fa, fb)


def test_bad_input_other_functions():
    a, b = planted(n=4, n_rois=5)
    with pytest.raises(SpineprintError, match="square"):
        fp.identification_rate(np.zeros((3, 4)))
    with pytest.raises(SpineprintError, match="NaN"):
        fp.differential_identifiability(np.array([[1, np.nan], [0, 1]]))
    with pytest.raises(SpineprintError, match="unknown ICC kind"):
        fp.edgewise_icc(a, b, kind="ICC(4,1)")
    with pytest.raises(SpineprintError, match="missing from one session"):
        fp.edgewise_icc(a, b[:3])
    with pytest.raises(SpineprintError, match="constant connectome"):
        fp.pca_reconstruction(np.ones_like(a), b)
    with pytest.raises(SpineprintError, match="permutations"):
        fp.permutation_test(np.eye(3), permutations=[[0, 0, 1]])


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 6), n_edges=st.integers(3, 30), seed=st.integers(0, 2**16))
def test_property_permutation_invariance_pca_and_icc(n, n_edges, seed):
    """Relabelling subjects in both sessions changes neither the PCA curve nor the edgewise ICC."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n_edges))
    b = a + rng.standard_normal((n, n_edges))
    perm = rng.permutation(n)
    r, rp = fp.pca_reconstruction(a, b), fp.pca_reconstruction(a[perm], b[perm])
    np.testing.assert_allclose(rp.idiff, r.idiff, atol=1e-8, equal_nan=True)
    np.testing.assert_allclose(rp.fc_a_opt, r.fc_a_opt[perm], atol=1e-8)
    for kind in fp.ICC_KINDS:
        np.testing.assert_allclose(fp.edgewise_icc(a[perm], b[perm], kind), fp.edgewise_icc(a, b, kind), atol=1e-12)


# ------------------------------------------------------- chapter-4 workflow
def fake_connectomes(subjects=("02", "01", "03"), sessions=("1", "2"), runs=("1",), n_rois=5, seed=0):
    """load_connectomes-like dict whose every matrix encodes (run index, part) in its edges."""
    rng = np.random.default_rng(seed)
    recs = [(s, e, r) for e in sessions for s in subjects for r in runs]  # not sorted by subject
    n = len(recs)
    e = n_rois * (n_rois - 1) // 2
    edges = rng.standard_normal((n, 3, e))
    fc = np.stack([to_matrices(edges[:, k], n_rois) for k in range(3)], axis=1)
    return {
        "fc": fc,
        "subjects": np.array([r[0] for r in recs]),
        "sessions": np.array([r[1] for r in recs]),
        "runs": np.array([r[2] for r in recs]),
        "regions": [f"R{i}" for i in range(n_rois)],
    }, recs


def find(recs, s, e, r):
    return [k for k, rec in enumerate(recs) if rec == (s, e, r)][0]


def test_designs_two_sessions_pairing():
    data, recs = fake_connectomes(runs=("1", "2"))
    d = fp.designs_from_connectomes(data)
    assert list(d) == ["within", "between"]
    w, b = d["within"], d["between"]
    assert list(w.subjects) == ["01", "02", "03"] and list(b.subjects) == ["01", "02", "03"]
    for i, s in enumerate(["01", "02", "03"]):
        k1 = find(recs, s, "1", "1")
        np.testing.assert_array_equal(w.fc_a[i], data["fc"][k1, 1])  # half 1
        np.testing.assert_array_equal(w.fc_b[i], data["fc"][k1, 2])  # half 2
        np.testing.assert_array_equal(b.fc_a[i], data["fc"][k1, 0])  # ses 1 full
        np.testing.assert_array_equal(b.fc_b[i], data["fc"][find(recs, s, "2", "1"), 0])  # ses 2 full
    assert b.title == "between-session (ses-1 vs ses-2)"
    assert w.title == "within-session (split half)"
    assert (w.part_a, w.part_b, b.part_a, b.part_b) == (1, 2, 0, 0)
    assert list(fp.designs_from_connectomes(data, kind="within")) == ["within"]


def test_designs_one_session_falls_back_to_runs():
    data, recs = fake_connectomes(sessions=("1",), runs=("2", "1"))
    b = fp.designs_from_connectomes(data, kind="between")["between"]
    assert b.title == "between-run (run-1 vs run-2)"
    for i, s in enumerate(["01", "02", "03"]):
        np.testing.assert_array_equal(b.fc_a[i], data["fc"][find(recs, s, "1", "1"), 0])
        np.testing.assert_array_equal(b.fc_b[i], data["fc"][find(recs, s, "1", "2"), 0])


def test_designs_errors():
    data, _ = fake_connectomes(sessions=("1",), runs=("1",))
    assert list(fp.designs_from_connectomes(data, kind="within")) == ["within"]
    with pytest.raises(SpineprintError, match="two sessions or two runs"):
        fp.designs_from_connectomes(data)
    data2, _ = fake_connectomes()
    with pytest.raises(SpineprintError, match="kind"):
        fp.designs_from_connectomes(data2, kind="across")
    with pytest.raises(SpineprintError, match="missing key"):
        fp.designs_from_connectomes({k: v for k, v in data2.items() if k != "runs"})
    with pytest.raises(SpineprintError, match="runs but label lengths"):
        fp.designs_from_connectomes({**data2, "subjects": data2["subjects"][:-1]})
    with pytest.raises(SpineprintError, match=r"shape \(n_runs, 3"):
        fp.designs_from_connectomes({**data2, "fc": data2["fc"][:, :2]})
    # a subject missing from session 2
    keep = ~((data2["subjects"] == "03") & (data2["sessions"] == "2"))
    broken = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in data2.items()}
    with pytest.raises(SpineprintError, match="03"):
        fp.designs_from_connectomes(broken)


def test_fingerprint_design_summary_matches_direct_computation():
    a, b = planted(n=6, n_rois=6, signal=1.0, noise=1.5, seed=3)
    rep = fp.fingerprint_design(a, b, n_permutations=40, n_bootstrap=30, seed=7)
    s = rep.summary()
    # independent: loop identifiability matrix + the existing building blocks
    A = loop_A(loop_edges(a), loop_edges(b))
    np.testing.assert_allclose(rep.A, A, atol=1e-12)
    ident = fp.identification_rate(rep.A)
    idd = fp.differential_identifiability(rep.A)
    perm = fp.permutation_test(rep.A, n_permutations=40, seed=7)
    boot = fp.bootstrap_ci(rep.A, n_bootstrap=30, seed=7)
    pca = fp.pca_reconstruction(a, b)
    icc = fp.edgewise_icc(a, b, kind="ICC(1,1)")
    iu = np.triu_indices(6, k=1)
    cats = fp.cicchetti_category(icc[iu])
    expected = {
        "id_ab": 100 * ident.rate_ab, "id_ba": 100 * ident.rate_ba, "id_mean": 100 * ident.rate_mean,
        "p_id": perm.p_rate_mean, "chance": 100 / 6, "iself": idd.iself, "iothers": idd.iothers,
        "idiff": idd.idiff, "p_idiff": perm.p_idiff, "idiff_lo": boot.idiff[0], "idiff_hi": boot.idiff[1],
        "id_lo": 100 * boot.rate_mean[0], "id_hi": 100 * boot.rate_mean[1], "m_opt": pca.m_opt,
        "idiff_opt": pca.idiff_opt, "idiff_orig": pca.idiff_orig, "icc_median": np.nanmedian(icc[iu]),
        "icc_fair_or_better": 100 * np.mean(np.isin(cats, ["fair", "good", "excellent"])),
    }
    assert set(s) == set(expected)
    for k, v in expected.items():
        assert s[k] == v, k  # exactly: the chapter's glued numbers must not change
        assert type(s[k]) is (int if k == "m_opt" else float), k
    # an Idiff computed by hand from the loop matrix
    off = A[~np.eye(6, dtype=bool)]
    assert s["idiff"] == pytest.approx(100 * (np.mean(np.diag(A)) - off.mean()), abs=1e-10)
    cat_pct = rep.icc_categories()
    assert sum(cat_pct.values()) == pytest.approx(100.0)
    assert cat_pct["fair"] + cat_pct["good"] + cat_pct["excellent"] == pytest.approx(s["icc_fair_or_better"])
    np.testing.assert_array_equal(rep.permutation.null_idiff, perm.null_idiff)


def test_fingerprint_design_planted_identity():
    # identical sessions: every subject identified, Iself = 1, ICC = 1 everywhere
    a, _ = planted(n=5, n_rois=5, seed=1)
    s = fp.fingerprint_design(a, a, n_permutations=20, n_bootstrap=20).summary()
    assert s["id_mean"] == 100.0 and s["iself"] == pytest.approx(1.0)
    assert s["icc_median"] == pytest.approx(1.0) and s["icc_fair_or_better"] == 100.0


def test_identifiability_summary_and_summary_table():
    a, b = planted(n=5, n_rois=5, seed=2)
    A = fp.identifiability_matrix(a, b)
    s1 = fp.identifiability_summary(a, b)
    assert s1 == fp.identifiability_summary(A=A)
    assert s1["idiff"] == fp.differential_identifiability(A).idiff
    with pytest.raises(SpineprintError):
        fp.identifiability_summary(a)
    data, _ = fake_connectomes(subjects=("01", "02", "03", "04"))
    designs = fp.designs_from_connectomes(data)
    reports = {n: fp.fingerprint_design(d.fc_a, d.fc_b, n_permutations=10, n_bootstrap=10)
               for n, d in designs.items()}
    t = fp.summary_table(reports, designs, columns=fp.IDENTIFICATION_KEYS)
    assert list(t.index) == [designs["within"].title, designs["between"].title]
    assert list(t.columns) == list(fp.IDENTIFICATION_KEYS)
    assert t.loc[designs["between"].title, "idiff"] == reports["between"].summary()["idiff"]
    by_str = fp.summary_table(reports, {n: d.title for n, d in designs.items()}, columns=["idiff"])
    assert list(by_str.index) == list(t.index) and list(by_str.columns) == ["idiff"]
    full = fp.summary_table(reports)
    assert list(full.index) == ["within", "between"] and "icc_median" in full.columns
    with pytest.raises(SpineprintError, match="unknown column"):
        fp.summary_table(reports, columns=["nope"])
    with pytest.raises(SpineprintError):
        fp.summary_table({})

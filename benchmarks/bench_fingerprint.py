"""Benchmark of spineprint_utils.fingerprint against naive implementations.

Run from the repository root::

    .venv/bin/python benchmarks/bench_fingerprint.py            # full size (~2-3 min, ~3 GB RAM)
    .venv/bin/python benchmarks/bench_fingerprint.py --quick    # small sizes, seconds

Sizes follow the issue: 1000 subjects x 35,778 edges (a 268-region brain atlas)
for the identifiability matrix, identification, Idiff and edgewise ICC, and 500
subjects for the full PCA sweep (m = 2 .. 2n). Synthetic test/retest connectomes
have a planted subject fingerprint (shared pattern + subject pattern + session noise).

Naive baselines that would take hours are timed on a subset and extrapolated
linearly; the output says so on each line. Every baseline also checks that the
fast result agrees with it (max absolute difference).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np
import pandas as pd

from spineprint_utils import fingerprint as fp


def timed(func, *args, repeat=1, **kwargs):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return out, best


def make_data(n, n_edges, seed=0, signal=0.5):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n_edges, dtype=np.float32)
    subj = signal * rng.standard_normal((n, n_edges), dtype=np.float32)
    a = base + subj + rng.standard_normal((n, n_edges), dtype=np.float32)
    b = base + subj + rng.standard_normal((n, n_edges), dtype=np.float32)
    return a, b


def line(name, fast, naive, note=""):
    ratio = naive / fast if fast > 0 else np.inf
    print(f"{name:<44s} fast {fast:8.2f} s | naive {naive:10.1f} s{note} | speed-up x{ratio:,.0f}", flush=True)


def bench_identifiability(n, n_edges, n_sub=20):
    a, b = make_data(n, n_edges)
    print(f"\n## identifiability + identification + Idiff: {n} subjects x {n_edges} edges (float32 input)")

    def full(dtype):
        A = fp.identifiability_matrix(a, b, dtype=dtype)
        return A, fp.identification_rate(A), fp.differential_identifiability(A)

    (A, ident, idd), t64 = timed(full, np.float64)
    (A32, _, _), t32 = timed(full, np.float32)
    print(f"   identification {ident.rate_mean:.3f}, Idiff {idd.idiff:.3f}; float32 products: max |dA| = "
          f"{np.abs(A32 - A).max():.1e}")
    # naive 1: double loop of numpy.corrcoef over subject pairs, on n_sub x n_sub, extrapolated
    t0 = time.perf_counter()
    ref = np.array([[np.corrcoef(a[i], b[j])[0, 1] for j in range(n_sub)] for i in range(n_sub)])
    t_loop = (time.perf_counter() - t0) * (n / n_sub) ** 2
    err = np.abs(ref - A[:n_sub, :n_sub]).max()
    # naive 2: numpy.corrcoef of the stacked 2n connectomes (computes the 2n x 2n matrix)
    (C, t_cc) = timed(lambda: np.corrcoef(np.concatenate([a, b]).astype(np.float64)))
    err2 = np.abs(C[:n, n:] - A).max()
    line("identifiability+id+Idiff (float64)", t64, t_loop, f" (pair loop, {n_sub}x{n_sub} extrapolated)")
    line("identifiability+id+Idiff (float32 products)", t32, t_loop, " (same)")
    line("identifiability+id+Idiff (float64)", t64, t_cc, " (np.corrcoef 2n x 2n)  ")
    print(f"   agreement: max |A - loop| = {err:.1e}, max |A - corrcoef| = {err2:.1e}")
    return a, b, A


def bench_stats(A, n_perm=1000, n_boot=1000):
    n = A.shape[0]
    print(f"\n## permutation test ({n_perm}) and bootstrap ({n_boot}) on a {n} x {n} identifiability matrix")
    res, t_perm = timed(fp.permutation_test, A, n_permutations=n_perm, seed=0)
    # naive: permute columns, recompute identification + Idiff per permutation (timed on 20)
    rng = np.random.default_rng(0)
    k = 20
    t0 = time.perf_counter()
    for _ in range(k):
        Ap = A[:, rng.permutation(n)]
        fp.identification_rate(Ap)
        fp.differential_identifiability(Ap)
    t_naive = (time.perf_counter() - t0) * n_perm / k
    line("permutation test", t_perm, t_naive, f" (per-permutation A[:, perm], {k} extrapolated)")
    bres, t_boot = timed(fp.bootstrap_ci, A, n_bootstrap=n_boot, seed=0)
    t0 = time.perf_counter()
    for _ in range(k):
        idx = rng.integers(0, n, n)
        sub = A[np.ix_(idx, idx)]
        same = idx[:, None] == idx[None, :]
        sub[same].mean(), sub[~same].mean()
    t_naive = (time.perf_counter() - t0) * n_boot / k
    line("bootstrap CI", t_boot, t_naive, f" (per-resample A[idx, idx], {k} extrapolated)")
    print(f"   p(Idiff) = {res.p_idiff:.4f}, Idiff 95% CI = [{bres.idiff[0]:.2f}, {bres.idiff[1]:.2f}]")


def bench_pca(n, n_edges, n_m=4):
    a, b = make_data(n, n_edges, seed=1)
    print(f"\n## PCA reconstruction sweep m = 2..{2 * n}: {n} subjects x {n_edges} edges")
    res, t_fast = timed(fp.pca_reconstruction, a, b)
    print(f"   m* = {res.m_opt}, Idiff(m*) = {res.idiff_opt:.3f} (original {res.idiff_orig:.3f})")
    # naive (Amico & Goni style): one SVD, then for each m a full edges x 2n reconstruction and
    # its identifiability matrix; timed for n_m values of m spread over the range and extrapolated.
    t0 = time.perf_counter()
    Y = np.concatenate([a, b]).T.astype(np.float64)
    mu = Y.mean(axis=0)
    U, s, Vt = np.linalg.svd(Y - mu, full_matrices=False)
    t_svd = time.perf_counter() - t0
    ms = np.linspace(2, 2 * n, n_m).astype(int)
    errs = []
    t0 = time.perf_counter()
    for m in ms:
        rec = (U[:, :m] * s[:m]) @ Vt[:m] + mu
        A = fp.identifiability_matrix(rec[:, :n].T, rec[:, n:].T)
        idiff = fp.differential_identifiability(A).idiff
        errs.append(abs(idiff - res.idiff[m - 2]))
    t_per_m = (time.perf_counter() - t0) / n_m
    t_naive = t_svd + t_per_m * (2 * n - 1)
    line("PCA sweep (all m)", t_fast, t_naive, f" (SVD {t_svd:.0f} s + {n_m} m extrapolated to {2 * n - 1})")
    print(f"   agreement with the direct reconstruction: max |dIdiff| = {max(errs):.1e} over m = {ms.tolist()}")


def bench_icc(n, n_edges, n_pg=10, n_loop=300):
    a, b = make_data(n, n_edges, seed=2)
    print(f"\n## edgewise ICC(1,1): {n} subjects x {n_edges} edges")
    icc, t_fast = timed(fp.edgewise_icc, a, b, "ICC(1,1)")
    _, t_all = timed(fp.edgewise_icc, a, b, "all")
    print(f"   median ICC {np.median(icc):.3f}; all six forms at once {t_all:.2f} s")
    # naive 1: pingouin.intraclass_corr per edge (a DataFrame per edge), extrapolated
    import pingouin as pg

    subj = np.tile(np.arange(n), 2)
    sess = np.repeat([0, 1], n)
    errs = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in range(n_pg):
            df = pd.DataFrame({"s": subj, "r": sess, "y": np.concatenate([a[:, e], b[:, e]]).astype(float)})
            out = pg.intraclass_corr(df, targets="s", raters="r", ratings="y")
            errs.append(abs(float(out["ICC"].iloc[0]) - icc[e]))
    t_pg = (time.perf_counter() - t0) * n_edges / n_pg
    line("edgewise ICC(1,1)", t_fast, t_pg, f" (pingouin per edge, {n_pg} extrapolated)")
    # naive 2: per-edge numpy ANOVA loop
    t0 = time.perf_counter()
    for e in range(n_loop):
        y = np.stack([a[:, e], b[:, e]], axis=1).astype(float)
        g = y.mean()
        msr = 2 * np.sum((y.mean(1) - g) ** 2) / (n - 1)
        msw = np.sum((y - y.mean(1, keepdims=True)) ** 2) / n
        (msr - msw) / (msr + msw)
    t_loop = (time.perf_counter() - t0) * n_edges / n_loop
    line("edgewise ICC(1,1)", t_fast, t_loop, f" (numpy loop over edges, {n_loop} extrapolated)")
    print(f"   agreement with pingouin: max |dICC| = {max(errs):.1e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=1000)
    p.add_argument("--pca-subjects", type=int, default=500)
    p.add_argument("--edges", type=int, default=268 * 267 // 2)
    p.add_argument("--quick", action="store_true", help="small sizes (100 subjects x 4,950 edges)")
    args = p.parse_args(argv)
    if args.quick:
        args.subjects, args.pca_subjects, args.edges = 100, 50, 4950
    import numpy

    print(f"numpy {numpy.__version__}; {args.subjects} subjects, {args.edges} edges")
    _, _, A = bench_identifiability(args.subjects, args.edges)
    bench_stats(A)
    bench_pca(args.pca_subjects, args.edges)
    bench_icc(args.subjects, args.edges)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\npeak memory (max RSS) {peak:.2f} GB")


if __name__ == "__main__":
    main()

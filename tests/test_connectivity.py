"""Tests for spineprint_utils.connectivity: region time series, FC kinds, split halves, datasets."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from spineprint_utils import atlas, connectivity as conn
from spineprint_utils._io import SpineprintError

SEGS = ("C4", "C5")


# ------------------------------------------------------------------ helpers
def _rand_ts(t=60, r=5, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(r, r))
    return rng.normal(size=(t, r)) @ mix + 3.0


def _planted_pattern(table):
    """A positive-definite group FC pattern with horn/segment structure."""
    segs = table["segment"].to_numpy()
    horns = table["horn"].to_numpy()
    r = len(table)
    c = np.eye(r)
    for i in range(r):
        for j in range(r):
            if i == j:
                continue
            same = segs[i] == segs[j]
            vi, vj = horns[i].endswith("V"), horns[j].endswith("V")
            if vi and vj:
                c[i, j] = 0.6 if same else 0.3
            elif not vi and not vj:
                c[i, j] = 0.5 if same else 0.25
            else:
                c[i, j] = 0.05
    assert np.linalg.eigvalsh(c).min() > 0.05
    return c


def _make_dataset(root, n_sub=4, n_runs=1, t=80, noise=0.3, seed=1):
    """Small synthetic derivatives folder in PAM50 (phantom) space with a planted FC."""
    affine, shape = atlas.pam50_epi_grid(SEGS, voxel_size=(1.0, 1.0, 4.0), fov_mm=(20.0, 16.0), source="phantom")
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    labels, table = atlas.region_labels(ref, SEGS, source="phantom")
    lab = np.asarray(labels.dataobj)
    c = _planted_pattern(table)
    chol = np.linalg.cholesky(c)
    rng = np.random.default_rng(seed)
    truth = {}
    for s in range(1, n_sub + 1):
        for run in range(1, n_runs + 1):
            sig = rng.normal(size=(t, len(table))) @ chol.T
            data = 100.0 + noise * rng.normal(size=shape + (t,))
            for k in range(len(table)):
                data[lab == k + 1] += sig[:, k]
            d = root / f"sub-{s:02d}" / "ses-01" / "func"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"sub-{s:02d}_ses-01_task-rest_run-{run}_desc-preproc_bold.nii.gz"
            nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
            truth[path] = sig
    return c, table, labels, truth


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("deriv")
    c, table, labels, truth = _make_dataset(root)
    return root, c, table, labels, truth


# ------------------------------------------------------------------ time series
def test_region_timeseries_vs_loop(dataset):
    root, c, table, labels, truth = dataset
    path = sorted(truth)[0]
    ts = conn.region_timeseries(path, labels)
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    lab = np.asarray(labels.dataobj)
    assert ts.shape == (data.shape[3], len(table))
    for k in range(len(table)):
        for t in (0, 17, data.shape[3] - 1):
            assert abs(ts[t, k] - data[..., t][lab == k + 1].mean()) < 1e-10
    # with a mask removing half of region 1
    mask = np.ones(lab.shape, bool)
    vox = np.argwhere(lab == 1)
    mask[tuple(vox[: len(vox) // 2].T)] = False
    tsm = conn.region_timeseries(path, labels, mask=mask)
    keep = (lab == 1) & mask
    assert abs(tsm[5, 0] - data[..., 5][keep].mean()) < 1e-10
    np.testing.assert_allclose(tsm[:, 1:], ts[:, 1:])


def test_region_timeseries_errors(dataset, tmp_path):
    root, c, table, labels, truth = dataset
    path = sorted(truth)[0]
    img = nib.load(str(path))
    with pytest.raises(SpineprintError, match="4D"):
        conn.region_timeseries(nib.Nifti1Image(np.zeros(img.shape[:3], np.float32), img.affine), labels)
    shifted = img.affine.copy()
    shifted[0, 3] += 3
    with pytest.raises(SpineprintError, match="differs"):
        conn.region_timeseries(nib.Nifti1Image(np.zeros(img.shape, np.float32), shifted), labels)
    lab = np.asarray(labels.dataobj).copy()
    lab[lab == 2] = 0
    with pytest.raises(SpineprintError, match=r"label\(s\) \[2\] have no voxels"):
        conn.region_timeseries(img, nib.Nifti1Image(lab, img.affine))
    bad = np.asarray(img.dataobj).copy()
    bad[np.asarray(labels.dataobj) == 1, 3] = np.nan
    with pytest.raises(SpineprintError, match="NaN"):
        conn.region_timeseries(nib.Nifti1Image(bad, img.affine), labels)
    with pytest.raises(SpineprintError, match="not found"):
        conn.region_timeseries(tmp_path / "missing.nii.gz", labels)


# ------------------------------------------------------------------ FC formulas
def test_correlation_matches_corrcoef():
    ts = _rand_ts()
    fc = conn.connectivity_matrix(ts)
    np.testing.assert_allclose(fc, np.corrcoef(ts, rowvar=False), atol=1e-10)
    assert np.allclose(fc, fc.T) and np.allclose(np.diag(fc), 1)


def test_partial_correlation_matches_residual_regression():
    """Closed form -P_ij/sqrt(P_ii P_jj) equals the correlation of OLS residuals."""
    ts = _rand_ts(t=80, r=6, seed=3)
    pc = conn.connectivity_matrix(ts, kind="partial correlation")
    r = ts.shape[1]
    for i in range(r):
        for j in range(i + 1, r):
            others = [k for k in range(r) if k not in (i, j)]
            design = np.column_stack([np.ones(len(ts)), ts[:, others]])
            res_i = ts[:, i] - design @ np.linalg.lstsq(design, ts[:, i], rcond=None)[0]
            res_j = ts[:, j] - design @ np.linalg.lstsq(design, ts[:, j], rcond=None)[0]
            expected = np.corrcoef(res_i, res_j)[0, 1]
            assert abs(pc[i, j] - expected) < 1e-10
            assert abs(pc[j, i] - expected) < 1e-10
    prec = np.linalg.inv(np.cov(ts, rowvar=False))
    d = np.sqrt(np.diag(prec))
    closed = -prec / np.outer(d, d)
    np.fill_diagonal(closed, 1)
    np.testing.assert_allclose(pc, closed, atol=1e-10)
    assert conn.connectivity_matrix(ts, kind="partial").shape == (r, r)  # alias


def test_fisher_z_is_arctanh():
    ts = _rand_ts(seed=5)
    r = np.corrcoef(ts, rowvar=False)
    z = conn.connectivity_matrix(ts, fisher_z=True)
    off = ~np.eye(r.shape[0], dtype=bool)
    np.testing.assert_allclose(z[off], np.arctanh(r[off]), atol=1e-10)
    assert np.all(np.diag(z) == 0)
    assert np.isfinite(conn.fisher_z(np.array([[1.0, 1.0], [1.0, 1.0]]))).all()


def test_fc_errors():
    ts = _rand_ts(t=10, r=12)
    with pytest.raises(SpineprintError, match="more time points"):
        conn.connectivity_matrix(ts, kind="partial correlation")
    flat = _rand_ts()
    flat[:, 2] = 4.0
    with pytest.raises(SpineprintError, match=r"column\(s\) \[2\] are constant"):
        conn.connectivity_matrix(flat)
    with pytest.raises(SpineprintError, match="unknown connectivity kind"):
        conn.connectivity_matrix(_rand_ts(), kind="covariance-ish")
    with pytest.raises(SpineprintError, match="group"):
        conn.connectivity_matrix(_rand_ts(), kind="tangent")
    with pytest.raises(SpineprintError, match="different numbers of regions"):
        conn.connectivity_matrices([_rand_ts(r=4), _rand_ts(r=5)])


def test_split_halves_use_exact_volumes():
    rng = np.random.default_rng(7)
    a = rng.normal(size=100)
    b = rng.normal(size=100)
    x = np.column_stack([a, np.r_[a[:50], -a[50:]] + 0.1 * b, rng.normal(size=100)])
    full, h1, h2 = conn.split_half_connectivity(x)
    np.testing.assert_allclose(full, np.corrcoef(x, rowvar=False), atol=1e-10)
    np.testing.assert_allclose(h1, np.corrcoef(x[:50], rowvar=False), atol=1e-10)
    np.testing.assert_allclose(h2, np.corrcoef(x[50:], rowvar=False), atol=1e-10)
    assert h1[0, 1] > 0.9 and h2[0, 1] < -0.9
    # odd length: the middle volume is in neither half
    y = rng.normal(size=(41, 3))
    _, g1, g2 = conn.split_half_connectivity(y, kind="partial correlation")
    np.testing.assert_allclose(g1, conn.connectivity_matrix(y[:20], "partial correlation"), atol=1e-12)
    np.testing.assert_allclose(g2, conn.connectivity_matrix(y[21:], "partial correlation"), atol=1e-12)


def _spd_power(m, p):
    w, v = np.linalg.eigh(m)
    return (v * w**p) @ v.T


def _spd_log(m):
    w, v = np.linalg.eigh(m)
    return (v * np.log(w)) @ v.T


def test_tangent_two_runs_closed_form():
    """For two runs the Riemannian mean is the matrix geometric mean A # B (closed form)."""
    from sklearn.covariance import LedoitWolf

    runs = [_rand_ts(t=200, r=4, seed=s) for s in (11, 12)]
    out = conn.connectivity_matrices(runs, kind="tangent")
    a, b = (LedoitWolf(store_precision=False).fit(x).covariance_ for x in runs)
    ah, aih = _spd_power(a, 0.5), _spd_power(a, -0.5)
    g = ah @ _spd_power(aih @ b @ aih, 0.5) @ ah
    gih = _spd_power(g, -0.5)
    for x, cov in zip(out, (a, b)):
        np.testing.assert_allclose(x, _spd_log(gih @ cov @ gih), atol=1e-5)
    np.testing.assert_allclose(out[0], -out[1], atol=1e-5)  # symmetric around the geodesic midpoint


# ------------------------------------------------------------------ coupling summary
def test_coupling_summary_vs_loop():
    regions = [f"{s}_{h}" for s in ("C4", "C5", "C6") for h in ("LV", "RV", "LD", "RD")]
    rng = np.random.default_rng(2)
    mats = rng.uniform(-1, 1, size=(3, 12, 12))
    mats = (mats + mats.transpose(0, 2, 1)) / 2
    df = conn.coupling_summary(mats, regions).set_index(["coupling", "scope"])
    acc = {}
    for i in range(12):
        for j in range(i + 1, 12):
            si, hi = regions[i].split("_")
            sj, hj = regions[j].split("_")
            kind = {2: "ventral-ventral", 0: "dorsal-dorsal", 1: "dorsal-ventral"}[(hi[1] == "V") + (hj[1] == "V")]
            scope = "within segment" if si == sj else "between segments"
            acc.setdefault((kind, scope), []).append(mats[:, i, j])
    assert len(df) == 6
    for key, vals in acc.items():
        vals = np.array(vals)  # (pairs, mats)
        assert df.loc[key, "n_pairs"] == vals.shape[0]
        assert abs(df.loc[key, "mean"] - vals.mean()) < 1e-12
        assert abs(df.loc[key, "sd"] - vals.mean(axis=0).std(ddof=1)) < 1e-12
    # within a segment: 1 VV pair, 1 DD pair, 4 DV pairs per segment
    assert df.loc[("ventral-ventral", "within segment"), "n_pairs"] == 3
    assert df.loc[("dorsal-ventral", "within segment"), "n_pairs"] == 12
    # same-side / opposite-side split of dorsal-ventral pairs, brute force
    split = conn.coupling_summary(mats, regions, split_sides=True).set_index(["coupling", "scope"])
    for side, same in (("same side", True), ("opposite sides", False)):
        vals = [mats[:, i, j] for i in range(12) for j in range(i + 1, 12)
                if regions[i][:2] == regions[j][:2]
                and {regions[i][-1], regions[j][-1]} == {"V", "D"} and (regions[i][-2] == regions[j][-2]) == same]
        assert split.loc[(f"dorsal-ventral {side}", "within segment"), "n_pairs"] == len(vals) == 6
        assert abs(split.loc[(f"dorsal-ventral {side}", "within segment"), "mean"] - np.mean(vals)) < 1e-12
    single = conn.coupling_summary(mats[0], regions)
    assert single["n_matrices"].eq(1).all() and single["sd"].isna().all()
    with pytest.raises(SpineprintError, match="not <segment>_<horn>"):
        conn.coupling_summary(np.eye(2), ["a", "b"])


# ------------------------------------------------------------------ dataset level
def test_connectivity_dataset_outputs_and_recovery(dataset):
    root, c, table, labels, truth = dataset
    path = conn.connectivity_dataset(root, source="phantom", segments=SEGS)
    assert path == root / "group" / "atlas-PAM50horns_connectomes.npz"
    data = conn.load_connectomes(path)
    n, r = len(truth), len(table)
    assert data["fc"].shape == (n, 3, r, r) and data["fc"].dtype == np.float64
    assert list(data["subjects"]) == ["01", "02", "03", "04"]
    assert list(data["sessions"]) == ["01"] * 4 and list(data["runs"]) == ["1"] * 4
    assert data["regions"] == list(table["name"]) and data["kind"] == "correlation"
    # per-run derivatives, full/half matrices consistent with the TSV time series
    first = sorted(truth)[0]
    prefix = "sub-01_ses-01_task-rest_run-1"
    ts_tsv = first.parent / f"{prefix}_atlas-PAM50horns_timeseries.tsv"
    ts = pd.read_csv(ts_tsv, sep="\t")
    assert list(ts.columns) == data["regions"]
    for j, part in enumerate(("full", "half1", "half2")):
        m = pd.read_csv(first.parent / f"{prefix}_atlas-PAM50horns_desc-{part}_connectivity.tsv", sep="\t", index_col=0)
        assert list(m.index) == data["regions"]
        np.testing.assert_allclose(m.to_numpy(), data["fc"][0, j], atol=1e-9)
    x = ts.to_numpy()
    np.testing.assert_allclose(data["fc"][0, 1], np.corrcoef(x[:40], rowvar=False), atol=1e-8)
    np.testing.assert_allclose(data["fc"][0, 2], np.corrcoef(x[40:], rowvar=False), atol=1e-8)
    # the group FC recovers the planted pattern
    iu = np.triu_indices(r, 1)
    group = data["fc"][:, 0].mean(axis=0)
    assert np.corrcoef(group[iu], c[iu])[0, 1] > 0.9
    # a shuffled pattern does not (the check can fail)
    perm = np.random.default_rng(0).permutation(r)
    assert np.corrcoef(group[iu], c[np.ix_(perm, perm)][iu])[0, 1] < 0.9
    # region image and table for the notebook
    assert (root / "group" / "atlas-PAM50horns_dseg.nii.gz").is_file()
    summary = conn.coupling_summary(data["fc"][:, 0], data["regions"]).set_index(["coupling", "scope"])
    assert summary.loc[("ventral-ventral", "within segment"), "mean"] > summary.loc[("dorsal-ventral", "within segment"), "mean"]


def test_connectivity_dataset_resumes_and_overwrites(dataset, monkeypatch):
    root, *_ = dataset
    path = conn.connectivity_dataset(root, source="phantom", segments=SEGS)
    before = conn.load_connectomes(path)["fc"]

    def boom(*a, **k):
        raise AssertionError("recomputed although outputs exist")

    monkeypatch.setattr(conn, "region_timeseries", boom)
    monkeypatch.setattr(conn, "split_half_connectivity", boom)
    again = conn.load_connectomes(conn.connectivity_dataset(root, source="phantom", segments=SEGS))["fc"]
    np.testing.assert_allclose(again, before, atol=1e-8)
    with pytest.raises(AssertionError, match="recomputed"):
        conn.connectivity_dataset(root, source="phantom", segments=SEGS, overwrite=True)
    # different atlas parameters invalidate the stored time series
    with pytest.raises(AssertionError, match="recomputed"):
        conn.connectivity_dataset(root, source="phantom", segments=SEGS, percentile=20)
    monkeypatch.undo()
    # a re-preprocessed run (new content) invalidates its outputs, and only its outputs
    run = sorted(root.glob("sub-02/ses-01/func/*_desc-preproc_bold.nii.gz"))[0]
    img = nib.load(str(run))
    data = np.asarray(img.dataobj)[..., ::-1].copy()  # same volumes, reversed order
    nib.save(nib.Nifti1Image(data, img.affine), str(run))
    calls = []
    real = conn.region_timeseries
    monkeypatch.setattr(conn, "region_timeseries", lambda *a, **k: calls.append(1) or real(*a, **k))
    after = conn.load_connectomes(conn.connectivity_dataset(root, source="phantom", segments=SEGS))["fc"]
    assert len(calls) == 1
    np.testing.assert_allclose(after[:, 0], before[:, 0], atol=1e-8)  # reversal keeps full-run correlations
    np.testing.assert_allclose(after[1, 1], before[1, 2], atol=1e-8)  # but swaps the halves
    np.testing.assert_allclose(after[1, 2], before[1, 1], atol=1e-8)
    assert not np.allclose(after[1, 1], before[1, 1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-8)


def test_connectivity_dataset_other_kinds_and_participants(dataset):
    root, c, table, labels, truth = dataset
    p = conn.connectivity_dataset(root, kind="partial", source="phantom", segments=SEGS, participants=["01", "sub-03"])
    assert p.name == "atlas-PAM50horns_meas-partial_connectomes.npz"
    data = conn.load_connectomes(p)
    assert list(data["subjects"]) == ["01", "03"] and data["kind"] == "partial correlation"
    ts = pd.read_csv(sorted(truth)[0].parent / "sub-01_ses-01_task-rest_run-1_atlas-PAM50horns_timeseries.tsv", sep="\t")
    np.testing.assert_allclose(data["fc"][0, 0], conn.connectivity_matrix(ts.to_numpy(), "partial correlation"), atol=1e-8)
    t = conn.load_connectomes(conn.connectivity_dataset(root, kind="tangent", source="phantom", segments=SEGS))
    assert t["fc"].shape == (4, 3, len(table), len(table)) and t["kind"] == "tangent"
    with pytest.raises(SpineprintError, match="participant"):
        conn.connectivity_dataset(root, source="phantom", segments=SEGS, participants=["99"])
    with pytest.raises(SpineprintError, match="invalid sub label"):
        conn.connectivity_dataset(root, source="phantom", segments=SEGS, participants=["../x"])


def test_connectivity_dataset_errors_leave_no_group_file(tmp_path):
    with pytest.raises(SpineprintError, match=r"no preprocessed runs .*\(run preprocessing first"):
        conn.connectivity_dataset(tmp_path, source="phantom")
    _, _, labels, truth = _make_dataset(tmp_path, n_sub=2, t=20)
    bad = sorted(truth)[1]
    img = nib.load(str(bad))
    data = np.asarray(img.dataobj).copy()
    data[np.asarray(labels.dataobj) == 1, 4] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), str(bad))
    with pytest.raises(SpineprintError, match=str(bad.name)):
        conn.connectivity_dataset(tmp_path, source="phantom", segments=SEGS)
    assert not list(tmp_path.rglob("*.tmp"))
    assert not list((tmp_path / "group").glob("*connectomes.npz"))


def test_load_connectomes_errors(tmp_path):
    with pytest.raises(SpineprintError, match="not found"):
        conn.load_connectomes(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SpineprintError, match="corrupt"):
        conn.load_connectomes(tmp_path / "bad.npz")
    np.savez(tmp_path / "partial.npz", fc=np.zeros((1, 3, 2, 2)))
    with pytest.raises(SpineprintError, match="missing"):
        conn.load_connectomes(tmp_path / "partial.npz")


def test_cli(dataset, capsys):
    from spineprint_utils import cli

    root, *_ = dataset
    rc = cli.main(["connectivity", str(root), "--source", "phantom", "--segments", *SEGS])
    assert rc == 0
    assert "atlas-PAM50horns_connectomes.npz" in capsys.readouterr().out
    assert cli.main(["connectivity", str(root / "nope"), "--source", "phantom"]) == 1


def test_raw_bids_is_only_read(tmp_path):
    raw = tmp_path / "raw"
    _, table, _, truth = _make_dataset(raw, n_sub=2, t=20)
    for p in truth:  # rename to raw BOLD names
        p.rename(p.with_name(p.name.replace("_desc-preproc_bold", "_bold")))
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    pattern = "sub-*/ses-*/func/*_bold.nii.gz"
    with pytest.raises(SpineprintError, match="raw BIDS dataset"):
        conn.connectivity_dataset(raw, source="phantom", segments=SEGS, pattern=pattern)
    out = tmp_path / "out"
    path = conn.connectivity_dataset(raw, source="phantom", segments=SEGS, pattern=pattern, output_dir=out)
    assert path == out / "group" / "atlas-PAM50horns_connectomes.npz"
    assert (out / "sub-01" / "ses-01" / "func" / "sub-01_ses-01_task-rest_run-1_atlas-PAM50horns_timeseries.tsv").is_file()
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert not list(raw.rglob("*atlas-PAM50horns*")) and not (raw / "group").exists()
    assert len(conn.load_connectomes(path)["subjects"]) == 2


def test_user_label_image(dataset, tmp_path):
    root, c, table, labels, truth = dataset
    lab_path = tmp_path / "my_labels.nii.gz"
    nib.save(labels, str(lab_path))
    names = tmp_path / "names.tsv"
    pd.DataFrame({"label": table["label"], "name": table["name"]}).to_csv(names, sep="\t", index=False)
    out = tmp_path / "out"
    p = conn.connectivity_dataset(root, labels_img=lab_path, names_tsv=names, output_dir=out)
    data = conn.load_connectomes(p)
    assert data["regions"] == list(table["name"])
    ref = conn.load_connectomes(conn.connectivity_dataset(root, source="phantom", segments=SEGS))
    np.testing.assert_allclose(data["fc"], ref["fc"], atol=1e-8)
    # a label image on another grid is refused
    other = nib.Nifti1Image(np.asarray(labels.dataobj)[:-1], labels.affine)
    nib.save(other, str(tmp_path / "other.nii.gz"))
    with pytest.raises(SpineprintError, match="grid differs"):
        conn.connectivity_dataset(root, labels_img=tmp_path / "other.nii.gz", output_dir=out)


def test_simulated_study_group_fc_recovered(tmp_path):
    """End to end with the package's simulator: group FC of the raw runs vs the planted pattern."""
    simulate = pytest.importorskip("spineprint_utils.simulate")
    segs = ("C4", "C5", "C6")
    bids = simulate.simulate_dataset(tmp_path / "bids", n_subjects=3, n_sessions=1, n_volumes=80, segments=segs,
                                     anatomy="phantom")
    path = conn.connectivity_dataset(bids, pattern="sub-*/ses-*/func/*_bold.nii.gz", output_dir=tmp_path / "out",
                                     segments=segs, source="phantom")
    data = conn.load_connectomes(path)
    truth = simulate.load_ground_truth(bids)
    assert data["regions"] == list(truth["regions"]["name"])
    iu = np.triu_indices(len(data["regions"]), 1)
    group = data["fc"][:, 0].mean(axis=0)
    planted = truth["group_fc"]
    assert np.corrcoef(group[iu], planted[iu])[0, 1] > 0.5
    perm = np.random.default_rng(1).permutation(len(planted))
    assert np.corrcoef(group[iu], planted[np.ix_(perm, perm)][iu])[0, 1] < 0.5

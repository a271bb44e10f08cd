"""Real spinal ROI time series: loader, realdata module and chapter "A real spine-print".

The reference computations here use numpy only and are written without the package
(no spineprint_utils function is called to get an expected value), on the real arrays
read straight from the files with ``np.load``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from spineprint_utils import datasets, realdata
from spineprint_utils._io import SpineprintError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------ independent reference code
def _readme_sums(shared_data: Path, folder: str) -> dict:
    text = (shared_data / "README.md").read_text()
    return {rel.split("/", 1)[1]: sha for sha, rel in re.findall(r"^([0-9a-f]{64})  (\S+)", text, flags=re.M)
            if rel.startswith(folder + "/")}


def _raw(shared_data):
    folder = shared_data / "spinal_graph_learning"
    flat = np.load(folder / "spinal_data.npy")
    names = [line.split(",")[1] for line in (folder / "pam50_atlas.csv").read_text().split()[1:]]
    onsets = np.array([float(line.split(",")[1]) for line in
                       (folder / "activity_paradigm_Z3mm.csv").read_text().split()[1:]])
    # rows: all session-1 runs first (participant-major), then session 2
    ts = np.empty((15, 2, 125, 56))
    for e in range(2):
        for s in range(15):
            start = (e * 15 + s) * 125
            ts[s, e] = flat[start:start + 125]
    cens = np.zeros((15, 2, 125), bool)
    for s in range(15):
        for e in range(2):
            for t in range(125):
                cens[s, e, t] = np.all(np.abs(ts[s, e, t]) < 1e-2)  # ~1e-4 vs ~500 a.u.
    return ts, names, onsets, cens


def _fir(onsets, T, lags=15):
    X = np.zeros((T, 1 + lags))
    X[:, 0] = 1
    for o in onsets:
        for k in range(lags):
            t = int(round(o)) + k  # TR = 1 s
            if t < T:
                X[t, 1 + k] = 1
    return X


def _fc(x, keep):
    return np.corrcoef(x[keep].T)


def _reference_design(ts, cens, names, onsets, gray_only, regress):
    """(within A, between A, within FCs, between FCs) computed from scratch."""
    cols = [i for i, n in enumerate(names) if ("_G_" in n or not gray_only)]
    T = ts.shape[2]
    X = _fir(onsets, T)
    segs = {"full": np.arange(T), "h1": np.arange(T // 2), "h2": np.arange(T - T // 2, T)}
    fc = {}
    for s in range(15):
        for e in range(2):
            for name, idx in segs.items():
                y = ts[s, e][idx][:, cols]
                keep = ~cens[s, e][idx]
                if regress:
                    res = np.zeros_like(y)
                    beta = np.linalg.lstsq(X[idx][keep], y[keep], rcond=None)[0]
                    res[keep] = y[keep] - X[idx][keep] @ beta
                    y = res
                fc[s, e, name] = _fc(y, keep)
    iu = np.triu_indices(len(cols), 1)
    within = [(fc[s, 0, "h1"][iu], fc[s, 0, "h2"][iu]) for s in range(15)]
    between = [(fc[s, 0, "full"][iu], fc[s, 1, "full"][iu]) for s in range(15)]
    out = {}
    for key, pairs in (("within", within), ("between", between)):
        a = np.array([p[0] for p in pairs])
        b = np.array([p[1] for p in pairs])
        A = np.array([[np.corrcoef(a[i], b[j])[0, 1] for j in range(15)] for i in range(15)])
        out[key] = (A, a, b)
    return out


def _stats(A, a, b):
    n = len(A)
    id_ab = np.mean([np.argmax(A[i]) == i for i in range(n)])
    id_ba = np.mean([np.argmax(A[:, j]) == j for j in range(n)])
    iself = np.trace(A) / n
    iothers = (A.sum() - np.trace(A)) / (n * n - n)
    # ICC(1,1), Shrout & Fleiss 1979: one-way random effects, k = 2 scans
    Y = np.stack([a, b], axis=-1)  # (n, E, 2)
    grand = Y.mean(axis=(0, 2))
    msb = 2 * ((Y.mean(axis=2) - grand) ** 2).sum(axis=0) / (n - 1)
    msw = ((Y - Y.mean(axis=2, keepdims=True)) ** 2).sum(axis=(0, 2)) / n
    icc = (msb - msw) / (msb + msw)
    return {"id_ab": 100 * id_ab, "id_ba": 100 * id_ba, "id_mean": 50 * (id_ab + id_ba),
            "iself": iself, "iothers": iothers, "idiff": 100 * (iself - iothers),
            "icc_median": float(np.median(icc))}


@pytest.fixture(scope="module")
def raw(shared_data):
    return _raw(shared_data)


@pytest.fixture(scope="module")
def real(shared_data):
    return datasets.fetch_spinal_graph_learning()


# ------------------------------------------------------------------ loader
def test_registry_matches_published_checksums(shared_data):
    published = _readme_sums(shared_data, "spinal_graph_learning")
    assert {k: v[1] for k, v in datasets.SGL_REGISTRY.items()} == published
    for name, (_, sha) in datasets.SGL_REGISTRY.items():
        assert hashlib.sha256((shared_data / "spinal_graph_learning" / name).read_bytes()).hexdigest() == sha
    assert datasets.SGL_URL.format(path="x") == (
        "https://raw.githubusercontent.com/louisleger/spinal-graph-learning/"
        "b31e9ecc0e0a98f72ad745d5e078a2a0f7a68286/x")


def test_loader_shapes_names_layout(real, raw):
    ts, names, onsets, cens = raw
    assert real.timeseries.shape == (15, 2, 125, 56)
    assert real.regions == names and len(set(names)) == 56
    assert real.regions[0] == "C6_G_D_L" and real.regions[-1] == "T1_W_SL_R"
    np.testing.assert_array_equal(real.timeseries, ts)
    np.testing.assert_array_equal(real.onsets, onsets)
    np.testing.assert_array_equal(real.censored, cens)
    assert real.tr == pytest.approx(1.0, abs=0.01)
    assert real.paradigm.shape == (125,) and set(np.unique(real.paradigm)) == {0.0, 1.0}
    assert real.subjects == [f"{i:02d}" for i in range(1, 16)] and real.sessions == ["1", "2"]
    assert real.censored.sum() == 99  # counted independently above too


def test_loader_corrupt_copy_is_named(shared_data, tmp_path, monkeypatch):
    copy = tmp_path / "spinal_graph_learning"
    shutil.copytree(shared_data / "spinal_graph_learning", copy)
    (copy / "activity.npy").chmod(0o644)
    with open(copy / "activity.npy", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(SpineprintError, match=r"activity\.npy.*sha256|checksum mismatch.*activity\.npy"):
        datasets.fetch_spinal_graph_learning(copy)
    monkeypatch.setenv("SPINEPRINT_DATA_DIR", str(tmp_path))  # data root holding spinal_graph_learning/
    with pytest.raises(SpineprintError, match="checksum mismatch"):
        datasets.fetch_spinal_graph_learning()


def test_loader_offline_without_copy_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))

    def fail(url, *a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets.pooch, "retrieve", fail)
    with pytest.raises(SpineprintError, match="SPINEPRINT_DATA_DIR") as info:
        datasets.fetch_spinal_graph_learning()
    assert "b31e9ecc0e0a98f72ad745d5e078a2a0f7a68286/data/fmri/spinal_data.npy" in str(info.value)


def test_loader_download_path(shared_data, tmp_path, monkeypatch):
    """Downloads come from the pinned upstream paths; a tampered file is refused."""
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))
    src = shared_data / "spinal_graph_learning"
    prefix = "https://raw.githubusercontent.com/louisleger/spinal-graph-learning/b31e9ecc0e0a98f72ad745d5e078a2a0f7a68286/"
    calls, tamper = [], {"on": True}

    def fake(url, known_hash, fname, path, progressbar):
        assert url.startswith(prefix)
        calls.append(url[len(prefix):])
        data = (src / Path(url).name).read_bytes()
        if tamper["on"] and url.endswith("pam50_atlas.csv"):
            data += b"56,X\n"
        if hashlib.sha256(data).hexdigest() != known_hash.split(":")[1]:
            raise ValueError("SHA256 hash of downloaded file does not match")
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / fname).write_bytes(data)
        return str(Path(path) / fname)

    monkeypatch.setattr(datasets.pooch, "retrieve", fake)
    with pytest.raises(SpineprintError, match=r"pam50_atlas\.csv.*pinned checksum"):
        datasets.fetch_spinal_graph_learning()
    assert calls == ["data/fmri/spinal_data.npy", "data/resources/pam50_atlas.csv"]
    tamper["on"] = False
    data = datasets.fetch_spinal_graph_learning()
    assert calls[2:] == ["data/resources/pam50_atlas.csv", "data/resources/activity.npy",
                         "data/resources/activity_paradigm_Z3mm.csv"]  # the verified file is not fetched again
    assert data.timeseries.shape == (15, 2, 125, 56)
    assert str(tmp_path / "cache") in str(data.folder)


def test_sct_testing_data_loader(shared_data, tmp_path):
    root = datasets.fetch_sct_testing_data()
    assert root == (shared_data / "sct_testing_data").resolve()
    assert hashlib.sha256((root / "fmri" / "fmri.nii.gz").read_bytes()).hexdigest() == (
        "b5f43b60e3be7c7cee290da0c85d6de938ab833ab4e8420bd99b3e88a1db5ab9")
    copy = tmp_path / "sct"
    shutil.copytree(shared_data / "sct_testing_data", copy)
    (copy / "fmri" / "fmri.nii.gz").chmod(0o644)
    (copy / "fmri" / "fmri.nii.gz").write_bytes(b"not an image")
    with pytest.raises(SpineprintError, match=r"fmri\.nii\.gz"):
        datasets.fetch_sct_testing_data(copy)


# ------------------------------------------------------------------ realdata module
def test_region_sets(real):
    tab = realdata.region_table(real.regions)
    assert (tab["tissue"] == "gray").sum() == 24 and (tab["tissue"] == "white").sum() == 32
    assert realdata.select_regions(real.regions, "gray matter").sum() == 24
    assert realdata.select_regions(real.regions, "horns").sum() == 16
    names = realdata.horn_region_names(real.regions)
    assert names[:6] == ["C6_LD", "C6_RD", "", "", "C6_LV", "C6_RV"]
    with pytest.raises(SpineprintError, match="XX"):
        realdata.region_table(["XX"])


def test_fir_design_and_regression(real, raw):
    ts, _, onsets, cens = raw
    X = realdata.paradigm_design(real.onsets, real.durations, 125, real.tr, "fir")
    np.testing.assert_array_equal(X, _fir(onsets, 125))
    res = realdata.regress_paradigm(ts, X, cens)
    for s, e in ((0, 0), (3, 1), (14, 1)):
        keep = ~cens[s, e]
        beta = np.linalg.lstsq(X[keep], ts[s, e][keep], rcond=None)[0]
        np.testing.assert_allclose(res[s, e][keep], ts[s, e][keep] - X[keep] @ beta, atol=1e-6)
        assert np.all(res[s, e][~keep] == 0)
    # the canonical-HRF model follows the blocks (peaks ~5 s after block onsets)
    spm = realdata.paradigm_design(real.onsets, real.durations, 125, real.tr, "spm")
    assert spm.shape == (125, 3)
    r = [np.corrcoef(spm[:, 1], np.roll(real.paradigm, k))[0, 1] for k in range(15)]
    assert 3 <= int(np.argmax(r)) <= 7 and max(r) > 0.7


@pytest.mark.parametrize("gray_only,regress", [(False, False), (False, True), (True, False), (True, True)])
def test_fingerprint_values_match_numpy_reference(real, raw, gray_only, regress):
    ts, names, onsets, cens = raw
    ref = _reference_design(ts, cens, names, onsets, gray_only, regress)
    conn = realdata.connectomes(real, regions="gray matter" if gray_only else "gray + white", regress=regress)
    designs, reports = realdata.fingerprint_real(conn, n_permutations=200, n_bootstrap=50)
    for key in ("within", "between"):
        A, a, b = ref[key]
        np.testing.assert_allclose(reports[key].A, A, atol=1e-10)
        got = reports[key].summary()
        for stat, value in _stats(A, a, b).items():
            assert got[stat] == pytest.approx(value, abs=1e-9), (key, stat)
    # the halves are fitted separately: the whole-run fit would leak between halves
    assert conn["n_volumes_used"].shape == (30, 3)


def test_session_order_check(real):
    conn = realdata.connectomes(real, regress=True)
    _, reports = realdata.fingerprint_real(conn, n_permutations=100, n_bootstrap=20)
    A = reports["between"].A
    out = realdata.session_order_check(A, n_permutations=2000)
    # independent: brute-force-free check of the assignment with scipy on -A, ranks by sorting
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-A)
    assert out["n_matched"] == int(np.sum(cols == rows))
    ranks = [int(np.sum(A[i] > A[i, i])) + 1 for i in range(15)]
    assert out["diag_rank_median"] == float(np.median(ranks))
    assert out["n_matched"] >= 3 and out["p_matched"] < 0.01  # the documented order holds
    # a scrambled session-2 order destroys the diagonal
    perm = np.roll(np.arange(15), 5)
    bad = realdata.session_order_check(A[:, perm], n_permutations=2000)
    assert bad["n_matched"] < out["n_matched"] and bad["p_matched"] > 0.05


def test_compare_with_claim_follows_the_numbers():
    hi, lo = {"id_mean": 80.0, "p_id": 0.001}, {"id_mean": 20.0, "p_id": 0.01}
    assert realdata.compare_with_claim(hi, lo).startswith("the pattern the Spine-Prints study reported")
    assert "not across sessions" in realdata.compare_with_claim(hi, {"id_mean": 10.0, "p_id": 0.3})
    assert "not weaker" in realdata.compare_with_claim(lo, hi)
    assert "across sessions only" in realdata.compare_with_claim({"id_mean": 5.0, "p_id": 0.5}, lo)
    assert "do not show" in realdata.compare_with_claim({"id_mean": 5.0, "p_id": 0.5}, {"id_mean": 5.0, "p_id": 0.5})


# ------------------------------------------------------------------ the chapter
@pytest.mark.book
def test_chapter_values_match_numpy_reference(raw, tmp_path):
    """Execute the chapter (tiny simulated study) and compare its glued real-data numbers."""
    import nbformat

    from spineprint_utils import build

    smoke = yaml.safe_load((ROOT / "tests" / "smoke_params.yml").read_text())
    params = {"study_params": smoke["all"]["study_params"], "n_permutations": 200, "n_bootstrap": 200}
    out = tmp_path / "04b.ipynb"
    build.execute_notebook(ROOT / "notebooks" / "04b_real_spineprint.ipynb", out, params, progress=False)
    glued = {}
    for cell in nbformat.read(str(out), as_version=4).cells:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            if meta:
                glued[meta["name"]] = o["data"][meta["mime_prefix"] + "text/plain"]
    ts, names, onsets, cens = raw
    assert int(glued["n_participants"]) == 15 and int(glued["n_regions"]) == 56
    assert int(glued["n_censored"]) == int(cens.sum())
    ref = _reference_design(ts, cens, names, onsets, gray_only=False, regress=True)  # chapter defaults
    for key in ("within", "between"):
        A, a, b = ref[key]
        for stat, value in _stats(A, a, b).items():
            assert float(glued[f"real_{key}_{stat}"]) == pytest.approx(value, abs=1e-9), (key, stat)
    for gray_only, g in ((False, "gw"), (True, "gm")):
        for regress, r in ((False, "kept"), (True, "regressed")):
            ref = _reference_design(ts, cens, names, onsets, gray_only, regress)
            for key in ("within", "between"):
                s = _stats(*ref[key])
                assert float(glued[f"cond_{g}_{r}_{key}_id_mean"]) == pytest.approx(s["id_mean"]), (g, r, key)
                assert float(glued[f"cond_{g}_{r}_{key}_idiff"]) == pytest.approx(s["idiff"]), (g, r, key)
    # the sentence on the Spine-Prints claim follows these numbers (both designs p < 0.05 here)
    w, b = (_stats(*_reference_design(ts, cens, names, onsets, False, True)[k]) for k in ("within", "between"))
    assert w["id_mean"] > b["id_mean"] > 100 / 15
    assert glued["real_vs_claim"].strip("'").startswith("the pattern the Spine-Prints study reported")
    # the participant order check: between-session identification above chance
    assert float(glued["order_id_mean"]) > float(glued["order_chance"])
    assert float(glued["order_p_id"]) < 0.05


# ------------------------------------------------------------------ chapter 00: real EPI, realism table
def test_epi_overview_real_run(shared_data):
    import nibabel as nib

    path = shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz"
    e = realdata.epi_overview(path)
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    assert e["shape"] == data.shape == (68, 68, 6, 30)
    np.testing.assert_allclose(e["mean"], data.mean(axis=-1), rtol=1e-6)
    sd = data.std(axis=-1, ddof=1)  # sample SD, as sct_fmri_compute_tsnr
    t = np.where(sd > 0, data.mean(axis=-1) / np.where(sd > 0, sd, 1), 0)
    np.testing.assert_allclose(e["tsnr"], t, rtol=1e-4, atol=1e-4)
    assert e["mask_kind"] == "cord found on the mean image"
    assert e["tsnr_median"] == pytest.approx(np.median(t[e["mask"]]), rel=1e-4)
    # the cord found agrees with the manual annotation of this run shipped with the cord tests
    from spineprint_utils import cord

    ref = cord.load_reference_annotation(ROOT / "tests" / "data" / "sct_fmri_cord_annotation.txt", data.shape[:3])
    inter = np.logical_and(ref, e["mask"]).sum()
    assert 2 * inter / (ref.sum() + e["mask"].sum()) > 0.75
    assert 40 < e["cord_area_mm2"] < 150  # cervical cord ~60-90 mm^2 (Fradet et al. 2014)
    # the canal disk used for motion: radius 10 mm at 0.956 mm in-plane, every slice
    per_slice = e["disk"].sum(axis=(0, 1))
    assert np.all(per_slice == per_slice[0]) and abs(per_slice[0] - np.pi * (10 / 0.9559) ** 2) < 30
    assert e["disk"][e["mask"]].mean() > 0.8  # the cord lies (mostly: the disk does not follow it) in the disk
    assert e["params"].shape == (30, 12) and e["fd"].shape == (30,)
    assert 0 < e["max_shift_mm"] < 3 and e["tsnr_moco_median"] > e["tsnr_median"]  # 10.6 -> 11.2 measured (ddof=1)


def test_coupling_pattern_real_horns(real, raw):
    ts, names, onsets, cens = raw
    conn = realdata.connectomes(real, regions="gray + white")
    fc = conn["fc"][:, 0]
    got = realdata.coupling_pattern(fc, conn["regions"])
    # independent: classify real names directly
    horn = [(i, n.split("_")[0], n.split("_")[2], n.split("_")[3]) for i, n in enumerate(names)
            if "_G_" in n and n.split("_")[2] in "DV"]
    groups = {}
    for a in range(len(horn)):
        for b in range(a + 1, len(horn)):
            i, sa, pa, ka = horn[a]
            j, sb, pb, kb = horn[b]
            if sa != sb:
                key = "all pairs, different segments"
            elif pa == pb:
                key = {"V": "ventral-ventral", "D": "dorsal-dorsal"}[pa] + " (same segment)"
            else:
                key = "dorsal-ventral " + ("same side" if ka == kb else "opposite sides") + " (same segment)"
            groups.setdefault(key, []).append(fc[:, i, j])
    for key, vals in groups.items():
        assert got[key] == pytest.approx(np.mean(vals), abs=1e-12), key
    assert set(got.index) == set(groups)


def test_realism_table_components(real, raw, shared_data):
    ts, names, onsets, cens = raw
    fake_epi = {"tsnr_median": 1.0, "tsnr_moco_median": 2.0, "fd_mean": 0.1, "cord_area_mm2": 70.0}
    real_epi = {"tsnr_median": 6.9, "tsnr_moco_median": 7.7, "fd_mean": 0.13, "cord_area_mm2": 100.0}
    # the real data play the simulated side too (same layout): both columns must then agree
    sim_conn = realdata.connectomes(real, regions="horns", regress=True)
    sim_conn["regions"] = realdata.horn_region_names(sim_conn["regions"])
    tab = realdata.realism_table(sim_conn, fake_epi, real, real_epi)
    assert tab.loc["median cord tSNR, raw run", "real"] == 6.9
    assert tab.loc["median cord tSNR, raw run", "simulated"] == 1.0
    rows = [m for m in tab.index if m.startswith(("mean r", "identification", "Idiff", "chance"))]
    np.testing.assert_allclose(tab.loc[rows, "simulated"].astype(float), tab.loc[rows, "real"].astype(float))
    # identification of the horn connectomes against the numpy reference
    cols = [i for i, n in enumerate(names) if "_G_" in n and n.split("_")[2] in "DV"]
    sub = [names[i] for i in cols]
    ref = _reference_design(ts[..., cols], cens, sub, onsets, gray_only=False, regress=True)
    for key in ("within", "between"):
        assert tab.loc[f"identification % ({key})", "real"] == pytest.approx(_stats(*ref[key])["id_mean"])
        assert tab.loc[f"Idiff ({key})", "real"] == pytest.approx(_stats(*ref[key])["idiff"])
    assert tab.loc["identification % (within)", "key"] == "identification_within"


# ------------------------------------------------------------------ calibration of the simulator (issue 15)
def test_realism_measures_and_distance():
    import pandas as pd

    def side(scale):
        return {"median_cord_tsnr_raw_run": 10.0 * scale, "mean_r_ventral_ventral_same_segment": 0.03 * scale,
                "mean_r_dorsal_dorsal_same_segment": -0.04 * scale,
                "mean_r_dorsal_ventral_same_side_same_segment": 0.0,
                "mean_r_dorsal_ventral_opposite_sides_same_segment": 0.0,
                "mean_r_all_pairs_different_segments": 0.9,  # not a calibration measure
                "identification_within": 40.0, "chance_within": 10.0, "idiff_within": 8.0 * scale,
                "identification_between": 20.0, "chance_between": 10.0, "idiff_between": 4.0}
    tab = pd.DataFrame({"key": list(side(1)), "simulated": list(side(2).values()), "real": list(side(1).values())})
    m = realdata.realism_measures(tab)
    assert m["real"]["coupling_rms"] == pytest.approx(np.sqrt((0.03 ** 2 + 0.04 ** 2) / 4))
    assert m["simulated"]["coupling_rms"] == pytest.approx(2 * m["real"]["coupling_rms"])
    d = realdata.realism_distance(m["simulated"], m["real"])
    # three measures doubled (tSNR, coupling, Idiff within), three equal: RMS = log 2 * sqrt(3 / 6)
    assert d["tsnr_raw"] == pytest.approx(np.log(2)) and d["id_within"] == 0 and d["idiff_between"] == 0
    assert d["distance"] == pytest.approx(np.log(2) * np.sqrt(0.5))
    assert realdata.realism_distance(m["real"], m["real"])["distance"] == 0
    # identification counts in multiples of chance: 20 % of 10 people = 30 % of ~6.7 people
    other = {**m["real"], "id_within": 60.0, "chance_within": 15.0}
    assert realdata.realism_distance(other, m["real"])["id_within"] == pytest.approx(0.0)
    # a negative Idiff is floored, not a NaN
    neg = realdata.realism_distance({**m["real"], "idiff_between": -3.0}, m["real"])
    assert neg["idiff_between"] == pytest.approx(np.log(0.5 / 4.0))
    # agreement within a factor: the doubled measures are far, with their ratio; the equal ones near
    near, far = realdata.realism_agreement(d, factor=1.5)
    assert near == ["within-session identification", "between-session identification", "between-session Idiff"]
    assert far == ["raw tSNR (2.0 times)", "horn-pair coupling (2.0 times)", "within-session Idiff (2.0 times)"]
    assert realdata.realism_agreement(d, factor=2.5)[1] == []
    assert "raw tSNR (nan times)" in realdata.realism_agreement({**d, "tsnr_raw": float("nan")})[1]


def test_calibration_record_matches_defaults_and_real_data(real):
    """The committed benchmark record: its ``after`` row is the current simulator defaults, its
    ``before`` row the previous ones, and its real column is what the package computes now."""
    from spineprint_utils import simulate

    rec = realdata.calibration_record()
    assert list(rec["defaults"]).count("before") == 1 and list(rec["defaults"]).count("after") == 1
    after = rec[rec["defaults"] == "after"].iloc[0]
    before = rec[rec["defaults"] == "before"].iloc[0]
    for key in ("fingerprint_strength", "session_strength", "tsnr", "neural_amplitude", "n_volumes"):
        assert after[key] == pytest.approx(simulate.DEFAULTS[key]), key
    assert (before["fingerprint_strength"], before["session_strength"]) == (0.4, 0.8)
    assert np.all(np.diff(rec["distance"]) >= 0) and after["distance"] < before["distance"]
    # the chosen point is the best of the grid, and closer to the real data than before on Idiff
    assert rec["distance"].iloc[0] == after["distance"]
    for d in ("within", "between"):
        assert abs(np.log(after[f"sim_idiff_{d}"] / after[f"real_idiff_{d}"])) <= \
            abs(np.log(before[f"sim_idiff_{d}"] / before[f"real_idiff_{d}"])) + 0.1, d
    # the real side is the package's horn connectomes, task regressed out, as in chapter 00
    from spineprint_utils import fingerprint as fp

    conn = realdata.connectomes(real, regions="horns", regress=True)
    for name, des in fp.designs_from_connectomes(conn).items():
        s = fp.identifiability_summary(des.fc_a, des.fc_b)
        assert rec[f"real_idiff_{name}"].iloc[0] == pytest.approx(s["idiff"], abs=1e-3)
        assert rec[f"real_id_{name}"].iloc[0] == pytest.approx(s["id_mean"], abs=1e-3)

"""Tests of spineprint_utils.drivers (chapter 5: parameter sweeps, physiology-only fingerprint).

Every sweep point simulates, preprocesses and fingerprints a tiny study; the
session-wide cache of conftest.py shares the points between tests.
"""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spineprint_utils import drivers, simulate
from spineprint_utils._io import SpineprintError

ROOT = Path(__file__).resolve().parents[1]

#: tiny study: 4 subjects x 1 session, 2 segments (8 regions), no motion, no physiological noise,
#: a strong planted fingerprint
TINY = {
    "n_subjects": 4,
    "n_sessions": 1,
    "n_volumes": 120,
    "segments": ("C5", "C6"),
    "fov_mm": (26.0, 20.0),
    "fingerprint_strength": 4.0,
    "session_strength": 0.0,
    "neural_amplitude": 5.0,
    "physio_subject_specificity": 0.5,
    "physio_amplitude": 0.0,
    "motion_amplitude": 0.0,
    "tsnr": 30.0,
}
#: no motion correction (there is no motion), CSF components or band-pass, to keep the tests fast (and
#: the band-pass would be switched off for the shortest runs, making scan lengths incomparable)
FAST_PRE = {**drivers.SWEEP_PREPROCESS, "motion": False, "n_csf_components": 0, "high_pass": None, "low_pass": None}
N = TINY["n_volumes"]
#: the sweeps pass the segments of the study they simulated (never read from its ground truth)
SEGS = TINY["segments"]


def _sweep(parameter, values, **kw):
    return drivers.sweep(parameter, values, base=kw.pop("base", TINY), preprocess_params=FAST_PRE, progress=False,
                         **kw)


# ------------------------------------------------------------------ fingerprint statistics
def test_fingerprint_connectomes_against_loops():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 20))
    b = a + 2.0 * rng.standard_normal((5, 20))
    r = drivers.fingerprint_connectomes(a, b)
    A = np.array([[np.corrcoef(a[i], b[j])[0, 1] for j in range(5)] for i in range(5)])
    ab = np.mean([np.argmax(A[i]) == i for i in range(5)])
    ba = np.mean([np.argmax(A[:, j]) == j for j in range(5)])
    off = [A[i, j] for i in range(5) for j in range(5) if i != j]
    assert r["identification"] == pytest.approx((ab + ba) / 2)
    assert r["iself"] == pytest.approx(np.mean(np.diag(A)))
    assert r["iothers"] == pytest.approx(np.mean(off))
    assert r["idiff"] == pytest.approx(100 * (np.mean(np.diag(A)) - np.mean(off)))
    assert r["chance"] == pytest.approx(0.2) and r["n_subjects"] == 5


# ------------------------------------------------------------------ physiological fit
def test_physio_timeseries_matches_voxelwise_least_squares():
    rng = np.random.default_rng(0)
    X, Y, Z, T, P = 4, 3, 3, 30, 4
    regs = rng.standard_normal((Z, T, P))
    labels = rng.integers(0, 4, (X, Y, Z))
    labels[0, 0, 0], labels[1, 0, 1], labels[2, 0, 2] = 1, 2, 3
    bold = 100 + rng.standard_normal((X, Y, Z, T))
    bold += np.einsum("zp,ztp->zt", rng.standard_normal((Z, P)), regs)[None, None].transpose(0, 1, 2, 3)
    out = drivers.physio_timeseries(bold, regs, labels)
    # brute force: every voxel fitted with an intercept, fitted physiological part averaged per region
    expected = np.zeros((T, 3))
    for r in range(1, 4):
        fits = []
        for x, y, z in zip(*np.nonzero(labels == r)):
            design = np.column_stack([np.ones(T), regs[z]])
            beta = np.linalg.lstsq(design, bold[x, y, z], rcond=None)[0]
            fits.append(regs[z] @ beta[1:] - (regs[z] @ beta[1:]).mean())
        expected[:, r - 1] = np.mean(fits, axis=0)
    np.testing.assert_allclose(out, expected, atol=1e-9)


def test_physio_timeseries_recovers_planted_signal_and_rejects_bad_input():
    rng = np.random.default_rng(3)
    Z, T = 2, 50
    regs = rng.standard_normal((Z, T, 2))
    labels = np.zeros((2, 2, Z), int)
    labels[0, :, :] = 1
    labels[1, :, :] = 2
    bold = np.zeros((2, 2, Z, T))
    bold[0] = 3.0 * regs[None, :, :, 0]  # region 1: regressor 0 only, noise-free
    bold[1] = 5.0 + 0 * regs[None, :, :, 0]  # region 2: constant, nothing physiological
    out = drivers.physio_timeseries(bold, regs, labels)
    np.testing.assert_allclose(out[:, 0], 3.0 * (regs[:, :, 0] - regs[:, :, 0].mean(1, keepdims=True)).mean(0),
                               atol=1e-10)
    np.testing.assert_allclose(out[:, 1], 0.0, atol=1e-10)
    with pytest.raises(SpineprintError, match="regressors must have shape"):
        drivers.physio_timeseries(bold, regs[:, :-1], labels)
    with pytest.raises(SpineprintError, match="labels shape"):
        drivers.physio_timeseries(bold, regs, labels[:1])
    with pytest.raises(SpineprintError, match="each with voxels"):
        drivers.physio_timeseries(bold, regs, np.where(labels == 1, 3, labels))
    bad = bold.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(SpineprintError, match="NaN"):
        drivers.physio_timeseries(bad, regs, labels)


# ------------------------------------------------------------------ sweeps
def test_study_parameters():
    assert drivers.study_parameters() == drivers.BASE_STUDY
    assert drivers.study_parameters(TINY, "between", tsnr=9.0) == {**TINY, "n_sessions": 2, "tsnr": 9.0}
    assert drivers.study_parameters({**TINY, "n_sessions": 3}, "between")["n_sessions"] == 3
    with pytest.raises(SpineprintError, match="unknown simulation parameter"):
        drivers.study_parameters(TINY, heart=1)
    with pytest.raises(SpineprintError, match="tsnr must be > 0"):
        drivers.study_parameters(TINY, tsnr=0.0)
    with pytest.raises(SpineprintError, match="design"):
        drivers.study_parameters(TINY, "across")


def test_sweep_bad_input_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "c"))
    with pytest.raises(SpineprintError, match="cannot sweep 'heart_rate'"):
        drivers.sweep("heart_rate", [1])
    with pytest.raises(SpineprintError, match="no values"):
        drivers.sweep("tsnr", [])
    with pytest.raises(SpineprintError, match="design"):
        drivers.sweep("tsnr", [10], design="across")
    with pytest.raises(SpineprintError, match="n_repeats"):
        drivers.sweep("tsnr", [10], n_repeats=0)
    # the invalid value is the second one: nothing may have been simulated for the first
    with pytest.raises(SpineprintError, match=r"n_volumes = 5: n_volumes must be an integer >= 10"):
        drivers.sweep("n_volumes", [100, 5], base=TINY)
    assert not (tmp_path / "c" / "datasets").exists() or not any((tmp_path / "c" / "datasets").iterdir())


def test_sweep_fingerprint_strength_chance_to_full():
    df = _sweep("fingerprint_strength", [0.0, 4.0], n_repeats=2)
    assert list(df.columns) == drivers.SWEEP_COLUMNS
    assert len(df) == 4
    assert set(df["parameter"]) == {"fingerprint_strength"} and set(df["design"]) == {"within"}
    assert df["physio_model"].all()
    np.testing.assert_allclose(df["chance"], 1 / TINY["n_subjects"])
    assert (df["n_volumes_compared"] == TINY["n_volumes"] // 2).all()
    assert list(df["seed"]) == [0, 0, 1, 1] and list(df["value"]) == [0.0, 4.0, 0.0, 4.0]
    for col in ("identification", "identification_ab", "identification_ba", "identification_truth"):
        assert df[col].between(0, 1).all()
    np.testing.assert_allclose(df["idiff"], 100 * (df["iself"] - df["iothers"]))
    by = df.groupby("value").mean(numeric_only=True)
    # no planted fingerprint: the planted signals have Idiff ~ 0, identification after the pipeline is at
    # chance level (4 subjects: 25 %). (The measured Idiff is not 0: each participant's bias field gives
    # the regions a participant-specific SNR, which shapes the measured correlations.)
    assert abs(by.loc[0.0, "idiff_truth"]) < 10  # vs ~85 at f = 4
    assert by.loc[0.0, "identification"] <= 0.5
    # strong planted fingerprint: every subject identified, from the planted signals and after the pipeline
    assert by.loc[4.0, "identification_truth"] == 1.0
    assert by.loc[4.0, "identification"] >= 0.85
    assert by.loc[4.0, "idiff"] > by.loc[0.0, "idiff"] + 10


def test_sweep_halving_scan_length_lowers_idiff():
    df = _sweep("n_volumes", [N // 2, N], n_repeats=2)
    assert list(df.sort_values("value")["n_volumes_compared"].unique()) == [N // 4, N // 2]
    by = df.groupby("value").mean(numeric_only=True)
    # shorter runs: noisier connectomes, less self-similarity, lower differential identifiability
    assert by.loc[N // 2, "idiff"] < by.loc[N, "idiff"]
    assert by.loc[N // 2, "iself"] < by.loc[N, "iself"]
    # and the same repeat's two scan lengths agree on the direction every time
    wide = df.pivot(index="repeat", columns="value", values="idiff")
    assert (wide[N // 2] < wide[N]).all()


def test_sweep_is_cached_and_parallel_gives_the_same_rows():
    a = _sweep("fingerprint_strength", [0.0, 4.0], n_repeats=1)
    b = _sweep("fingerprint_strength", [0.0, 4.0], n_repeats=1, n_jobs=2)
    np.testing.assert_allclose(a.select_dtypes("number"), b.select_dtypes("number"))


def _pid_of(item):
    import os

    return item, os.getpid()


def test_warm_parallel_map_runs_the_first_item_here_and_keeps_the_order():
    import os

    items = list(range(5))
    got = drivers._warm_parallel_map(_pid_of, items, n_jobs=2)
    assert [g[0] for g in got] == items
    assert got[0][1] == os.getpid()  # warms this process: the workers forked after it inherit its imports
    assert all(pid != os.getpid() for _, pid in got[1:])  # the rest on the workers
    assert [pid for _, pid in drivers._warm_parallel_map(_pid_of, items, n_jobs=1)] == [os.getpid()] * 5
    assert drivers._warm_parallel_map(_pid_of, [], n_jobs=2) == []


def test_sweep_between_sessions_adds_a_session():
    df = _sweep("fingerprint_strength", [4.0], design="between", base={**TINY, "n_volumes": 30})
    assert df.loc[0, "design"] == "between"
    assert df.loc[0, "n_volumes_compared"] == 30  # full runs
    assert df.loc[0, "identification"] >= 0.75


def test_fingerprint_point_caches_per_design_and_drops_4d_images():
    bids = simulate.default_dataset(**drivers.study_parameters({**TINY, "n_volumes": 30}, "between", seed=0))
    between = drivers.fingerprint_point(bids, design="between", preprocess_params=FAST_PRE, segments=SEGS)  # cached by the test above
    within = drivers.fingerprint_point(bids, design="within", preprocess_params=FAST_PRE, segments=SEGS)
    out = drivers._derivatives_folder(bids, True, {**FAST_PRE, "physio": True, "segments": list(TINY["segments"])})
    cached = json.loads((out / "drivers_fingerprint.json").read_text())["results"]
    assert set(cached) == {"within", "between"}
    assert cached["within"]["idiff"] == pytest.approx(within["idiff"])
    assert within["n_volumes_compared"] == 15 and between["n_volumes_compared"] == 30
    assert not list(out.rglob("*_desc-preproc_bold.nii.gz"))  # 4D images dropped ...
    assert list(out.rglob("*_connectomes.npz")) and list(out.rglob("*_desc-qc_metrics.json"))  # ... tables kept
    # truth=False blanks the planted-signal columns of the cached result without recomputing
    no_truth = drivers.fingerprint_point(bids, design="within", preprocess_params=FAST_PRE, truth=False, segments=SEGS)
    assert np.isnan(no_truth["idiff_truth"]) and no_truth["idiff"] == within["idiff"]
    kept = drivers.fingerprint_point(bids, design="within", preprocess_params=FAST_PRE, physio_model=False,
                                     keep_derivatives=True, segments=SEGS)
    out_off = drivers._derivatives_folder(bids, False, {**FAST_PRE, "physio": False,
                                                        "segments": list(TINY["segments"])})
    assert len(list(out_off.rglob("*_desc-preproc_bold.nii.gz"))) == 2 * TINY["n_subjects"]
    assert np.isfinite(kept["idiff"])


def test_truth_tables_are_those_of_load_ground_truth():
    # the planted-signal fingerprint reads only the tables it needs: the same arrays as the full reader
    bids = simulate.default_dataset(**drivers.study_parameters({**TINY, "n_volumes": 30}, "between", seed=0))
    gt = simulate.load_ground_truth(bids)
    prefixes = list(gt["runs"]["run"])
    assert len(prefixes) == 2 * TINY["n_subjects"]
    for key in ("neural", "fc"):
        got = drivers._ground_truth_tables(bids, prefixes, key)
        assert list(got) == prefixes
        for p in prefixes:
            np.testing.assert_array_equal(got[p], gt[key][p])
    with pytest.raises(SpineprintError, match="ground-truth file not found"):
        drivers._ground_truth_tables(bids, ["sub-99_ses-01_task-rest_run-1"], "neural")


def _fake_point(item, design, preprocess_params, calls):
    calls.append(item)
    v = float(item["study"]["tsnr"]) + float(item["study"]["physio_amplitude"])
    keys = ("identification", "identification_ab", "identification_ba", "iself", "iothers", "idiff",
            "identification_truth", "idiff_truth", "tsnr_raw", "tsnr_clean")
    return {**{k: v for k in keys}, "chance": 0.25, "n_subjects": 4, "n_volumes_compared": 30}


def test_sweep_many_computes_shared_points_once_and_keeps_spec_order(monkeypatch):
    calls = []
    monkeypatch.setattr(drivers, "_sweep_point", lambda item, **kw: _fake_point(item, calls=calls, **kw))
    base = {**TINY, "tsnr": 12.0, "physio_amplitude": 1.0}
    df = drivers.sweep_many([("tsnr", [12.0, 6.0]), ("physio_amplitude", [1.0, 2.0]),
                             ("physio_amplitude", [1.0], False)], base=base, n_repeats=2, progress=False)
    # 2 repeats x (tsnr 12 = physio 1 = base, tsnr 6, physio 2) with the model + base without it
    assert len(calls) == 2 * 4
    assert len(df) == 2 * 5
    assert list(df["parameter"]) == ["tsnr"] * 4 + ["physio_amplitude"] * 6
    assert list(df["physio_model"]) == [True] * 8 + [False] * 2
    assert list(df["value"][:4]) == [6.0, 12.0, 6.0, 12.0]  # sorted by repeat, then value
    np.testing.assert_allclose(df["idiff"], df["value"] + np.where(df["parameter"] == "tsnr", 1.0, 12.0))


def test_plot_sweep_axes_and_errors():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"parameter": "n_volumes", "value": v, "repeat": r, "physio_model": m, "identification": 0.5,
             "idiff": 10.0 + r, "identification_truth": 1.0, "idiff_truth": 50.0, "chance": 0.25}
            for v in (50, 100) for r in (0, 1) for m in (True, False)]
    df = pd.DataFrame(rows)
    fig = drivers.plot_sweep(df, "volumes per run", log_x=True, title="Scan length")
    ax_id, ax_idiff = fig.axes[:2]
    assert ax_id.get_xlabel() == ax_idiff.get_xlabel() == "volumes per run"
    assert "identification rate (%)" in ax_id.get_ylabel() and "diff" in ax_idiff.get_ylabel()
    labels = [t.get_text() for t in ax_id.get_legend().get_texts()]
    assert "pipeline, physiological model on" in labels and "planted neural signals" in labels
    # mean of the repeats (10, 11) plotted, in % for identification
    ys = [line.get_ydata() for line in ax_idiff.lines if len(line.get_ydata()) == 2]
    assert any(np.allclose(y, [10.5, 10.5]) for y in ys)
    assert any(np.allclose(line.get_ydata(), [50.0, 50.0]) for line in ax_id.lines if len(line.get_ydata()) == 2)
    plt.close(fig)
    with pytest.raises(SpineprintError, match="empty"):
        drivers.plot_sweep(df.iloc[:0], "x")
    with pytest.raises(SpineprintError, match="one parameter"):
        drivers.plot_sweep(pd.concat([df, df.assign(parameter="tsnr")]), "x")


# ------------------------------------------------------------------ physiological fingerprint
def test_physio_alone_identifies_only_when_physiology_is_participant_specific():
    # no neural fingerprint at all; physiological noise maps specific to each participant, or shared by all
    common = {**TINY, "n_subjects": 6, "n_volumes": N // 2, "fingerprint_strength": 0.0, "tsnr": 20.0,
              "physio_amplitude": 2.0}
    rows = {}
    for seed in (0, 1):
        for spec in (1.0, 0.0):
            bids = simulate.default_dataset(**{**common, "physio_subject_specificity": spec, "seed": seed})
            with_data = seed == 0 and spec == 1.0
            table = drivers.physio_fingerprint(bids, preprocess_params=FAST_PRE, with_data=with_data, segments=SEGS)
            rows[seed, spec] = table.iloc[0]
            if with_data:
                full = table
    assert list(full["source"]) == ["physiological noise alone", "preprocessed without physiological model",
                                    "preprocessed with physiological model"]
    assert np.isfinite(full.drop(columns="source").to_numpy(float)).all()
    np.testing.assert_allclose(full["chance"], 1 / 6)
    for seed in (0, 1):
        assert rows[seed, 1.0]["source"] == "physiological noise alone"
        # participant-specific physiology: more self-similar than shared physiology, in every study
        assert rows[seed, 1.0]["idiff"] > rows[seed, 0.0]["idiff"]
    idiff = {spec: np.mean([rows[s, spec]["idiff"] for s in (0, 1)]) for spec in (1.0, 0.0)}
    ident = {spec: np.mean([rows[s, spec]["identification"] for s in (0, 1)]) for spec in (1.0, 0.0)}
    assert abs(idiff[0.0]) < 3  # shared physiology: no fingerprint
    assert idiff[1.0] > idiff[0.0] + 4
    # chance is 1/6; 24 identifications per setting (6 subjects x 2 directions x 2 seeds), so one identification
    # is 4 %. Measured (simulator 6): 46 % with participant-specific physiology, 29 % with shared maps
    assert ident[1.0] >= 0.4 > ident[0.0], ident


def test_physio_fingerprint_errors(tmp_path):
    with pytest.raises(SpineprintError, match="BIDS folder not found"):
        drivers.physio_fingerprint(tmp_path / "nope")
    with pytest.raises(SpineprintError, match="no BOLD runs"):
        drivers.physio_fingerprint(tmp_path, segments=("C5",))
    src = simulate.default_dataset(**{**TINY, "n_volumes": 30, "n_sessions": 2})  # shared with the test above
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    victim = sorted(dst.glob("sub-*/ses-*/func/*_physio.tsv.gz"))[0]
    victim.unlink()
    with pytest.raises(SpineprintError, match=re.escape(victim.name.replace("_physio.tsv.gz", "_bold.nii.gz"))):
        drivers.physio_fingerprint(dst, with_data=False, segments=SEGS)


# ------------------------------------------------------------------ the chapter through papermill
def _glued(nb_path) -> dict:
    """Scalars glued by the executed notebook (myst_nb glue -> display data with scrapbook metadata)."""
    nb = json.loads(Path(nb_path).read_text())
    out = {}
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:  # data key "<mime_prefix>text/plain", e.g. application/papermill.record/text/plain
                text = next(v for k, v in o["data"].items() if k.endswith("text/plain"))
                try:
                    out[name] = float(text)
                except ValueError:
                    out[name] = text.strip("'\"")
    return out


def test_notebook_halving_scan_length_lowers_idiff(tmp_path):
    papermill = pytest.importorskip("papermill")
    nb = ROOT / "notebooks" / "05_drivers.ipynb"
    glued = {}
    for n in (N, N // 2):  # the same points as test_sweep_halving_scan_length_lowers_idiff (cached)
        out = tmp_path / f"out_{n}.ipynb"
        papermill.execute_notebook(
            str(nb), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
            parameters={"study_params": {**TINY, "n_volumes": n, "segments": list(TINY["segments"]),
                                         "fov_mm": list(TINY["fov_mm"])},
                        "preprocess_params": FAST_PRE | {"interaction_order": [0, 0]},
                        "scan_lengths": [], "tsnr_values": [], "physio_amplitudes": [], "motion_amplitudes": [],
                        "fingerprint_strengths": [], "physio_study": {"physio_amplitude": 0.0},
                        "n_repeats": 2, "n_jobs": 1})
        glued[n] = _glued(out)
    assert glued[N // 2]["base_n_volumes"] == N // 2 and glued[N]["base_n_volumes"] == N
    assert glued[N // 2]["base_idiff"] < glued[N]["base_idiff"]
    assert list(tmp_path.glob("*.ipynb")) and not list((ROOT / "notebooks").glob("*.json"))


# ------------------------------------------------------------------ chapter 5 tables and glued values (no simulation)
def _toy_results() -> pd.DataFrame:
    """Hand-built sweep rows: values given out of order, 2 repeats, model on/off for physio."""
    rows = []
    rng = np.random.default_rng(0)
    points = [("n_volumes", True, v) for v in (200, 50, 100)] + \
             [("physio_amplitude", m, v) for m in (True, False) for v in (2.0, 0.0, 1.0)] + \
             [("fingerprint_strength", True, 0.25)]
    for parameter, model, value in points:
        for repeat in range(2):
            rows.append({"parameter": parameter, "value": value, "repeat": repeat, "seed": repeat,
                         "design": "within", "physio_model": model, "n_subjects": 4,
                         "identification": rng.integers(0, 5) / 4, "idiff": rng.normal(10, 5),
                         "idiff_truth": rng.normal(20, 5), "iself": rng.random(), "tsnr_clean": rng.normal(15, 2)})
    return pd.DataFrame(rows)


def _manual_mean(df, parameter, model, value, column):
    vals = [r[column] for _, r in df.iterrows()
            if r["parameter"] == parameter and bool(r["physio_model"]) == model and r["value"] == value]
    return sum(vals) / len(vals)


def test_sweep_specs_match_the_chapter_construction():
    assert drivers.sweep_specs() == []
    assert drivers.sweep_specs([30, 60], [], [1.0], [], [0.0]) == [
        ("n_volumes", [30, 60]), ("physio_amplitude", [1.0]), ("fingerprint_strength", [0.0]),
        ("physio_amplitude", [1.0], False)]
    specs = drivers.sweep_specs([50], [6.0, 12.0], [0.0, 2.0], [0.2], [1.0])
    assert [s[0] for s in specs] == ["n_volumes", "tsnr", "physio_amplitude", "motion_amplitude",
                                     "fingerprint_strength", "physio_amplitude"]
    assert specs[-1] == ("physio_amplitude", [0.0, 2.0], False) and all(len(s) == 2 for s in specs[:-1])
    assert drivers.sweep_specs(tsnr_values=(24.0,)) == [("tsnr", [24.0])]  # no physio: no model-off spec


def test_summarise_sweeps_is_the_mean_over_repeats():
    df = _toy_results()
    summary = drivers.summarise_sweeps(df)
    assert summary.index.names == ["parameter", "physio_model", "value"]
    assert len(summary) == 10 and "design" not in summary.columns
    for (parameter, model, value), row in summary.iterrows():
        for column in ("identification", "idiff", "idiff_truth", "tsnr_clean"):
            assert row[column] == pytest.approx(_manual_mean(df, parameter, model, value, column))
    # values sorted within each sweep, whatever the row order
    assert list(summary.loc[("n_volumes", True)].index) == [50, 100, 200]
    empty = drivers.summarise_sweeps(pd.DataFrame(columns=drivers.SWEEP_COLUMNS))
    assert len(empty) == 0 and {"identification", "idiff", "idiff_truth", "tsnr_clean"} <= set(empty.columns)
    with pytest.raises(SpineprintError, match="physio_model"):
        drivers.summarise_sweeps(df.drop(columns="physio_model"))
    with pytest.raises(SpineprintError, match="DataFrame"):
        drivers.summarise_sweeps([1, 2])


def test_sweep_endpoints_pick_smallest_and_largest_values_and_nan_for_empty_sweeps():
    df = _toy_results()
    ends = drivers.sweep_endpoints(df)
    expected_names = {f"{s}{stat}_{end}" for s in ("scan", "tsnr", "physio", "motion", "strength")
                      for stat in ("", "_id", "_idiff", "_truth_idiff") for end in ("first", "last")}
    assert set(ends) == expected_names | {"physio_off_idiff_last", "physio_off_id_last"}
    assert all(isinstance(v, float) for v in ends.values())
    assert ends["scan_first"] == 50 and ends["scan_last"] == 200
    assert ends["scan_id_first"] == pytest.approx(100 * _manual_mean(df, "n_volumes", True, 50, "identification"))
    assert ends["scan_idiff_last"] == pytest.approx(_manual_mean(df, "n_volumes", True, 200, "idiff"))
    assert ends["scan_truth_idiff_first"] == pytest.approx(_manual_mean(df, "n_volumes", True, 50, "idiff_truth"))
    # the physio sweep with the model on only; the model-off values separately
    assert ends["physio_first"] == 0.0 and ends["physio_last"] == 2.0
    assert ends["physio_idiff_last"] == pytest.approx(_manual_mean(df, "physio_amplitude", True, 2.0, "idiff"))
    assert ends["physio_off_idiff_last"] == pytest.approx(_manual_mean(df, "physio_amplitude", False, 2.0, "idiff"))
    assert ends["physio_off_id_last"] == pytest.approx(
        100 * _manual_mean(df, "physio_amplitude", False, 2.0, "identification"))
    assert ends["physio_off_idiff_last"] != ends["physio_idiff_last"]
    # a one-point sweep: first == last
    assert ends["strength_first"] == ends["strength_last"] == 0.25
    assert ends["strength_idiff_first"] == ends["strength_idiff_last"]
    # empty sweeps give NaN
    assert all(np.isnan(ends[k]) for k in expected_names if k.startswith(("tsnr", "motion")))
    empty = drivers.sweep_endpoints(pd.DataFrame(columns=drivers.SWEEP_COLUMNS))
    assert set(empty) == set(ends) and all(np.isnan(v) for v in empty.values())
    # without the model-off rows the physio_off values are NaN, the model-on values unchanged
    on_only = drivers.sweep_endpoints(df[df["physio_model"]])
    assert np.isnan(on_only["physio_off_idiff_last"]) and on_only["physio_idiff_last"] == ends["physio_idiff_last"]


def test_trend_false_alarm_is_the_rate_of_trend_verdict_without_an_effect():
    # exact values, then the rate at which trend_verdict itself claims a trend when both ends of the
    # sweep draw from the same distribution (no effect), by simulation
    assert drivers.trend_false_alarm(2) == pytest.approx(1 / 3)
    assert drivers.trend_false_alarm(3) == pytest.approx(1 / 10)
    assert drivers.trend_false_alarm(4) == pytest.approx(1 / 35)
    with pytest.raises(SpineprintError, match="n_repeats"):
        drivers.trend_false_alarm(0)
    rng = np.random.default_rng(5)
    for n in (2, 3):
        n_sim, claims = 3000, 0
        for _ in range(n_sim):
            df = pd.DataFrame({"parameter": "tsnr", "physio_model": True, "value": [6.0] * n + [12.0] * n,
                               "idiff": rng.normal(size=2 * n)})
            claims += drivers.trend_verdict(df, "tsnr", "idiff").startswith(("rises", "falls"))
        p = drivers.trend_false_alarm(n)
        assert abs(claims / n_sim - p) < 4 * np.sqrt(p * (1 - p) / n_sim)


def test_base_study_values():
    base = {"n_subjects": 5, "n_volumes": 90, "tr": 2.0}
    values = drivers.base_study_values(base, n_repeats=3)
    assert values == {"n_subjects": 5, "base_n_volumes": 90, "base_minutes": 3.0, "chance": 20.0, "n_repeats": 3,
                      "trend_chance_pct": 10.0}
    no_tr = drivers.base_study_values({"n_subjects": 4, "n_volumes": 60})
    assert no_tr["base_minutes"] == pytest.approx(60 * simulate.DEFAULTS["tr"] / 60)
    assert no_tr["trend_chance_pct"] == 100.0  # one repeat: always "separated", so trend_verdict claims nothing
    base_df = pd.DataFrame({"identification": [0.5, 1.0], "idiff": [10.0, 20.0], "idiff_truth": [30.0, 40.0],
                            "tsnr_clean": [12.0, 14.0]})
    values = drivers.base_study_values(base, base_df)
    assert (values["base_identification"], values["base_idiff"], values["base_idiff_truth"],
            values["base_tsnr_clean"]) == (75.0, 15.0, 35.0, 13.0)
    assert drivers.base_point_values(base_df) == {k: values[k] for k in (
        "base_identification", "base_idiff", "base_idiff_truth", "base_tsnr_clean")}
    with pytest.raises(SpineprintError, match="n_volumes"):
        drivers.base_study_values({"n_subjects": 4})
    with pytest.raises(SpineprintError, match="tsnr_clean"):
        drivers.base_point_values(base_df.drop(columns="tsnr_clean"))
    with pytest.raises(SpineprintError, match="no rows"):
        drivers.base_point_values(base_df.iloc[:0])


def test_physio_caution_table_values_and_plot():
    caution = pd.DataFrame({"source": ["physiological noise alone", "preprocessed without physiological model",
                                       "preprocessed with physiological model"],
                            "identification": [1.0, 0.5, 0.25], "idiff": [30.0, 5.0, 1.0],
                            "iself": [0.9, 0.4, 0.3], "chance": [0.25] * 3})
    shared = pd.DataFrame({"source": ["physiological noise alone"], "identification": [0.75], "idiff": [8.0],
                           "iself": [0.8], "chance": [0.25]})
    table = drivers.physio_caution_table(caution, shared)
    assert list(table["source"]) == ["physiological noise alone, maps shared by all"] + list(caution["source"])
    assert list(table.index) == [0, 1, 2, 3] and list(shared["source"]) == ["physiological noise alone"]
    assert drivers.physio_caution_table(caution).equals(caution)
    values = drivers.physio_caution_values(caution, shared)
    assert values == {"caution_alone_id": 100.0, "caution_alone_idiff": 30.0, "caution_alone_iself": 0.9,
                      "caution_nomodel_id": 50.0, "caution_nomodel_idiff": 5.0, "caution_nomodel_iself": 0.4,
                      "caution_model_id": 25.0, "caution_model_idiff": 1.0, "caution_model_iself": 0.3,
                      "shared_alone_id": 75.0, "shared_alone_idiff": 8.0}
    no_shared = drivers.physio_caution_values(caution)
    assert np.isnan(no_shared["shared_alone_id"]) and np.isnan(no_shared["shared_alone_idiff"])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = drivers.plot_physio_caution(table)
    left, right = fig.axes
    assert [p.get_height() for p in left.patches] == [75.0, 100.0, 50.0, 25.0]
    assert [p.get_height() for p in right.patches] == [8.0, 30.0, 5.0, 1.0]
    assert left.lines[0].get_ydata()[0] == 25.0
    plt.close(fig)
    with pytest.raises(SpineprintError, match="unknown source"):
        drivers.plot_physio_caution(table.assign(source="something else"))


def test_trend_verdict_reads_only_what_the_repeats_support():
    def rows(first, last):
        return pd.DataFrame([{"parameter": "n_volumes", "physio_model": True, "value": v, "repeat": r, "idiff": x}
                             for v, xs in ((50, first), (200, last)) for r, x in enumerate(xs)])

    assert drivers.trend_verdict(rows([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), "n_volumes", "idiff").startswith("rises")
    assert drivers.trend_verdict(rows([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]), "n_volumes", "idiff").startswith("falls")
    # overlapping ranges: the mean moved (2 -> 3) but the repeats do not support a trend
    assert "no trend" in drivers.trend_verdict(rows([1.0, 2.0, 3.0], [2.5, 3.0, 3.5]), "n_volumes", "idiff")
    assert "single repeat" in drivers.trend_verdict(rows([1.0], [9.0]), "n_volumes", "idiff")
    assert "not computed" in drivers.trend_verdict(rows([1.0], [9.0]), "tsnr", "idiff")
    assert "single swept value" in drivers.trend_verdict(rows([1.0], [9.0]).query("value == 50"), "n_volumes", "idiff")
    trends = drivers.sweep_trends(_toy_results())
    assert set(trends) == {f"{s}_{k}_trend" for s in drivers.SWEEP_SHORT_NAMES.values() for k in ("id", "idiff")} | {
        "physio_off_idiff_trend"}
    assert all(isinstance(v, str) for v in trends.values())


def test_sweep_settings_do_not_come_from_the_ground_truth(tmp_path):
    """A sweep point fingerprints the same regions with or without derivatives/groundtruth on disk: only the
    planted-signal columns (evaluation) need the ground truth; the pipeline's settings never read it."""
    import shutil

    src = simulate.default_dataset(**{**TINY, "n_volumes": 30, "n_sessions": 2})  # shared with the tests above
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    shutil.rmtree(bare / "derivatives" / "groundtruth")
    with_gt = drivers.fingerprint_point(src, design="between", preprocess_params=FAST_PRE, segments=SEGS)
    without = drivers.fingerprint_point(bare, design="between", preprocess_params=FAST_PRE, segments=SEGS)
    assert np.isfinite(with_gt["idiff_truth"]) and np.isnan(without["idiff_truth"])
    for key in ("identification", "idiff", "iself", "iothers"):
        assert without[key] == with_gt[key], key
    # without segments the atlas default is used (C3-C8), whatever the simulation planted: the regions
    # outside this C5-C6 field of view are dropped (the point silences the warning), the C5/C6 regions are
    # the same
    default = drivers.fingerprint_point(bare, design="between", preprocess_params=FAST_PRE)
    assert default["idiff"] == without["idiff"]


# ------------------------------------------------------------ a spine-print made by the cleaning
def _residual_maker(X):
    """I - H for the design [1, X], by numpy lstsq (independent of the package's pinv)."""
    D = np.column_stack([np.ones(len(X)), X])
    return np.eye(len(X)) - D @ np.linalg.lstsq(D, np.eye(len(X)), rcond=None)[0]


def test_split_half_coupling_closed_form_matches_monte_carlo():
    """tr(D_A M D_B M) = sum_{t in A, s in B} M_ts^2 against (1) the explicit trace with
    numpy matrices and (2) a Monte Carlo covariance of the half-A and half-B cross-products
    of two independent white-noise series cleaned by lstsq; 0 for per-half cleaning."""
    rng = np.random.default_rng(7)
    T, P, N = 40, 8, 20000
    h = T // 2
    X = rng.standard_normal((T, P))
    whole = drivers.split_half_coupling(X)
    M = _residual_maker(X)
    DA, DB = np.diag(np.r_[np.ones(h), np.zeros(T - h)]), np.diag(np.r_[np.zeros(T - h), np.ones(h)])
    np.testing.assert_allclose(whole["cov"], np.trace(DA @ M @ DB @ M), rtol=1e-10)
    np.testing.assert_allclose(whole["var_a"], np.trace(DA @ M @ DA @ M), rtol=1e-10)
    assert whole["cov"] > 0.5  # 8 regressors in 40 volumes: a real coupling
    # Monte Carlo: y = M e for two independent series
    ei, ej = rng.standard_normal((2, N, T))
    yi, yj = ei @ M, ej @ M  # M symmetric
    ca, cb = (yi[:, :h] * yj[:, :h]).sum(1), (yi[:, h:] * yj[:, h:]).sum(1)
    prod = ca * cb
    se = prod.std() / np.sqrt(N)
    assert abs(prod.mean() - whole["cov"]) < 4 * se  # E[c_A] = 0, so E[c_A c_B] is the covariance
    np.testing.assert_allclose(np.var(ca), whole["var_a"], rtol=0.05)
    # per-half cleaning: exactly 0 in closed form, 0 within the Monte Carlo error
    half = drivers.split_half_coupling(X, clean_halves=True)
    assert half["cov"] == 0.0 and half["rho"] == 0.0
    Mh = np.zeros((T, T))
    Mh[:h, :h], Mh[h:, h:] = _residual_maker(X[:h]), _residual_maker(X[h:])
    yi, yj = ei @ Mh, ej @ Mh
    prod = (yi[:, :h] * yj[:, :h]).sum(1) * (yi[:, h:] * yj[:, h:]).sum(1)
    assert abs(prod.mean()) < 4 * prod.std() / np.sqrt(N)
    np.testing.assert_allclose(half["var_a"], np.trace(DA @ Mh @ DA @ Mh), rtol=1e-10)
    with pytest.raises(SpineprintError, match="no residual"):
        drivers.split_half_coupling(rng.standard_normal((20, 12)), clean_halves=True)


def _at_chance(df, tol=0.05):
    """Identification within *tol* of chance and |Idiff| below 2 (means over repeats)."""
    return abs(df["identification"].mean() - df["chance"].mean()) < tol and abs(df["idiff"].mean()) < 2.0


def test_per_half_cleaning_brings_pure_noise_back_to_chance():
    """20 noise 'subjects' x 5 studies (200 identifications per direction, SD of the rate about
    0.015 at chance 0.05): per-half cleaning is at chance within 0.05 and |Idiff| < 2; the
    same check fails for whole-run cleaning of the same noise (the leak is detectable)."""
    df = drivers.cleaning_leak(40, n_volumes=150, n_regions=24, n_subjects=20, n_repeats=5, seed=1)
    per_half, whole = df[df["cleaning"] == "per half"], df[df["cleaning"] == "whole run"]
    assert _at_chance(per_half)
    assert not _at_chance(whole)
    assert whole["identification"].mean() > 0.3 and whole["idiff"].mean() > 5
    assert (per_half["rho"] == 0).all() and (whole["rho"] > 0.1).all()
    # no regressor: the two cleanings are the same (an intercept per half changes no correlation)
    none = drivers.cleaning_leak(0, n_subjects=5, n_repeats=1)
    np.testing.assert_allclose(none["idiff"].iloc[0], none["idiff"].iloc[1], atol=1e-9)
    with pytest.raises(SpineprintError, match="no residual"):
        drivers.cleaning_leak(80, n_volumes=150)


def test_cleaning_leak_rho_is_the_closed_form_of_its_designs():
    """cleaning_leak's rho (Gram-matrix shortcut) equals split_half_coupling on the same random
    designs (drawn as cleaning_leak draws them: noise, then regressors, per repeat seed)."""
    S, T, R, P = 4, 31, 5, 6  # odd T: the middle volume is in neither half
    df = drivers.cleaning_leak(P, n_volumes=T, n_regions=R, n_subjects=S, seed=3)
    rng = np.random.default_rng(3)
    rng.standard_normal((S, T, R))
    X = rng.standard_normal((S, T, P))
    for cleaning, halves in (("whole run", False), ("per half", True)):
        expect = np.mean([drivers.split_half_coupling(x, clean_halves=halves)["rho"] for x in X])
        got = df.loc[df["cleaning"] == cleaning, "rho"].item()
        np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-12)


def test_cleaning_leak_values_and_plot():
    noise = drivers.cleaning_leak([0, 10], n_volumes=40, n_regions=5, n_subjects=4, n_repeats=2)
    w = noise[(noise["n_regressors"] == 10) & (noise["cleaning"] == "whole run")]
    study = pd.DataFrame({"identification": [0.5, 1.0], "idiff": [10.0, 20.0], "dof_remaining": [30.0, 30.0],
                          "repeat": [0, 1]})
    halves = study.assign(identification=[0.25, 0.25], idiff=[2.0, 4.0], dof_remaining=[5.0, 7.0])
    v = drivers.cleaning_leak_values(noise, study, halves)
    assert v["leak_p"] == 10 and v["leak_n_repeats"] == 2 and v["leak_chance"] == pytest.approx(25.0)
    assert v["leak_whole_idiff"] == pytest.approx(w["idiff"].mean())
    assert v["leak_whole_id"] == pytest.approx(100 * w["identification"].mean())
    assert (v["study_whole_id"], v["study_half_id"], v["study_whole_idiff"], v["study_half_idiff"],
            v["study_half_dof"], v["study_n_repeats"]) == (75.0, 25.0, 15.0, 3.0, 6.0, 2)
    assert "study_whole_id" not in drivers.cleaning_leak_values(noise)
    fig = drivers.plot_cleaning_leak(noise)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 1
    # one key for both panels, outside them
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["chance", "cleaned over the whole run",
                                                                  "cleaned per half"]
    with pytest.raises(SpineprintError, match="empty"):
        drivers.cleaning_leak_values(noise.iloc[:0])

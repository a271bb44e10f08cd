"""Derivatives the ecosystem reads (issue 18): the BIDS validator (bids-validator-deno, the
schema validator) on the derivatives of simulated studies in PAM50 space and in native space
with fieldmaps reports no error; every JSON is strict JSON; nilearn's load_confounds reads the
confounds of a real preprocessing run with each strategy; the header TR is the sidecar's."""

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from venv_tools import venv_tool

from spineprint_utils import connectivity, derivatives, preprocess, simulate

STUDIES = {
    "PAM50": dict(n_subjects=1, n_sessions=2, n_volumes=100, segments=("C4", "C5"), seed=4),
    "native+fieldmaps": dict(n_subjects=1, n_sessions=2, n_volumes=100, segments=("C4", "C5"), space="native",
                             distortion=True, seed=3),
}


def _validator():
    found = venv_tool("bids-validator-deno")
    return [found] if found else None


@pytest.fixture(scope="module", params=list(STUDIES))
def study(request, tmp_path_factory, shared_data):
    root = simulate.simulate_dataset(tmp_path_factory.mktemp(request.param.replace("+", "_")) / "bids",
                                     **STUDIES[request.param])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deriv = preprocess.preprocess_dataset(root, progress=False, spike_threshold=0.3)
        connectivity.connectivity_dataset(deriv)
    return request.param, root, deriv


def _errors(deriv):
    cmd = _validator()
    if cmd is None:
        pytest.fail("bids-validator-deno not installed (pip install bids-validator-deno; in the test extra)")
    proc = subprocess.run(cmd + [str(deriv), "--format", "json"], capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"validator gave no JSON (rc {proc.returncode}): {proc.stdout[:500]} {proc.stderr[:500]}")
    issues = report["issues"]["issues"]
    return [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"], issues


def test_bids_validator_no_errors(study):
    name, root, deriv = study
    errors, issues = _errors(deriv)
    print(name, "validator warnings:", sorted({i["code"] for i in issues if i["severity"] == "warning"}))
    assert not errors, errors
    # the validator can fail: a bare NaN, a dseg table without 'index' and an unnamed file are errors
    bad = deriv.parent / "broken"
    shutil.copytree(deriv, bad, ignore=shutil.ignore_patterns("*.nii.gz"))
    try:
        first_mask = next(bad.rglob("*_desc-cord_mask.json"))
        first_mask.write_text('{"Type": "ROI", "Value": NaN}')
        (first_mask.parent / "sub-01_notbids.txt").write_text("x")
        errors, _ = _errors(bad)
        codes = {c for c, _ in errors}
        assert {"JSON_INVALID", "NOT_INCLUDED"} <= codes, codes
    finally:
        shutil.rmtree(bad)


def test_every_json_is_strict_and_sources_are_bids_uris(study):
    _, root, deriv = study

    def _no_constants(token):
        raise ValueError(f"non-JSON constant {token}")

    for path in deriv.rglob("*.json"):
        obj = json.loads(path.read_text(), parse_constant=_no_constants)
        for src in obj.get("Sources", []) if isinstance(obj, dict) else []:
            assert src.startswith("bids:"), (path.name, src)
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert (deriv / desc["DatasetLinks"]["raw"]).resolve() == root.resolve()
    # a raw source named by its BIDS URI exists in the linked dataset
    meta = json.loads(next(deriv.rglob("*_desc-preproc_bold.json")).read_text())
    assert (root / meta["Sources"][0].split(":", 2)[2]).is_file()
    # NaN QC values are written as null (the run's QC row) and read back as missing
    qc = preprocess.load_qc_table(deriv)
    assert len(qc) == 2


def test_header_tr_is_the_sidecar_tr(study):
    _, root, deriv = study
    for meta_path in deriv.rglob("*_desc-preproc_bold.json"):
        img = nib.load(str(meta_path).replace(".json", ".nii.gz"))
        assert img.header.get_zooms()[3] == pytest.approx(json.loads(meta_path.read_text())["RepetitionTime"])
        assert img.header.get_xyzt_units()[1] == "sec"


def test_dseg_tables_have_index_and_masks_a_type(study):
    name, _, deriv = study
    tables = list(deriv.rglob("*_dseg.tsv"))
    assert tables
    for t in tables:
        df = pd.read_csv(t, sep="\t")
        assert list(df.columns[:2]) == ["index", "name"], t
    for m in deriv.rglob("*_mask.nii.gz"):
        assert json.loads(Path(str(m).replace(".nii.gz", ".json")).read_text())["Type"] == "ROI"
    if name.startswith("native"):
        assert list(deriv.rglob("fmap/*_fieldmap.nii.gz")) and list(deriv.rglob("fmap/*_magnitude.nii.gz"))
        assert list(deriv.rglob("*_from-T2w_to-PAM50_mode-image_xfm.*"))


@pytest.mark.parametrize("strategy, kw, expect", [
    (("motion",), {"motion": "full"}, {"trans_x", "trans_y", "trans_x_derivative1_power2"}),
    (("high_pass",), {}, {"cosine00"}),
    (("high_pass", "compcor"), {"compcor": "anat_separated", "n_compcor": "all"}, {"c_comp_cor_00", "c_comp_cor_04"}),
    (("scrub",), {"fd_threshold": 0.3, "std_dvars_threshold": 3, "scrub": 0}, set()),
])
def test_load_confounds_each_strategy(study, strategy, kw, expect):
    """nilearn reads the confounds of every preprocessed run, n/a rows included."""
    from nilearn.interfaces.fmriprep import load_confounds

    _, root, deriv = study
    for img in sorted(deriv.rglob("*_desc-preproc_bold.nii.gz")):
        conf, mask = load_confounds(str(img), strategy=strategy, **kw)
        T = nib.load(img).shape[3]
        assert len(conf) == T and expect <= set(conf.columns) and not conf.isna().any().any()
        raw = pd.read_csv(str(img).replace("desc-preproc_bold.nii.gz", "desc-confounds_timeseries.tsv"), sep="\t")
        if "scrub" in strategy:
            out = (raw["framewise_displacement"] > 0.3) | (raw["std_dvars"] > 3)
            kept = np.setdiff1d(np.arange(T), np.flatnonzero(out))
            assert mask is None and not out.any() or np.array_equal(mask, kept)
        if "motion" in strategy:
            np.testing.assert_allclose(conf["trans_x"] - conf["trans_x"].mean(), raw["trans_x"] - raw["trans_x"].mean())


def test_motion_table_and_confounds_share_names(study):
    _, root, deriv = study
    for mot in deriv.rglob("*_desc-motion_timeseries.tsv"):
        m = pd.read_csv(mot, sep="\t")
        c = pd.read_csv(str(mot).replace("desc-motion", "desc-confounds"), sep="\t")
        assert set(m.columns) <= set(c.columns)
        pd.testing.assert_frame_equal(m, c[m.columns])
        meta = json.loads(mot.with_suffix(".json").read_text())
        assert set(m.columns) <= set(meta)
        assert np.isnan(m.loc[0, "framewise_displacement"])


def test_one_place_for_names(study):
    """Every file preprocessing and connectivity wrote is named by spineprint_utils.derivatives."""
    _, root, deriv = study
    named = set()
    for bold in preprocess.find_bold_runs(root):
        named |= {p for p in derivatives.run_outputs(bold, deriv).values()}
        pre = derivatives.run_outputs(bold, deriv)["preproc"]
        c = derivatives.connectivity_run_outputs(pre, deriv)
        named |= {c["timeseries"], c["timeseries"].with_suffix(".json")}
        named |= set(c["relmat"].values()) | {p.with_suffix(".json") for p in c["relmat"].values()}
        t2w, _, _ = preprocess.find_anat(bold)
        if t2w is not None:
            named |= set(derivatives.anat_outputs(t2w, deriv).values())
    g = derivatives.connectivity_group_outputs(deriv)
    named |= {g["connectomes"], g["dseg"], g["dseg_tsv"]} | set(derivatives.dataset_outputs(deriv).values())
    named |= {derivatives.participant_report(deriv, "01")}
    written = {p for p in deriv.rglob("*") if p.is_file()}
    assert written - named == set(), sorted(str(p.relative_to(deriv)) for p in written - named)


# ------------------------------------------------------------------ QC report (issue 18)




def _serve(folder):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def test_report_in_browser(study, browser):
    """Every participant page and the group page in headless Chromium: every reportlet image
    loads, each reportlet has a verdict, no error text; the group table sorts."""
    name, root, deriv = study
    httpd, url = _serve(deriv)
    try:
        tab = browser.new_page()
        failed = []
        tab.on("requestfailed", lambda r: failed.append(r.url))
        resp = tab.goto(f"{url}/sub-01.html", wait_until="load")
        assert resp is not None and resp.ok
        tab.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # lazy images
        tab.wait_for_load_state("networkidle")
        imgs = tab.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        for _ in range(50):  # lazy-loaded images: wait until every one has decoded
            if all(c and w > 0 for _, c, w in imgs):
                break
            tab.evaluate("Array.from(document.images).forEach(i => i.loading = 'eager')")
            tab.wait_for_timeout(100)
            imgs = tab.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
                                "i.naturalWidth])")
        broken = [s for s, c, w in imgs if not (c and w > 0)]
        assert not broken and not failed, (broken, failed)
        n_runs = len(list(deriv.rglob("*_desc-qc_metrics.json")))
        # masks, motion, physio, tSNR, carpet, confound correlations (+ native overlays) per run
        per_run = 7 if name.startswith("native") else 6
        assert len(imgs) >= per_run * n_runs, len(imgs)
        n_levels = len(list(deriv.glob("sub-01/figures/*_desc-levels_qc.png")))  # anatomy (native studies)
        assert tab.locator(".reportlet").count() == 8 * n_runs + n_levels
        assert tab.locator(".reportlet .badge").count() == 8 * n_runs
        text = tab.locator("body").inner_text()
        assert "Traceback" not in text and "Error" not in text and "nan" not in text.split()
        if name == "PAM50":  # a skipped step says so
            reg = tab.locator(".reportlet", has_text="PAM50 (regions").first.inner_text()
            assert "not applied" in reg and "run in PAM50 space" in reg
        # group page: the table sorts by a clicked column
        tab.goto(f"{url}/group.html", wait_until="load")
        assert tab.locator("table.sortable tbody tr").count() == n_runs
        col = tab.locator("table.sortable th", has_text="mean_fd_mm")
        idx = tab.evaluate("Array.from(document.querySelectorAll('table.sortable th')).findIndex("
                           "h => h.textContent === 'mean_fd_mm')")
        col.click()
        vals = tab.evaluate(f"Array.from(document.querySelectorAll('table.sortable tbody tr')).map("
                            f"r => parseFloat(r.cells[{idx}].dataset.v))")
        assert vals == sorted(vals)
        col.click()
        vals = tab.evaluate(f"Array.from(document.querySelectorAll('table.sortable tbody tr')).map("
                            f"r => parseFloat(r.cells[{idx}].dataset.v))")
        assert vals == sorted(vals, reverse=True)
        body = tab.locator("body").inner_text()
        assert "Exclusion summary" in body and "Methods" in body and "nilearn" in body and "Behzadi" in body
        assert tab.evaluate("Array.from(document.links).filter(a => a.href.includes('sub-01.html')).length") >= 1
        tab.close()
    finally:
        httpd.shutdown()


def test_report_is_reproducible_and_has_no_run_time(study):
    from spineprint_utils import report

    _, root, deriv = study
    before = {p: p.read_bytes() for p in deriv.glob("*.html")}
    report.build_reports(deriv)
    assert {p: p.read_bytes() for p in deriv.glob("*.html")} == before
    assert "runtime" not in (deriv / "group.html").read_text()


def test_skipped_steps_are_labelled_not_applied(tmp_path, monkeypatch):
    """The native-space figure of a run whose distortion correction was skipped says "not
    applied" instead of "distortion corrected"; a run without physio gets a "not applied"
    reportlet with the reason."""
    from spineprint_utils import qcfigures, report

    titles = []
    monkeypatch.setattr(qcfigures, "_save", lambda fig, path: titles.extend(
        ax.get_title() for ax in fig.axes) or path)
    cord = np.zeros((8, 8, 3), bool)
    cord[3:5, 3:5] = True
    mean = np.random.default_rng(0).random((8, 8, 3))
    qcfigures.native_figure(mean, mean, None, np.zeros((8, 8, 3), np.int16), cord, tmp_path / "x.png", "run")
    assert any("distortion correction:\nnot applied" in t for t in titles)
    assert not any(t == "distortion corrected" for t in titles)
    assert any("registration to PAM50:\nnot applied" in t for t in titles)
    row = {"n_volumes": 100, "physio_model_applied": "no", "physio_model": "none: no physio file found",
           "registration": "skip: no T2w image", "distortion_correction": "off: disabled by the user",
           "mask_source": "mean image (10 mm disc GUESS, not the cord)", "mean_fd_mm": 0.1, "tsnr_post_cord": 20.0}
    v = {r["step"].split(" ")[0]: r for r in report.run_verdicts(row)}
    assert v["Physiological"]["verdict"] == "not applied" and "no physio file" in v["Physiological"]["metric"]
    assert v["Distortion"]["verdict"] == "not applied" and "no T2w" in v["Distortion"]["metric"]
    assert v["EPI"]["verdict"] == "fail"  # a disc guessed on the mean image is not a cord mask
    # thresholds can fail: large motion and low tSNR
    bad = report.run_verdicts({**row, "mean_fd_mm": 0.8, "tsnr_post_cord": 5.0})
    assert {r["step"].split(" ")[0]: r["verdict"] for r in bad}["Motion"] == "fail"
    assert {r["step"].split(" ")[0]: r["verdict"] for r in bad}["tSNR"] == "fail"

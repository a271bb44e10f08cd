"""Visual QC reports: one HTML page per participant and a group page (as fMRIPrep and SpinePrep).

:func:`build_reports` reads a derivatives folder written by
:func:`spineprint_utils.preprocess.preprocess_dataset` (the runs' QC rows
``*_desc-qc_metrics.json``, their confounds and the QC figures drawn by
:mod:`spineprint_utils.qcfigures`) and writes

- ``sub-<s>.html``: for every run of the participant one reportlet per step (cord and CSF
  masks, distortion correction and registration to PAM50, motion, physiological recordings,
  tSNR, carpet plot, confound correlations, degrees of freedom), each with its metric, the
  threshold it is judged by and a **pass / warn / fail** verdict, or **not applied** (with
  the reason) when the step was skipped;
- ``group.html``: the QC table of every run (click a column header to sort), the exclusion
  summary (runs with at least one *fail*) and a methods boilerplate (package and dependency
  versions, steps, parameters, citations).

The pages are static HTML with relative links to the PNG figures; the same derivatives give
the same bytes (no dates, no run times). The thresholds (:data:`THRESHOLDS`) are stated on
every page; they are spineprint's defaults for flagging runs to look at, not a consensus.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__, derivatives
from ._io import SpineprintError, atomic_write_text, read_json

__all__ = ["THRESHOLDS", "run_verdicts", "participant_report", "group_report", "build_reports", "export",
           "screenshot", "register_cli"]

#: QC thresholds: (pass if better than, fail if worse than, direction, source)
THRESHOLDS = {
    "mean_fd_mm": (0.2, 0.5, "lower", "Power et al. 2012 (0.5 mm censoring) and 2014 (0.2 mm); brain-fMRI "
                   "conventions, in-plane only here"),
    "outlier_pct": (5.0, 20.0, "lower", "percentage of volumes with FD above the outlier threshold; spineprint "
                    "default"),
    "tsnr_post_cord": (15.0, 8.0, "higher", "mean cord tSNR after cleaning; spineprint default for 3 T cervical "
                       "EPI, adapt to your protocol"),
    "dvars_pct": (5.0, 20.0, "lower", "percentage of volumes with standardised DVARS > 1.5 (fMRIPrep's DVARS "
                  "outlier threshold)"),
    "registration_dice": (0.8, 0.6, "higher", "cord Dice of the T2w -> PAM50 registration; spineprint default"),
    "max_abs_r_motion": (0.3, 0.6, "lower", "largest |r| between the mean cord signal and trans_x/trans_y/FD; "
                         "spineprint default"),
    "heart_rate_bpm": ((40.0, 120.0), (30.0, 180.0), "range", "plausible resting heart rate; spineprint default"),
    "respiratory_rate_bpm": ((6.0, 30.0), (4.0, 40.0), "range", "plausible resting breathing rate; spineprint "
                             "default"),
}

_REFERENCES = [
    "Behzadi Y, Restom K, Liau J, Liu TT (2007). A component based noise correction method (CompCor) for BOLD "
    "and perfusion based fMRI. NeuroImage 37:90-101.",
    "Brooks JCW, Beckmann CF, Miller KL, et al. (2008). Physiological noise modelling for spinal functional "
    "magnetic resonance imaging studies. NeuroImage 39:680-692.",
    "Chang H, Fitzpatrick JM (1992). A technique for accurate magnetic resonance imaging in the presence of "
    "field inhomogeneities. IEEE Trans Med Imaging 11:319-329.",
    "De Leener B, Fonov VS, Collins DL, et al. (2018). PAM50: unbiased multimodal template of the brainstem and "
    "spinal cord aligned with the ICBM152 space. NeuroImage 165:170-179.",
    "Esteban O, Markiewicz CJ, Blair RW, et al. (2019). fMRIPrep: a robust preprocessing pipeline for "
    "functional MRI. Nature Methods 16:111-116.",
    "Glover GH, Li TQ, Ress D (2000). Image-based method for retrospective correction of physiological motion "
    "effects in fMRI: RETROICOR. Magn Reson Med 44:162-167.",
    "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE (2012). Spurious but systematic correlations in "
    "functional connectivity MRI networks arise from subject motion. NeuroImage 59:2142-2154.",
    "Power JD, Mitra A, Laumann TO, et al. (2014). Methods to detect, characterize, and remove motion artifact "
    "in resting state fMRI. NeuroImage 84:320-341.",
    "Power JD (2017). A simple but useful way to assess fMRI scan qualities. NeuroImage 154:150-158.",
]

_DEPENDENCIES = ("numpy", "scipy", "pandas", "nibabel", "nilearn", "dipy", "matplotlib")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
.reportlet{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.reportlet h3{margin:.2em 0 .4em 0;font-size:1.1em}
.reportlet img{max-width:100%;height:auto;display:block;margin:.5em 0}
.metric{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em}
.threshold{color:#555;font-size:.85em}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;font-weight:600;font-size:.85em;color:#fff}
.pass{background:#2e7d32}.warn{background:#ef6c00}.fail{background:#c62828}.na{background:#757575}
table{border-collapse:collapse;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto;max-height:70vh}
nav a{margin-right:1em}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), asc = th.dataset.order !== 'asc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v !== undefined ? a.cells[col].dataset.v : a.cells[col].textContent;
      var y = b.cells[col].dataset.v !== undefined ? b.cells[col].dataset.v : b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
    table.querySelectorAll('th').forEach(function(h){ delete h.dataset.order; });
    th.dataset.order = asc ? 'asc' : 'desc';
  });
});
"""


# ---------------------------------------------------------------- verdicts
def _grade(name, value):
    """'pass'/'warn'/'fail' of a metric by :data:`THRESHOLDS` ('na' when missing)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "na"
    good, bad, direction, _ = THRESHOLDS[name]
    v = float(value)
    if direction == "lower":
        return "pass" if v < good else ("warn" if v < bad else "fail")
    if direction == "higher":
        return "pass" if v >= good else ("warn" if v >= bad else "fail")
    (g_lo, g_hi), (b_lo, b_hi) = good, bad
    return "pass" if g_lo <= v <= g_hi else ("warn" if b_lo <= v <= b_hi else "fail")


def _threshold_text(name):
    good, bad, direction, source = THRESHOLDS[name]
    if direction == "lower":
        rule = f"pass &lt; {good}, warn &lt; {bad}, fail &ge; {bad}"
    elif direction == "higher":
        rule = f"pass &ge; {good}, warn &ge; {bad}, fail &lt; {bad}"
    else:
        rule = f"pass {good[0]}-{good[1]}, warn {bad[0]}-{bad[1]}, fail outside"
    return f"{rule} ({html.escape(source)})"


def _num(v, fmt="{:.2f}"):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return fmt.format(v) if np.isfinite(v) else "n/a"


def _status(text):
    return str(text or "").split(":")[0].strip()


def run_verdicts(row: dict, confounds: pd.DataFrame | None = None) -> list[dict]:
    """The reportlets of one run: ``step``, ``figure`` key, ``metric`` text, ``verdict``
    ('pass'/'warn'/'fail'/'not applied'), ``threshold`` text and ``note``.

    Parameters
    ----------
    row : dict
        The run's QC row (``*_desc-qc_metrics.json``).
    confounds : DataFrame, optional
        The run's confounds (for the outlier and DVARS percentages).
    """
    out = []
    T = int(row.get("n_volumes") or 0)
    src = str(row.get("mask_source", ""))
    guess = "guess" in src.lower() or "disk" in src.lower()
    partial = "not found in slice" in src
    out.append({"step": "EPI cord and CSF masks", "figure": "fig_masks", "metric": f"source: {html.escape(src)}",
                "verdict": "fail" if guess else ("warn" if partial else "pass"),
                "threshold": "fail when the cord mask is a guess (a disc, not the cord); warn when the cord was not "
                             "found in some slices",
                "note": ""})
    dist, reg = str(row.get("distortion_correction", "")), str(row.get("registration", ""))
    if _status(reg) == "applied":
        dice = row.get("registration_dice")
        verdict = _grade("registration_dice", dice)
        metric = f"T2w -> PAM50 cord Dice {_num(dice, '{:.3f}')}"
        thr = _threshold_text("registration_dice")
    else:
        verdict, metric, thr = "not applied", "registration to PAM50: " + html.escape(reg or "not recorded"), ""
    if row.get("func_t2w_cord_dice") is not None:
        metric += f"; func -> T2w cord Dice {_num(row.get('func_t2w_cord_dice'), '{:.3f}')}"
    if row.get("regions_in_cord_pct") is not None:
        metric += f"; horn regions in the cord {_num(row.get('regions_in_cord_pct'), '{:.0f}')} %"
    out.append({"step": "Distortion correction, func -> T2w -> PAM50 (regions coloured by level)",
                "figure": ("fig_native", "fig_funcanat"), "metric": metric + "<br>distortion correction: " + html.escape(dist),
                "verdict": verdict, "threshold": thr, "note": ""})
    fd = row.get("mean_fd_mm")
    n_out = int(row.get("n_spikes") or 0)
    if confounds is not None:
        n_out = int(confounds.filter(like="motion_outlier").shape[1])
    pct = 100.0 * n_out / T if T else float("nan")
    v1, v2 = _grade("mean_fd_mm", fd), _grade("outlier_pct", pct)
    out.append({"step": "Motion (slice-wise) and framewise displacement", "figure": "fig_motion",
                "metric": f"mean FD {_num(fd, '{:.3f}')} mm, max {_num(row.get('max_fd_mm'), '{:.3f}')} mm; "
                          f"{n_out} outlier volume(s) ({_num(pct, '{:.1f}')} %)",
                "verdict": _worst(v1, v2),
                "threshold": "mean FD: " + _threshold_text("mean_fd_mm") + "; outliers: " + _threshold_text(
                    "outlier_pct"), "note": ""})
    if row.get("physio_model_applied") == "yes":
        hr, rr = row.get("heart_rate_bpm"), row.get("respiratory_rate_bpm")
        out.append({"step": "Physiological recordings (beats, respiratory phase)", "figure": "fig_physio",
                    "metric": f"heart rate {_num(hr, '{:.0f}')} bpm, breathing {_num(rr, '{:.1f}')} /min",
                    "verdict": _worst(_grade("heart_rate_bpm", hr), _grade("respiratory_rate_bpm", rr)),
                    "threshold": "heart: " + _threshold_text("heart_rate_bpm") + "; breathing: "
                                 + _threshold_text("respiratory_rate_bpm"),
                    "note": html.escape(str(row.get("physio_model", "")))})
    else:
        out.append({"step": "Physiological recordings (beats, respiratory phase)", "figure": None,
                    "metric": "physiological noise model: " + html.escape(str(row.get("physio_model", ""))),
                    "verdict": "not applied", "threshold": "", "note": ""})
    pre, post = row.get("tsnr_pre_cord"), row.get("tsnr_post_cord")
    out.append({"step": "tSNR before / after cleaning (every cord slice)", "figure": "fig_tsnr",
                "metric": f"cord tSNR {_num(pre, '{:.1f}')} -> {_num(post, '{:.1f}')}",
                "verdict": _grade("tsnr_post_cord", post), "threshold": _threshold_text("tsnr_post_cord"),
                "note": ""})
    dv_pct = float("nan")
    if confounds is not None and "std_dvars" in confounds and T:
        dv_pct = 100.0 * float((confounds["std_dvars"] > 1.5).sum()) / T
    out.append({"step": "Carpet plot (cord and CSF voxels)", "figure": "fig_carpet",
                "metric": f"{_num(dv_pct, '{:.1f}')} % of volumes with standardised DVARS &gt; 1.5",
                "verdict": _grade("dvars_pct", dv_pct), "threshold": _threshold_text("dvars_pct"), "note": ""})
    r = row.get("max_abs_r_motion")
    out.append({"step": "Confound correlations", "figure": "fig_confcorr",
                "metric": f"max |r| (mean cord signal, motion/FD) {_num(r, '{:.2f}')}",
                "verdict": _grade("max_abs_r_motion", r), "threshold": _threshold_text("max_abs_r_motion"),
                "note": ""})
    dof = row.get("dof_remaining")
    limit = max(10.0, 0.1 * T)
    try:
        dv = float(dof)
        v = "pass" if dv >= 2 * limit else ("warn" if dv >= limit else "fail")
    except (TypeError, ValueError):
        v = "na"
    out.append({"step": "Degrees of freedom left after cleaning", "figure": None,
                "metric": f"{_num(dof, '{:.0f}')} of {T} ({int(row.get('n_regressors') or 0)} regressors)",
                "verdict": v, "threshold": f"fail &lt; max(10, 10 % of the volumes) = {limit:g} (the pipeline "
                                         f"warns), warn &lt; {2 * limit:g}", "note": ""})
    return out


def _worst(*verdicts):
    order = ["fail", "warn", "pass", "na"]
    for v in order:
        if v in verdicts:
            return v
    return "na"


# ---------------------------------------------------------------- HTML
def _badge(verdict):
    cls = {"pass": "pass", "warn": "warn", "fail": "fail"}.get(verdict, "na")
    text = "n/a" if verdict == "na" else verdict
    return f'<span class="badge {cls}">{html.escape(text)}</span>'


def _page(title, body, script=""):
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            + (f"<script>{script}</script>\n" if script else "") + "</body>\n</html>\n")


def _runs(deriv_dir: Path, subject: str | None = None):
    """(QC row, marker path) of every run, sorted by run name."""
    pattern = f"sub-{subject}/**/*_desc-qc_metrics.json" if subject else "sub-*/**/*_desc-qc_metrics.json"
    out = [(read_json(p), p) for p in sorted(deriv_dir.glob(pattern))]
    return sorted(out, key=lambda t: str(t[0].get("run", "")))


def _confounds_of(marker: Path):
    path = marker.with_name(marker.name.replace("_desc-qc_metrics.json", "_desc-confounds_timeseries.tsv"))
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values="n/a")


def _figure_paths(deriv_dir: Path, marker: Path) -> dict:
    """The run's figure paths (from the one place for names), relative to *deriv_dir*."""
    prefix = marker.name[: -len("_desc-qc_metrics.json")]
    ents = {k: v for k, v in (part.split("-", 1) for part in prefix.split("_") if "-" in part)}
    fig = deriv_dir / f"sub-{ents.get('sub', '')}" / "figures"
    # run_outputs needs a raw path: any path with the same name and sub-folders gives the same names
    fake = deriv_dir / marker.parent.relative_to(deriv_dir) / f"{prefix}_bold.nii.gz"
    outs = derivatives.run_outputs(fake, deriv_dir)
    return {k: v for k, v in outs.items() if k.startswith("fig_") and v.parent == fig}


def participant_report(deriv_dir, subject: str) -> Path:
    """Write ``sub-<subject>.html`` in *deriv_dir* (see the module docstring)."""
    deriv_dir = Path(deriv_dir)
    subject = str(subject).removeprefix("sub-")
    runs = _runs(deriv_dir, subject)
    if not runs:
        raise SpineprintError(f"{deriv_dir}: no preprocessed run of sub-{subject} (no *_desc-qc_metrics.json)")
    parts = [f"<h1>spineprint QC report: sub-{html.escape(subject)}</h1>",
             '<nav><a href="group.html">group report</a>'
             + "".join(f'<a href="#{html.escape(r["run"])}">{html.escape(r["run"])}</a>' for r, _ in runs)
             + "</nav>",
             f"<p>spineprint {html.escape(__version__)}; {len(runs)} run(s). Each step shows its figure, its "
             "metric and a verdict from the stated threshold; <b>not applied</b> means the step was skipped "
             "(reason given).</p>"]
    levels = sorted((deriv_dir / f"sub-{subject}" / "figures").glob("*_desc-levels_qc.png"))
    if levels:  # anatomy of the participant (T2w -> PAM50 levels; preprocessing, native-space runs)
        parts.append("<h2>Anatomy: vertebral levels on the T2w</h2>" + "".join(
            f'<div class="reportlet"><h3>{html.escape(p.name)}</h3><img src="{html.escape(p.relative_to(deriv_dir).as_posix())}" '
            f'alt="levels" loading="lazy"></div>' for p in levels))
    for row, marker in runs:
        conf = _confounds_of(marker)
        figs = _figure_paths(deriv_dir, marker)
        verdicts = run_verdicts(row, conf)
        overall = _worst(*[v["verdict"] for v in verdicts])
        parts.append(f'<h2 id="{html.escape(row["run"])}">{html.escape(row["run"])} {_badge(overall)}</h2>')
        for v in verdicts:
            keys = v["figure"] if isinstance(v["figure"], tuple) else (v["figure"],)
            found = [figs[k] for k in keys if k and k in figs and figs[k].is_file()]
            img = "".join(f'<img src="{html.escape(f.relative_to(deriv_dir).as_posix())}" '
                          f'alt="{html.escape(v["step"])}" loading="lazy">' for f in found)
            if not found and v["verdict"] != "not applied" and v["figure"]:
                img = "<p><i>no figure (preprocessing ran with figures=False)</i></p>"
            thr = f'<div class="threshold">threshold: {v["threshold"]}</div>' if v["threshold"] else ""
            note = f'<div class="threshold">{v["note"]}</div>' if v["note"] else ""
            parts.append(f'<div class="reportlet"><h3>{html.escape(v["step"])} {_badge(v["verdict"])}</h3>'
                         f'<div class="metric">{v["metric"]}</div>{thr}{note}{img}</div>')
        notes = row.get("notes") or []
        if notes:
            parts.append("<details><summary>notes</summary><ul>"
                         + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul></details>")
    path = derivatives.participant_report(deriv_dir, subject)
    atomic_write_text(path, _page(f"sub-{subject} - spineprint QC", "\n".join(parts)))
    return path


_TABLE_COLUMNS = ["run", "overall", "n_volumes", "tr_s", "tsnr_pre_cord", "tsnr_post_cord", "mean_fd_mm", "max_fd_mm",
                  "n_spikes", "heart_rate_bpm", "respiratory_rate_bpm", "physio_model_applied", "var_physio_pct",
                  "var_total_pct", "dof_remaining", "registration_dice", "distortion_correction", "registration"]


def _versions():
    from importlib import metadata
    import platform

    out = {"python": platform.python_version(), "spineprint": __version__}
    for dep in _DEPENDENCIES:
        try:
            out[dep] = metadata.version(dep)
        except metadata.PackageNotFoundError:
            out[dep] = "not installed"
    return out


def group_report(deriv_dir) -> Path:
    """Write ``group.html`` in *deriv_dir*: sortable QC table, exclusions, methods."""
    deriv_dir = Path(deriv_dir)
    runs = _runs(deriv_dir)
    if not runs:
        raise SpineprintError(f"{deriv_dir}: no preprocessed run (no *_desc-qc_metrics.json)")
    rows, excluded = [], []
    for row, marker in runs:
        verdicts = run_verdicts(row, _confounds_of(marker))
        overall = _worst(*[v["verdict"] for v in verdicts])
        rows.append({**row, "overall": overall})
        fails = [v["step"] for v in verdicts if v["verdict"] == "fail"]
        if fails:
            excluded.append((row, fails))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _TABLE_COLUMNS)
    body = []
    for row in rows:
        sub = str(row.get("subject", ""))
        cells = []
        for c in _TABLE_COLUMNS:
            v = row.get(c)
            if c == "run":
                cells.append(f'<td><a href="sub-{html.escape(sub)}.html#{html.escape(str(v))}">{html.escape(str(v))}'
                             "</a></td>")
            elif c == "overall":
                order = {"fail": 0, "warn": 1, "pass": 2}.get(v, 3)
                cells.append(f'<td data-v="{order}">{_badge(v)}</td>')
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f'<td data-v="{_num(v, "{:.6g}")}">{_num(v, "{:.3g}")}</td>')
            else:
                cells.append(f"<td>{html.escape(_status(v) if c in ('distortion_correction', 'registration') else str(v if v is not None else 'n/a'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    desc_path = derivatives.dataset_outputs(deriv_dir)["description"]
    params = {}
    if desc_path.is_file():
        gen = read_json(desc_path).get("GeneratedBy") or [{}]
        params = gen[0].get("Parameters", {})
    vers = _versions()
    n_sub = len({r.get("subject") for r in rows})
    excl = ("<p>No run has a <b>fail</b>.</p>" if not excluded else
            "<ul>" + "".join(f"<li>{html.escape(r['run'])}: {html.escape(', '.join(f))}</li>" for r, f in excluded)
            + "</ul>")
    thresholds = "".join(f"<li><code>{html.escape(k)}</code>: {_threshold_text(k)}</li>" for k in THRESHOLDS)
    methods = (
        f"<p>Data were preprocessed with spineprint {html.escape(vers['spineprint'])} (Python "
        f"{html.escape(vers['python'])}; " + ", ".join(f"{html.escape(k)} {html.escape(v)}" for k, v in vers.items()
                                                       if k not in ('python', 'spineprint'))
        + "). For each run: susceptibility distortion correction from a reverse phase-encoding pair when present "
        "(Chang &amp; Fitzpatrick 1992); cord and CSF masks from the PAM50 template (De Leener et al. 2018), "
        "through a T2w -> PAM50 and mean BOLD -> T2w registration for native-space runs; slice-wise in-plane "
        "motion correction; RETROICOR physiological regressors per slice (Glover et al. 2000; Brooks et al. "
        "2008) when recordings exist; aCompCor components of the CSF (Behzadi et al. 2007); one regressor per "
        "volume with framewise displacement above the threshold (Power et al. 2012); band-pass filtering. "
        "Confounds follow fMRIPrep's conventions (Esteban et al. 2019); the carpet plot follows Power (2017).</p>"
        "<p>Parameters:</p><pre>" + html.escape(json.dumps(params, indent=1, sort_keys=True)) + "</pre>"
    )
    parts = [
        "<h1>spineprint QC: group report</h1>",
        "<nav>" + "".join(f'<a href="sub-{html.escape(s)}.html">sub-{html.escape(s)}</a>'
                          for s in sorted({str(r.get('subject', '')) for r in rows})) + "</nav>",
        f"<p>{len(rows)} run(s) of {n_sub} participant(s). Click a column header to sort.</p>",
        '<div class="scroll"><table class="sortable"><thead><tr>' + head + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table></div>",
        f"<h2>Exclusion summary</h2><p>{len(excluded)} of {len(rows)} run(s) have at least one <b>fail</b>:</p>"
        + excl,
        "<h2>Thresholds</h2><ul>" + thresholds + "</ul>",
        "<h2>Methods</h2>" + methods,
        "<h2>References</h2><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in _REFERENCES) + "</ul>",
    ]
    path = derivatives.dataset_outputs(deriv_dir)["group_report"]
    atomic_write_text(path, _page("spineprint QC - group", "\n".join(parts), _SORT_JS))
    return path


def build_reports(deriv_dir) -> list[Path]:
    """Write every participant page and the group page of *deriv_dir*; returns their paths."""
    deriv_dir = Path(deriv_dir)
    subjects = sorted({str(r.get("subject", "")) for r, _ in _runs(deriv_dir)})
    pages = [participant_report(deriv_dir, s) for s in subjects if s]
    pages.append(group_report(deriv_dir))
    return pages


def export(deriv_dir, dest) -> Path | None:
    """Copy the reports of *deriv_dir* with their figures to *dest* (e.g. a built book);
    returns ``dest/group.html`` or None when *deriv_dir* has no report."""
    import shutil

    deriv_dir, dest = Path(deriv_dir), Path(dest)
    group = derivatives.dataset_outputs(deriv_dir)["group_report"]
    if not group.is_file():
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for page in sorted(deriv_dir.glob("*.html")):
        shutil.copy2(page, dest / page.name)
    for fig in sorted(deriv_dir.glob("sub-*/figures/*.png")):
        target = dest / fig.relative_to(deriv_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(fig, target)
    return dest / group.name


def screenshot(page, png, width: int = 1100, height: int = 1400, scale: float = 0.6,
               chromium: str = "/usr/bin/chromium") -> Path:
    """PNG screenshot of the top of a report page (headless Chromium), downscaled by *scale*
    (a documentation image: README). Raises SpineprintError without Chromium."""
    import shutil
    import subprocess
    import tempfile

    from PIL import Image

    exe = shutil.which("chromium") or chromium
    if not Path(exe).exists():
        raise SpineprintError(f"{exe}: Chromium not found (apt-get install chromium)")
    page, png = Path(page).resolve(), Path(png)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}", f"--window-size={width},{height}", f"--screenshot={raw}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)
        img = Image.open(raw).convert("RGB")
        img = img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
        png.parent.mkdir(parents=True, exist_ok=True)
        from ._io import atomic_write

        with atomic_write(png, "wb") as fh:
            img.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE).save(fh, format="PNG", optimize=True)
    return png


# ---------------------------------------------------------------- CLI
def _cli(args) -> int:
    pages = build_reports(args.deriv_dir)
    for p in pages:
        print(p)
    if args.screenshot:
        subject = pages[0] if len(pages) > 1 else pages[-1]
        print(screenshot(subject, args.screenshot))
    return 0


def register_cli(subparsers) -> None:
    """Add ``spineprint report DERIV_DIR``."""
    p = subparsers.add_parser("report", help="HTML QC reports (one per participant + group) of a derivatives folder",
                              description="Write sub-<label>.html and group.html into a derivatives folder "
                                          "written by `spineprint preprocess` (done automatically by preprocess).")
    p.add_argument("deriv_dir", metavar="DERIV_DIR")
    p.add_argument("--screenshot", metavar="PNG", default=None,
                   help="also save a PNG of the top of the first participant page (headless Chromium)")
    p.set_defaults(func=_cli)

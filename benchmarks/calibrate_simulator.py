"""Calibrate the simulated default study against real data, on the measures of chapter 00's realism table.

The real references are those of chapter 00 ("How realistic is the default study?"): the
SCT testing EPI run (cord tSNR) and the real spinal cord ROI series of
``datasets.fetch_spinal_graph_learning`` (15 participants x 2 sessions, horn regions, task
regressed out: horn-pair coupling, identification and Idiff within and between sessions).
For every point of a small grid of simulator parameters this script simulates the study,
runs the package's pipeline on its raw images exactly as chapter 00 does (preprocessing,
PAM50 horn connectivity, ``realdata.epi_overview`` of the first raw run) and computes
``realdata.realism_table`` - the same function, the same numbers as the chapter. Nothing of
the simulator's ground truth is read: the comparison is between what the pipeline measures
on simulated images and what it measures on real data.

Distance of a grid point to the real data (``realdata.realism_distance``): the root mean
square of the natural-log ratios simulated / real of six measures,

- median cord tSNR of a raw run;
- horn coupling strength: the root mean square of the four within-segment horn-pair means
  (ventral-ventral, dorsal-dorsal, dorsal-ventral same side and opposite sides);
- identification within and between sessions, in multiples of chance (the studies differ in
  size: 1/10 vs 1/15);
- Idiff within and between sessions;

each floored (tSNR and Idiff at 0.5, coupling at 0.005, identification at 0.5 x chance) so
that a zero or negative value gives a large, finite distance. ``exp(distance)`` is a typical
factor between the simulated and the real measures.

Usage (from the repository root, with the repository's virtual environment; a grid point of
the default design takes about 2-4 min on the 2-core machine)::

    # one point: the current defaults, in the default study's design (what chapter 00 shows)
    .venv/bin/python benchmarks/calibrate_simulator.py
    # a grid (cartesian product of the values given); results appended to --out, resumable
    .venv/bin/python benchmarks/calibrate_simulator.py --fingerprint-strength 0.15 0.25 \\
        --session-strength 0 0.1 --tsnr 11 15 --out /tmp/calibration.json
    # the table of every point in --out, best first (no simulation), and the book's record
    .venv/bin/python benchmarks/calibrate_simulator.py --out /tmp/calibration.json --table \\
        --record spineprint_utils/data/simulator_calibration.tsv
    # the real data's design instead (15 subjects, 125 volumes, TR 1 s)
    .venv/bin/python benchmarks/calibrate_simulator.py --design real

Set ``SPINEPRINT_CACHE_DIR`` to a scratch folder: every grid point is a new simulated study.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spineprint_utils import connectivity, datasets, preprocess, realdata, simulate  # noqa: E402

#: Parameters a grid may vary (command-line option -> simulate.DEFAULTS key).
GRID_PARAMS = ("fingerprint_strength", "session_strength", "tsnr", "neural_amplitude", "n_volumes", "physio_amplitude",
               "physio_subject_specificity", "motion_amplitude")
#: The defaults of simulator version 6 before this calibration (2026-12-03, issue 15): the
#: record marks their grid point ``before``, and the point of the current ``simulate.DEFAULTS``
#: ``after``.
PREVIOUS_DEFAULTS = {"fingerprint_strength": 0.4, "session_strength": 0.8, "tsnr": 15.0, "neural_amplitude": 5.0,
                     "n_volumes": 150, "physio_amplitude": 1.0, "physio_subject_specificity": 0.5,
                     "motion_amplitude": 0.15}
#: Measures of the record (``spineprint_utils/data/simulator_calibration.tsv``).
RECORD_MEASURES = ("tsnr_raw", "coupling_rms", "id_within", "chance_within", "idiff_within", "id_between",
                   "chance_between", "idiff_between")
#: The real data's design (``datasets.fetch_spinal_graph_learning``).
REAL_DESIGN = {"n_subjects": 15, "n_volumes": 125, "tr": 1.0}


def evaluate(params: dict, n_jobs: int = 1) -> dict:
    """Simulate, preprocess and measure one grid point exactly as chapter 00 does."""
    t0 = time.perf_counter()
    bids = simulate.default_dataset(**params)
    truth_runs = sorted(bids.glob("sub-*/ses-*/func/*_bold.nii.gz"))
    sim_epi = realdata.epi_overview(truth_runs[0])
    conn = connectivity.load_connectomes(connectivity.connectivity_dataset(
        preprocess.preprocess_dataset(bids, progress=False, n_jobs=n_jobs)))
    real_roi = datasets.fetch_spinal_graph_learning()
    real_epi = realdata.epi_overview(datasets.fetch_sct_testing_data() / "fmri" / "fmri.nii.gz")
    s = realdata.realism_measures(realdata.realism_table(conn, sim_epi, real_roi, real_epi))
    return {"params": params, "simulated": s["simulated"], "real": s["real"],
            "distance": realdata.realism_distance(s["simulated"], s["real"]),
            "seconds": round(time.perf_counter() - t0, 1)}


def markdown(results: list) -> str:
    """Results as a Markdown table, best (smallest distance) first, with the real row last."""
    keys = [k for k in GRID_PARAMS if len({r["params"].get(k) for r in results}) > 1
            or k in ("fingerprint_strength", "session_strength")]
    head = [*keys, "tSNR", "coupling RMS", "id within %", "Idiff within", "id between %", "Idiff between",
            "distance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(p, s, d):
        cells = [f"{p[k]:g}" for k in keys] if p is not None else \
            ["real data"] + [""] * (len(keys) - 1)
        cells += [f"{s['tsnr_raw']:.1f}", f"{s['coupling_rms']:.3f}", f"{s['id_within']:.1f}",
                  f"{s['idiff_within']:.2f}", f"{s['id_between']:.1f}", f"{s['idiff_between']:.2f}", d]
        return "| " + " | ".join(cells) + " |"

    for r in sorted(results, key=lambda r: r["distance"]["distance"]):
        lines.append(row(r["params"], r["simulated"], f"{r['distance']['distance']:.2f}"))
    if results:
        lines.append(row(None, results[0]["real"], "-"))
    return "\n".join(lines)


def record(results: list, path: Path) -> None:
    """Write the results of the default design as the record the book reads (TSV, one row per point).

    Columns: ``defaults`` (``before`` for :data:`PREVIOUS_DEFAULTS`, ``after`` for the current
    ``simulate.DEFAULTS``, else empty), the grid parameters, ``sim_<measure>`` and
    ``real_<measure>`` for :data:`RECORD_MEASURES`, ``distance``; sorted by distance.
    Read it with ``spineprint_utils.realdata.calibration_record``.
    """
    import pandas as pd

    rows = []
    now = {k: simulate.DEFAULTS[k] for k in GRID_PARAMS}
    for r in results:
        p = r["params"]
        if any(k in p for k in REAL_DESIGN if k not in GRID_PARAMS):
            continue  # the real data's design (--design real): not what the book shows
        mark = "before" if all(p[k] == v for k, v in PREVIOUS_DEFAULTS.items()) else (
            "after" if all(p[k] == v for k, v in now.items()) else "")
        rows.append({"defaults": mark, **{k: p[k] for k in GRID_PARAMS},
                     **{f"sim_{m}": round(r["simulated"][m], 4) for m in RECORD_MEASURES},
                     **{f"real_{m}": round(r["real"][m], 4) for m in RECORD_MEASURES},
                     "distance": round(r["distance"]["distance"], 4)})
    df = pd.DataFrame(rows).sort_values("distance", kind="stable")
    path.write_text(df.to_csv(sep="\t", index=False, lineterminator="\n"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in GRID_PARAMS:
        ap.add_argument("--" + name.replace("_", "-"), type=float, nargs="+", default=None,
                        help=f"value(s) of simulate parameter {name} (default: simulate.DEFAULTS)")
    ap.add_argument("--design", choices=("default", "real"), default="default",
                    help="default: the default study's design (as chapter 00); real: 15 subjects, 125 volumes, TR 1 s")
    ap.add_argument("--out", type=Path, default=None, help="JSON file the results are appended to (resumable)")
    ap.add_argument("--table", action="store_true", help="only print the table of the results in --out")
    ap.add_argument("--record", type=Path, default=None,
                    help="also write the default-design results as this TSV (the book's record: "
                         "spineprint_utils/data/simulator_calibration.tsv)")
    ap.add_argument("--n-jobs", type=int, default=1)
    args = ap.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out is not None and args.out.is_file() else []
    for r in results:  # written before a parameter joined GRID_PARAMS: it was at its previous default
        r["params"] = {**{k: v for k, v in PREVIOUS_DEFAULTS.items() if k not in r["params"]}, **r["params"]}
    if not args.table:
        base = dict(REAL_DESIGN) if args.design == "real" else {}
        axes = [[(name, v) for v in getattr(args, name)] for name in GRID_PARAMS if getattr(args, name) is not None]
        for combo in itertools.product(*axes) if axes else [()]:
            params = {**{k: simulate.DEFAULTS[k] for k in GRID_PARAMS}, **base}  # resolved: stays true if DEFAULTS change
            for name, v in combo:
                params[name] = int(v) if name == "n_volumes" else float(v)
            if any(r["params"] == params for r in results):
                continue
            res = evaluate(params, n_jobs=args.n_jobs)
            results.append(res)
            print(json.dumps({"params": params, "distance": res["distance"], "seconds": res["seconds"]}), flush=True)
            if args.out is not None:
                tmp = args.out.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(args.out)
    print(markdown(results))
    if args.record is not None:
        record(results, args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Within-session fingerprint of the default study with whole-run vs per-half nuisance cleaning.

Simulates the default study (``simulate.default_dataset()``, cached), preprocesses it twice
with the default pipeline - once as the book does (the cleaning fitted over the whole run),
once with ``clean_halves=True`` (the same cleaning fitted on each half of the run,
``preprocess_run(..., clean_halves=True)``) - extracts the PAM50 horn connectomes and computes
chapter 00's realism table (``realdata.realism_table``: identification and Idiff within and
between sessions, next to the real data's). Nothing of the simulator's ground truth is read.

Usage (from the repository root; about 4-8 min per cleaning on the 2-core machine)::

    SPINEPRINT_DATA_DIR=/work/shared/data SPINEPRINT_CACHE_DIR=/tmp/leakcache .venv/bin/python benchmarks/clean_halves_study.py --out /tmp/leak_bench
    # the same with the RETROICOR model of the chapter-5 sweeps (2/2, no interaction: 8 instead of 32)
    ... benchmarks/clean_halves_study.py --out /tmp/leak_bench2 \
        --preprocess '{"cardiac_order": 2, "respiratory_order": 2, "interaction_order": [0, 0]}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spineprint_utils import connectivity, datasets, preprocess, realdata, simulate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="scratch folder for the two derivative sets")
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--preprocess", type=json.loads, default={},
                    help='extra preprocess_run arguments as JSON, e.g. \'{"cardiac_order": 2, "respiratory_order": 2, '
                         '"interaction_order": [0, 0]}\'')
    args = ap.parse_args(argv)
    bids = simulate.default_dataset()
    sim_epi = realdata.epi_overview(sorted(bids.glob("sub-*/ses-*/func/*_bold.nii.gz"))[0])
    real_roi = datasets.fetch_spinal_graph_learning()
    real_epi = realdata.epi_overview(datasets.fetch_sct_testing_data() / "fmri" / "fmri.nii.gz")
    out = {}
    for name, halves in (("whole run", False), ("per half", True)):
        t0 = time.perf_counter()
        deriv = preprocess.preprocess_dataset(bids, args.out / name.replace(" ", "-"), progress=False,
                                              n_jobs=args.n_jobs, figures=False, clean_halves=halves,
                                              **args.preprocess)
        conn = connectivity.load_connectomes(connectivity.connectivity_dataset(deriv))
        s = realdata.realism_measures(realdata.realism_table(conn, sim_epi, real_roi, real_epi))
        out[name] = {"simulated": s["simulated"], "seconds": round(time.perf_counter() - t0, 1),
                     "n_regressors": float(preprocess.load_qc_table(deriv)["n_regressors"].mean()),
                     "dof_remaining": float(preprocess.load_qc_table(deriv)["dof_remaining"].mean())}
        out["real"] = s["real"]
    print(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

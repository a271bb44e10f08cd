"""The simulated default study against the real ROI series, in the real data's design.

The real spinal cord ROI series (``datasets.fetch_spinal_graph_learning``: 15 participants,
2 sessions, 125 volumes at TR 1 s) set the scale of a realistic fingerprint. This script
simulates the default study in that design (15 subjects, 125 volumes, TR 1 s; every other
parameter at its default unless given), runs the package's pipeline on it (preprocessing,
PAM50 horn connectivity) and prints identification and Idiff of the within-session (split
half) and between-session designs, beside the same numbers on the real horn regions (task
regressed out, as in chapter 00's realism table). It is how the defaults
``fingerprint_strength`` and ``session_strength`` were chosen (``benchmarks/README.md``).

Usage (from the repository root; about 8 minutes on the 2-core machine)::

    .venv/bin/python benchmarks/calibrate_simulator.py                       # current defaults
    .venv/bin/python benchmarks/calibrate_simulator.py --fingerprint-strength 0.4 --session-strength 0.8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spineprint_utils import connectivity, datasets, preprocess, realdata, simulate  # noqa: E402
from spineprint_utils import fingerprint as fp  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fingerprint-strength", type=float, default=None)
    ap.add_argument("--session-strength", type=float, default=None)
    args = ap.parse_args(argv)
    params = {"n_subjects": 15, "n_volumes": 125, "tr": 1.0}
    if args.fingerprint_strength is not None:
        params["fingerprint_strength"] = args.fingerprint_strength
    if args.session_strength is not None:
        params["session_strength"] = args.session_strength
    t0 = time.perf_counter()
    bids = simulate.default_dataset(**params)
    conn = connectivity.load_connectomes(connectivity.connectivity_dataset(preprocess.preprocess_dataset(bids)))
    real = realdata.connectomes(datasets.fetch_spinal_graph_learning(), regions="horns", regress=True)
    out = {"params": {k: simulate.DEFAULTS[k] if k not in params else params[k]
                      for k in ("fingerprint_strength", "session_strength", "tsnr")}}
    for label, c in (("simulated", conn), ("real horns", real)):
        out[label] = {name: {k: round(v, 2) for k, v in fp.identifiability_summary(d.fc_a, d.fc_b).items()}
                      for name, d in fp.designs_from_connectomes(c).items()}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

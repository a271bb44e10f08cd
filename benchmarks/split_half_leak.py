"""Split-half identifiability of pure noise after whole-run cleaning (why the within-session floor).

White Gaussian noise (no signal, no subject effect) for ``--subjects`` runs of ``--volumes``
volumes x ``--regions`` regions is (a) left as is, (b) band-passed 0.01-0.13 Hz at TR 2 s by
zeroing FFT coefficients over the whole run, (c) cleaned by ordinary least squares on
``--regressors`` random regressors fitted over the whole run. Each run is then split in halves
and the package's ``fingerprint.identifiability_summary`` compares the half-1 and half-2
connectomes. With independent halves, identification is at chance and Idiff near 0; a
cleaning fitted over the whole run makes the two halves' residuals depend on each other
(the off-diagonal block of the hat matrix), so their connectomes become alike.

Usage::

    .venv/bin/python benchmarks/split_half_leak.py                # 10 subjects, 150 x 24, 40 regressors
    .venv/bin/python benchmarks/split_half_leak.py --regressors 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spineprint_utils import fingerprint as fp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--volumes", type=int, default=150)
    ap.add_argument("--regions", type=int, default=24)
    ap.add_argument("--regressors", type=int, default=40)
    ap.add_argument("--tr", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    T, h = args.volumes, args.volumes // 2
    freqs = np.fft.rfftfreq(T, args.tr)
    keep = (freqs >= 0.01) & (freqs <= 0.13)

    def bandpass(e):
        f = np.fft.rfft(e, axis=0)
        f[~keep] = 0
        return np.fft.irfft(f, T, axis=0)

    def regress(e):
        x = rng.standard_normal((T, args.regressors))
        return e - x @ np.linalg.lstsq(x, e, rcond=None)[0]

    out = {}
    for name, clean in (("none", lambda e: e), ("band-pass", bandpass), (f"regress {args.regressors}", regress)):
        a, b = [], []
        for _ in range(args.subjects):
            e = clean(rng.standard_normal((T, args.regions)))
            a.append(np.corrcoef(e[:h].T))
            b.append(np.corrcoef(e[T - h:].T))
        s = fp.identifiability_summary(np.stack(a), np.stack(b))
        out[name] = {k: round(s[k], 2) for k in ("id_mean", "chance", "idiff")}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

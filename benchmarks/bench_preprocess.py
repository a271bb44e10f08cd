"""Benchmark of the preprocessing stage (spineprint_utils.preprocess).

Cases (each in a fresh subprocess, so the peak RSS is that of the case alone):

- ``default``: one run of the default simulated study (40 x 40 x 20 voxels x 200
  volumes, TR 2 s, physio at 100 Hz) end to end: slice-wise motion correction,
  RETROICOR (4, 4, (2, 2)), 5 aCompCor components, spikes, band-pass, QC figures.
  The first run of a process also builds the PAM50 tissue maps of the grid
  (cached afterwards); the script reports the run time with a warm cache and the
  cold first run.
- ``realsize``: a synthetic 128 x 128 x 16 voxels x 250 volumes run (TR 2.312 s,
  the Kaptan 2023 protocol size) with planted slice-wise motion and no physio
  recording (masks from the mean image), end to end.
- ``accuracy``: motion-estimation accuracy of each z-regularisation on a simulated
  run with a known motion (RMS error vs the truth, mm).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_preprocess.py            # all cases
    .venv/bin/python benchmarks/bench_preprocess.py --case default
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def case_default(tmp: Path) -> dict:
    from spineprint_utils import preprocess, simulate

    root = simulate.simulate_dataset(tmp / "bids", n_subjects=2, n_sessions=1)  # default per-run parameters
    bolds = sorted(root.glob("sub-*/ses-*/func/*_bold.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        preprocess.preprocess_run(bolds[0], tmp / "deriv")
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        res = preprocess.preprocess_run(bolds[1], tmp / "deriv")
        warm = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
    import nibabel as nib

    return {"case": "default", "shape": list(nib.load(bolds[1]).shape), "cold_s": round(cold, 2),
            "warm_s": round(warm, 2),
            "warm_cpu_s": round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 2), "peak_rss_mb": round(_peak_mb()), "qc": res["qc_row"]}


def case_realsize(tmp: Path) -> dict:
    import nibabel as nib
    from scipy import ndimage

    from spineprint_utils import preprocess

    rng = np.random.default_rng(0)
    X, Y, Z, T = 128, 128, 16, 250
    xx, yy = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    base = (400 + 600 * np.exp(-((xx - 64) ** 2 + (yy - 60) ** 2) / (2 * 6.0**2))
            - 250 * np.exp(-((xx - 64) ** 2 / (2 * 3.0**2) + (yy - 60) ** 2 / (2 * 2.0**2))))
    shifts = ndimage.gaussian_filter1d(np.cumsum(rng.normal(0, 0.1, (T, 2)), 0), 3, axis=0)
    data = np.empty((X, Y, Z, T), np.float32)
    for t in range(T):
        sl = ndimage.shift(base, shifts[t], order=1, mode="nearest")
        data[..., t] = sl[..., None]
    data += rng.normal(0, 20, data.shape).astype(np.float32)
    func = tmp / "bids" / "sub-big" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-big_task-rest_bold.nii.gz"
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.round(data).astype(np.int16), aff), bold)
    st = list(np.round(np.arange(Z) * 2.312 / Z, 4))
    (func / "sub-big_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.312, "SliceTiming": st}))
    del data
    # preprocess in a fresh process so that its peak RSS excludes making the input
    code = ("import json, sys, time, warnings, resource; warnings.simplefilter('ignore');"
            "from spineprint_utils import preprocess; t0 = time.perf_counter();"
            f"r = preprocess.preprocess_run({str(bold)!r}, {str(tmp / 'deriv')!r});"
            "ru = resource.getrusage(resource.RUSAGE_SELF);"
            "print(json.dumps({'seconds': round(time.perf_counter() - t0, 2), 'cpu_s': round(ru.ru_utime + ru.ru_stime, 2),"
            "'peak_rss_mb': round(ru.ru_maxrss / 1024), 'qc': r['qc_row']}, default=str))")
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"case": "realsize", "shape": [X, Y, Z, T], **res}


def case_accuracy(tmp: Path) -> dict:
    import nibabel as nib
    from scipy import ndimage

    from spineprint_utils import motion, simulate

    out = {"case": "accuracy"}
    root = simulate.simulate_dataset(tmp / "bids", n_subjects=3, n_sessions=1, n_volumes=200, motion_amplitude=0.4, tsnr=12.0)
    gt = simulate.load_ground_truth(root)
    cord = np.asarray(nib.load(gt["tissues"]["cord"]).dataobj) >= 0.5
    csf = np.asarray(nib.load(gt["tissues"]["csf"]).dataobj) >= 0.5
    mask = ndimage.binary_dilation(cord | csf, structure=np.ones((3, 3, 1), bool), iterations=3)
    for reg in ("none", "poly", "gaussian"):
        errs, trues = [], []
        for bold in sorted(root.glob("sub-*/ses-*/func/*_bold.nii.gz")):
            p = bold.name.replace("_bold.nii.gz", "")
            data = np.asarray(nib.load(bold).dataobj, dtype=np.float32)
            res = motion.motion_correct(data, mask, regularize=reg)
            true = gt["motion"][p].transpose(1, 0, 2)
            e = (res.shifts - res.shifts.mean(1, keepdims=True)) - (true - true.mean(1, keepdims=True))
            errs.append(np.mean(e**2))
            trues.append(np.mean((true - true.mean(1, keepdims=True)) ** 2))
        out[reg] = {"rms_error_mm": round(float(np.sqrt(np.mean(errs))), 4),
                    "true_rms_mm": round(float(np.sqrt(np.mean(trues))), 4)}
    return out


CASES = {"default": case_default, "realsize": case_realsize, "accuracy": case_accuracy}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES), default=None)
    args = ap.parse_args(argv)
    if args.case is None:  # every case in its own process
        for name in CASES:
            subprocess.run([sys.executable, __file__, "--case", name], check=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        res = CASES[args.case](Path(tmp))
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: finding the cord on the mean EPI (:func:`spineprint_utils.cord.find_cord`).

Target (issue 14): under 2 s per run of 128 x 128 x 24 voxels. The input is the real
SCT run's temporal mean (68 x 68 x 6, 0.96 mm in-plane) placed in a 128 x 128 field of
view (background: the real image's darkest decile plus noise), each of its six slices repeated
four times (24 slices, 5 mm apart); Dice against the reference annotation of the real run
on the original slices is reported too. Run from the repository root::

    SPINEPRINT_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_cord.py
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> int:
    from spineprint_utils import cord

    data_dir = Path(os.environ.get("SPINEPRINT_DATA_DIR", "../shared/data"))
    img = nib.load(data_dir / "sct_testing_data" / "fmri" / "fmri.nii.gz")
    mean = np.asarray(img.dataobj, dtype=np.float64).mean(axis=3)
    rng = np.random.default_rng(0)
    big = np.percentile(mean, 10) + rng.normal(0, 0.05 * mean.std(), (128, 128, 24))
    big[30:98, 30:98, :] = np.repeat(mean, 4, axis=2)
    vs = (float(img.header.get_zooms()[0]), float(img.header.get_zooms()[1]), 5.0)
    cord.find_cord(mean, img.header.get_zooms()[:3])  # warm imports
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        res = cord.find_cord(big, vs)
        times.append(time.perf_counter() - t0)
    ref = cord.load_reference_annotation(Path(__file__).parents[1] / "tests" / "data" /
                                         "sct_fmri_cord_annotation.txt", mean.shape)
    small = cord.find_cord(mean, img.header.get_zooms()[:3])
    out = {"shape": list(big.shape), "median_s": round(float(np.median(times)), 3), "max_s": round(max(times), 3),
           "failed_slices": res.failed_slices, "dice_real_vs_annotation": round(cord.dice(small.cord, ref), 3),
           "dice_tiled_vs_annotation": round(cord.dice(res.cord[30:98, 30:98, ::4], ref), 3),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(out, indent=1))
    print(f"find_cord 128x128x24: {out['median_s']} s (target < 2 s)", "met" if out["max_s"] < 2 else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: registration of one subject to PAM50 and distortion correction of one run.

Each task runs in its own child process, so the reported peak resident memory
(``ru_maxrss``) is that task's alone (the Python interpreter, numpy/scipy/dipy
imports included). Run from the repository root::

    .venv/bin/python benchmarks/bench_registration.py            # both tasks
    .venv/bin/python benchmarks/bench_registration.py --quick    # 50 volumes instead of 250

Tasks
-----
registration
    Real data: ``sct_testing_data/t2`` (T2w + manual cord segmentation, 60 x 55 x 52 at
    1 mm) -> PAM50 with :func:`spineprint_utils.registration.register_to_template`
    (cold process: PAM50 checksum verification and decompression included), then the
    real ``sct_testing_data/fmri`` mean volume -> T2w with
    :func:`~spineprint_utils.registration.register_func_to_anat` (timing only: the two
    images are not known to be from one session), then the four PAM50 horn maps to the
    functional grid (:func:`~spineprint_utils.registration.atlas_to_native`).
distortion
    A simulated run with the ds004386 geometry (128 x 128 x 24 voxels of 1 x 1 x 5 mm,
    250 volumes, ``PhaseEncodingDirection`` j-, ``TotalReadoutTime`` 0.059 s) and a planted
    B0 field, written as BIDS with its j/j- fieldmap pair (not timed); timed: reading and
    validating the pair, estimating the field (Chang & Fitzpatrick) and correcting and
    saving the 250 volumes. Accuracy: displacement error and correlation with the
    undistorted image. Peak memory is reported after the correction and after saving
    (``_io.atomic_save_nifti`` serialises the whole image in memory with ``to_bytes``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def task_registration() -> dict:
    import nibabel as nib
    import numpy as np

    from spineprint_utils import registration as R
    from spineprint_utils._io import data_dir

    root = data_dir()
    if root is None:
        raise SystemExit("set SPINEPRINT_DATA_DIR (e.g. ../shared/data)")
    t2 = root / "sct_testing_data" / "t2"
    t0 = time.perf_counter()
    reg = R.register_to_template(t2 / "t2.nii.gz", t2 / "t2_seg-manual.nii.gz")
    t_reg = time.perf_counter() - t0
    fmri = nib.load(str(root / "sct_testing_data" / "fmri" / "fmri.nii.gz"))
    mean = nib.Nifti1Image(np.asarray(fmri.dataobj, dtype=np.float32).mean(axis=3), fmri.affine)
    t1 = time.perf_counter()
    f2a = R.register_func_to_anat(mean, t2 / "t2.nii.gz", cord_mask=t2 / "t2_seg-manual.nii.gz")
    t_f2a = time.perf_counter() - t1
    t2_ = time.perf_counter()
    for h in (30, 31, 34, 35):
        R.atlas_to_native(reg.template_dir / "atlas" / f"PAM50_atlas_{h}.nii.gz", reg, mean, func_to_anat=f2a,
                          interpolation="linear")
    t_atlas = time.perf_counter() - t2_
    return {"task": "registration", "register_to_template_s": t_reg, "func_to_anat_s": t_f2a,
            "atlas_to_func_4_horns_s": t_atlas, "total_s": time.perf_counter() - t0,
            "dice_cord": reg.dice, "dice_cord_affine_only": reg.dice_affine, "z_method": reg.z_method,
            "steps_s": reg.timings, "peak_rss_mb": _peak_mb()}


def _phantom(shape, rng):
    import numpy as np
    from scipy.ndimage import gaussian_filter

    x, y, _ = np.indices(shape)
    r2 = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2
    body = np.clip((np.minimum(y, shape[1] - 1 - y) - 10) / 6, 0, 1) * np.clip((np.minimum(x, shape[0] - 1 - x) - 10) / 6, 0, 1)
    img = (40 * np.exp(-r2 / 900) + 60 * ((r2 > 30) & (r2 < 100)) + 30 * gaussian_filter(rng.random(shape), 2)) * body
    return gaussian_filter(img, (0.7, 0.7, 0)), r2 <= 30


def task_make_run(out: str, n_volumes: int) -> dict:
    import nibabel as nib
    import numpy as np

    from spineprint_utils import distortion as D
    from spineprint_utils._io import atomic_save_nifti, atomic_write_json

    rng = np.random.default_rng(0)
    shape, trt = (128, 128, 24), 0.0590553
    aff = np.diag([1.0, 1.0, 5.0, 1.0])
    img, cord = _phantom(shape, rng)
    field = D.simulate_b0_field(shape, aff, cord, peak_hz=20, seed=1)
    root = Path(out)
    D.write_fieldmap_pair(root / "sub-01" / "fmap", "sub-01", nib.Nifti1Image(img.astype(np.float32), aff), field, trt,
                          intended_for=["func/sub-01_task-rest_bold.nii.gz"], noise_sigma=1.0, seed=2)
    dist = D.distort(img, field, 1, trt, "j-").astype(np.float32)
    bold = np.empty(shape + (n_volumes,), dtype=np.float32)
    for t in range(n_volumes):
        bold[..., t] = dist * (1 + 0.01 * rng.standard_normal()) + rng.normal(0, 2.0, shape).astype(np.float32)
    atomic_save_nifti(nib.Nifti1Image(bold, aff), root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    atomic_write_json(root / "sub-01" / "func" / "sub-01_task-rest_bold.json",
                      {"PhaseEncodingDirection": "j-", "TotalReadoutTime": trt, "RepetitionTime": 2.312})
    np.savez(root / "truth.npz", img=img, field=field)
    return {"task": "make_run", "peak_rss_mb": _peak_mb()}


def task_distortion(out: str) -> dict:
    import nibabel as nib
    import numpy as np

    from spineprint_utils import distortion as D
    from spineprint_utils._io import atomic_save_nifti

    root = Path(out)
    bold_path = root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    t0 = time.perf_counter()
    pair = D.read_fieldmap_pair(root / "sub-01" / "fmap", bold=bold_path)
    bold = nib.load(str(bold_path))
    t_read = time.perf_counter()
    corrected, field_est = D.correct_run(bold, pair, bold_direction="j-")
    t_corr = time.perf_counter()
    peak_corr = _peak_mb()
    atomic_save_nifti(corrected, root / "sub-01_desc-sdc_bold.nii.gz")
    t_end = time.perf_counter()
    truth = np.load(root / "truth.npz")
    img, field = truth["img"], truth["field"]
    signal = img > 0.3 * img.max()
    trt = pair.total_readout_time
    err_vox = np.abs(field_est - field)[signal] * trt
    raw0 = np.asarray(bold.dataobj[..., 0], dtype=np.float64)
    cor0 = np.asarray(corrected.dataobj[..., 0], dtype=np.float64)
    r = lambda a: float(np.corrcoef(a[signal], img[signal])[0, 1])  # noqa: E731
    return {"task": "distortion", "shape": list(bold.shape), "read_validate_s": t_read - t0,
            "estimate_and_correct_s": t_corr - t_read, "save_s": t_end - t_corr, "total_s": t_end - t0,
            "true_displacement_mean_abs_vox": float(np.abs(field[signal]).mean() * trt),
            "displacement_error_mean_vox": float(err_vox.mean()),
            "displacement_error_p95_vox": float(np.percentile(err_vox, 95)),
            "corr_raw": r(raw0), "corr_corrected": r(cor0), "peak_rss_mb_load_and_correct": peak_corr,
            "peak_rss_mb": _peak_mb()}


def _child(*args) -> dict:
    env = dict(os.environ)
    env.setdefault("SPINEPRINT_DATA_DIR", str((ROOT / ".." / "shared" / "data").resolve()))
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"task {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 volumes instead of 250")
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--volumes", type=int, default=250, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.task == "registration":
        print(json.dumps(task_registration()))
        return 0
    if args.task == "make_run":
        print(json.dumps(task_make_run(args.out, args.volumes)))
        return 0
    if args.task == "distortion":
        print(json.dumps(task_distortion(args.out)))
        return 0
    results = [_child("--task", "registration")]
    with tempfile.TemporaryDirectory(prefix="spineprint-bench-") as tmp:
        _child("--task", "make_run", "--out", tmp, "--volumes", str(50 if args.quick else 250))
        results.append(_child("--task", "distortion", "--out", tmp))
    for res in results:
        print(json.dumps(res, indent=1, sort_keys=True))
    for res in results:
        peaks = {k: v for k, v in res.items() if k.startswith("peak_rss_mb")}
        ok = res["total_s"] < 60 and all(v < 1500 for v in peaks.values())
        print(f"{res['task']}: {res['total_s']:.1f} s, peak {peaks} MB -> target (< 60 s, < 1500 MB)",
              "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

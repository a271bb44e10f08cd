"""Benchmark: registration engine for T2w -> PAM50, dipy SyN (ours) vs ANTs SyN (antspyx).

Both engines get the same problem: the real ``sct_testing_data/t2`` T2w cord segmentation and
the PAM50 cord, placed along z by the vertebral labels (``t2/labels.nii.gz``, C3/C5 body
centres) and aligned by the closed-form moments affine of
:func:`spineprint_utils.registration.register_to_template`, both masks smoothed by 1 mm on the
same cropped template-space grid. Only the deformable step differs:

- **dipy**: ``SymmetricDiffeomorphicRegistration`` with the cross-correlation metric (radius 2,
  ``sigma_diff`` 3, iterations 50/30/10), as in ``register_to_template``;
- **ANTs** (antspyx): ``ants.registration(type_of_transform="SyNOnly")``, cross-correlation
  metric (``syn_metric="CC"``, radius 2), iterations 50/30/10, the ANTs defaults otherwise
  (gradient step 0.2, flow sigma 3, total sigma 0).

Reported per engine: wall time and peak RSS of the deformable step (each in a fresh process),
cord Dice after the step, and the distance (mm) between the labelled C3/C5 body centres and the
centres of the PAM50 levels 3/5 brought onto the T2w through the result.

antspyx needs numpy < 2.4 and scipy < 1.16, so it runs in its own environment (the shared
one is not downgraded)::

    python -m venv .venv-ants && .venv-ants/bin/pip install antspyx 'numpy<2.4' 'scipy<1.16' nibabel
    SPINEPRINT_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_engine.py --ants-python .venv-ants/bin/python
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

import numpy as np

ITERS = (50, 30, 10)


def prepare(tmp: Path) -> dict:
    """Static/moving masks on the working grid + the affine (main environment)."""
    import nibabel as nib

    from spineprint_utils import registration as R

    data = Path(os.environ.get("SPINEPRINT_DATA_DIR", "../shared/data")) / "sct_testing_data" / "t2"
    reg = R.register_to_template(data / "t2.nii.gz", data / "t2_seg-manual.nii.gz", levels_img=data / "labels.nii.gz",
                                 syn_iterations=(1,))  # only the affine part is used
    seg_img = nib.load(str(data / "t2_seg-manual.nii.gz"))
    ref = reg.reference
    zooms = np.abs(np.diag(ref.affine)[:3])
    seg = (np.asarray(seg_img.dataobj) > 0.5).astype(np.float32)
    mov_native = nib.Nifti1Image(R._smooth(seg, 1.0, seg_img.header.get_zooms()[:3]).astype(np.float32), seg_img.affine)
    moving = np.asarray(R.apply_transforms(mov_native, ref, [R.AffineTransform(reg.affine)]).dataobj)
    tcord = R._load_template_img(reg.template_dir, "PAM50_cord.nii.gz")
    static = R._smooth(np.asarray(R.apply_transforms(tcord, ref, []).dataobj), 1.0, zooms)
    nib.save(nib.Nifti1Image(static.astype(np.float32), ref.affine), tmp / "static.nii.gz")
    nib.save(nib.Nifti1Image(moving.astype(np.float32), ref.affine), tmp / "moving.nii.gz")
    np.save(tmp / "affine.npy", reg.affine)
    return {"grid": list(ref.shape), "voxel_mm": zooms.tolist()}


def run_dipy(tmp: Path) -> dict:
    import nibabel as nib
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    st, mv = nib.load(str(tmp / "static.nii.gz")), nib.load(str(tmp / "moving.nii.gz"))
    t0, c0 = time.perf_counter(), _cpu()
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, sigma_diff=3.0, radius=2), level_iters=list(ITERS))
    mapping = sdr.optimize(np.asarray(st.dataobj), np.asarray(mv.dataobj), st.affine, st.affine)
    secs, cpu = time.perf_counter() - t0, _cpu() - c0
    np.save(tmp / "dipy_fwd.npy", np.asarray(mapping.get_forward_field(), np.float32))
    np.save(tmp / "dipy_bwd.npy", np.asarray(mapping.get_backward_field(), np.float32))
    return {"seconds": round(secs, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_ants(tmp: Path) -> dict:
    import ants
    import nibabel as nib

    st = ants.image_read(str(tmp / "static.nii.gz"))
    mv = ants.image_read(str(tmp / "moving.nii.gz"))
    t0, c0 = time.perf_counter(), _cpu()
    out = ants.registration(fixed=st, moving=mv, type_of_transform="SyNOnly", syn_metric="CC", syn_sampling=2,
                            reg_iterations=ITERS, outprefix=str(tmp / "ants_"))
    secs, cpu = time.perf_counter() - t0, _cpu() - c0
    # fwdtransforms[0]: warp moving -> fixed (maps fixed points to moving points); invtransforms[-1]: inverse
    fwd = [p for p in out["fwdtransforms"] if p.endswith("Warp.nii.gz")][0]
    inv = [p for p in out["invtransforms"] if p.endswith("InverseWarp.nii.gz")][0]
    for name, path in (("ants_fwd", fwd), ("ants_bwd", inv)):
        img = nib.load(path)
        v = np.asarray(img.dataobj, np.float32).reshape(img.shape[:3] + (3,))
        np.save(tmp / f"{name}.npy", v * np.array([-1.0, -1.0, 1.0], np.float32))  # LPS -> RAS
    return {"seconds": round(secs, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "antspyx": ants.__version__, "itk_threads": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "default")}


def evaluate(tmp: Path, engine: str) -> dict:
    import nibabel as nib

    from spineprint_utils import levels as L
    from spineprint_utils import registration as R

    data = Path(os.environ.get("SPINEPRINT_DATA_DIR", "../shared/data")) / "sct_testing_data" / "t2"
    st = nib.load(str(tmp / "static.nii.gz"))
    A = np.load(tmp / "affine.npy")
    fwd = np.load(tmp / f"{engine}_fwd.npy")
    bwd = np.load(tmp / f"{engine}_bwd.npy")
    # dipy: forward field maps static (template) points towards moving points, as our to_template
    to_template = [R.DisplacementField(fwd, st.affine), R.AffineTransform(A)]
    to_native = [R.AffineTransform(np.linalg.inv(A)), R.DisplacementField(bwd, st.affine)]
    seg = nib.load(str(data / "t2_seg-manual.nii.gz"))
    warped = np.asarray(R.apply_transforms(nib.Nifti1Image((np.asarray(seg.dataobj) > 0.5).astype(np.float32), seg.affine),
                                           st, to_template).dataobj) > 0.5
    tc = np.asarray(st.dataobj) > 0.5
    cov = np.nonzero(warped.any((0, 1)))[0]
    sl = slice(cov[0] + 1, cov[-1]) if len(cov) > 2 else slice(None)
    d = R.dice(warped[:, :, sl], tc[:, :, sl])
    t2 = nib.load(str(data / "t2.nii.gz"))
    from spineprint_utils.datasets import fetch_pam50

    lev = np.asarray(R.apply_transforms(fetch_pam50() / "template" / "PAM50_levels.nii.gz", t2, to_native,
                                        "nearest").dataobj)
    c = L.level_centres(lev, t2.affine)
    pts = L.label_points(nib.load(str(data / "labels.nii.gz")))
    back = np.asarray(R.apply_transforms(R._load_template_img(fetch_pam50(), "PAM50_cord.nii.gz"), seg, to_native).dataobj) > 0.5
    return {"cord_dice_template": round(d, 3), "cord_dice_native": round(R.dice(back, np.asarray(seg.dataobj) > 0.5), 3),
            "level_error_mm": {str(v): round(c[v] - z, 2) for v, z in pts.items() if v in c}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ants-python", default=".venv-ants/bin/python")
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.task:
        fn = {"prepare": prepare, "dipy": run_dipy, "ants": run_ants}[args.task]
        print(json.dumps(fn(Path(args.tmp))))
        return 0
    here = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryDirectory(prefix="spineprint-engine-") as tmp:
        def child(py, task):
            out = subprocess.run([py, here, "--task", task, "--tmp", tmp], check=True, capture_output=True, text=True,
                                 env=env)
            return json.loads(out.stdout.strip().splitlines()[-1])

        res = {"problem": child(sys.executable, "prepare")}
        res["dipy"] = {**child(sys.executable, "dipy"), **evaluate(Path(tmp), "dipy")}
        if Path(args.ants_python).exists():
            res["ants"] = {**child(args.ants_python, "ants"), **evaluate(Path(tmp), "ants")}
        else:
            res["ants"] = f"not run: {args.ants_python} not found"
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

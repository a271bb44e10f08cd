"""A corpus of small datasets with the REAL layouts and sidecars of the OpenNeuro datasets the
book names (``../shared/data/openneuro``), and small synthetic images of the shapes those
sidecars state.

- ``ds004386`` (Kaptan et al. 2023): no session level, two runs per subject that differ only
  by ``acq-autozshim`` / ``acq-manualzshim``, a top-level ``task-rest_bold.json`` (inherited),
  ``.bidsignore``, no raw physio; 24 slices (its ``SliceTiming``), TR 2.312 s;
- ``ds005883`` (CoSpine pain): one run per subject, physio split in
  ``_recording-pulse_physio`` / ``_recording-respiratory_physio`` (400 Hz, PMU ``StartTime``
  on the scanner's day clock, a trigger column), fieldmap sidecars; 70 slices, TR 2.68 s;
- ``ds005884`` (CoSpine motor): ``task-motorL`` / ``task-motorR`` runs, split physio.

Every JSON file is copied byte for byte from the real dataset (the sidecars are the test of
truth). What is synthetic: the images (a small in-plane field of view, the number of slices,
slice thickness and TR of the sidecar, in PAM50 space so that the horn regions exist without a
registration step: the one addition to the real metadata is ``SpatialReference: PAM50`` in
``dataset_description.json``), and the physio tables (pulse, belt and one trigger pulse per
volume, laid out as the real sidecars' ``Columns`` say).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

OPENNEURO = Path(os.environ.get("SPINEPRINT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "openneuro"

#: per dataset: subjects to take (real labels) and the runs (file prefixes without sub-) per subject
LAYOUTS = {
    "ds004386": {"subjects": ("ZS001", "ZS002"), "runs": ("task-rest_acq-autozshim", "task-rest_acq-manualzshim")},
    "ds005883": {"subjects": ("02", "04"), "runs": ("task-pain",)},
    "ds005884": {"subjects": ("02", "03"), "runs": ("task-motorL", "task-motorR")},
}


def _copy_text(src_root: Path, dst_root: Path, rel: str) -> Path:
    src, dst = src_root / rel, dst_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


@functools.lru_cache(maxsize=8)
def _grid(n_slices: int, thickness: float, inplane=(1.5, 1.5), fov=(24.0, 21.0)):
    """A PAM50-space axial grid centred on the cord at C5, ``n_slices`` x ``thickness`` mm."""
    from spineprint_utils import atlas

    aff, shape = atlas.pam50_epi_grid(voxel_size=(inplane[0], inplane[1], thickness), fov_mm=fov)
    centre = aff[:3, :3] @ ((np.asarray(shape) - 1) / 2) + aff[:3, 3]
    new = aff.copy()
    new[:3, 3] = centre - aff[:3, :3] @ ((np.array([shape[0], shape[1], n_slices]) - 1) / 2)
    return new, (shape[0], shape[1], n_slices)


_MAPS = {}


def _maps(affine, shape):
    from spineprint_utils import atlas

    key = (affine.tobytes(), shape)
    if key not in _MAPS:
        _MAPS[key] = atlas.tissue_maps(affine, shape)
    return _MAPS[key]


def _bold(affine, shape, n_volumes, tr, seed):
    """Tissue contrast of a T2*-weighted EPI (CSF bright, cord grey) plus region-correlated
    fluctuations and thermal noise; TR in the header."""
    rng = np.random.default_rng(seed)
    maps = _maps(affine, shape)
    base = 150.0 + 500.0 * maps["csf"] + 300.0 * maps["cord"]
    slow = rng.standard_normal((6, n_volumes))
    z = np.arange(shape[2])
    weights = rng.standard_normal((shape[0], shape[1], 1, 6)) * 0.5 + np.sin(z[None, None, :, None] / 3.0 + np.arange(6))
    signal = np.einsum("xyzk,kt->xyzt", np.broadcast_to(weights, shape + (6,)), slow)
    data = base[..., None] * (1.0 + 0.02 * signal) + rng.normal(0, 8.0, shape + (n_volumes,))
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_zooms(tuple(float(v) for v in np.abs(np.diag(affine))[:3]) + (float(tr),))
    img.header.set_xyzt_units("mm", "sec")
    return img


def _physio_tables(n_volumes: float, tr: float, fs: float, lead_s: float, seed: int):
    """Pulse, respiration and trigger sampled at *fs* from *lead_s* s before the first volume."""
    rng = np.random.default_rng(seed)
    dur = lead_s + n_volumes * tr + 5.0
    t = np.arange(int(dur * fs)) / fs - lead_s
    hr = 1.1 + 0.05 * rng.standard_normal()
    beats = np.cumsum(np.full(int(dur * hr) + 5, 1.0 / hr) + 0.02 * rng.standard_normal(int(dur * hr) + 5)) - lead_s
    pulse = np.zeros_like(t)
    for b in beats:
        sel = np.abs(t - b) < 0.4
        pulse[sel] += np.exp(-0.5 * ((t[sel] - b) / 0.08) ** 2)
    resp = np.sin(2 * np.pi * 0.27 * t + rng.uniform(0, 2 * np.pi)) + 0.05 * rng.standard_normal(t.size)
    trig = np.zeros_like(t)
    for j in range(int(n_volumes)):
        k = int(round((j * tr + lead_s) * fs))
        trig[k:k + 4] = 1.0
    return pulse, resp, trig


def _write_tsv_gz(path: Path, columns):
    import pandas as pd

    # integer samples, as the Siemens PMU writes them (a.u.; trigger 0/1)
    ints = np.column_stack([np.rint(np.asarray(c) * (1 if np.ptp(c) <= 1 and set(np.unique(c)) <= {0, 1} else 1000))
                            for c in columns]).astype(np.int64)
    text = pd.DataFrame(ints).to_csv(sep="\t", header=False, index=False)
    with gzip.GzipFile(path, "wb", mtime=0, compresslevel=1) as fh:
        fh.write(text.encode())


def make_dataset(name: str, dest, *, n_volumes: int = 60, subjects=None, physio: bool = True,
                 uncompressed: bool = False, seed: int = 0) -> Path:
    """Write one small dataset with the real layout and sidecars of OpenNeuro *name* to *dest*."""
    src = OPENNEURO / name
    dest = Path(dest)
    spec = LAYOUTS[name]
    subjects = subjects or spec["subjects"]
    for rel in ("dataset_description.json", "participants.tsv", ".bidsignore", "task-rest_bold.json",
                "README", "README.md"):
        if (src / rel).is_file():
            _copy_text(src, dest, rel)
    desc = json.loads((dest / "dataset_description.json").read_text(encoding="utf-8-sig"))
    desc["SpatialReference"] = "PAM50"  # the one addition: the synthetic images are in PAM50 space
    (dest / "dataset_description.json").write_text(json.dumps(desc, indent=2))
    for i, sub in enumerate(subjects):
        func = f"sub-{sub}/func"
        for j, run in enumerate(spec["runs"]):
            bold_json = _copy_text(src, dest, f"{func}/sub-{sub}_{run}_bold.json")
            meta = json.loads(bold_json.read_text(encoding="utf-8-sig"))
            tr = float(meta.get("RepetitionTime") or json.loads((src / "task-rest_bold.json").read_text())
                       ["RepetitionTime"])
            n_slices = len(meta["SliceTiming"])
            affine, shape = _grid(n_slices, float(meta.get("SliceThickness", 5.0)))
            img = _bold(affine, shape, n_volumes, tr, seed + 100 * i + j)
            ext = ".nii" if uncompressed else ".nii.gz"
            nib.save(img, str(dest / func / f"sub-{sub}_{run}_bold{ext}"))
            for rec in ("pulse", "respiratory"):
                rel = f"{func}/sub-{sub}_{run}_recording-{rec}_physio.json"
                if not physio or not (src / rel).is_file():
                    continue
                pmeta = json.loads((src / rel).read_text(encoding="utf-8-sig"))
                _copy_text(src, dest, rel)
                fs = float(pmeta["SamplingFrequency"])
                pulse, resp, trig = _physio_tables(n_volumes, tr, fs, 8.0 if rec == "pulse" else 11.4,
                                                   seed + 10 * i + j)
                cols = {"PULS": pulse, "RESP": resp, "Trigger": trig}
                _write_tsv_gz(dest / rel.replace(".json", ".tsv.gz"), [cols[c] for c in pmeta["Columns"]])
        fmap_src = src / f"sub-{sub}" / "fmap"
        if fmap_src.is_dir():  # real fieldmap sidecars (text only: no fieldmap image, so no correction)
            for p in sorted(fmap_src.glob("*_epi.json")):
                _copy_text(src, dest, f"sub-{sub}/fmap/{p.name}")
    return dest


def make_corpus(dest, **kw) -> dict:
    """All three layouts under *dest* (``{name: path}``)."""
    return {name: make_dataset(name, Path(dest) / name, **kw) for name in LAYOUTS}


# ------------------------------------------------------------------ native space
SCT = Path(os.environ.get("SPINEPRINT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "sct_testing_data"


def _native_grid(t2w, seg, voxel=(1.2, 1.2, 4.0), fov=(30.0, 30.0)):
    """An axial EPI grid (RAS) of *voxel* mm centred in-plane on the cord of *seg*, covering the
    T2w's superior-inferior extent."""
    data = np.asarray(seg.dataobj) > 0.5
    ijk = np.argwhere(data)
    centre = nib.affines.apply_affine(seg.affine, ijk.mean(0))
    corners = np.array([[i, j, k] for i in (0, t2w.shape[0] - 1) for j in (0, t2w.shape[1] - 1)
                        for k in (0, t2w.shape[2] - 1)])
    world = nib.affines.apply_affine(t2w.affine, corners)
    zmin, zmax = world[:, 2].min(), world[:, 2].max()
    shape = (int(round(fov[0] / voxel[0])), int(round(fov[1] / voxel[1])), int((zmax - zmin) // voxel[2]))
    affine = np.diag([voxel[0], voxel[1], voxel[2], 1.0])
    affine[:3, 3] = [centre[0] - voxel[0] * (shape[0] - 1) / 2, centre[1] - voxel[1] * (shape[1] - 1) / 2,
                     zmin + voxel[2] / 2]
    return affine, shape


def make_native_dataset(dest, *, subjects=("01", "02"), runs=("1", "2"), n_volumes: int = 60, seed: int = 0) -> Path:
    """A native-space dataset laid out as book/own_data.md describes, without sessions.

    Per participant: the REAL T2w of the Spinal Cord Toolbox testing data
    (``$SPINEPRINT_DATA_DIR/sct_testing_data/t2``, MIT) as ``anat/sub-X_T2w.nii.gz``, its real
    manual cord segmentation as ``derivatives/manual/sub-X/anat/sub-X_T2w_label-SC_seg.nii.gz``
    and its real C3/C5 vertebral labels as ``derivatives/labels/.../sub-X_T2w_labels.nii.gz``
    (copied into *dest*, never written in the source); two resting-state runs ``run-1``,
    ``run-2`` per participant (no session level) on an axial 1.2 x 1.2 x 4 mm EPI grid in the
    T2w's world space whose tissue contrast is the real T2w resampled (CSF bright, cord grey),
    with region-correlated fluctuations and thermal noise (synthetic); TR 2 s in a top-level
    ``task-rest_bold.json`` (inherited; no ``SliceTiming``, so no slice-wise model is asked).
    """
    from nibabel.processing import resample_from_to

    dest = Path(dest)
    t2w = nib.load(str(SCT / "t2" / "t2.nii.gz"))
    seg = nib.load(str(SCT / "t2" / "t2_seg-manual.nii.gz"))
    affine, shape = _native_grid(t2w, seg)
    base = np.asarray(resample_from_to(t2w, (shape, affine), order=1).dataobj, dtype=np.float64)
    base = 100.0 + 800.0 * base / np.percentile(base[base > 0], 99)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dataset_description.json").write_text(json.dumps(
        {"Name": "native-space test dataset (real SCT T2w anatomy, synthetic BOLD)", "BIDSVersion": "1.9.0",
         "DatasetType": "raw"}, indent=1))
    (dest / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"}, indent=1))
    for i, sub in enumerate(subjects):
        anat = dest / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCT / "t2" / "t2.nii.gz", anat / f"sub-{sub}_T2w.nii.gz")
        for folder, src, name in (("manual", "t2_seg-manual.nii.gz", "T2w_label-SC_seg"),
                                  ("labels", "labels.nii.gz", "T2w_labels")):
            d = dest / "derivatives" / folder / f"sub-{sub}" / "anat"
            d.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SCT / "t2" / src, d / f"sub-{sub}_{name}.nii.gz")
        func = dest / f"sub-{sub}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        for j, run in enumerate(runs):
            rng = np.random.default_rng(seed + 100 * i + j)
            slow = rng.standard_normal((6, n_volumes))
            z = np.arange(shape[2])
            weights = (rng.standard_normal((shape[0], shape[1], 1, 6)) * 0.5
                       + np.sin(z[None, None, :, None] / 3.0 + np.arange(6) + i))
            signal = np.einsum("xyzk,kt->xyzt", np.broadcast_to(weights, shape + (6,)), slow)
            data = base[..., None] * (1.0 + 0.02 * signal) + rng.normal(0, 8.0, shape + (n_volumes,))
            img = nib.Nifti1Image(data.astype(np.float32), affine)
            img.header.set_zooms(tuple(float(v) for v in np.abs(np.diag(affine))[:3]) + (2.0,))
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(func / f"sub-{sub}_task-rest_run-{run}_bold.nii.gz"))
    return dest

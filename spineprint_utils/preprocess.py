"""Preprocessing of spinal cord BOLD runs into BIDS derivatives (chapter 2).

One run (:func:`preprocess_run`):

1. read the BOLD series (4D, finite) and its sidecar (``RepetitionTime``
   required; ``SliceTiming`` optional, volume onsets are used without it);
2. cord and CSF masks: given images, else the PAM50 tissue maps on the run's grid
   (:func:`spineprint_utils.atlas.tissue_maps`, thresholded at 0.5) when the run
   is in PAM50 space, else masks from the mean image
   (:func:`spineprint_utils.motion.auto_cord_mask`: a 10 mm disk around the
   bright spinal canal; CSF = the brightest 25 % of the disk);
3. slice-wise motion correction (:mod:`spineprint_utils.motion`) estimated in the
   cord + CSF mask dilated by 3 voxels in-plane (the cord and CSF edges carry the
   registration signal; a cord-only mask lets Gauss-Newton drift);
4. physiological noise model: slice-specific RETROICOR regressors
   (:mod:`spineprint_utils.physio`) when the run has a physio recording, else the
   run is processed without it and this is written in the confounds JSON
   (``PhysiologicalModel``) and the QC table (``physio_model_applied = no``);
5. CSF principal components (aCompCor), spike regressors for volumes with FD above
   a threshold, slice-wise motion parameters;
6. slice-wise regression of all regressors together with the band-pass filter
   (:func:`spineprint_utils.denoise.slicewise_regression`);
7. tSNR maps before and after, the percentage of cord variance each model
   explains, QC figures.

Outputs (``<prefix>`` = raw name without ``_bold.nii.gz``), under
``derivatives/spineprint/sub-<s>/[ses-<e>/]func/``:

- ``<prefix>_desc-preproc_bold.nii.gz`` (+ ``.json``: TR, slice timing, steps)
- ``<prefix>_desc-confounds_timeseries.tsv`` + ``.json`` (one entry per column,
  plus ``PhysiologicalModel``)
- ``<prefix>_desc-motion_timeseries.tsv`` (``x_sliceNN``/``y_sliceNN`` mm and
  ``framewise_displacement``)
- ``<prefix>_desc-tsnrpre_boldmap.nii.gz``, ``<prefix>_desc-tsnrpost_boldmap.nii.gz``
  (temporal mean / temporal SD, before any processing and after cleaning)
- ``<prefix>_desc-cord_mask.nii.gz``, ``<prefix>_desc-csf_mask.nii.gz``
- ``<prefix>_desc-qc_metrics.json``: the run's QC row and parameters, written
  **last** (the completion marker: a run with it and the same parameters is skipped
  unless ``overwrite``; different parameters recompute the run)
- ``figures/<prefix>_desc-motion_qc.png``, ``figures/<prefix>_desc-tsnr_qc.png`` and,
  when the physiological model was applied, ``figures/<prefix>_desc-physio_qc.png``

and dataset-level ``dataset_description.json`` and ``qc.tsv``. If a run fails,
every file it wrote is removed: no partial derivative is left behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from . import __version__, denoise, motion
from . import motion as motion_mod
from ._io import (SpineprintError, atomic_save_nifti, atomic_write_json, atomic_write_text, check_label,
                  load_nifti, read_json)
from .parallel import parallel_map

__all__ = [
    "RUN_DEFAULTS",
    "find_bold_runs",
    "run_prefix",
    "run_outputs",
    "preprocess_run",
    "preprocess_dataset",
    "load_qc_table",
    "run_masks",
    "estimation_mask",
    "tsnr",
    "register_cli",
]

#: default parameters of :func:`preprocess_run` (the notebook's parameters)
RUN_DEFAULTS = {
    "motion": True,
    "motion_regularize": motion.REGULARIZE_DEFAULT,
    "motion_reference": "mean",
    "physio": True,
    "cardiac_order": 4,
    "respiratory_order": 4,
    "interaction_order": (2, 2),
    "n_csf_components": 5,
    "spike_threshold": 0.5,
    "motion_regressors": True,
    "high_pass": 0.01,
    "low_pass": 0.13,
    "strategy": denoise.STRATEGY_DEFAULT,
}

QC_COLUMNS = [
    "run", "subject", "session", "n_volumes", "tr_s", "tsnr_pre_cord", "tsnr_post_cord", "mean_fd_mm", "max_fd_mm",
    "n_spikes", "heart_rate_bpm", "respiratory_rate_bpm", "physio_model_applied", "physio_model",
    "var_motion_pct", "var_physio_pct", "var_csf_pct", "var_spikes_pct", "var_filter_pct", "var_total_pct",
    "n_regressors", "dof_remaining", "mask_source", "runtime_s",
]

_BOLD_SUFFIX = "_bold.nii.gz"


# ---------------------------------------------------------------- BIDS helpers
def run_prefix(bold_path) -> str:
    """BIDS prefix of a BOLD file: its name without ``_bold.nii[.gz]``."""
    name = Path(bold_path).name
    for suf in (_BOLD_SUFFIX, "_bold.nii", ".nii.gz", ".nii"):
        if name.endswith(suf):
            return name[: -len(suf)]
    raise SpineprintError(f"{bold_path}: not a NIfTI BOLD file name")


def _entities(prefix: str) -> dict:
    return dict(re.findall(r"([a-zA-Z]+)-([a-zA-Z0-9]+)", prefix))


def _bids_root(bold_path: Path) -> Path | None:
    for parent in bold_path.parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return None


def find_bold_runs(bids_dir, participants=None) -> list[Path]:
    """All ``sub-*/[ses-*/]func/*_bold.nii.gz`` of a BIDS dataset, sorted.

    Parameters
    ----------
    bids_dir : path-like
    participants : sequence of str, optional
        Participant labels (with or without ``sub-``) to keep.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise SpineprintError(f"{bids_dir}: BIDS folder not found")
    runs = sorted(p for p in bids_dir.glob("sub-*/**/func/*" + _BOLD_SUFFIX) if "derivatives" not in p.parts)
    if participants:
        keep = {check_label(p, "sub") for p in participants}
        found = {_entities(run_prefix(p)).get("sub") for p in runs}
        missing = sorted(keep - found)
        if missing:
            raise SpineprintError(f"{bids_dir}: participant(s) {', '.join(missing)} not found")
        runs = [p for p in runs if _entities(run_prefix(p)).get("sub") in keep]
    if not runs:
        raise SpineprintError(f"{bids_dir}: no BOLD runs (sub-*/[ses-*/]func/*_bold.nii.gz) found")
    return runs


def run_outputs(bold_path, output_dir) -> dict:
    """Output paths of one run (see the module docstring)."""
    bold_path = Path(bold_path)
    output_dir = Path(output_dir)
    root = _bids_root(bold_path)
    folder = output_dir / bold_path.parent.relative_to(root) if root is not None else output_dir
    p = run_prefix(bold_path)
    fig = output_dir / "figures"
    return {
        "preproc": folder / f"{p}_desc-preproc_bold.nii.gz",
        "preproc_json": folder / f"{p}_desc-preproc_bold.json",
        "confounds": folder / f"{p}_desc-confounds_timeseries.tsv",
        "confounds_json": folder / f"{p}_desc-confounds_timeseries.json",
        "motion": folder / f"{p}_desc-motion_timeseries.tsv",
        "tsnr_pre": folder / f"{p}_desc-tsnrpre_boldmap.nii.gz",
        "tsnr_post": folder / f"{p}_desc-tsnrpost_boldmap.nii.gz",
        "cord_mask": folder / f"{p}_desc-cord_mask.nii.gz",
        "csf_mask": folder / f"{p}_desc-csf_mask.nii.gz",
        "fig_motion": fig / f"{p}_desc-motion_qc.png",
        "fig_tsnr": fig / f"{p}_desc-tsnr_qc.png",
        "fig_physio": fig / f"{p}_desc-physio_qc.png",
        "qc": folder / f"{p}_desc-qc_metrics.json",
    }


def tsnr(data, axis=-1) -> np.ndarray:
    """Temporal SNR: temporal mean / temporal standard deviation (0 where SD is 0).

    As ``sct_fmri_compute_tsnr`` (De Leener et al. 2017), without detrending.
    """
    data = np.asarray(data)
    if axis not in (-1, data.ndim - 1):
        data = np.moveaxis(data, axis, -1)
    flat = data.reshape(-1, data.shape[-1])
    out = np.zeros(flat.shape[0], dtype=np.float32)
    step = 65536  # voxels per chunk: bounded float64 temporaries
    for a in range(0, flat.shape[0], step):
        block = np.asarray(flat[a:a + step], dtype=np.float64)
        mean = block.mean(axis=1)
        sd = block.std(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[a:a + step] = np.where(sd > 0, mean / sd, 0.0)
    return out.reshape(data.shape[:-1])


# ---------------------------------------------------------------- masks
@functools.lru_cache(maxsize=8)
def _tissue_maps_cached(affine_bytes: bytes, shape: tuple, source: str):
    """:func:`spineprint_utils.atlas.tissue_maps`, cached in memory and on disk.

    Building the maps from the 0.5 mm PAM50 takes seconds per process; every run of
    a study shares its grid, so the maps are kept in
    ``cache_dir("tissue_maps")/<hash>.npz`` (keyed by grid, anatomy source and
    package version), which also serves parallel workers.
    """
    import hashlib

    from . import atlas
    from ._io import atomic_save_npz, cache_dir

    affine = np.frombuffer(affine_bytes).reshape(4, 4)
    kind, _ = atlas.pam50_source(source)
    key = hashlib.sha256(affine_bytes + repr((tuple(shape), kind, __version__)).encode()).hexdigest()[:16]
    path = cache_dir("tissue_maps") / f"{key}.npz"
    if path.is_file():
        with contextlib.suppress(Exception), np.load(path) as z:
            maps = {k: z[k] for k in z.files if k != "source"}
            maps["source"] = str(z["source"])
            return maps
    maps = atlas.tissue_maps(affine, shape, source=source)
    with contextlib.suppress(OSError):
        atomic_save_npz(path, source=np.array(maps["source"]),
                        **{k: v for k, v in maps.items() if k != "source"})
    return maps


def _atlas_source(bold_path: Path, meta: dict) -> str | None:
    """Anatomy source for :func:`spineprint_utils.atlas.tissue_maps` if the run is in
    PAM50 space, else None.

    A run is in PAM50 space if its name carries ``space-PAM50``, its sidecar or
    ``dataset_description.json`` says so (``SpatialReference``/``Space`` mentioning
    PAM50) -> ``"auto"``; or it is a spineprint simulation
    (``derivatives/groundtruth/params.json`` with ``"space": "PAM50"``) -> the
    anatomy it was simulated with (``"pam50"`` or ``"phantom"``).
    """
    root = _bids_root(bold_path)
    if root is not None and (root / "derivatives" / "groundtruth" / "params.json").is_file():
        with contextlib.suppress(SpineprintError):
            info = read_json(root / "derivatives" / "groundtruth" / "params.json")
            if str(info.get("space", "")) == "PAM50":
                return str(info.get("params", {}).get("anatomy", "auto"))
    if "space-PAM50" in bold_path.name:
        return "auto"
    for key in ("SpatialReference", "Space", "space"):
        if "pam50" in str(meta.get(key, "")).lower():
            return "auto"
    if root is not None and (root / "dataset_description.json").is_file():
        with contextlib.suppress(SpineprintError):
            desc = read_json(root / "dataset_description.json")
            for key in ("SpatialReference", "Space"):
                if "pam50" in str(desc.get(key, "")).lower():
                    return "auto"
    return None


def _load_mask(path, shape, what, affine=None):
    img, m = load_nifti(path, ndim=3)
    if m.shape != shape:
        raise SpineprintError(f"{path}: {what} mask shape {m.shape} does not match the BOLD grid {shape}")
    if affine is not None and not np.allclose(img.affine, affine, atol=1e-3):
        raise SpineprintError(f"{path}: {what} mask affine differs from the BOLD affine (same shape, other position "
                              "or voxel size); resample the mask to the run")
    return m > 0.5


def _masks(bold_path, meta, img, mean_img, mask_img, csf_mask_img, anatomy):
    shape = mean_img.shape
    vs = img.header.get_zooms()[:2]
    cord = _load_mask(mask_img, shape, "cord", img.affine) if mask_img is not None else None
    csf = _load_mask(csf_mask_img, shape, "CSF", img.affine) if csf_mask_img is not None else None
    source = "given"
    if cord is None or csf is None:
        if anatomy not in ("auto", "atlas", "image"):
            raise SpineprintError(f"anatomy must be 'auto', 'atlas' or 'image', got {anatomy!r}")
        src = _atlas_source(bold_path, meta) if anatomy != "image" else None
        if anatomy == "atlas" and src is None:
            src = "auto"
        if src is not None:
            maps = _tissue_maps_cached(np.asarray(img.affine, dtype=np.float64).tobytes(), tuple(shape), src)
            cord = maps["cord"] >= 0.5 if cord is None else cord
            csf = maps["csf"] >= 0.5 if csf is None else csf
            source = f"atlas ({maps.get('source', 'pam50')})"
            if not cord.any():
                raise SpineprintError(f"{bold_path}: the PAM50 cord mask is empty on this grid; is the run really "
                                      "in PAM50 space? Pass mask_img/csf_mask_img or anatomy='image'")
        else:
            disk = motion.auto_cord_mask(mean_img, vs)
            if cord is None:
                cord = disk
            if csf is None:
                # CSF is the brightest tissue of the spinal canal in T2*-weighted EPI
                vals = mean_img[disk]
                csf = disk & (mean_img >= np.percentile(vals, 75))
            source = "mean image (auto disk)"
    return cord, csf, source


def estimation_mask(cord, csf, dilation: int = 3) -> np.ndarray:
    """Motion-estimation mask: cord + CSF dilated by *dilation* voxels in-plane.

    The cord/CSF and CSF/tissue edges carry the registration signal (a cord-only
    mask lets Gauss-Newton drift); the Spinal Cord Toolbox likewise uses a
    cylinder around the cord (De Leener et al. 2017).
    """
    m = np.asarray(cord, bool) | np.asarray(csf, bool)
    if dilation <= 0:
        return m
    return ndimage.binary_dilation(m, structure=np.ones((3, 3, 1), bool), iterations=int(dilation))


def run_masks(bold_path, *, mask_img=None, csf_mask_img=None, anatomy: str = "auto"):
    """Cord and CSF masks of a run, as :func:`preprocess_run` makes them.

    Returns
    -------
    cord, csf : ndarray (X, Y, Z) bool
    source : str
        ``"given"``, ``"atlas (pam50|phantom)"`` or ``"mean image (auto disk)"``.
    """
    bold_path = Path(bold_path)
    meta, _, _, _ = _read_meta(bold_path, 1.0, None)
    img, data = load_nifti(bold_path, ndim=4)
    return _masks(bold_path, meta, img, data.mean(axis=3), mask_img, csf_mask_img, anatomy)


# ---------------------------------------------------------------- one run
def _read_meta(bold_path: Path, repetition_time, slice_timing):
    sidecar = Path(str(bold_path)[: -len(".nii.gz")] + ".json") if str(bold_path).endswith(".nii.gz") else \
        bold_path.with_suffix(".json")
    meta = read_json(sidecar) if sidecar.is_file() else {}
    tr = repetition_time if repetition_time is not None else meta.get("RepetitionTime")
    if tr is None:
        raise SpineprintError(f"{sidecar}: RepetitionTime missing (sidecar {'found' if meta else 'not found'}); "
                              "it is required for filtering and the physiological model")
    try:
        tr = float(tr)
    except (TypeError, ValueError):
        raise SpineprintError(f"{sidecar}: RepetitionTime {tr!r} is not a number") from None
    if not (np.isfinite(tr) and tr > 0):
        raise SpineprintError(f"{sidecar}: RepetitionTime must be positive, got {tr}")
    st = slice_timing if slice_timing is not None else meta.get("SliceTiming")
    return meta, tr, st, sidecar


def _check_slice_timing(st, n_slices, sidecar, notes, tr=None):
    if st is None:
        msg = f"{sidecar}: SliceTiming missing; the physiological model uses the volume onset for every slice"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
        return np.zeros(n_slices), False
    st = np.asarray(st, dtype=float).ravel()
    if st.size != n_slices:
        raise SpineprintError(f"{sidecar}: SliceTiming has {st.size} entries but the image has {n_slices} slices")
    if tr is not None and (not np.all(np.isfinite(st)) or st.min() < 0 or st.max() >= tr):
        raise SpineprintError(f"{sidecar}: SliceTiming values must lie in [0, TR = {tr:g} s), found {st.min():g} "
                              f"to {st.max():g}")
    return st, True


def _physio_model(bold_path, data_shape, tr, st, params, notes):
    """RETROICOR slice regressors or (None, reason). Raises on a broken physio file."""
    Z, T = data_shape[2], data_shape[3]
    if not params["physio"]:
        return None, [], "none: disabled by the user", {}
    try:
        from . import physio
    except ImportError:  # pragma: no cover - the module ships with the package
        return None, [], "none: physio module unavailable", {}
    path = physio.find_physio(bold_path)
    if path is None:
        msg = f"{bold_path.name}: no physio file found; processed WITHOUT the physiological noise model"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
        return None, [], "none: no physio file found", {}
    rec = physio.load_physio(path)
    regs, names = physio.slice_regressors(rec, T, tr, st, cardiac_order=params["cardiac_order"],
                                          respiratory_order=params["respiratory_order"],
                                          interaction_order=tuple(params["interaction_order"]))
    regs = np.asarray(regs, dtype=np.float64)
    if regs.shape[:2] != (Z, T):
        raise SpineprintError(f"{path}: physiological regressors have shape {regs.shape}, expected ({Z}, {T}, P)")
    summary = physio.physio_summary(rec, T, tr)
    summary["_recording"] = rec
    desc = (f"RETROICOR (Glover 2000) with cardiac x respiratory interactions (Harvey 2008), slice-wise "
            f"(Brooks 2008): cardiac order {params['cardiac_order']}, respiratory order "
            f"{params['respiratory_order']}, interaction order {list(params['interaction_order'])}, "
            f"{regs.shape[2]} regressors per slice, from {path.name}")
    return regs, list(names), desc, summary


def _save_nifti_fast(img, path) -> Path:
    """Like :func:`spineprint_utils._io.atomic_save_nifti` (atomic, gzip mtime 0: same
    bytes for the same image) but with gzip level 1: the float32 4D output of a
    real-size run compresses ~5x faster than at level 6 for a few % more bytes."""
    import gzip

    from ._io import atomic_write

    data = img.to_bytes()
    with atomic_write(path, "wb") as fh:
        with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=1) as gz:
            gz.write(data)
    return Path(path)


def _nifti_like(img, data, dtype=np.float32):
    import nibabel as nib

    hdr = img.header.copy()
    hdr.set_data_dtype(dtype)
    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), img.affine, hdr)
    out.header.set_slope_inter(None, None)
    return out


def _physio_figure(rec, path, title, seconds: float = 30.0):
    """QC figure: the first *seconds* of the cardiac trace with the detected beats, and
    the respiratory trace."""
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend

    from . import physio

    fs = rec.sampling_frequency
    n = min(rec.n_samples, int(seconds * fs))
    t = np.arange(n) / fs
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    if rec.cardiac is not None:
        peaks, q = physio.detect_cardiac_peaks(rec.cardiac, fs)
        pk = peaks[peaks < n]
        axes[0].plot(t, rec.cardiac[:n], lw=0.7)
        axes[0].plot(pk / fs, rec.cardiac[pk], "o", ms=3, color="tab:red")
        axes[0].set_title(f"cardiac: {q.get('mean_hr_bpm', float('nan')):.0f} bpm, "
                          f"{q.get('n_missing_beats', 0)} missed beat(s)", fontsize=8)
    if rec.respiratory is not None:
        axes[1].plot(t, rec.respiratory[:n], lw=0.7, color="tab:green")
        axes[1].set_title("respiratory belt", fontsize=8)
    axes[1].set_xlabel("time since the first physio sample (s)")
    fig.suptitle(title, fontsize=9)
    motion._save_fig(fig, path)


def _tsnr_figure(pre, post, cord, path, title):
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend

    z = int(np.argmax(cord.sum(axis=(0, 1))))
    vmax = float(np.percentile(post[cord], 99)) if cord.any() else float(post.max())
    fig = Figure(figsize=(6, 3), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, im, lab in zip(axes, (pre, post), ("tSNR before", "tSNR after")):
        h = ax.imshow(im[:, :, z].T, origin="lower", cmap="inferno", vmin=0, vmax=vmax)
        ax.contour(cord[:, :, z].T.astype(float), levels=[0.5], colors="c", linewidths=0.6)
        ax.set_title(f"{lab} (slice {z})", fontsize=9)
        ax.axis("off")
    fig.colorbar(h, ax=axes, shrink=0.8)
    fig.suptitle(title, fontsize=9)
    motion._save_fig(fig, path)


def preprocess_run(bold_path, output_dir, *, motion=True, physio=True, motion_regularize=None,
                   motion_reference="mean", cardiac_order=4, respiratory_order=4, interaction_order=(2, 2),
                   n_csf_components=5, spike_threshold=0.5, motion_regressors=True, high_pass=0.01, low_pass=0.13,
                   strategy=denoise.STRATEGY_DEFAULT, mask_img=None, csf_mask_img=None, anatomy="auto", repetition_time=None, slice_timing=None,
                   figures=True, overwrite=False) -> dict:
    """Preprocess one BOLD run into BIDS derivatives.

    Parameters
    ----------
    bold_path : path-like
        ``..._bold.nii.gz`` (read only, never modified).
    output_dir : path-like
        Derivatives folder (e.g. ``<bids>/derivatives/spineprint``); the run's
        ``sub-/ses-/func`` sub-folders are recreated inside.
    motion : bool
        Slice-wise motion correction (:func:`spineprint_utils.motion.motion_correct`).
    physio : bool
        Use the RETROICOR model when the run has a physio recording.
    motion_regularize : {"poly", "gaussian", "none"}, optional
        z-regularisation (default :data:`spineprint_utils.motion.REGULARIZE_DEFAULT`).
    motion_reference : {"mean", "median"} or int
    cardiac_order, respiratory_order, interaction_order
        RETROICOR orders (Glover 2000; Harvey 2008).
    n_csf_components : int
        aCompCor components (Behzadi 2007); 0 disables.
    spike_threshold : float or None
        FD (mm) above which a volume gets a spike regressor; None disables.
    motion_regressors : bool
        Regress the slice-wise motion parameters.
    high_pass, low_pass : float or None
        Band-pass cut-offs (Hz).
    strategy : {"sequential", "simultaneous"}
        Regression then band-pass, or both at once (see
        :func:`spineprint_utils.denoise.slicewise_regression`).
    mask_img, csf_mask_img : path-like, optional
        Cord and CSF masks on the BOLD grid.
    anatomy : {"auto", "atlas", "image"}
        Mask source when not given: PAM50 tissue maps ("atlas"; "auto" when the run
        is in PAM50 space) or the mean image.
    repetition_time, slice_timing : optional
        Override the sidecar's ``RepetitionTime`` / ``SliceTiming``.
    figures : bool
        Write the QC figures.
    overwrite : bool
        Recompute even if the run's completion marker exists.

    Returns
    -------
    dict
        Output paths (see :func:`run_outputs`) and ``"qc_row"`` (the run's QC dict)
        and ``"skipped"`` (True when the outputs already existed).

    Raises
    ------
    SpineprintError
        NaN/infinite BOLD values, a BOLD that is not 4D, a missing RepetitionTime,
        a SliceTiming of the wrong length, a broken or too short physio recording,
        masks of the wrong shape. Nothing is left in *output_dir* for that run.
    """
    t_start = time.perf_counter()
    bold_path = Path(bold_path)
    outs = run_outputs(bold_path, output_dir)
    params = {
        "motion": bool(motion), "motion_regularize": motion_regularize or motion_mod.REGULARIZE_DEFAULT,
        "motion_reference": motion_reference, "physio": bool(physio), "cardiac_order": int(cardiac_order),
        "respiratory_order": int(respiratory_order), "interaction_order": [int(i) for i in interaction_order],
        "n_csf_components": int(n_csf_components), "spike_threshold": spike_threshold,
        "motion_regressors": bool(motion_regressors), "high_pass": high_pass, "low_pass": low_pass,
        "strategy": strategy,
    }
    params_key = json.loads(json.dumps({**params, "mask_img": str(mask_img), "csf_mask_img": str(csf_mask_img),
                                        "anatomy": anatomy, "repetition_time": repetition_time,
                                        "slice_timing": slice_timing}, default=str))
    if outs["qc"].is_file() and not overwrite and all(p.is_file() for k, p in outs.items()
                                                       if (not k.startswith("fig_") or figures)
                                                       and k != "fig_physio"):
        row = read_json(outs["qc"])
        if row.get("parameters") == params_key:  # same settings: reuse (resumable)
            return {**outs, "qc_row": row, "skipped": True}
    notes: list[str] = []
    # ---- validate every input before writing anything
    meta, tr, st, sidecar = _read_meta(bold_path, repetition_time, slice_timing)
    img, data = load_nifti(bold_path, ndim=4, finite=True)
    X, Y, Z, T = data.shape
    if T < 10:
        raise SpineprintError(f"{bold_path}: only {T} volumes; need at least 10")
    st, has_st = _check_slice_timing(st, Z, sidecar, notes, tr)
    hp, lp, bp_notes = (denoise.check_bandpass(tr, high_pass, low_pass) if (high_pass or low_pass)
                        else (None, None, []))
    notes += bp_notes
    need = denoise.filter_min_volumes(tr, hp, lp)
    if T < need:
        msg = (f"{bold_path.name}: band-pass filter NOT applied: {T} volumes are too few for the zero-phase "
               f"Butterworth filter (needs {need})")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
        hp = lp = None
    with warnings.catch_warnings(record=True) as caught:  # physio quality warnings go into the notes too
        warnings.simplefilter("always")
        phys_regs, phys_names, phys_desc, phys_summary = _physio_model(bold_path, data.shape, tr, st, params, notes)
    for w in caught:
        if str(w.message) not in notes:
            notes.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    mean_raw = data.mean(axis=3)
    cord, csf, mask_source = _masks(bold_path, meta, img, mean_raw, mask_img, csf_mask_img, anatomy)
    vs = img.header.get_zooms()[:2]
    # ---- processing
    tsnr_pre = tsnr(data)
    if params["motion"]:
        # estimation mask: cord + CSF dilated by 3 voxels in-plane, so that the cord/CSF and CSF/tissue
        # edges drive the registration (SCT uses a cylinder around the cord)
        est_mask = estimation_mask(cord, csf)
        mres = motion_mod.motion_correct(data, est_mask, reference=motion_reference,
                                         regularize=params["motion_regularize"], voxel_size=vs)
        moco, shifts_mm, fd = mres.corrected, mres.shifts * np.asarray(vs, float), mres.fd
    else:
        moco, shifts_mm, fd = data.astype(np.float32), np.zeros((Z, T, 2)), np.zeros(T)
    del data
    motion_table = motion_mod.params_table(shifts_mm)
    motion_table["framewise_displacement"] = fd
    n_csf = params["n_csf_components"]
    n_csf_vox = int(np.count_nonzero(moco[csf].std(axis=-1) > 0)) if csf.any() else 0
    if n_csf > 0 and n_csf > min(T, n_csf_vox) - 1:
        new = max(min(T, n_csf_vox) - 1, 0)
        notes.append(f"aCompCor: only {n_csf_vox} CSF voxels; {new} components instead of {n_csf}")
        n_csf = new
    csf_comps, csf_expl = (denoise.acompcor(moco, csf, n_csf, return_variance=True) if n_csf > 0
                           else (np.zeros((T, 0)), np.zeros(0)))
    spikes = denoise.spike_regressors(fd, spike_threshold)
    dv = denoise.dvars(moco, cord)
    motion_design = shifts_mm if (params["motion_regressors"] and params["motion"]) else np.zeros((Z, T, 0))
    phys_design = phys_regs if phys_regs is not None else np.zeros((Z, T, 0))
    slice_design = np.concatenate([motion_design, phys_design], axis=2)
    shared = np.hstack([csf_comps, spikes])
    n_reg = slice_design.shape[2] + shared.shape[1]
    dof = denoise.effective_dof(T, tr, hp, lp, n_reg if strategy == "simultaneous" else 0)
    if strategy == "sequential":
        dof = min(dof, T - 2.0 - n_reg)
    if dof < max(10.0, 0.1 * T):
        msg = (f"{bold_path.name}: only {dof:.0f} degrees of freedom left after the band-pass and {n_reg} "
               f"regressors ({T} volumes): the cleaned signal is unreliable; use fewer regressors or a longer run")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    clean = denoise.slicewise_regression(moco, slice_design, shared, t_r=tr, high_pass=hp, low_pass=lp,
                                         strategy=strategy)
    tsnr_post = tsnr(clean)
    var = denoise.variance_removed(moco, cord, {"motion": motion_design, "physio": phys_design, "csf": csf_comps,
                                                "spikes": spikes}, t_r=tr, high_pass=hp, low_pass=lp,
                                   cleaned=clean)
    # ---- tables
    conf = {}
    conf_desc = {}
    for k in range(csf_comps.shape[1]):
        conf[f"csf_comp{k:02d}"] = csf_comps[:, k]
        conf_desc[f"csf_comp{k:02d}"] = {"Description": f"aCompCor (Behzadi 2007) principal component {k} of the "
                                         f"CSF mask ({csf_expl[k] * 100:.1f}% of CSF variance)"}
    for k in range(spikes.shape[1]):
        vol = int(np.flatnonzero(spikes[:, k])[0])
        conf[f"spike{k:02d}"] = spikes[:, k]
        conf_desc[f"spike{k:02d}"] = {"Description": f"spike regressor for volume {vol} (FD > {spike_threshold} mm)"}
    if motion_design.shape[2]:
        for z in range(Z):
            for a, lab in enumerate("xy"):
                conf[f"trans_{lab}_slice{z:02d}"] = shifts_mm[z, :, a]
                conf_desc[f"trans_{lab}_slice{z:02d}"] = {
                    "Description": f"slice-wise {lab} translation of slice {z} (mm), regressed from slice {z} only",
                    "Units": "mm"}
    for z in range(Z):
        for p in range(phys_design.shape[2]):
            name = phys_names[p] if p < len(phys_names) else f"r{p:02d}"
            col = f"physio_{name}_slice{z:02d}"
            conf[col] = phys_design[z, :, p]
            conf_desc[col] = {"Description": f"RETROICOR regressor {name} sampled at the acquisition time of slice "
                              f"{z}, regressed from slice {z} only"}
    conf["framewise_displacement"] = fd
    conf_desc["framewise_displacement"] = {"Description": "Power 2012 FD from slice-averaged in-plane translations "
                                           "(not regressed)", "Units": "mm"}
    conf["dvars"] = dv
    conf_desc["dvars"] = {"Description": "DVARS (Power 2012) in the cord mask after motion correction "
                          "(not regressed)"}
    conf_df = pd.DataFrame(conf)
    applied = phys_regs is not None
    conf_json = {
        **conf_desc,
        "PhysiologicalModel": phys_desc,
        "PhysiologicalModelApplied": applied,
        "Filter": {"Type": "order-5 zero-phase Butterworth band-pass (as nilearn.signal.clean)",
                   "HighPass": hp, "LowPass": lp,
                   "Strategy": ("regression on the full bandwidth, then band-pass of the residuals"
                                if strategy == "sequential" else
                                "band-pass of data and regressors, then regression (Lindquist 2019)")}
        if (hp or lp) else "none",
        "Notes": notes,
    }
    ents = _entities(run_prefix(bold_path))
    row = {
        "run": run_prefix(bold_path), "subject": ents.get("sub", ""), "session": ents.get("ses", ""),
        "n_volumes": T, "tr_s": tr,
        "tsnr_pre_cord": float(tsnr_pre[cord].mean()) if cord.any() else float("nan"),
        "tsnr_post_cord": float(tsnr_post[cord].mean()) if cord.any() else float("nan"),
        "mean_fd_mm": float(fd[1:].mean()) if T > 1 else 0.0, "max_fd_mm": float(fd.max()),
        "n_spikes": int(spikes.shape[1]),
        "heart_rate_bpm": float(phys_summary.get("heart_rate_bpm", float("nan"))) if applied else float("nan"),
        "respiratory_rate_bpm": float(phys_summary.get("respiratory_rate_bpm", float("nan"))) if applied
        else float("nan"),
        "physio_model_applied": "yes" if applied else "no", "physio_model": phys_desc,
        **{f"var_{k}_pct": float(v) for k, v in var.items()},
        "n_regressors": int(n_reg), "dof_remaining": float(dof),
        "mask_source": mask_source,
    }
    # ---- write (all or nothing)
    written = []

    def _w(key, fn, *args):
        fn(*args)
        written.append(outs[key])

    try:
        preproc_meta = {"RepetitionTime": tr, "SkullStripped": False, "Sources": [str(bold_path.name)],
                        "SpineprintVersion": __version__, "Parameters": params, "Notes": notes,
                        "PhysiologicalModel": phys_desc}
        if has_st:
            preproc_meta["SliceTiming"] = [float(s) for s in st]
        _w("preproc", _save_nifti_fast, _nifti_like(img, clean), outs["preproc"])
        _w("preproc_json", atomic_write_json, outs["preproc_json"], preproc_meta)
        _w("confounds", atomic_write_text, outs["confounds"], conf_df.to_csv(sep="\t", index=False, na_rep="n/a"))
        _w("confounds_json", atomic_write_json, outs["confounds_json"], conf_json)
        _w("motion", atomic_write_text, outs["motion"], motion_table.to_csv(sep="\t", index=False))
        _w("tsnr_pre", atomic_save_nifti, _nifti_like(img.slicer[..., 0], tsnr_pre), outs["tsnr_pre"])
        _w("tsnr_post", atomic_save_nifti, _nifti_like(img.slicer[..., 0], tsnr_post), outs["tsnr_post"])
        _w("cord_mask", atomic_save_nifti, _nifti_like(img.slicer[..., 0], cord, np.uint8), outs["cord_mask"])
        _w("csf_mask", atomic_save_nifti, _nifti_like(img.slicer[..., 0], csf, np.uint8), outs["csf_mask"])
        if figures:
            import matplotlib.pyplot as plt

            fig = motion_mod.plot_motion(motion_table.drop(columns="framewise_displacement"), fd,
                                         title=f"{row['run']}: slice-wise motion", path=outs["fig_motion"])
            plt.close(fig)
            written.append(outs["fig_motion"])
            _w("fig_tsnr", _tsnr_figure, tsnr_pre, tsnr_post, cord, outs["fig_tsnr"], row["run"])
            if applied:
                _w("fig_physio", _physio_figure, phys_summary["_recording"], outs["fig_physio"], row["run"])
        row["runtime_s"] = round(time.perf_counter() - t_start, 2)
        row["parameters"] = params_key
        _w("qc", atomic_write_json, outs["qc"], row)  # completion marker, last
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return {**outs, "qc_row": row, "skipped": False}



# ---------------------------------------------------------------- dataset
def _run_one(bold_path, output_dir, params):
    out = preprocess_run(bold_path, output_dir, **params)
    return out["qc_row"]


def load_qc_table(deriv_dir) -> pd.DataFrame:
    """Dataset-level QC table from the runs' ``_desc-qc_metrics.json`` markers (sorted by run)."""
    deriv_dir = Path(deriv_dir)
    rows = [read_json(p) for p in sorted(deriv_dir.glob("sub-*/**/*_desc-qc_metrics.json"))]
    rows += [read_json(p) for p in sorted(deriv_dir.glob("*_desc-qc_metrics.json"))]
    df = pd.DataFrame(rows)
    for col in QC_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=float)
    return df[QC_COLUMNS].sort_values("run", kind="stable").reset_index(drop=True) if len(df) else df[QC_COLUMNS]


def preprocess_dataset(bids_dir, output_dir=None, participants=None, n_jobs: int = 1, scheduler=None,
                       progress: bool = True, **run_params) -> Path:
    """Preprocess every BOLD run of a BIDS dataset (resumable).

    Parameters
    ----------
    bids_dir : path-like
    output_dir : path-like, optional
        Default ``<bids_dir>/derivatives/spineprint``.
    participants : sequence of str, optional
    n_jobs, scheduler : see :func:`spineprint_utils.parallel.parallel_map`
    progress : bool
    **run_params
        Passed to :func:`preprocess_run` (see :data:`RUN_DEFAULTS`).

    Returns
    -------
    Path
        The derivatives folder, holding ``dataset_description.json`` and ``qc.tsv``.
    """
    bids_dir = Path(bids_dir)
    runs = find_bold_runs(bids_dir, participants)
    out = Path(output_dir) if output_dir is not None else bids_dir / "derivatives" / "spineprint"
    params = {**RUN_DEFAULTS, **run_params}
    params["interaction_order"] = list(params["interaction_order"])
    name = "spineprint preprocessing"
    src = bids_dir / "dataset_description.json"
    if src.is_file():
        name = f"{read_json(src).get('Name', bids_dir.name)} - spineprint preprocessing"
    desc = {
        "Name": name, "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "spineprint", "Version": __version__,
                         "Description": "slice-wise motion correction, RETROICOR, aCompCor, spikes, band-pass",
                         "Parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}}],
    }
    atomic_write_json(out / "dataset_description.json", desc)
    parallel_map(functools.partial(_run_one, output_dir=out, params=params), runs, n_jobs=n_jobs,
                 scheduler=scheduler, desc="preprocess", progress=progress)
    qc = load_qc_table(out)
    atomic_write_text(out / "qc.tsv", qc.to_csv(sep="\t", index=False, na_rep="n/a"))
    return out


# ---------------------------------------------------------------- CLI
def _cli(args) -> int:
    params = {}
    if args.no_physio:
        params["physio"] = False
    if args.no_motion:
        params["motion"] = False
    out = preprocess_dataset(args.bids_dir, args.out, participants=args.participant_label, n_jobs=args.n_jobs,
                             scheduler=args.scheduler, **params)
    qc = load_qc_table(out)
    print(f"preprocessed {len(qc)} run(s) into {out}")
    print(f"QC table: {out / 'qc.tsv'}")
    no_phys = qc.loc[qc["physio_model_applied"] == "no", "run"].tolist()
    if no_phys:
        print(f"WARNING: no physiological noise model for {len(no_phys)} run(s): {', '.join(no_phys)}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``spineprint preprocess BIDS_DIR [--out DIR] [--participant-label ...] [--n-jobs N] [--scheduler ADDR]``."""
    p = subparsers.add_parser("preprocess", help="slice-wise motion correction, physio/CSF denoising, QC",
                              description="Preprocess every BOLD run of a BIDS dataset into "
                                          "derivatives/spineprint (resumable).")
    p.add_argument("bids_dir", metavar="BIDS_DIR")
    p.add_argument("--out", default=None, help="derivatives folder (default BIDS_DIR/derivatives/spineprint)")
    p.add_argument("--participant-label", nargs="+", default=None, help="participants to process")
    p.add_argument("--n-jobs", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (default $DASK_SCHEDULER_ADDRESS)")
    p.add_argument("--no-physio", action="store_true", help="skip the physiological noise model")
    p.add_argument("--no-motion", action="store_true", help="skip motion correction")
    p.set_defaults(func=_cli)

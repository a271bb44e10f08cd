"""Preprocessing of spinal cord BOLD runs into BIDS derivatives (chapter 2).

One run (:func:`preprocess_run`):

1. read the BOLD series (4D, finite) and its sidecar (``RepetitionTime``
   required; ``SliceTiming`` optional, volume onsets are used without it);
1b. susceptibility distortion correction of the raw series when the session has a
   reverse phase-encoding pair (``fmap/*_epi``; Chang & Fitzpatrick 1992,
   :mod:`spineprint_utils.distortion`), before motion correction; a pair with bad
   metadata is a recorded skip (QC column ``distortion_correction``, JSON
   ``DistortionCorrection``, a warning);
2. cord and CSF masks: given images, else the PAM50 tissue maps on the run's grid
   (:func:`spineprint_utils.atlas.tissue_maps`, thresholded at 0.5) when the run
   is in PAM50 space, else - when the participant has ``anat/*_T2w`` and a cord
   segmentation in ``derivatives/*/`` (:func:`find_anat`) - the PAM50 maps brought to
   the run through T2w -> PAM50 and mean BOLD -> T2w registrations
   (:mod:`spineprint_utils.registration`; QC column ``registration``), which also give
   the run's horn x segment regions; else the user's EPI cord segmentation in
   ``derivatives/*/`` (BIDS ``<run>_label-SC_mask`` or SCT ``<run>_bold_seg``) or the
   cord found on the mean image (:func:`spineprint_utils.cord.find_cord`: dark cord in
   the bright CSF ring, continuous centerline) with the bright CSF around it; a run
   where the cord is not found stops with an error (``anatomy="disk"`` opts in to the
   10 mm disc of :func:`spineprint_utils.motion.auto_cord_mask`, labelled a guess in
   ``mask_source``);
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

Outputs (``<prefix>`` = raw name without ``_bold.nii.gz``; every name comes from
:func:`spineprint_utils.derivatives.run_outputs`, the one place for derivative names), under
``derivatives/spineprint/sub-<s>/[ses-<e>/]``:

- ``func/<prefix>_desc-preproc_bold.nii.gz`` (+ ``.json``: TR, slice timing, steps, ``Sources``
  as BIDS URIs; the header's TR is the sidecar's)
- ``func/<prefix>_desc-confounds_timeseries.tsv`` + ``.json``: fMRIPrep's column names
  (:mod:`spineprint_utils.confounds`; read by ``nilearn.interfaces.fmriprep.load_confounds``),
  plus ``PhysiologicalModel``
- ``func/<prefix>_desc-motion_timeseries.tsv`` + ``.json`` (the confounds' names:
  ``trans_{x,y}_sliceNN``, ``trans_x``, ``trans_y``, ``framewise_displacement``)
- ``func/<prefix>_stat-tsnr_desc-raw_boldmap.nii.gz``, ``..._desc-clean_boldmap.nii.gz``
  (temporal mean / temporal SD, before any processing and after cleaning)
- ``func/<prefix>_desc-cord_mask.nii.gz``, ``..._desc-csf_mask.nii.gz`` (+ ``.json``, ``Type``)
- ``func/<prefix>_desc-qc_metrics.json``: the run's QC row and parameters, written
  **last** (the completion marker: a run with it and the same parameters is skipped
  unless ``overwrite``; different parameters recompute the run)
- ``figures/<prefix>_desc-{masks,motion,tsnr,carpet,confcorr}_qc.png`` and, when applied,
  ``..._desc-physio_qc.png`` / ``..._desc-native_qc.png`` (:mod:`spineprint_utils.qcfigures`,
  the reportlets of ``sub-<s>.html``, :mod:`spineprint_utils.report`), and, drawn or not,
  ``figures/<prefix>_desc-qcinputs_arrays.npz``: the figures' inputs that the other outputs do not
  hold (:func:`_qc_inputs`), from which a rerun with ``figures=True`` draws missing figures
  without recomputing the run
- native-space runs only: ``fmap/<sub>_<ses>_run-<r>_desc-<task>_fieldmap.nii.gz`` (estimated
  field, Hz) + ``_magnitude``, ``func/<prefix>_atlas-PAM50horns_dseg.nii.gz``/``.tsv``
  (regions on the run's grid, ``index``/``name``; used by the connectivity step),
  ``func/<prefix>_from-PAM50_to-bold_mode-image_xfm.npz`` (transform chain,
  :func:`spineprint_utils.registration.load_transforms`); and per T2w image, under ``anat/``,
  ``<sub>_<ses>_from-T2w_to-PAM50_mode-image_xfm.npz``, ``..._from-PAM50_to-T2w_...`` and the
  registration's metadata ``..._from-T2w_to-PAM50_mode-image_xfm.json`` (reused by the
  participant's other runs)
  and, from the anatomy steps, the same chain as an ITK/ANTs displacement field
  ``func/<prefix>_from-PAM50_to-bold_mode-image_xfm.nii.gz``, the cord-driven func -> T2w
  transform ``func/<prefix>_from-T2w_to-bold_mode-image_xfm.nii.gz`` (:mod:`spineprint_utils.xfm`),
  ``figures/<prefix>_desc-funcanat_qc.png`` (EPI cord, T2w cord on the EPI, horn regions), the
  ITK copies of the T2w transforms and ``figures/<T2w>_desc-levels_qc.png``; the registration
  record records the vertebral labels used (:func:`spineprint_utils.levels.find_vertebral_labels`)
  and the PAM50 level centres. User-provided warps (SCT's ``warp_template2anat.nii.gz``, an
  EPI -> PAM50 field) replace the registrations (:func:`spineprint_utils.xfm.find_given_anat_warp`,
  :func:`~spineprint_utils.xfm.find_given_epi_warp`). All these names come from
  :mod:`spineprint_utils.derivatives`.

and dataset-level ``dataset_description.json`` (``DatasetLinks`` to the raw data), ``.bidsignore``,
``qc.tsv`` and the QC reports ``sub-<s>.html`` and ``group.html``. If a run fails,
every file it wrote is removed: no partial derivative is left behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from . import __version__, confounds as confounds_mod, denoise, derivatives, motion
from . import motion as motion_mod
from ._io import (SpineprintError, atomic_save_nifti, atomic_save_npz, atomic_write_json, atomic_write_text,
                  bids_entities, load_nifti, read_json, recorded_warnings, verify_nifti)
from . import layout
from ._outputs import guarded_output
from .parallel import available_cpus, parallel_map

__all__ = [
    "RUN_DEFAULTS",
    "find_bold_runs",
    "find_runs",
    "find_preprocessed_runs",
    "run_prefix",
    "run_outputs",
    "run_metadata",
    "preprocess_run",
    "preprocess_dataset",
    "load_qc_table",
    "failed_runs",
    "MIN_DOF",
    "run_masks",
    "estimation_mask",
    "tsnr",
    "anatomy_fit",
    "ATLAS_FIT_MIN",
    "register_cli",
]

#: default parameters of :func:`preprocess_run` (the notebook's parameters), from the literature, not
#: tuned to the simulator: RETROICOR 4/4/(2x2), the usual spinal setting (e.g. Kaptan et al. 2023; FSL
#: ``pnm_evs --oc=4 --or=4 --multc=2 --multr=2``); spike regressors above Power et al.'s (2012) FD of
#: 0.5 mm; SCT's polynomial z-regularisation of the slice-wise motion (De Leener et al. 2017); confounds
#: band-passed with the data before regression (Lindquist et al. 2019). Chapter 02 shows the sensitivity
#: of the results to the physiological-model order and to the order of filter and regression.
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
    "distortion": True,
    "registration": True,
    "hr_rvt": False,
    "clean_halves": False,
}

#: fewest degrees of freedom the nuisance regression may keep (volumes minus the linear trend
#: minus the planned regressors); at or below it the run is refused before any computation
#: (the fit is then nearly exact and the "cleaned" run a constant; with few the regression
#: fits the noise: Bright & Murphy 2015). The band-pass lowers the effective dof further
#: (:func:`spineprint_utils.denoise.effective_dof`): that is warned about, not refused.
MIN_DOF = 10

#: native-space steps: part of the completion key only when changed from these defaults
_NATIVE_DEFAULTS = {"distortion": True, "registration": True}
#: outputs written only by some runs (not required for a run to count as complete)
_OPTIONAL_OUTPUTS = ("qcinputs", "fig_physio", "fieldmap", "fieldmap_json", "magnitude", "magnitude_json", "dseg", "dseg_tsv",
                     "dseg_json", "xfm", "fig_native", "fig_funcanat", "xfm_itk", "xfm_f2a_itk")

QC_COLUMNS = [
    "run", "subject", "session", "n_volumes", "tr_s", "tsnr_pre_cord", "tsnr_post_cord", "mean_fd_mm", "max_fd_mm",
    "n_spikes", "heart_rate_bpm", "respiratory_rate_bpm", "physio_model_applied", "physio_model",
    "var_motion_pct", "var_physio_pct", "var_csf_pct", "var_spikes_pct", "var_filter_pct", "var_total_pct",
    "n_regressors", "dof_remaining", "clean_halves", "mask_source", "distortion_correction", "registration", "t2w_pam50_dice",
    "func_t2w_cord_dice", "regions_in_cord_pct",
    "runtime_s",
]

_BOLD_SUFFIX = "_bold.nii.gz"
#: spinal segments whose regions native-space runs get (connectivity keeps the ones it is asked for)
_ALL_SEGMENTS = tuple(f"C{i}" for i in range(1, 9)) + ("T1",)


# ---------------------------------------------------------------- BIDS helpers
run_prefix = derivatives.run_prefix


def find_runs(bids_dir, participants=None, include_skipped: bool = False) -> list:
    """The BOLD runs of a BIDS dataset as :class:`spineprint_utils.layout.Run` (the dataset
    index: sessions optional, ``.nii``/``.nii.gz``, hidden files and ``.bidsignore`` skipped,
    derivatives never taken as runs, every entity kept), sorted by path.

    Parameters
    ----------
    bids_dir : path-like
    participants : sequence of str, optional
        Participant labels (with or without ``sub-``) to keep.
    include_skipped : bool
        Also list ``part-phase`` images (with :attr:`~spineprint_utils.layout.Run.skip_reason`).
    """
    return layout.DatasetIndex(bids_dir).bold_runs(participants, include_skipped=include_skipped)


def find_bold_runs(bids_dir, participants=None) -> list[Path]:
    """All BOLD images of a BIDS dataset (``sub-*/[ses-*/]func/*_bold.nii[.gz]``), sorted.

    The paths of :func:`find_runs` (``part-phase`` images excluded).

    Parameters
    ----------
    bids_dir : path-like
    participants : sequence of str, optional
        Participant labels (with or without ``sub-``) to keep.
    """
    return [r.path for r in find_runs(bids_dir, participants)]


def find_preprocessed_runs(deriv_dir, participants=None) -> list:
    """Preprocessed runs of a derivatives folder written by :func:`preprocess_dataset`,
    as :class:`spineprint_utils.layout.Run` (entities of the raw run, plus ``desc``).

    The naming of the outputs lives in :func:`run_outputs` only; this asks the dataset
    index for the images named like its ``"preproc"`` output.
    """
    probe = run_outputs(Path("sub-x") / "func" / "sub-x_bold.nii.gz", Path("."))["preproc"]
    ents, suffix, _ = layout.parse_name(probe.name)
    extra = {k: v for k, v in ents.items() if k != "sub"}
    return layout.DatasetIndex(deriv_dir).runs(suffix, participants, derivative=extra)


#: output paths of one run (:func:`spineprint_utils.derivatives.run_outputs`, the one place for names)
run_outputs = derivatives.run_outputs


def tsnr(data, axis=-1) -> np.ndarray:
    """Temporal SNR: temporal mean / temporal standard deviation (0 where SD is 0).

    As ``sct_fmri_compute_tsnr`` (De Leener et al. 2017): no detrending, and the
    sample standard deviation (``ddof=1``, divisor ``T - 1``).

    Parameters
    ----------
    data : ndarray, (..., T)
    axis : int
        Time axis.

    Returns
    -------
    ndarray, float32, ``data.shape`` without the time axis
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
        sd = block.std(axis=1, ddof=1) if block.shape[1] > 1 else np.zeros(block.shape[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            out[a:a + step] = np.where(sd > 0, mean / sd, 0.0)
    return out.reshape(data.shape[:-1])


# ---------------------------------------------------------------- masks
@functools.lru_cache(maxsize=8)
def _tissue_maps_cached(affine_bytes: bytes, shape: tuple, source: str):
    """:func:`spineprint_utils.atlas.tissue_maps`, kept in memory for the runs of a study
    (they share their grid). The expensive part, loading the 0.5 mm PAM50, is cached on
    disk by :mod:`spineprint_utils.atlas` itself, which also serves parallel workers."""
    from . import atlas

    affine = np.frombuffer(affine_bytes).reshape(4, 4)
    return atlas.tissue_maps(affine, shape, source=source)


#: smallest correlation ratio (eta^2) of the mean image over the atlas classes cord / CSF / surrounding tissue
#: for a run to count as lying in the atlas space. Measured on 30-volume simulations: 0.81-0.84 with the anatomy
#: the run was simulated with (PAM50 or phantom), 0.35-0.56 with the other one, 0.08-0.40 on native-space
#: simulations, 0 on the real SCT run (scanner coordinates; tests/test_preprocess.py)
ATLAS_FIT_MIN = 0.65


def anatomy_fit(mean_img, cord, csf, ring: int = 3) -> float:
    """How well a cord/CSF segmentation explains the contrast of a mean EPI image.

    The correlation ratio ``eta^2 = SS_between / SS_total`` (Pearson 1903; the
    fraction of the intensity variance explained by the class means) of the mean
    image over three classes, cord, CSF and the tissue of a *ring*-voxel in-plane
    shell around them, pooled over the slices where the cord is present. On
    T2*-weighted EPI the CSF is bright and the cord darker, so a segmentation that
    lies on the image's anatomy scores high and a displaced or wrong one near 0.

    Parameters
    ----------
    mean_img : ndarray, (X, Y, Z)
    cord, csf : ndarray, (X, Y, Z) bool
    ring : int
        Width (voxels) of the surrounding-tissue shell.

    Returns
    -------
    float in [0, 1] (0 when the masks are empty)
    """
    mean_img = np.asarray(mean_img, dtype=np.float64)
    cord = np.asarray(cord, bool)
    csf = np.asarray(csf, bool) & ~cord
    canal = cord | csf
    if not cord.any() or not csf.any():
        return 0.0
    shell = ndimage.binary_dilation(canal, structure=np.ones((3, 3, 1), bool), iterations=int(ring)) & ~canal
    keep = cord.any(axis=(0, 1))
    cls = [m & keep[None, None, :] for m in (cord, csf, shell)]
    vals = [mean_img[m] for m in cls if m.any()]
    if len(vals) < 2:
        return 0.0
    allv = np.concatenate(vals)
    ss_tot = float(np.sum((allv - allv.mean()) ** 2))
    if ss_tot <= 0:
        return 0.0
    ss_between = float(sum(v.size * (v.mean() - allv.mean()) ** 2 for v in vals))
    return ss_between / ss_tot


def _declared_pam50(bold_path: Path, meta: dict) -> bool:
    """The run says it is in PAM50 space: ``space-PAM50`` in its name, or ``SpatialReference``/``Space``
    mentioning PAM50 in its sidecar or in ``dataset_description.json``."""
    if "space-PAM50" in bold_path.name:
        return True
    for key in ("SpatialReference", "Space", "space"):
        if "pam50" in str(meta.get(key, "")).lower():
            return True
    root = layout.bids_root(bold_path)
    if root is not None and (root / "dataset_description.json").is_file():
        with contextlib.suppress(SpineprintError):
            desc = read_json(root / "dataset_description.json")
            for key in ("SpatialReference", "Space"):
                if "pam50" in str(desc.get(key, "")).lower():
                    return True
    return False


def _atlas_source(bold_path: Path, meta: dict, img=None, mean_img=None) -> str | None:
    """Anatomy source for :func:`spineprint_utils.atlas.tissue_maps` if the run is in
    PAM50 space, else None. Decided from the run itself, never from a simulation's
    ground truth:

    1. declared: ``space-PAM50`` in the name, or ``SpatialReference``/``Space``
       naming PAM50 in the sidecar or ``dataset_description.json`` -> ``"auto"``;
    2. otherwise, when the image (*img*, *mean_img*) is given: the image's grid, read
       as PAM50 coordinates, puts the atlas cord on the image's anatomy. Each
       available anatomy (the real PAM50, then the analytic phantom of
       :mod:`spineprint_utils.atlas`) is tried on the image's affine and scored by
       :func:`anatomy_fit`; the best one is used if it scores at least
       :data:`ATLAS_FIT_MIN`.
    """
    if _declared_pam50(bold_path, meta):
        return "auto"
    if img is None or mean_img is None:
        return None
    from . import atlas

    kinds = ["phantom"]
    if atlas.pam50_source("auto")[0] == "pam50":
        kinds.insert(0, "pam50")
    scores = {}
    aff = np.asarray(img.affine, dtype=np.float64)
    for kind in kinds:
        try:
            maps = _tissue_maps_cached(aff.tobytes(), tuple(mean_img.shape[:3]), kind)
        except SpineprintError:
            continue
        scores[kind] = anatomy_fit(mean_img, maps["cord"] >= 0.5, maps["csf"] >= 0.5)
    if not scores:
        return None
    best = max(scores, key=scores.get)
    return best if scores[best] >= ATLAS_FIT_MIN else None


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
    cord = _load_mask(mask_img, shape, "cord", img.affine) if mask_img is not None else None
    csf = _load_mask(csf_mask_img, shape, "CSF", img.affine) if csf_mask_img is not None else None
    source = "given"
    if cord is None or csf is None:
        if anatomy not in ("auto", "atlas", "image", "disk"):
            raise SpineprintError(f"anatomy must be 'auto', 'atlas', 'image' or 'disk', got {anatomy!r}")
        src = _atlas_source(bold_path, meta, img, mean_img) if anatomy not in ("image", "disk") else None
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
            # the cord on the mean EPI (or the user's EPI segmentation); never a silent guess:
            # the 10 mm disc only with anatomy="disk", and its source says so
            from . import cord as cord_mod

            if cord is not None:
                csf = cord_mod.csf_around(mean_img, cord, img.header.get_zooms()[:3])
                source = "given cord mask; CSF around it from the mean image"
            else:
                found, found_csf, source = cord_mod.epi_cord_masks(bold_path, img, mean_img,
                                                                   fallback=anatomy == "disk")
                cord = found
                csf = found_csf if csf is None else csf
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
        ``"given"``, ``"atlas (pam50|phantom)"``, ``"given EPI segmentation <file>"`` or
        ``"mean image (...)"`` (cord found on the EPI, or the 10 mm disc guess with ``anatomy="disk"``).
    """
    bold_path = Path(bold_path)
    meta, _, _, _ = _read_meta(bold_path, 1.0, None)
    img, data = load_nifti(bold_path, ndim=4)
    return _masks(bold_path, meta, img, data.mean(axis=3), mask_img, csf_mask_img, anatomy)


# ---------------------------------------------------------------- one run
#: a RepetitionTime above this (s) is taken for milliseconds (BIDS gives seconds; the longest
#: BOLD TRs in use are a few seconds, sparse designs ~10-20 s)
_TR_MAX_S = 30.0


def _read_meta(bold_path: Path, repetition_time, slice_timing):
    """The run's metadata (BIDS inheritance applied) and its checked TR and slice timing.

    Returns ``(meta, tr, slice_timing, sidecar)`` where *sidecar* names the file that
    gave ``RepetitionTime`` (the run's own JSON when it has none) for messages.
    """
    own = Path(str(bold_path)[: -len(".nii.gz")] + ".json") if str(bold_path).endswith(".nii.gz") else \
        bold_path.with_suffix(".json")
    meta, sources = layout.metadata(bold_path, "bold")

    def _source(key):
        for src in reversed(sources):
            with contextlib.suppress(SpineprintError):
                if key in read_json(src):
                    return src
        return own

    sidecar = _source("RepetitionTime") if "RepetitionTime" in meta else own
    tr = repetition_time if repetition_time is not None else meta.get("RepetitionTime")
    if tr is None:
        where = "sidecar found" if own.is_file() else "sidecar not found"
        others = [s.name for s in sources if s != own]
        also = f"; nor in the inherited {', '.join(others)}" if others else ""
        raise SpineprintError(f"{own}: RepetitionTime missing ({where}){also}; "
                              "it is required for filtering and the physiological model")
    try:
        tr = float(tr)
    except (TypeError, ValueError):
        raise SpineprintError(f"{sidecar}: RepetitionTime {tr!r} is not a number") from None
    if not (np.isfinite(tr) and tr > 0):
        raise SpineprintError(f"{sidecar}: RepetitionTime must be positive, got {tr}")
    if tr > _TR_MAX_S:
        raise SpineprintError(f"{sidecar}: RepetitionTime {tr:g} looks like milliseconds; BIDS gives it in seconds "
                              f"(e.g. {tr / 1000:g})")
    st = slice_timing if slice_timing is not None else meta.get("SliceTiming")
    if slice_timing is None and st is not None:
        sidecar_st = _source("SliceTiming")
        direction = str(meta.get("SliceEncodingDirection", "k")).strip()
        if direction not in ("k", "k-"):
            raise SpineprintError(f"{_source('SliceEncodingDirection')}: SliceEncodingDirection {direction!r}: only "
                                  "slices along the third image axis (k or k-) are supported; reorient the image")
        try:
            vals = np.asarray(st, dtype=float).ravel()
        except (TypeError, ValueError):
            raise SpineprintError(f"{sidecar_st}: SliceTiming is not a list of numbers") from None
        if vals.size and np.nanmax(vals) > _TR_MAX_S and np.nanmax(vals) > tr:
            raise SpineprintError(f"{sidecar_st}: SliceTiming values up to {np.nanmax(vals):g} look like "
                                  "milliseconds; BIDS gives them in seconds")
        if direction == "k-":
            # BIDS: the first SliceTiming entry is the first slice along SliceEncodingDirection,
            # i.e. the last image slice (k = Z-1) for "k-"
            vals = vals[::-1]
        st = vals.tolist()
    return meta, tr, st, sidecar


def run_metadata(bold_path) -> dict:
    """A run's metadata as preprocessing reads it: the sidecars merged by the BIDS inheritance
    principle (``meta``), the checked ``tr`` (s), the ``slice_timing`` in image slice order
    (``SliceEncodingDirection`` applied; None when absent) and the ``sidecar`` that gave the TR.

    Raises
    ------
    SpineprintError
        Missing or millisecond-looking ``RepetitionTime``, slices not along k, bad JSON (named).
    """
    meta, tr, st, sidecar = _read_meta(Path(bold_path), None, None)
    return {"meta": meta, "tr": tr, "slice_timing": None if st is None else np.asarray(st, float),
            "sidecar": sidecar}


def _check_header_tr(img, tr, bold_path, sidecar, notes):
    """Warn (and note) when the NIfTI header TR disagrees with the sidecar; the sidecar wins."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4:
        return
    hdr = float(zooms[3])
    unit = img.header.get_xyzt_units()[1]
    if unit == "msec":
        hdr /= 1000.0
    elif unit == "usec":
        hdr /= 1e6
    if hdr > 0 and abs(hdr - tr) > 1e-3 * max(tr, 1.0):
        msg = (f"{bold_path.name}: header TR {hdr:g} s differs from RepetitionTime {tr:g} s in {sidecar.name}; "
               "the sidecar is used and written into the derivative's header")
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)


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
    files = layout.physio_files(bold_path)
    if not files:
        msg = f"{bold_path.name}: no physio file found; processed WITHOUT the physiological noise model"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
        return None, [], "none: no physio file found", {}
    recs = [physio.load_physio(f) for f in files]
    plain = [r for r, f in zip(recs, files) if "_recording-" not in f.name]
    # one file, or one file per device merged on the common clock (trigger, else StartTime)
    rec = plain[0] if plain else physio.combine_recordings(recs, T, tr)
    path = Path(rec.path)
    names_used = ", ".join(f.name for f in files)
    has_c, has_r = rec.cardiac is not None, rec.respiratory is not None
    if not (has_c or has_r):
        msg = (f"{path}: no cardiac or respiratory column (columns {rec.columns}; accepted names: cardiac "
               f"{', '.join(physio.COLUMN_ALIASES['cardiac'])}; respiratory "
               f"{', '.join(physio.COLUMN_ALIASES['respiratory'])}); processed WITHOUT the physiological model")
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
        return None, [], "none: no cardiac or respiratory trace", {}
    c_order = params["cardiac_order"] if has_c else 0
    r_order = params["respiratory_order"] if has_r else 0
    i_order = tuple(params["interaction_order"]) if (has_c and has_r) else (0, 0)
    if not (has_c and has_r):
        only = "cardiac" if has_c else "respiratory"
        notes.append(f"{bold_path.name}: only a {only} trace in {names_used}; {only}-only RETROICOR model")
    regs, names = physio.slice_regressors(rec, T, tr, st, cardiac_order=c_order, respiratory_order=r_order,
                                          interaction_order=i_order)
    regs = np.asarray(regs, dtype=np.float64)
    if regs.shape[:2] != (Z, T):
        raise SpineprintError(f"{path}: physiological regressors have shape {regs.shape}, expected ({Z}, {T}, P)")
    summary = physio.physio_summary(rec, T, tr)
    summary["_recording"] = rec
    traces = ("cardiac and respiratory" if has_c and has_r else "cardiac only" if has_c else "respiratory only")
    desc = (f"RETROICOR (Glover 2000){' with cardiac x respiratory interactions (Harvey 2008)' if has_c and has_r else ''}"
            f", slice-wise (Brooks 2008), {traces}: cardiac order {c_order}, respiratory order "
            f"{r_order}, interaction order {list(i_order)}, "
            f"{regs.shape[2]} regressors per slice, from {names_used}")
    names = list(names)
    if params.get("hr_rvt"):
        # low-frequency physiology: heart rate convolved with the cardiac response function
        # (Chang 2009) and respiration volume per time with the respiration response function
        # (Birn 2006, 2008), sampled at the volume onsets; the same regressors for every slice
        kinds = tuple(k for k, ok in (("hr", has_c), ("rvt", has_r)) if ok)
        cols = [{"hr": "hr_crf", "rvt": "rvt_rrf"}[k] for k in kinds]
        hr = physio.hr_rvt_regressors(rec, T, tr, kinds=kinds)[cols].to_numpy(dtype=np.float64)
        regs = np.concatenate([regs, np.broadcast_to(hr, (Z, T, len(cols)))], axis=2)
        names += cols
        parts = []
        if has_c:
            parts.append("heart rate convolved with the cardiac response function (Chang 2009)")
        if has_r:
            parts.append("respiration volume per time convolved with the respiration response function (Birn 2008)")
        desc += "; plus " + " and ".join(parts)
    return regs, names, desc, summary


def _save_nifti_fast(img, path, compresslevel: int = 1) -> Path:
    """:func:`spineprint_utils._io.atomic_save_nifti` (atomic, streamed, gzip mtime 0: same
    bytes for the same image) with gzip level 1 by default: the float32 4D output of a
    real-size run compresses ~5x faster than at level 6 for a few % more bytes."""
    from ._io import atomic_save_nifti

    return atomic_save_nifti(img, path, compresslevel=compresslevel)


def _nifti_like(img, data, dtype=np.float32):
    import nibabel as nib

    hdr = img.header.copy()
    hdr.set_data_dtype(dtype)
    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), img.affine, hdr)
    out.header.set_slope_inter(None, None)
    return out


# ---------------------------------------------------------------- native space: distortion and registration
def _distortion_step(bold_path: Path, img, data, meta: dict, enabled: bool, notes: list):
    """Susceptibility distortion correction of the raw series from a reverse-PE pair.

    Runs on the raw 4D series, before motion correction: the field is estimated from the
    pair (Chang & Fitzpatrick 1992; :func:`spineprint_utils.distortion.correct_run`) on the
    scanner grid, where the distortion happens, and motion (sub-millimetre here) is
    estimated afterwards on undistorted images. Returns ``(data, field_hz or None, status, pair_paths)``;
    ``status`` starts with ``"applied"``, ``"skip: <reason>"`` or ``"off"``. A pair that
    exists but cannot be used (missing ``TotalReadoutTime``, identical directions, an
    ``IntendedFor`` that does not list this run, a different grid) is a recorded skip with a
    warning, never silent.
    """
    from . import distortion

    if not enabled:
        return data, None, "off: disabled by the user", []
    fmap_dir = bold_path.parent.parent / "fmap"
    if not fmap_dir.is_dir() or not any(fmap_dir.glob("*_epi.json")):
        return data, None, "skip: no reverse phase-encoding fieldmap (fmap/*_epi)", []
    try:
        pair = distortion.read_fieldmap_pair(fmap_dir, bold=bold_path)
        direction = 1
        if "PhaseEncodingDirection" in meta:
            _, direction = distortion.parse_pe_direction(meta["PhaseEncodingDirection"], bold_path)
        trt = meta.get("TotalReadoutTime")
        corrected, field = distortion.correct_run(_nifti_like(img, data), pair, direction,
                                                  None if trt is None else float(trt))
    except SpineprintError as exc:
        msg = f"{bold_path.name}: distortion correction NOT applied: {exc}"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
        return data, None, f"skip: {exc}", []
    notes.extend(pair.notes)
    status = (f"applied: reverse-PE pair {pair.up.name} / {pair.down.name} (matched by {pair.matched_by}), "
              f"TotalReadoutTime {pair.total_readout_time:g} s")
    return (np.asarray(corrected.dataobj, dtype=np.float32), np.asarray(field, dtype=np.float32), status,
            [Path(pair.up), Path(pair.down)])


def find_anat(bold_path):
    """The participant's T2w image and its cord segmentation for a BOLD run, or a reason.

    Both come from the dataset index (:mod:`spineprint_utils.layout`; ``.nii`` or
    ``.nii.gz``, hidden files and ``.bidsignore`` entries skipped): the T2w of the run's
    session first, then of any session of the participant or none
    (:meth:`~spineprint_utils.layout.DatasetIndex.anat`); the segmentation in another
    pipeline's ``derivatives/<pipeline>/sub-*/**/anat/`` with the T2w's name followed by
    ``_label-SC_seg`` (spine-generic / SCT ``sct_deepseg_sc`` naming), ``_seg`` or
    ``_label-SC_mask`` (:func:`~spineprint_utils.layout.derivative_files`).

    Returns
    -------
    (t2w, seg, None) or (None, None, reason)
    """
    bold_path = Path(bold_path)
    root = layout.bids_root(bold_path)
    if root is None:
        return None, None, "not inside a BIDS dataset"
    ents = layout.parse_name(bold_path.name)[0]
    sub = ents.get("sub")
    sub_dir = root / f"sub-{sub}"
    t2ws = layout.DatasetIndex(root, subjects=[sub]).anat(sub, "T2w", ents.get("ses"))
    if not t2ws:
        return None, None, f"no T2w image in {sub_dir}/[ses-*/]anat"
    for t2w in t2ws:
        stem = t2w.name.split(".nii")[0]
        segs = layout.derivative_files(root, sub, (f"{stem}_label-SC_seg.nii*", f"{stem}_seg.nii*",
                                                   f"{stem}_label-SC_mask.nii*"), datatype="anat")
        if segs:
            return t2w, segs[0], None
    return None, None, f"no cord segmentation (derivatives/*/sub-{sub}/**/anat/<T2w>_label-SC_seg.nii.gz) for {t2ws[0].name}"


def _anat_registration(t2w: Path, seg: Path, output_dir: Path, root: Path, notes: list):
    """T2w -> PAM50 registration, cached per T2w image in ``<output_dir>/sub-*/[ses-*/]anat/``."""
    from . import registration

    names = derivatives.anat_outputs(t2w, output_dir)
    to_native_path, to_template_path, info_path = names["to_native"], names["to_template"], names["info"]
    from . import levels as levels_mod

    sub = bids_entities(t2w.name.split(".nii")[0]).get("sub")
    labels, kind = levels_mod.find_vertebral_labels(t2w, root, sub)
    key = {"t2w": t2w.name, "seg": seg.name, "t2w_bytes": t2w.stat().st_size, "seg_bytes": seg.stat().st_size,
           "labels": labels.name if labels is not None else None,
           "labels_bytes": labels.stat().st_size if labels is not None else None, "version": __version__}
    from . import xfm

    given = xfm.find_given_anat_warp(t2w, root, sub)
    if given is not None:
        # the user's template -> T2w warp (SCT's warp_template2anat): used as is; its QC is the Dice
        # of the T2w cord with the PAM50 cord brought through it
        import nibabel as nib

        to_native = xfm.load_itk(given)
        tcord = registration._load_template_img(Path(registration._template("PAM50", None)), "PAM50_cord.nii.gz")
        verify_nifti(seg)  # gzip CRC
        seg_img = nib.load(str(seg))
        on_t2w = np.asarray(registration.apply_transforms(tcord, seg_img, to_native).dataobj) >= 0.5
        return to_native, {"dice": registration.dice(on_t2w, np.asarray(seg_img.dataobj) > 0.5),
                           "z_method": "given", "given": given.name}
    if to_native_path.is_file() and to_template_path.is_file() and info_path.is_file():
        with contextlib.suppress(SpineprintError):
            info = read_json(info_path)
            if info.get("key") == key:
                return registration.load_transforms(to_native_path), info
    reg = registration.register_to_template(t2w, seg, levels_img=labels, levels_kind=kind or "levels")
    import nibabel as nib

    verify_nifti(t2w)  # gzip CRC
    t2w_img = nib.load(str(t2w))
    # ANTs/ITK/SCT-readable copies (BIDS names): template -> T2w field on the T2w grid, T2w -> template
    # field on the template-space working grid
    xfm.save_itk(reg.to_native, names["to_native_itk"], reference=t2w_img)
    xfm.save_itk(reg.to_template, names["to_template_itk"], reference=reg.reference)
    fig_path = names["fig_levels"]
    stem = t2w.name.split(".nii")[0]
    lev = levels_mod.levels_on_anat(reg, t2w_img)
    centres = levels_mod.level_centres(lev, t2w_img.affine)
    levels_mod.plot_levels_sagittal(
        t2w_img, lev, nib.load(str(labels)) if labels is not None and kind == "levels" and
        levels_mod.is_point_labels(labels) else None,
        title=f"{stem}: PAM50 levels ({reg.z_method}{', ' + labels.name if labels is not None else ''})",
        path=fig_path)
    registration.save_transforms(to_native_path, reg.to_native)
    registration.save_transforms(to_template_path, reg.to_template)
    info = {"key": key, "dice": reg.dice, "dice_affine": reg.dice_affine, "z_method": reg.z_method,
            "labels": str(labels.name) if labels is not None else None, "labels_kind": kind,
            "level_centres_mm": {str(k): round(v, 2) for k, v in centres.items()}, "levels_figure": fig_path.name,
            "z_offset_mm": reg.z_offset, "z_scale": reg.z_scale, "notes": list(reg.notes),
            "method": "register_to_template (De Leener 2017; SyN, Avants 2008; dipy)"}
    # no wall times (reg.timings) in a derivative: the same inputs give the same bytes
    atomic_write_json(info_path, info)  # written last: marks the cached transforms complete
    return reg.to_native, info


def _coarse(path, voxel_mm: float = 1.0):
    """An image resampled (trilinear) to *voxel_mm* isotropic voxels over the same box,
    unless already that coarse."""
    import nibabel as nib

    from . import registration

    img, data = load_nifti(path, ndim=3, finite=True)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if zooms.min() >= voxel_mm:
        return nib.Nifti1Image(np.asarray(data, np.float32), img.affine)
    factor = voxel_mm / zooms
    shape = tuple(max(1, int(np.floor(n / f))) for n, f in zip(img.shape[:3], factor))
    aff = img.affine.copy()
    aff[:3, :3] = img.affine[:3, :3] * factor
    aff[:3, 3] = img.affine[:3, :3] @ (0.5 * (factor - 1)) + img.affine[:3, 3]
    return registration.apply_transforms(nib.Nifti1Image(np.asarray(data, np.float32), img.affine), (shape, aff), [])


def _template_grid_for(func_shape, func_affine, chain, voxel_size, margin_mm: float = 4.0):
    """An axis-aligned PAM50-space grid (LAS, *voxel_size*) covering the template points of a
    functional grid mapped through *chain* (func points -> template points)."""
    from . import registration

    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in func_shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    pts = ijk @ np.asarray(func_affine)[:3, :3].T + np.asarray(func_affine)[:3, 3]
    for t in chain:
        pts = t.map_points(pts)
    if not np.all(np.isfinite(pts)):
        raise SpineprintError("registration produced non-finite template coordinates")
    lo, hi = pts.min(0) - margin_mm, pts.max(0) + margin_mm
    vs = np.asarray(voxel_size, dtype=float)
    shape = tuple(int(np.ceil((hi[k] - lo[k]) / vs[k])) + 1 for k in range(3))
    aff = np.diag([-vs[0], vs[1], vs[2], 1.0])
    aff[:3, 3] = [hi[0], lo[1], lo[2]]
    del registration
    return shape, aff


def _registration_step(bold_path: Path, img, mean_img, output_dir: Path, notes: list):
    """Native-space run: T2w -> PAM50 (cached), mean BOLD -> T2w (rigid), then the PAM50 cord,
    CSF and horn x segment regions on the BOLD grid.

    The regions are built as in PAM50-space runs (:func:`spineprint_utils.atlas.region_labels`
    on a template-space grid with the run's voxel size) and brought to the run's grid by
    nearest neighbour through ``func -> T2w -> PAM50`` (:func:`spineprint_utils.registration.atlas_to_native`).

    Returns ``dict(cord, csf, labels_img, regions, chain, dice, status)`` or ``None`` + reason.
    """
    import nibabel as nib

    from . import atlas, registration

    from . import xfm

    root = layout.bids_root(bold_path)
    sub = bids_entities(run_prefix(bold_path)).get("sub")
    epi_warp = xfm.find_given_epi_warp(bold_path, root, sub) if root is not None else None
    t2w, seg, reason = find_anat(bold_path)
    if t2w is None and epi_warp is None:
        return None, f"skip: {reason}"
    if atlas.pam50_source("auto")[0] != "pam50":
        return None, ("skip: the PAM50 template is not available offline (set SPINEPRINT_DATA_DIR or run "
                      "spineprint_utils.datasets.fetch_pam50())")
    mean3 = nib.Nifti1Image(np.asarray(mean_img, dtype=np.float32), img.affine)
    shape = tuple(int(s) for s in mean_img.shape[:3])
    vs = tuple(float(v) for v in img.header.get_zooms()[:3])
    source = atlas.pam50_source("auto")[0]
    if epi_warp is not None:
        # the user's own EPI -> template warp (e.g. from SCT): used as is, no registration here
        chain = xfm.load_itk(epi_warp)
        f2a_info, info, to_func = None, {"dice": float("nan"), "z_method": "given"}, []
        with contextlib.suppress(SpineprintError):
            epi_cord, epi_csf, msrc = _epi_cord_or_none(bold_path, img, mean_img)
            if epi_cord is not None:
                f2a_info = {"to_func": [], "dice": float("nan"), "dice_header": float("nan"), "alignment": None,
                            "epi_cord": epi_cord, "epi_csf": epi_csf, "mask_source": msrc}
    else:
        to_native, info = _anat_registration(t2w, seg, Path(output_dir), root, notes)
        f2a_info = _func_to_anat_on_cord(bold_path, img, mean_img, seg, to_native, shape, vs, source, notes)
        if f2a_info is not None:
            to_func = f2a_info["to_func"]
        else:
            # no cord on the EPI: rigid mutual information on the T2w resampled to 1 mm (the BOLD has
            # 1 x 1 x 5 mm voxels or coarser; a finer anat grid only slows the mutual information down)
            anat1, seg1 = _coarse(t2w), _coarse(seg)
            to_func = registration.register_func_to_anat(mean3, anat1, seg1, iterations=(100, 50)).to_func
        chain = list(to_func) + list(to_native)
    t_shape, t_aff = _template_grid_for(shape, img.affine, chain, vs)
    maps = atlas.tissue_maps(t_aff, t_shape, source=source)
    ref = nib.Nifti1Image(np.zeros(t_shape, np.float32), t_aff)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lab_t, regions = atlas.region_labels(ref, segments=_ALL_SEGMENTS, source=source, min_voxels=1)
    del caught  # regions outside the coverage are expected; those missing on the BOLD grid are dropped below
    grid = (shape, img.affine)
    cord = np.asarray(registration.apply_transforms(nib.Nifti1Image(np.asarray(maps["cord"], np.float32), t_aff),
                                                    grid, chain).dataobj) >= 0.5
    csf = np.asarray(registration.apply_transforms(nib.Nifti1Image(np.asarray(maps["csf"], np.float32), t_aff),
                                                   grid, chain).dataobj) >= 0.5
    lab = np.asarray(registration.apply_transforms(lab_t, grid, chain, "nearest").dataobj).astype(np.int16)
    present = np.isin(regions["label"].to_numpy(), np.unique(lab[lab > 0]))
    regions = regions[present].reset_index(drop=True)
    new = np.zeros_like(lab)
    for k, old in enumerate(regions["label"].to_numpy(), start=1):
        new[lab == old] = k
    regions = regions.assign(label=np.arange(1, len(regions) + 1),
                             n_voxels=[int((new == k).sum()) for k in range(1, len(regions) + 1)])
    if not cord.any():
        raise SpineprintError(f"{bold_path}: the PAM50 cord brought to the run through the registration is empty")
    if f2a_info is not None:
        cord, csf = f2a_info["epi_cord"], f2a_info["epi_csf"]  # the run's own cord, found on its EPI
    if epi_warp is not None:
        status = f"applied: given EPI -> PAM50 warp {epi_warp.name} (no registration run)"
    else:
        if f2a_info is not None:
            f2a_desc = (f"mean BOLD -> T2w on the cord (slice-wise, spineprint_utils.funcreg; EPI-T2w cord Dice "
                        f"{f2a_info['dice']:.3f}, header {f2a_info['dice_header']:.3f})")
        else:
            f2a_desc = "mean BOLD -> T2w rigid (mutual information; no cord found on the EPI)"
        given = f"given warp {info['given']}" if info.get("given") else f"z placement {info['z_method']}"
        status = (f"applied: {t2w.name} + {seg.name} -> PAM50 (T2w-PAM50 cord Dice {info['dice']:.3f}, {given}), "
                  f"{f2a_desc}")
    return {"cord": cord, "csf": csf, "labels": new, "regions": regions, "chain": chain, "to_func": list(to_func),
            "dice": float(info["dice"]), "func_dice": f2a_info["dice"] if f2a_info else float("nan"),
            "f2a": f2a_info, "status": status, "t2w": t2w, "seg": seg, "mean": mean3,
            "epi_mask_source": f2a_info["mask_source"] if f2a_info else None}, status


def _regions_in_cord_pct(labels, cord) -> float:
    """Percentage of region voxels inside the run's cord mask."""
    lab = np.asarray(labels) > 0
    return float(100.0 * (lab & np.asarray(cord, bool)).sum() / lab.sum()) if lab.any() else float("nan")


def _epi_cord_or_none(bold_path, img, mean_img):
    """:func:`spineprint_utils.cord.epi_cord_masks` or ``(None, None, reason)`` when no cord is found."""
    from . import cord as cord_mod

    try:
        return cord_mod.epi_cord_masks(bold_path, img, mean_img)
    except SpineprintError as exc:
        return None, None, str(exc)


def _func_to_anat_on_cord(bold_path, img, mean_img, seg, to_native, shape, vs, source, notes):
    """Cord-driven mean BOLD -> T2w alignment (:func:`spineprint_utils.funcreg.align_func_to_anat_cord`)
    from the run's EPI cord (user segmentation or :func:`spineprint_utils.cord.find_cord`), with the
    PAM50 cord through T2w -> PAM50 as the target where the T2w does not cover a slice; None when no
    cord is found on the EPI (the caller falls back to mutual information and says so)."""
    import nibabel as nib

    from . import atlas, funcreg, registration
    from . import cord as cord_mod

    try:
        epi_cord, epi_csf, msrc = cord_mod.epi_cord_masks(bold_path, img, mean_img)
    except SpineprintError as exc:
        msg = f"{bold_path.name}: no cord on the mean EPI ({exc}); mean BOLD -> T2w by mutual information"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
        return None
    t_shape, t_aff = _template_grid_for(shape, img.affine, list(to_native), vs, margin_mm=25.0)
    tcord = atlas.tissue_maps(t_aff, t_shape, source=source)["cord"]
    fallback = np.asarray(registration.apply_transforms(nib.Nifti1Image(np.asarray(tcord, np.float32), t_aff),
                                                        (shape, img.affine), list(to_native)).dataobj) >= 0.5
    al = funcreg.align_func_to_anat_cord(epi_cord, img.affine, seg, fallback_target=fallback)
    notes.extend(al.notes)
    return {"to_func": al.to_func, "dice": al.dice, "dice_header": al.dice_header, "alignment": al,
            "epi_cord": epi_cord, "epi_csf": epi_csf, "mask_source": msrc}


def _tsv_text(df: pd.DataFrame, na_rep: str = "n/a") -> str:
    """``df.to_csv(sep="\t", index=False, na_rep=na_rep)``, the same text, faster for the
    all-float64 tables of a run (the confounds: ~700 columns).

    pandas writes a float64 value as ``str(value)`` (numpy's shortest round-trip repr) and a
    missing one as *na_rep*, row by row through :mod:`csv`; here the strings come from one
    ``astype(str)`` and are joined directly. Any other table (another dtype, a column name that
    :mod:`csv` would quote) goes through pandas.
    """
    names = [str(c) for c in df.columns]
    if (len(df.columns) == 0 or not all(dt == np.float64 for dt in df.dtypes)
            or any(n == "" or any(ch in n for ch in '\t\n\r"') for n in names)):
        return df.to_csv(sep="\t", index=False, na_rep=na_rep)
    values = df.to_numpy(dtype=np.float64)
    text = values.astype(str)
    text[np.isnan(values)] = na_rep
    return "\n".join(["\t".join(names), *("\t".join(row) for row in text.tolist())]) + "\n"


# ---------------------------------------------------------------- QC figures (drawn now or later)
#: the run's QC figures (keys of :func:`run_outputs`), in drawing order; which of them a run has is
#: recorded in its ``qcinputs`` file (physio, native and funcanat only when those steps applied)
_QC_FIGURES = ("fig_funcanat", "fig_masks", "fig_motion", "fig_tsnr", "fig_carpet", "fig_confcorr", "fig_physio",
               "fig_native")
#: figures every run has (the others are in _OPTIONAL_OUTPUTS)
_QC_FIGURES_ALWAYS = ("fig_masks", "fig_motion", "fig_tsnr", "fig_carpet", "fig_confcorr")
#: voxels per mask in the carpet plot
_CARPET_VOXELS = 600


def _qc_inputs(moco, clean, cord, csf, cord_mean, mean_before, phys_rec, native, field_hz) -> dict:
    """The inputs of the run's QC figures that its other derivatives do not hold (written as
    ``<prefix>_desc-qcinputs_arrays.npz`` whether or not the figures are drawn).

    ``figures`` (the figure keys this run has), ``mean_moco`` (X, Y, Z) float32 (temporal mean of
    the motion-corrected series), ``carpet_before`` / ``carpet_after`` (rows, T) float16 (the
    carpet rows, :func:`spineprint_utils.qcfigures.carpet_rows`, cord rows then CSF rows),
    ``carpet_n_cord``, ``cord_mean`` (T,) (mean cord signal before cleaning), ``physio_*``
    (:func:`spineprint_utils.qcfigures.physio_trace_summary`: the first 30 s of the traces, the
    beats, the respiratory phase) when the physiological model applied, ``mean_before`` (X, Y, Z)
    float32 (mean raw BOLD before distortion correction) for the native figure,
    ``warped_cord`` (X, Y, Z) bool (T2w cord on the EPI) for the funcanat figure, and ``has_field``
    / ``has_regions`` (whether the run wrote a field map + magnitude and PAM50 regions). The rest
    (masks, tSNR maps, confounds, motion, field, regions) is read from the run's derivatives.
    """
    from . import qcfigures

    def rows(data):
        r = qcfigures.carpet_rows(data, cord, _CARPET_VOXELS)
        if csf.any():
            r = np.vstack([r, qcfigures.carpet_rows(data, csf, _CARPET_VOXELS)])
        return r.astype(np.float16)  # z-scores drawn on a +-2 grey scale of 256 levels: 3 digits are plenty

    keys = [k for k in _QC_FIGURES
            if k in _QC_FIGURES_ALWAYS
            or (k == "fig_physio" and phys_rec is not None)
            or (k == "fig_native" and (native is not None or field_hz is not None))
            # the func -> T2w overlay needs the alignment's warped cord (none when the user's
            # own warps were used: no alignment was computed)
            or (k == "fig_funcanat" and native is not None and native["f2a"] is not None
                and native["f2a"].get("alignment") is not None)]
    arrays = {"figures": np.array(keys), "mean_moco": moco.mean(axis=3).astype(np.float32),
              "carpet_before": rows(moco), "carpet_after": rows(clean),
              "carpet_n_cord": np.int64(min(int(cord.sum()), _CARPET_VOXELS)),
              "cord_mean": np.asarray(cord_mean),
              # which of the run's own files the native figures read (field + magnitude, regions)
              "has_field": np.bool_(field_hz is not None), "has_regions": np.bool_(native is not None)}
    if phys_rec is not None:
        arrays.update({f"physio_{k}": np.asarray(v) for k, v in qcfigures.physio_trace_summary(phys_rec).items()})
    if "fig_native" in keys or "fig_funcanat" in keys:
        arrays["mean_before"] = np.asarray(mean_before, dtype=np.float32)
    if "fig_funcanat" in keys:
        arrays["warped_cord"] = np.asarray(native["f2a"]["alignment"].warped_cord, dtype=bool)
    return arrays


def _draw_qc_figures(outs: dict, keys, row: dict, spike_threshold, write) -> None:
    """Draw the QC figures *keys* of one run from its saved derivatives and its ``qcinputs`` file.

    The one way the figures are drawn, right after the run (``figures=True``) or later from what
    it saved (a rerun with ``figures=True`` of a run computed with ``figures=False``): the same
    inputs, read from the same files, give the same pictures.

    Parameters
    ----------
    outs : dict
        :func:`run_outputs` of the run.
    keys : iterable of str
        Figure keys to draw (a subset of the ``figures`` recorded in the qcinputs file).
    row : dict
        The run's QC row (run name, mask source, native-space statuses and Dice).
    spike_threshold : float or None
        FD threshold (mm) of the spike regressors.
    write : callable
        ``write(key, fn, *args)``: records the output *key* (for the all-or-nothing cleanup)
        and calls ``fn(*args)``.
    """
    from . import qcfigures

    keys = [k for k in _QC_FIGURES if k in set(keys)]
    if not keys:
        return
    with np.load(outs["qcinputs"], allow_pickle=False) as z:
        q = {k: z[k] for k in z.files}
    cord = load_nifti(outs["cord_mask"], ndim=3, dtype=np.uint8)[1].astype(bool)
    csf = load_nifti(outs["csf_mask"], ndim=3, dtype=np.uint8)[1].astype(bool)
    title = row["run"]
    conf_df = pd.read_csv(outs["confounds"], sep="\t", na_values="n/a")
    mean_before = q.get("mean_before")
    field = mean_raw = labels = None
    if "fig_native" in keys or "fig_funcanat" in keys:
        has_field = bool(q["has_field"])
        field = load_nifti(outs["fieldmap"], ndim=3)[1] if has_field else None
        mean_raw = load_nifti(outs["magnitude"], ndim=3)[1] if has_field else mean_before
        labels = (load_nifti(outs["dseg"], ndim=3, dtype=np.int16)[1] if bool(q["has_regions"])
                  else np.zeros(cord.shape, np.int16))
    for key in keys:
        path = outs[key]
        if key == "fig_funcanat":
            from . import funcreg

            write(key, functools.partial(
                funcreg.plot_func_anat_overlay, mean_raw, cord, q["warped_cord"], labels,
                title=(f"{title}: EPI cord (cyan), T2w cord on the EPI (yellow dashed; Dice "
                       f"{row['func_t2w_cord_dice']:.2f}), horn regions ({row['regions_in_cord_pct']:.0f}% in the "
                       "cord)"), path=path))
        elif key == "fig_masks":
            write(key, qcfigures.masks_figure, q["mean_moco"], cord, csf, path, title, row["mask_source"])
        elif key == "fig_motion":
            motion_table = pd.read_csv(outs["motion"], sep="\t", na_values="n/a")
            write(key, qcfigures.motion_figure, motion_table, path, title, spike_threshold)
        elif key == "fig_tsnr":
            pre = load_nifti(outs["tsnr_pre"], ndim=3)[1]
            post = load_nifti(outs["tsnr_post"], ndim=3)[1]
            write(key, qcfigures.tsnr_figure, pre, post, cord, path, title)
        elif key == "fig_carpet":
            write(key, qcfigures.carpet_figure, q["carpet_before"], q["carpet_after"], int(q["carpet_n_cord"]),
                  conf_df["framewise_displacement"].to_numpy(), conf_df["std_dvars"].to_numpy(), path, title)
        elif key == "fig_confcorr":
            write(key, qcfigures.confounds_correlation_figure, conf_df, q["cord_mean"], path, title)
        elif key == "fig_physio":
            summary = {k.removeprefix("physio_"): v for k, v in q.items() if k.startswith("physio_")}
            write(key, qcfigures.physio_figure, summary, path, title)
        elif key == "fig_native":
            write(key, qcfigures.native_figure, mean_before, mean_raw, field, labels, cord, path,
                  f"{title}: distortion correction and PAM50 regions",
                  f"distortion correction: {str(row['distortion_correction']).split(':')[0]}; registration: "
                  f"{str(row['registration']).split(':')[0]}")


def _missing_figures(outs: dict) -> list | None:
    """Figure keys of a finished run whose PNG is missing; None when they cannot be drawn from
    the saved inputs (no qcinputs file: derivatives of an older version) and some are missing."""
    if outs["qcinputs"].is_file():
        try:
            with np.load(outs["qcinputs"], allow_pickle=False) as z:
                keys = [str(k) for k in z["figures"]]
        except (OSError, ValueError, KeyError, EOFError):  # unreadable: recompute the run
            return None
        return [k for k in keys if not outs[k].is_file()]
    missing = [k for k in _QC_FIGURES_ALWAYS if not outs[k].is_file()]
    return None if missing else []


def _draw_later(outs: dict, row: dict, keys) -> list:
    """Draw the missing figures *keys* of a finished run (all or none: a failure removes the
    figures drawn here and raises)."""
    written = []

    def _w(key, fn, *args):
        written.append(outs[key])
        fn(*args)

    try:
        _draw_qc_figures(outs, keys, row, row.get("parameters", {}).get("spike_threshold"), _w)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return list(keys)


def preprocess_run(bold_path, output_dir, *, motion=True, physio=True, motion_regularize=None,
                   motion_reference="mean", cardiac_order=4, respiratory_order=4, interaction_order=(2, 2),
                   n_csf_components=5, spike_threshold=0.5, motion_regressors=True, high_pass=0.01, low_pass=0.13,
                   strategy=denoise.STRATEGY_DEFAULT, mask_img=None, csf_mask_img=None, anatomy="auto", repetition_time=None, slice_timing=None,
                   figures=True, overwrite=False, distortion=True, registration=True, hr_rvt=False,
                   clean_halves=False, compresslevel: int = 1) -> dict:
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
    strategy : {"simultaneous", "sequential"}
        Band-pass of data and regressors then regression (default, Lindquist et al.
        2019), or regression then band-pass (re-introduces nuisance signal; for
        comparison only); see :func:`spineprint_utils.denoise.slicewise_regression`.
    mask_img, csf_mask_img : path-like, optional
        Cord and CSF masks on the BOLD grid.
    anatomy : {"auto", "atlas", "image", "disk"}
        Mask source when not given: PAM50 tissue maps ("atlas"; "auto" when the run
        is in PAM50 space) or the mean image ("image": the user's EPI cord segmentation or
        :func:`spineprint_utils.cord.find_cord`, an error when the cord is not found;
        "disk": the same, falling back to a 10 mm disc labelled as a guess).
    repetition_time, slice_timing : optional
        Override the sidecar's ``RepetitionTime`` / ``SliceTiming``.
    figures : bool
        Draw the QC figures (PNG, the reportlets of the participant report). Not part of the
        completion key: the figures' inputs are saved either way
        (``<prefix>_desc-qcinputs_arrays.npz``), and a call with ``figures=True`` on a run
        completed with ``figures=False`` (same parameters) draws the missing figures from the
        saved files without recomputing the run (``figures_drawn`` in the result).
    overwrite : bool
        Recompute even if the run's completion marker exists.
    compresslevel : int
        gzip level (0-9) of the preprocessed series (``desc-preproc_bold.nii.gz``). The default
        1 compresses the float32 series ~5x faster than level 6 for a few % more bytes; 0 stores
        it (no compression: ~0.25 s less per default-study run on one core, files ~15-30 %
        larger), for derivatives that are read back at once (the book's cache, chapter 5's sweep
        points, which delete them). Not part of the completion key: the values are the same.
    distortion : bool
        Correct susceptibility distortion when the session has a reverse phase-encoding
        pair (``fmap/*_epi``), on the raw series before motion correction
        (:func:`spineprint_utils.distortion.correct_run`); the estimated field is written as
        ``<prefix>_desc-b0_fieldmap.nii.gz`` (Hz). A pair with bad metadata is a recorded skip.
    registration : bool
        For a run not in PAM50 space whose participant has a T2w image and a cord
        segmentation (:func:`find_anat`): register T2w -> PAM50
        (:func:`spineprint_utils.registration.register_to_template`, cached per T2w under
        ``anat/``) and mean BOLD -> T2w, and take the cord/CSF masks and the horn x segment
        regions from PAM50 through these transforms; writes
        ``<prefix>_atlas-PAM50horns_dseg.nii.gz``/``.tsv`` (used by
        :func:`spineprint_utils.connectivity.connectivity_dataset`) and
        ``<prefix>_from-PAM50_to-bold_xfm.npz``.
    hr_rvt : bool
        Add two low-frequency physiological regressors to the physiological model (when a
        physio file exists): heart rate convolved with the cardiac response function
        (Chang, Cunningham & Glover 2009, NeuroImage 44:857) and respiration volume per time
        (Birn et al. 2006) convolved with the respiration response function (Birn et al.
        2008, NeuroImage 40:644), from :func:`spineprint_utils.physio.hr_rvt_regressors`;
        listed in the confounds as ``physio_hr_crf_slice*`` / ``physio_rvt_rrf_slice*``.
    clean_halves : bool
        Fit the nuisance model (detrend, band-pass of data and regressors, regression)
        separately on each half of the run (:func:`spineprint_utils.denoise.half_blocks`)
        and write the two independently cleaned halves one after the other, for the
        within-session split-half design: a fit over the whole run makes the two halves'
        residuals depend on each other and manufactures split-half similarity even in
        pure noise (:func:`spineprint_utils.drivers.cleaning_leak`). The regressors
        themselves (motion estimates, aCompCor components) are still computed on the whole
        run. Recorded as ``"clean_halves": true`` in the sidecar's ``Parameters`` and in the
        QC row (``clean_halves``); the degrees-of-freedom minimum :data:`MIN_DOF` applies
        to each half. Default False.

    Returns
    -------
    dict
        Output paths (see :func:`run_outputs`) and ``"qc_row"`` (the run's QC dict)
        and ``"skipped"`` (True when the outputs already existed); for a skipped run,
        ``"figures_drawn"`` (the figure keys drawn now from the saved inputs, often none).

    Raises
    ------
    SpineprintError
        NaN/infinite BOLD values, a BOLD that is not 4D, a missing RepetitionTime,
        a SliceTiming of the wrong length, a broken or too short physio recording,
        masks of the wrong shape. Nothing is left in *output_dir* for that run.
    """
    t_start = time.perf_counter()
    bold_path = Path(bold_path)
    if isinstance(compresslevel, bool) or compresslevel not in range(10):
        raise SpineprintError(f"compresslevel must be an integer from 0 to 9, got {compresslevel!r}")
    outs = run_outputs(bold_path, output_dir)
    params = {
        "motion": bool(motion), "motion_regularize": motion_regularize or motion_mod.REGULARIZE_DEFAULT,
        "motion_reference": motion_reference, "physio": bool(physio), "cardiac_order": int(cardiac_order),
        "respiratory_order": int(respiratory_order), "interaction_order": [int(i) for i in interaction_order],
        "n_csf_components": int(n_csf_components), "spike_threshold": spike_threshold,
        "motion_regressors": bool(motion_regressors), "high_pass": high_pass, "low_pass": low_pass,
        "strategy": strategy,
    }
    if hr_rvt:  # in the key only when switched on: existing derivatives stay valid
        params["hr_rvt"] = True
    if clean_halves:  # likewise
        params["clean_halves"] = True
    T_fit = None  # volumes per independent fit (the run, or each half), set once T is known
    native_params = {k: v for k, v in (("distortion", bool(distortion)), ("registration", bool(registration)))
                     if v != _NATIVE_DEFAULTS[k]}  # in the key only when changed: existing derivatives stay valid
    params_key = json.loads(json.dumps({**params, **native_params, "mask_img": str(mask_img), "csf_mask_img": str(csf_mask_img),
                                        "anatomy": anatomy, "repetition_time": repetition_time,
                                        "slice_timing": slice_timing}, default=str))
    if outs["qc"].is_file() and not overwrite and all(p.is_file() for k, p in outs.items()
                                                       if not k.startswith("fig_") and k not in _OPTIONAL_OUTPUTS):
        row = read_json(outs["qc"])
        if row.get("parameters") == params_key:  # same settings: reuse (resumable)
            missing = _missing_figures(outs) if figures else []
            if missing is not None:  # figures not asked for, all there, or drawn now from the saved inputs
                try:
                    drawn = _draw_later(outs, row, missing) if missing else []
                except (KeyError, ValueError, OSError, EOFError, SpineprintError) as exc:
                    # saved inputs unusable (another version's, damaged): the run is recomputed
                    warnings.warn(f"{bold_path.name}: QC figures not drawn from {outs['qcinputs'].name} "
                                  f"({type(exc).__name__}: {exc}); recomputing the run", stacklevel=2)
                else:
                    return {**outs, "qc_row": row, "skipped": True, "figures_drawn": drawn}
    notes: list[str] = []
    # ---- validate every input before writing anything
    meta, tr, st, sidecar = _read_meta(bold_path, repetition_time, slice_timing)
    img, data = load_nifti(bold_path, ndim=4, finite=True)
    X, Y, Z, T = data.shape
    if T < 10:
        raise SpineprintError(f"{bold_path}: only {T} volumes; need at least 10")
    _check_header_tr(img, tr, bold_path, sidecar, notes)
    # the sidecar wins: the derivatives' headers carry its TR (seconds)
    img.header.set_zooms(tuple(img.header.get_zooms()[:3]) + (tr,))
    img.header.set_xyzt_units(xyz=img.header.get_xyzt_units()[0] or "mm", t="sec")
    empty = np.flatnonzero(~np.any(data != 0, axis=(0, 1, 3)))
    if empty.size:
        raise SpineprintError(f"{bold_path}: slice(s) {', '.join(map(str, empty.tolist()))} of {Z} are zero in every "
                              "voxel and volume (empty slices); crop them from the run before preprocessing")
    st, has_st = _check_slice_timing(st, Z, sidecar, notes, tr)
    hp, lp, bp_notes = (denoise.check_bandpass(tr, high_pass, low_pass) if (high_pass or low_pass)
                        else (None, None, []))
    notes += bp_notes
    need = denoise.filter_min_volumes(tr, hp, lp)
    T_fit = T // 2 if clean_halves else T
    if T_fit < need:
        msg = (f"{bold_path.name}: band-pass filter NOT applied: {T_fit} volumes{' per half' if clean_halves else ''} "
               f"are too few for the zero-phase Butterworth filter (needs {need})")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
        hp = lp = None
    with recorded_warnings() as caught:  # physio quality warnings go into the notes too (this run's only)
        phys_regs, phys_names, phys_desc, phys_summary = _physio_model(bold_path, data.shape, tr, st, params, notes)
    for w in caught:
        if str(w.message) not in notes:
            notes.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    # ---- enough volumes for the requested cleaning? (checked before any computation)
    n_planned = ((2 if (params["motion"] and params["motion_regressors"]) else 0)
                 + (phys_regs.shape[2] if phys_regs is not None else 0) + int(params["n_csf_components"]))
    # the regression itself: T volumes, a linear detrend (2) and the planned regressors (spikes, known
    # only after motion correction, can only lower it); at or below MIN_DOF the fit is (nearly) exact
    # and the "cleaned" run a constant. The band-pass lowers the effective dof further
    # (denoise.effective_dof, reported and warned about below, not refused).
    dof_planned = float(T_fit) - 2.0 - n_planned
    if dof_planned <= MIN_DOF:
        raise SpineprintError(
            f"{bold_path}: run too short for the requested cleaning: {T_fit} volumes{' per half' if clean_halves else ''}"
            f" (TR {tr:g} s{'; clean_halves=True' if clean_halves else ''}) leave "
            f"{dof_planned:.0f} degrees of freedom for the regression of {n_planned} regressors per slice and a "
            f"linear trend (minimum {MIN_DOF}); use a longer run or fewer regressors (--no-physio, physio orders, "
            "n_csf_components)")
    # ---- native space: distortion correction of the raw series (before motion), registration to PAM50
    mean_before = data.mean(axis=3)
    data, field_hz, dist_status, pair_paths = _distortion_step(bold_path, img, data, meta, bool(distortion), notes)
    mean_raw = data.mean(axis=3) if field_hz is not None else mean_before
    native, reg_status = None, "off: disabled by the user"
    if registration:
        if mask_img is not None or csf_mask_img is not None:
            reg_status = "not needed: masks given"
        elif anatomy in ("image", "disk"):
            reg_status = f"not needed: anatomy={anatomy!r}"
        elif anatomy == "atlas" or _atlas_source(bold_path, meta, img, mean_raw) is not None:
            reg_status = "not needed: run in PAM50 space"
        else:
            native, reg_status = _registration_step(bold_path, img, mean_raw, Path(output_dir), notes)
            if native is None:
                notes.append(f"{bold_path.name}: not registered to PAM50 ({reg_status}); masks from the mean image")
    if native is not None:
        cord, csf = native["cord"], native["csf"]
        mask_source = (f"{native['epi_mask_source']}; regions via registration (PAM50 -> T2w -> BOLD)"
                       if native["epi_mask_source"] else "atlas via registration (PAM50 -> T2w -> BOLD)")
    else:
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
    motion_table, motion_meta = confounds_mod.motion_table(shifts_mm, fd)
    n_csf = params["n_csf_components"]
    n_csf_vox = int(np.count_nonzero(moco[csf].std(axis=-1) > 0)) if csf.any() else 0
    if n_csf > 0 and n_csf > min(T, n_csf_vox) - 1:
        new = max(min(T, n_csf_vox) - 1, 0)
        notes.append(f"aCompCor: only {n_csf_vox} CSF voxels; {new} components instead of {n_csf}")
        n_csf = new
    csf_comps, csf_expl = (denoise.acompcor(moco, csf, n_csf, return_variance=True) if n_csf > 0
                           else (np.zeros((T, 0)), np.zeros(0)))
    spikes = denoise.spike_regressors(fd, spike_threshold)
    dv, std_dv = confounds_mod.std_dvars(moco, cord)
    motion_design = shifts_mm if (params["motion_regressors"] and params["motion"]) else np.zeros((Z, T, 0))
    phys_design = phys_regs if phys_regs is not None else np.zeros((Z, T, 0))
    slice_design = np.concatenate([motion_design, phys_design], axis=2)
    shared = np.hstack([csf_comps, spikes])
    n_reg = slice_design.shape[2] + shared.shape[1]
    dof = denoise.effective_dof(T_fit, n_reg, t_r=tr, high_pass=hp, low_pass=lp)
    if dof < max(10.0, 0.1 * T_fit):
        msg = (f"{bold_path.name}: only {dof:.0f} degrees of freedom left after the band-pass and {n_reg} "
               f"regressors ({T_fit} volumes{' per half' if clean_halves else ''}): the cleaned signal is unreliable; "
               "use fewer regressors or a longer run")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    clean = denoise.slicewise_regression(moco, slice_design, shared, t_r=tr, high_pass=hp, low_pass=lp,
                                         strategy=strategy, clean_halves=bool(clean_halves))
    tsnr_post = tsnr(clean)
    var = denoise.variance_removed(moco, cord, {"motion": motion_design, "physio": phys_design, "csf": csf_comps,
                                                "spikes": spikes}, t_r=tr, high_pass=hp, low_pass=lp,
                                   cleaned=clean)
    # ---- tables (fMRIPrep's confound names: spineprint_utils.confounds)
    regressed = {name for name, on in (("slice_motion", motion_design.shape[2] > 0),
                                       ("physio", phys_design.shape[2] > 0), ("compcor", csf_comps.shape[1] > 0),
                                       ("outliers", spikes.shape[1] > 0)) if on}
    csf_mean = moco[csf].mean(axis=0) if csf.any() else np.full(T, np.nan)
    conf_df, conf_desc = confounds_mod.confounds_table(
        shifts_mm, fd, dv, std_dv, csf_mean, csf_comps, csf_expl, spike_threshold,
        confounds_mod.cosine_basis(T, tr, hp), phys_design if phys_design.shape[2] else None, phys_names,
        regressed)
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
        "FitBlocks": ("each half of the run cleaned separately (volumes 0..T//2-1 and T//2..T-1)"
                      if clean_halves else "the whole run"),
        "Notes": notes,
    }
    ents = bids_entities(run_prefix(bold_path))
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
        "n_regressors": int(n_reg), "dof_remaining": float(dof), "clean_halves": bool(clean_halves),
        "mask_source": mask_source, "distortion_correction": dist_status, "registration": reg_status,
        "t2w_pam50_dice": native["dice"] if native is not None else float("nan"),
        "func_t2w_cord_dice": native["func_dice"] if native is not None else float("nan"),
        "regions_in_cord_pct": _regions_in_cord_pct(native["labels"], cord) if native is not None else float("nan"),
    }
    # QC of the confounds (report): the largest |r| of the mean cord signal with the motion traces
    cord_mean = moco[cord].mean(axis=0) if cord.any() else np.zeros(T)
    motion_cols = conf_df[["trans_x", "trans_y", "framewise_displacement"]].iloc[1:].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        rs = [np.corrcoef(cord_mean[1:], c)[0, 1] for c in motion_cols.T if np.std(c) > 0]
    row["max_abs_r_motion"] = float(np.nanmax(np.abs(rs))) if rs and np.isfinite(rs).any() else float("nan")
    row["notes"] = list(notes)
    # ---- write (all or nothing)
    written = []

    def _w(key, fn, *args):
        # recorded before writing: an interrupt between the atomic rename and the return must
        # not leave an orphan file (the cleanup below ignores files never created)
        written.append(outs[key])
        fn(*args)

    try:
        root = layout.bids_root(bold_path)
        raw_uri = derivatives.bids_uri(bold_path, root) if root is not None else f"bids:raw:{bold_path.name}"

        def _own(key):  # BIDS URI of one of this run's outputs, inside the derivative dataset
            return derivatives.bids_uri(outs[key], output_dir, name="")

        preproc_meta = {"RepetitionTime": tr, "SkullStripped": False, "Sources": [raw_uri],
                        "SpineprintVersion": __version__, "Parameters": params, "Notes": notes,
                        "PhysiologicalModel": phys_desc, "DistortionCorrection": dist_status,
                        "Registration": reg_status}
        if has_st:
            preproc_meta["SliceTiming"] = [float(s) for s in st]
        preproc_img = _nifti_like(img, clean)
        preproc_img.header.set_xyzt_units("mm", "sec")
        zooms = list(preproc_img.header.get_zooms())
        zooms[3] = tr  # the header's TR is the sidecar's (the one used), never a contradicting one
        preproc_img.header.set_zooms(zooms)
        _w("preproc", _save_nifti_fast, preproc_img, outs["preproc"], int(compresslevel))
        _w("preproc_json", atomic_write_json, outs["preproc_json"], preproc_meta)
        _w("confounds", atomic_write_text, outs["confounds"], _tsv_text(conf_df))
        _w("confounds_json", atomic_write_json, outs["confounds_json"], conf_json)
        _w("motion", atomic_write_text, outs["motion"], _tsv_text(motion_table))
        _w("motion_json", atomic_write_json, outs["motion_json"],
           {**motion_meta, "Sources": [raw_uri, _own("cord_mask"), _own("csf_mask")],
            "Description": "slice-wise in-plane motion (spineprint_utils.motion); the same column names as the "
                           "confounds"})
        ref = img.slicer[..., 0]
        _w("tsnr_pre", atomic_save_nifti, _nifti_like(ref, tsnr_pre), outs["tsnr_pre"])
        _w("tsnr_post", atomic_save_nifti, _nifti_like(ref, tsnr_post), outs["tsnr_post"])
        _w("tsnr_json", atomic_write_json, outs["tsnr_json"], {
            "Description": "temporal SNR (temporal mean / temporal SD): desc-raw before any processing, "
                           "desc-clean after the cleaning", "SkullStripped": False,
            "Sources": [raw_uri, _own("preproc")]})
        _w("cord_mask", atomic_save_nifti, _nifti_like(ref, cord, np.uint8), outs["cord_mask"])
        _w("cord_mask_json", atomic_write_json, outs["cord_mask_json"], {
            "Type": "ROI", "Description": f"spinal cord mask on the run's grid ({mask_source})",
            "Sources": [raw_uri]})
        _w("csf_mask", atomic_save_nifti, _nifti_like(ref, csf, np.uint8), outs["csf_mask"])
        _w("csf_mask_json", atomic_write_json, outs["csf_mask_json"], {
            "Type": "ROI", "Description": f"cerebrospinal fluid mask around the cord ({mask_source})",
            "Sources": [raw_uri]})
        if field_hz is not None:
            _w("fieldmap", atomic_save_nifti, _nifti_like(ref, field_hz), outs["fieldmap"])
            _w("fieldmap_json", atomic_write_json, outs["fieldmap_json"], {
                "Units": "Hz", "SkullStripped": False, "Description": f"B0 field estimated for {bold_path.name} "
                "from its reverse phase-encoding pair (Chang & Fitzpatrick 1992)",
                "Sources": [raw_uri] + [derivatives.bids_uri(q, root) for q in pair_paths]})
            _w("magnitude", atomic_save_nifti, _nifti_like(ref, mean_raw), outs["magnitude"])
            _w("magnitude_json", atomic_write_json, outs["magnitude_json"], {
                "SkullStripped": False, "Description": "mean distortion-corrected BOLD image (the field's reference)",
                "Sources": [raw_uri]})
        if native is not None:
            from . import registration as registration_mod

            _w("dseg", atomic_save_nifti, _nifti_like(ref, native["labels"], np.int16), outs["dseg"])
            _w("dseg_tsv", atomic_write_text, outs["dseg_tsv"],
               native["regions"].rename(columns={"label": "index"}).to_csv(sep="\t", index=False,
                                                                            lineterminator="\n"))
            _w("dseg_json", atomic_write_json, outs["dseg_json"], {
                "Description": "PAM50 gray-matter horn x spinal segment regions brought to the run's grid through "
                               "the registrations (nearest neighbour)", "Atlas": "PAM50 (De Leener 2018)",
                "Sources": [raw_uri, _own("xfm")]})
            _w("xfm", registration_mod.save_transforms, outs["xfm"], native["chain"])
            from . import xfm as xfm_mod

            grid = (tuple(cord.shape), img.affine)
            _w("xfm_itk", xfm_mod.save_itk, native["chain"], outs["xfm_itk"], grid)
            if native["to_func"]:
                _w("xfm_f2a_itk", xfm_mod.save_itk, native["to_func"], outs["xfm_f2a_itk"], grid)
        # the figures' inputs that the files above do not hold, then the figures drawn from those files
        # (the reportlets of the participant report, spineprint_utils.report): the same way as later
        qc_arrays = _qc_inputs(moco, clean, cord, csf, cord_mean, mean_before,
                               phys_summary["_recording"] if applied else None, native, field_hz)
        _w("qcinputs", lambda: atomic_save_npz(outs["qcinputs"], compressed=False, **qc_arrays))  # ~noise: stored
        if figures:
            _draw_qc_figures(outs, [str(k) for k in qc_arrays["figures"]], row, spike_threshold, _w)
        row["runtime_s"] = round(time.perf_counter() - t_start, 2)
        row["parameters"] = params_key
        _w("qc", atomic_write_json, outs["qc"], row)  # completion marker, last
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return {**outs, "qc_row": row, "skipped": False}



# ---------------------------------------------------------------- dataset
def _status_row(run, status: str, reason: str) -> dict:
    ents = run.entities
    return {"run": run.prefix, "subject": ents.get("sub", ""), "session": ents.get("ses", ""),
            "status": status, "reason": reason, "file": str(run.path)}


def _run_one(run, output_dir, params):
    """One run, isolated: a failing run gives a ``failed`` row (file and reason) instead of
    stopping the others (serial, local processes or Dask alike). Interruptions still stop."""
    if run.skip_reason:
        return _status_row(run, "skipped", run.skip_reason)
    if run.problem:
        return _status_row(run, "failed", f"{run.path}: {run.problem}")
    try:
        out = preprocess_run(run.path, output_dir, **params)
    except SpineprintError as exc:
        return _status_row(run, "failed", str(exc))
    except (OSError, MemoryError):  # the machine, not the run (disk full, no memory): stop, clearly
        raise
    except Exception as exc:  # noqa: BLE001 - one bad run must not stop the others; the reason is kept
        return _status_row(run, "failed", f"{run.path}: {type(exc).__name__}: {exc}")
    row = dict(out["qc_row"])
    row.setdefault("status", "ok")
    return row


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


def _dataset_qc(rows: list) -> pd.DataFrame:
    """``qc.tsv``: one row per run of the dataset, ``status`` ok / failed / skipped with the reason."""
    df = pd.DataFrame(rows)
    cols = ["run", "status", "reason"] + [c for c in QC_COLUMNS if c != "run"]
    for col in cols:
        if col not in df.columns:
            df[col] = "" if col in ("status", "reason") else pd.Series(dtype=float)
    df["status"] = df["status"].replace("", "ok").fillna("ok")
    df["reason"] = df["reason"].fillna("")
    return df[cols].sort_values("run", kind="stable").reset_index(drop=True)


def _default_out(a):
    return a["output_dir"] if a["output_dir"] is not None else Path(a["bids_dir"]) / "derivatives" / "spineprint"


def _keep_completed_runs(out: Path):
    """On failure keep what completed runs wrote (a rerun resumes from them), and the
    folder's dataset_description.json with them; with no completed run, keep nothing."""
    state = {}

    def keep(path: Path) -> bool:
        if "done" not in state:
            state["done"] = any(out.glob("**/*_desc-qc_metrics.json"))
        return state["done"]

    return keep


@guarded_output(_default_out, raw_of=lambda a: a["bids_dir"], keep_of=_keep_completed_runs,
                option="the preprocessing output folder (--out)")
def preprocess_dataset(bids_dir, output_dir=None, participants=None, n_jobs: int = 1, scheduler=None,
                       progress: bool = True, reports: bool | None = None, **run_params) -> Path:
    """Preprocess every BOLD run of a BIDS dataset (resumable, one run's failure isolated).

    Parameters
    ----------
    bids_dir : path-like
    output_dir : path-like, optional
        Default ``<bids_dir>/derivatives/spineprint``.
    participants : sequence of str, optional
    n_jobs, scheduler : see :func:`spineprint_utils.parallel.parallel_map`; local worker processes
        are capped at the CPUs this process may use (:func:`spineprint_utils.parallel.available_cpus`:
        on a one-CPU Binder session extra workers would only add their start-up cost).
    progress : bool
    reports : bool, optional
        Build the HTML QC reports (``sub-<label>.html`` per participant and ``group.html``,
        :func:`spineprint_utils.report.build_reports`) at the end. Default: when the QC figures
        are drawn (``figures``, default True), since the reports show them. With
        ``figures=False`` (e.g. a chapter that only needs the cleaned data) the runs still save
        the figures' inputs, and a later call with ``figures=True`` draws the figures from them
        without recomputing the runs, then builds the reports.
    **run_params
        Passed to :func:`preprocess_run` (see :data:`RUN_DEFAULTS`).

    Returns
    -------
    Path
        The derivatives folder, holding ``dataset_description.json`` and ``qc.tsv``
        (every run with its ``status``: ``ok``, ``failed`` or ``skipped``, and the
        ``reason``). A failing run leaves no derivative and does not stop the others; it
        is listed in ``qc.tsv`` and in a warning (:func:`failed_runs` reads them back).

    Raises
    ------
    SpineprintError
        No run at all, an unknown participant, or every run failed.
    """
    bids_dir = Path(bids_dir)
    runs = find_runs(bids_dir, participants, include_skipped=True)
    out = Path(output_dir) if output_dir is not None else bids_dir / "derivatives" / "spineprint"
    params = {**RUN_DEFAULTS, **run_params}
    params["interaction_order"] = list(params["interaction_order"])
    name = "spineprint preprocessing"
    src = bids_dir / "dataset_description.json"
    if src.is_file():
        name = f"{read_json(src).get('Name', bids_dir.name)} - spineprint preprocessing"
    import os

    try:
        link = Path(os.path.relpath(bids_dir.resolve(), out.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        link = bids_dir.resolve().as_uri()
    desc = {
        "Name": name, "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "DatasetLinks": {"raw": link},
        "GeneratedBy": [{"Name": "spineprint", "Version": __version__,
                         "Description": "distortion correction (reverse-PE pairs), registration to PAM50 (native "
                                        "runs), slice-wise motion correction, RETROICOR, aCompCor, spikes, band-pass",
                         "Parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}}],
    }
    atomic_write_json(out / "dataset_description.json", desc)
    if n_jobs is not None and int(n_jobs) > 1:
        n_jobs = min(int(n_jobs), available_cpus())
    rows = parallel_map(functools.partial(_run_one, output_dir=out, params=params), runs, n_jobs=n_jobs,
                        scheduler=scheduler, desc="preprocess", progress=progress)
    qc = _dataset_qc(rows)
    failed = qc[qc["status"] == "failed"]
    if len(failed) and not (qc["status"] == "ok").any():
        # nothing usable: one clear error (the reason names the file), no table of failures left behind
        more = f" (and {len(failed) - 1} other run(s))" if len(failed) > 1 else ""
        raise SpineprintError(f"{failed['reason'].iloc[0]}{more}")
    atomic_write_text(out / "qc.tsv", qc.to_csv(sep="\t", index=False, na_rep="n/a"))
    if len(failed):
        lines = "\n".join(f"  {r}: {why}" for r, why in zip(failed["run"], failed["reason"]))
        warnings.warn(f"{len(failed)} of {len(qc)} run(s) failed (listed in {out / 'qc.tsv'}):\n{lines}",
                      stacklevel=2)
    derivatives.write_bidsignore(out)  # with the other dataset-level files, once runs exist
    from . import report

    if reports is None:  # the reports show the figures: built when they are drawn
        reports = bool(run_params.get("figures", True))
    if reports:
        report.build_reports(out)  # sub-<label>.html per participant and group.html (spineprint_utils.report)
    return out


def failed_runs(deriv_dir) -> pd.DataFrame:
    """Runs of the last :func:`preprocess_dataset` that failed or were skipped (``run``,
    ``status``, ``reason``), from ``qc.tsv``."""
    path = Path(deriv_dir) / "qc.tsv"
    if not path.is_file():
        return pd.DataFrame(columns=["run", "status", "reason"])
    qc = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    if "status" not in qc.columns:
        return pd.DataFrame(columns=["run", "status", "reason"])
    return qc.loc[qc["status"] != "ok", ["run", "status", "reason"]].reset_index(drop=True)


# ---------------------------------------------------------------- CLI
def _cli(args) -> int:
    params = {}
    if args.no_physio:
        params["physio"] = False
    if args.no_motion:
        params["motion"] = False
    if args.no_distortion:
        params["distortion"] = False
    if args.no_registration:
        params["registration"] = False
    if args.hr_rvt:
        params["hr_rvt"] = True
    if args.clean_halves:
        params["clean_halves"] = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\d+ of \d+ run\(s\) failed")  # summarised below
        out = preprocess_dataset(args.bids_dir, args.out, participants=args.participant_label, n_jobs=args.n_jobs,
                                 scheduler=args.scheduler, **params)
    qc = load_qc_table(out)
    bad_runs = failed_runs(out)
    qc = qc[qc["run"].isin(pd.read_csv(out / "qc.tsv", sep="\t", dtype=str, keep_default_na=False)["run"])]
    print(f"preprocessed {len(qc)} run(s) into {out}")
    print(f"QC table: {out / 'qc.tsv'}")
    for col, what in (("distortion_correction", "distortion correction"), ("registration", "registration to PAM50")):
        done = qc[col].astype(str).str.startswith("applied")
        if done.any():
            print(f"{what}: applied to {int(done.sum())} run(s)")
        bad = qc.loc[qc[col].astype(str).str.startswith("skip") & ~qc[col].astype(str).str.contains(
            "no reverse phase-encoding|no T2w", regex=True), "run"].tolist()
        if bad:
            print(f"WARNING: {what} skipped for {len(bad)} run(s) (see qc.tsv): {', '.join(bad)}")
    no_phys = qc.loc[qc["physio_model_applied"] == "no", "run"].tolist()
    if no_phys:
        print(f"WARNING: no physiological noise model for {len(no_phys)} run(s): {', '.join(no_phys)}")
    skipped = bad_runs[bad_runs["status"] == "skipped"]
    for r, why in zip(skipped["run"], skipped["reason"]):
        print(f"skipped {r}: {why}")
    failed = bad_runs[bad_runs["status"] == "failed"]
    if len(failed):
        print(f"FAILED: {len(failed)} run(s) (see qc.tsv):", file=sys.stderr)
        for r, why in zip(failed["run"], failed["reason"]):
            print(f"  {r}: {why}", file=sys.stderr)
        return 1
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
    p.add_argument("--hr-rvt", action="store_true",
                   help="add heart-rate (CRF) and respiration-volume (RRF) regressors to the physio model")
    p.add_argument("--clean-halves", action="store_true",
                   help="fit the nuisance cleaning separately on each half of every run (for the within-session "
                        "split-half design; default: the whole run)")
    p.add_argument("--no-distortion", action="store_true",
                   help="skip susceptibility distortion correction (done when fmap/*_epi pairs exist)")
    p.add_argument("--no-registration", action="store_true",
                   help="skip registration to PAM50 (done for non-PAM50 runs with anat/*_T2w + a cord segmentation)")
    p.set_defaults(func=_cli)

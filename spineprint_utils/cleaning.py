"""Compare nuisance-cleaning choices on one run: order of filter and regression, physiological-model order.

Chapter 02 uses :func:`compare_cleaning` to show, on the simulated study and on a real
run, what the choices of :func:`spineprint_utils.denoise.slicewise_regression` and of the
RETROICOR model order do, instead of tuning them to the simulator:

- **order of filter and regression** (``strategy``): ``"simultaneous"`` (the default:
  data and regressors band-passed alike, then the filtered regressors projected out, as
  :func:`nilearn.signal.clean`) or ``"sequential"`` (regress on the full bandwidth, then
  band-pass the residuals). Lindquist et al. (2019) show that the sequential order
  re-introduces nuisance signal: :func:`reintroduced_nuisance` measures it as the
  correlation between the cleaned voxel series and the band-passed regressors of their
  slice (0 up to rounding for the simultaneous order);
- **RETROICOR orders** (Glover et al. 2000; Harvey et al. 2008), see :data:`PHYSIO_MODELS`.

The other steps are those of :func:`spineprint_utils.preprocess.preprocess_run`
(slice-wise motion correction, aCompCor, spike regressors, the slice-wise motion
parameters as regressors); motion is estimated once and every combination cleans the
same motion-corrected series, so the differences come from the cleaning alone.

References
----------
Glover GH, Li TQ, Ress D (2000). Image-based method for retrospective correction of
physiological motion effects in fMRI: RETROICOR. Magn Reson Med 44:162-167.
Harvey AK, Pattinson KTS, Brooks JCW, et al. (2008). Brainstem functional magnetic
resonance imaging: disentangling signal from physiological noise. J Magn Reson Imaging
28:1337-1344.
Kaptan M, Horn U, Vannesjo SJ, et al. (2023). Reliability of resting-state functional
connectivity in the human spinal cord. NeuroImage 275:120152.
Lindquist MA, Geuter S, Wager TD, Caffo BS (2019). Modular preprocessing pipelines can
reintroduce artifacts into fMRI data. Hum Brain Mapp 40:2358-2376. doi:10.1002/hbm.24528
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import SpineprintError, load_nifti

__all__ = ["PHYSIO_MODELS", "STRATEGIES", "CleaningComparison", "reintroduced_nuisance", "compare_cleaning",
           "match_reference_signals"]

#: RETROICOR models compared: name -> (cardiac order, respiratory order, (interaction orders)) or None
PHYSIO_MODELS = {
    "none": None,
    "2/1/(0x0), FSL pnm_evs defaults": (2, 1, (0, 0)),
    "2/2/(0x0), Glover et al. 2000": (2, 2, (0, 0)),
    "4/4/(2x2), usual spinal setting": (4, 4, (2, 2)),
}
#: orders of filter and regression compared (the first is the pipeline's default)
STRATEGIES = ("simultaneous", "sequential")


def reintroduced_nuisance(cleaned, design, *, t_r, high_pass=None, low_pass=None) -> np.ndarray:
    """|Pearson r| between cleaned series and the band-passed regressors (Lindquist et al. 2019).

    Each regressor is linearly detrended and band-passed with the filter of
    :func:`spineprint_utils.denoise.slicewise_regression` (order-5 zero-phase
    Butterworth, as :func:`nilearn.signal.butterworth`); after cleaning that projects
    the filtered regressors out, every correlation is 0 up to rounding, while
    "regress, then filter" leaves some of it.

    Parameters
    ----------
    cleaned : ndarray, (T, V)
        Cleaned voxel time series.
    design : ndarray, (T, P)
        The regressors used to clean them.
    t_r : float
        Repetition time (s).
    high_pass, low_pass : float or None
        Cut-offs (Hz) used for the cleaning.

    Returns
    -------
    ndarray, (V, P)
        Absolute correlations (NaN for a constant series or regressor).
    """
    from . import denoise

    Y = np.asarray(cleaned, dtype=np.float64)
    C = np.asarray(design, dtype=np.float64)
    if Y.ndim != 2 or C.ndim != 2 or Y.shape[0] != C.shape[0]:
        raise SpineprintError(f"reintroduced_nuisance: cleaned (T, V) and design (T, P) must share T, "
                              f"got {Y.shape} and {C.shape}")
    C = denoise._detrend(C)
    if high_pass is not None or low_pass is not None:
        C = denoise._butterworth(C, t_r, high_pass, low_pass)
    Yc, Cc = Y - Y.mean(axis=0), C - C.mean(axis=0)
    ny, nc = np.linalg.norm(Yc, axis=0), np.linalg.norm(Cc, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (Yc.T @ Cc) / np.outer(ny, nc)
    return np.abs(r)


@dataclasses.dataclass
class CleaningComparison:
    """Result of :func:`compare_cleaning`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (physiological model, strategy): ``model``, ``strategy``,
        ``n_regressors`` (per slice: motion + RETROICOR + CSF components + spikes),
        ``dof`` (:func:`spineprint_utils.denoise.effective_dof`), ``tsnr_cord`` (mean over
        the cord of :func:`spineprint_utils.preprocess.tsnr` after cleaning),
        ``reintroduced_mean`` / ``reintroduced_max`` (mean and largest |r| of
        :func:`reintroduced_nuisance` over cord voxels and regressors of their slice).
    cleaned : dict
        ``(model, strategy) -> ndarray (X, Y, Z, T)`` float32 (cord voxels cleaned, the rest
        as motion-corrected).
    cord : ndarray (X, Y, Z) bool
    notes : list of str
        What could not be compared and why (no physio recording, filter too long...).
    t_r, high_pass, low_pass : the settings used.
    """

    table: pd.DataFrame
    cleaned: dict
    cord: np.ndarray
    notes: list
    t_r: float
    high_pass: float | None
    low_pass: float | None


def compare_cleaning(bold_path, *, models=None, strategies=STRATEGIES, n_csf_components: int = 5,
                     spike_threshold=0.5, high_pass=0.01, low_pass=0.13, motion_regularize=None,
                     repetition_time=None, anatomy: str = "auto") -> CleaningComparison:
    """Clean one run with every (physiological model, strategy) pair and measure each.

    Parameters
    ----------
    bold_path : path-like
        A BIDS ``_bold.nii.gz`` run (sidecar read for ``RepetitionTime``/``SliceTiming``;
        physio recording found by :func:`spineprint_utils.physio.find_physio`).
    models : dict, optional
        Name -> ``(cardiac, respiratory, (interaction, interaction))`` or None (no
        RETROICOR); default :data:`PHYSIO_MODELS`. Without a physio recording only the
        models that are None are run (a note says so).
    strategies : sequence of {"simultaneous", "sequential"}
    n_csf_components, spike_threshold, motion_regularize, anatomy :
        As in :func:`spineprint_utils.preprocess.preprocess_run`.
    high_pass, low_pass : float or None
        Band-pass (Hz). A series too short for nilearn's Butterworth filter is an error
        (pass ``low_pass=None`` or both None).
    repetition_time : float, optional
        Overrides the sidecar's ``RepetitionTime``.

    Returns
    -------
    CleaningComparison

    Raises
    ------
    SpineprintError
        Unreadable run, missing TR, a filter the series is too short for, unknown strategy.
    """
    from . import denoise, motion, physio, preprocess

    bold_path = Path(bold_path)
    models = dict(PHYSIO_MODELS if models is None else models)
    for s in strategies:
        if s not in STRATEGIES:
            raise SpineprintError(f"unknown cleaning strategy {s!r}: use {', '.join(STRATEGIES)}")
    meta, tr, st, _ = preprocess._read_meta(bold_path, repetition_time, None)
    img, data = load_nifti(bold_path, ndim=4)
    data = np.asarray(data, dtype=np.float32)
    X, Y, Z, T = data.shape
    hp, lp, notes = (high_pass, low_pass, []) if high_pass is None and low_pass is None else \
        denoise.check_bandpass(tr, high_pass, low_pass)
    need = denoise.filter_min_volumes(tr, hp, lp)
    if T < need:
        raise SpineprintError(f"{bold_path.name}: {T} volumes, the band-pass {hp}-{lp} Hz needs at least {need}; "
                              "pass low_pass=None (high-pass only) or no filter")
    cord, csf, _ = preprocess.run_masks(bold_path, anatomy=anatomy)
    vs = img.header.get_zooms()[:2]
    mres = motion.motion_correct(data, preprocess.estimation_mask(cord, csf),
                                 regularize=motion_regularize or motion.REGULARIZE_DEFAULT, voxel_size=vs)
    moco = mres.corrected
    shifts_mm = mres.shifts * np.asarray(vs, float)
    n_csf_vox = int(np.count_nonzero(moco[csf].std(axis=-1) > 0)) if csf.any() else 0
    n_csf = min(int(n_csf_components), max(min(T, n_csf_vox) - 1, 0))
    if n_csf < n_csf_components:
        notes.append(f"aCompCor: {n_csf} components instead of {n_csf_components} ({n_csf_vox} CSF voxels)")
    shared = np.hstack([denoise.acompcor(moco, csf, n_csf) if n_csf > 0 else np.zeros((T, 0)),
                        denoise.spike_regressors(mres.fd, spike_threshold)])
    phys_path = physio.find_physio(bold_path)
    rec = physio.load_physio(phys_path) if phys_path is not None else None
    if rec is None:
        notes.append(f"{bold_path.name}: no physio recording; only the models without RETROICOR are compared")
    if st is None:
        st = np.zeros(Z)
    rows, cleaned = [], {}
    for name, orders in models.items():
        if orders is not None and rec is None:
            continue
        if orders is None:
            phys = np.zeros((Z, T, 0))
        else:
            co, ro, io = orders
            phys, _ = physio.slice_regressors(rec, T, tr, np.asarray(st, float), int(co), int(ro),
                                              tuple(int(i) for i in io))
        slice_design = np.concatenate([shifts_mm, phys], axis=2)
        n_reg = slice_design.shape[2] + shared.shape[1]
        dof = denoise.effective_dof(T, n_reg, t_r=tr, high_pass=hp, low_pass=lp)
        for strategy in strategies:
            out = denoise.slicewise_regression(moco, slice_design, shared, mask=cord, t_r=tr, high_pass=hp,
                                               low_pass=lp, strategy=strategy)
            rs = []
            for z in range(Z):
                m = cord[:, :, z]
                if not m.any():
                    continue
                design = np.hstack([slice_design[z], shared])
                design = design[:, np.ptp(design, axis=0) > 0]
                if design.shape[1]:
                    rs.append(reintroduced_nuisance(out[:, :, z, :][m].T, design, t_r=tr, high_pass=hp,
                                                    low_pass=lp).ravel())
            r = np.concatenate(rs) if rs else np.zeros(0)
            r = r[np.isfinite(r)]
            rows.append({"model": name, "strategy": strategy, "n_regressors": int(n_reg), "dof": float(dof),
                         "tsnr_cord": float(preprocess.tsnr(out)[cord].mean()) if cord.any() else float("nan"),
                         "reintroduced_mean": float(r.mean()) if r.size else float("nan"),
                         "reintroduced_max": float(r.max()) if r.size else float("nan")})
            cleaned[(name, strategy)] = out
    return CleaningComparison(table=pd.DataFrame(rows), cleaned=cleaned, cord=cord, notes=notes, t_r=float(tr),
                              high_pass=hp, low_pass=lp)


def match_reference_signals(data, labels, reference) -> float:
    """Mean over regions of the Pearson correlation between a region's mean signal and its reference.

    Parameters
    ----------
    data : ndarray, (X, Y, Z, T)
    labels : ndarray, (X, Y, Z) int
        Region labels 1..R (0 = background).
    reference : ndarray, (T, R)
        One reference time series per label (e.g. the simulator's planted neural signals).

    Returns
    -------
    float
    """
    data = np.asarray(data)
    labels = np.asarray(labels)
    reference = np.asarray(reference, dtype=np.float64)
    ids = [int(v) for v in np.unique(labels) if v > 0]
    if reference.ndim != 2 or reference.shape[0] != data.shape[-1] or reference.shape[1] < max(ids, default=0):
        raise SpineprintError(f"reference signals must be (T={data.shape[-1]}, R>={max(ids, default=0)}), "
                              f"got {reference.shape}")
    rs = [np.corrcoef(np.asarray(data[labels == i], dtype=np.float64).mean(axis=0), reference[:, i - 1])[0, 1]
          for i in ids]
    return float(np.nanmean(rs)) if rs else float("nan")

"""Confounds tables in fMRIPrep's conventions (one set of column names).

The confounds of a run (``<prefix>_desc-confounds_timeseries.tsv`` + ``.json``) follow the
column names of fMRIPrep (Esteban et al. 2019; BEP012), so that
``nilearn.interfaces.fmriprep.load_confounds`` reads them with the ``motion``,
``high_pass``, ``compcor`` and ``scrub`` strategies:

- ``trans_x``, ``trans_y`` (mm): the slice-wise in-plane translations averaged over slices;
  ``trans_z``, ``rot_x``, ``rot_y``, ``rot_z`` are written as 0 because the slice-wise model
  (in-plane translations per slice, :mod:`spineprint_utils.motion`) does not estimate them
  (the JSON says so); each with ``_derivative1`` (backward difference, ``n/a`` in the first
  row), ``_power2`` and ``_derivative1_power2`` (Friston et al. 1996; Satterthwaite et al. 2013);
- ``framewise_displacement`` (mm, Power et al. 2012; ``n/a`` in the first row);
- ``dvars`` and ``std_dvars`` (Power et al. 2012; standardised as Nichols 2017 / nipype
  ``ComputeDVARS``; ``n/a`` in the first row), in the cord mask;
- ``csf``: the mean signal in the CSF mask;
- ``c_comp_cor_NN``: aCompCor components of the CSF mask (Behzadi et al. 2007), with
  ``Method``, ``Mask``, ``VarianceExplained``, ``CumulativeVarianceExplained`` and
  ``Retained`` in the JSON (as fMRIPrep);
- ``cosineNN``: discrete cosine basis of the high-pass filter (as nilearn/fMRIPrep);
- ``motion_outlierNN``: one column per volume with FD above the threshold (1 at that volume);
- extra spinal columns: slice-wise translations ``trans_x_sliceNN``/``trans_y_sliceNN`` (mm,
  regressed from their slice only) and physiological regressors ``physio_<name>_sliceNN``
  (RETROICOR, sampled at each slice's acquisition time, regressed from their slice only).

The motion table (``<prefix>_desc-motion_timeseries.tsv``) uses the same names for the same
values (slice-wise columns, ``trans_x``, ``trans_y``, ``framewise_displacement``).

References
----------
Behzadi Y, Restom K, Liau J, Liu TT (2007). A component based noise correction method (CompCor)
for BOLD and perfusion based fMRI. NeuroImage 37:90-101.

Esteban O, Markiewicz CJ, Blair RW, et al. (2019). fMRIPrep: a robust preprocessing pipeline for
functional MRI. Nature Methods 16:111-116.

Friston KJ, Williams S, Howard R, Frackowiak RS, Turner R (1996). Movement-related effects in fMRI
time-series. Magnetic Resonance in Medicine 35:346-355.

Nichols TE (2017). Notes on creating a standardized version of DVARS. arXiv:1704.01469.

Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE (2012). Spurious but systematic
correlations in functional connectivity MRI networks arise from subject motion. NeuroImage
59:2142-2154.

Satterthwaite TD, Elliott MA, Gerraty RT, et al. (2013). An improved framework for confound
regression and filtering for control of motion artifact in the preprocessing of resting-state
functional connectivity data. NeuroImage 64:240-256.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._io import SpineprintError

__all__ = ["MOTION_PARAMS", "std_dvars", "cosine_basis", "motion_table", "confounds_table"]

#: fMRIPrep's six rigid-body parameters (only trans_x/trans_y are estimated here)
MOTION_PARAMS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def std_dvars(data, mask) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS in a mask.

    ``DVARS_t = sqrt(mean_v (I_{v,t} - I_{v,t-1})^2)`` (Power et al. 2012), and its
    standardised form ``DVARS_t / mean_v(sqrt(2 (1 - rho_v)) * s_v)`` with ``s_v`` the robust
    temporal SD of voxel ``v`` (interquartile range / 1.349) and ``rho_v`` its lag-1
    autocorrelation (Yule-Walker): the expected DVARS of a stationary series, so that
    ``std_dvars`` is about 1 without artefacts (Nichols 2017; as nipype ``ComputeDVARS``
    used by fMRIPrep).

    Parameters
    ----------
    data : ndarray, (X, Y, Z, T)
    mask : ndarray, (X, Y, Z) bool

    Returns
    -------
    dvars, std_dvars : ndarray, (T,)
        NaN at ``t = 0`` (no previous volume).
    """
    data = np.asarray(data)
    mask = np.asarray(mask, bool)
    if mask.shape != data.shape[:3]:
        raise SpineprintError(f"DVARS: mask shape {mask.shape} does not match the data {data.shape[:3]}")
    Y = np.asarray(data[mask], dtype=np.float64)  # (V, T)
    T = Y.shape[-1]
    out = np.full(T, np.nan)
    std = np.full(T, np.nan)
    if Y.shape[0] == 0 or T < 2:
        return out, std
    out[1:] = np.sqrt(np.mean(np.diff(Y, axis=1) ** 2, axis=0))
    Yc = Y - Y.mean(axis=1, keepdims=True)
    q75, q25 = np.percentile(Yc, [75, 25], axis=1)
    sd = (q75 - q25) / 1.349
    denom = np.sum(Yc * Yc, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denom > 0, np.sum(Yc[:, 1:] * Yc[:, :-1], axis=1) / denom, 0.0)
    expected = float(np.mean(np.sqrt(np.clip(2.0 * (1.0 - rho), 0.0, None)) * sd))
    if expected > 0:
        std[1:] = out[1:] / expected
    return out, std


def cosine_basis(n_volumes: int, tr: float, high_pass: float | None) -> np.ndarray:
    """Discrete cosine (DCT-II) basis of a high-pass filter at *high_pass* Hz.

    Columns ``sqrt(2/n) cos(pi k (t + 1/2) / n)`` for ``k = 1..K``,
    ``K = min(n - 1, floor(2 n TR f_hp))`` (nilearn ``_cosine_drift``, as fMRIPrep's
    ``cosineNN``; without the constant column).

    Returns
    -------
    ndarray, (n_volumes, K); ``K = 0`` without a high-pass.
    """
    n = int(n_volumes)
    if not high_pass:
        return np.zeros((n, 0))
    k_max = int(min(n - 1, np.floor(2 * n * float(high_pass) * float(tr))))
    t = np.arange(n)[:, None]
    k = np.arange(1, k_max + 1)[None, :]
    return np.sqrt(2.0 / n) * np.cos(np.pi / n * (t + 0.5) * k)


def _backward_diff(x):
    d = np.full(x.shape, np.nan)
    d[1:] = np.diff(x, axis=0)
    return d


def _slice_columns(shifts_mm):
    shifts_mm = np.asarray(shifts_mm, dtype=float)
    cols, meta = {}, {}
    for z in range(shifts_mm.shape[0]):
        for a, ax in enumerate("xy"):
            name = f"trans_{ax}_slice{z:02d}"
            cols[name] = shifts_mm[z, :, a]
            meta[name] = {"Description": f"slice-wise {ax} translation of slice {z} (in-plane, scanner "
                                         f"voxel axis {ax}), regressed from slice {z} only", "Units": "mm"}
    return cols, meta


def motion_table(shifts_mm, fd) -> tuple[pd.DataFrame, dict]:
    """The motion table and its sidecar: slice-wise translations, their slice average and FD.

    Parameters
    ----------
    shifts_mm : ndarray, (Z, T, 2)
        In-plane translations (mm) of each slice and volume.
    fd : ndarray, (T,)
        Framewise displacement (mm); the first value is written as ``n/a``.

    Returns
    -------
    table : DataFrame, (T, 2 Z + 3)
    meta : dict
        Column descriptions (the JSON sidecar).
    """
    shifts_mm = np.asarray(shifts_mm, dtype=float)
    cols, meta = _slice_columns(shifts_mm)
    mean = shifts_mm.mean(axis=0) if shifts_mm.shape[0] else np.zeros((shifts_mm.shape[1], 2))
    for a, ax in enumerate("xy"):
        cols[f"trans_{ax}"] = mean[:, a]
        meta[f"trans_{ax}"] = {"Description": f"{ax} translation averaged over slices", "Units": "mm"}
    fd = np.asarray(fd, dtype=float).copy()
    if fd.size:
        fd[0] = np.nan
    cols["framewise_displacement"] = fd
    meta["framewise_displacement"] = {
        "Description": "framewise displacement (Power 2012): sum of the absolute backward differences of "
                       "trans_x and trans_y (rotations are not estimated by the slice-wise model); n/a in "
                       "the first volume", "Units": "mm"}
    return pd.DataFrame(cols), meta


def confounds_table(shifts_mm, fd, dvars, std_dvars_, csf_mean, compcor, compcor_variance, outlier_threshold,
                    cosine, physio_regs=None, physio_names=(), regressed=(), extra=None) -> tuple[pd.DataFrame, dict]:
    """All confounds of a run in fMRIPrep's column names, with their JSON metadata.

    Parameters
    ----------
    shifts_mm : ndarray, (Z, T, 2)
        Slice-wise in-plane translations (mm).
    fd, dvars, std_dvars_ : ndarray, (T,)
        Framewise displacement (mm), DVARS and standardised DVARS (first value ``n/a``).
    csf_mean : ndarray, (T,)
        Mean signal in the CSF mask.
    compcor : ndarray, (T, K)
        aCompCor components of the CSF mask.
    compcor_variance : ndarray, (K,)
        Fraction of the CSF variance each explains.
    outlier_threshold : float or None
        FD threshold (mm) of the ``motion_outlierNN`` columns (``None``: none).
    cosine : ndarray, (T, C)
        High-pass cosine basis (:func:`cosine_basis`).
    physio_regs : ndarray, (Z, T, P), optional
    physio_names : sequence of str, length P
    regressed : collection of str
        Groups regressed from the data by the pipeline (``"slice_motion"``, ``"physio"``,
        ``"compcor"``, ``"outliers"``), stated in the JSON descriptions.
    extra : dict, optional
        Further ``name -> (values, metadata)`` columns.

    Returns
    -------
    table : DataFrame, (T, n_columns)
    meta : dict
        One entry per column.
    """
    shifts_mm = np.asarray(shifts_mm, dtype=float)
    T = shifts_mm.shape[1] if shifts_mm.ndim == 3 else len(fd)
    regressed = set(regressed)
    cols, meta = {}, {}
    mean = shifts_mm.mean(axis=0) if shifts_mm.shape[0] else np.zeros((T, 2))
    not_estimated = ("not estimated: the slice-wise model estimates in-plane translations only; "
                     "written as 0 so that six-parameter motion strategies run")
    for i, name in enumerate(MOTION_PARAMS):
        x = mean[:, i] if i < 2 else np.zeros(T)
        desc = (f"{name[-1]} translation averaged over slices (mm)" if i < 2 else not_estimated)
        units = "mm" if i < 3 else "rad"
        d = _backward_diff(x)
        for suffix, values, what in (("", x, desc), ("_derivative1", d, "backward difference of " + name),
                                     ("_power2", x ** 2, "square of " + name),
                                     ("_derivative1_power2", d ** 2, f"square of {name}_derivative1")):
            cols[name + suffix] = values
            meta[name + suffix] = {"Description": what + ("; n/a in the first volume" if "derivative" in suffix
                                                          else "") + (" (not regressed by spineprint)" if
                                                                      suffix or i < 2 else ""),
                                   "Units": units + ("^2" if "power2" in suffix else "")}
    fd = np.asarray(fd, dtype=float).copy()
    fd[0] = np.nan
    cols["framewise_displacement"] = fd
    meta["framewise_displacement"] = {"Description": "framewise displacement (Power 2012) of trans_x/trans_y; "
                                      "n/a in the first volume (not regressed)", "Units": "mm"}
    cols["dvars"] = np.asarray(dvars, dtype=float)
    meta["dvars"] = {"Description": "DVARS (Power 2012) in the cord mask after motion correction; n/a in the "
                     "first volume (not regressed)"}
    cols["std_dvars"] = np.asarray(std_dvars_, dtype=float)
    meta["std_dvars"] = {"Description": "standardised DVARS (Nichols 2017, as nipype ComputeDVARS): DVARS / its "
                         "expected value from the voxels' robust SD and lag-1 autocorrelation (not regressed)"}
    cols["csf"] = np.asarray(csf_mean, dtype=float)
    meta["csf"] = {"Description": "mean signal in the CSF mask (not regressed; the CSF is modelled by "
                   "c_comp_cor_NN)"}
    compcor = np.asarray(compcor, dtype=float).reshape(T, -1)
    var = np.asarray(compcor_variance, dtype=float)
    cum = np.cumsum(var)
    for k in range(compcor.shape[1]):
        name = f"c_comp_cor_{k:02d}"
        cols[name] = compcor[:, k]
        meta[name] = {"Method": "aCompCor", "Mask": "CSF", "VarianceExplained": float(var[k]),
                      "CumulativeVarianceExplained": float(cum[k]), "Retained": True,
                      "Description": f"aCompCor (Behzadi 2007) component {k} of the CSF mask"
                                     + (" (regressed)" if "compcor" in regressed else " (not regressed)")}
    cosine = np.asarray(cosine, dtype=float).reshape(T, -1)
    for k in range(cosine.shape[1]):
        cols[f"cosine{k:02d}"] = cosine[:, k]
        meta[f"cosine{k:02d}"] = {"Description": f"discrete cosine basis function {k + 1} of the high-pass "
                                  "filter (the pipeline applies the filter itself; not regressed)"}
    if outlier_threshold is not None and np.isfinite(outlier_threshold):
        idx = np.flatnonzero(np.nan_to_num(fd, nan=0.0) > outlier_threshold)
        for k, vol in enumerate(idx):
            col = np.zeros(T)
            col[vol] = 1.0
            cols[f"motion_outlier{k:02d}"] = col
            meta[f"motion_outlier{k:02d}"] = {
                "Description": f"volume {int(vol)}: framewise displacement > {outlier_threshold} mm"
                               + (" (regressed)" if "outliers" in regressed else " (not regressed)")}
    scols, smeta = _slice_columns(shifts_mm)
    for k, v in smeta.items():
        if "slice_motion" not in regressed:
            v["Description"] = v["Description"].replace("regressed from slice", "not regressed; would apply to slice")
    cols.update(scols)
    meta.update(smeta)
    if physio_regs is not None:
        physio_regs = np.asarray(physio_regs, dtype=float)
        for z in range(physio_regs.shape[0]):
            for p in range(physio_regs.shape[2]):
                name = physio_names[p] if p < len(physio_names) else f"r{p:02d}"
                col = f"physio_{name}_slice{z:02d}"
                cols[col] = physio_regs[z, :, p]
                meta[col] = {"Description": f"physiological regressor {name} sampled at the acquisition time of "
                             f"slice {z}" + (", regressed from slice {z} only".format(z=z) if "physio" in regressed
                                            else " (not regressed)")}
    for name, (values, m) in (extra or {}).items():
        cols[name] = np.asarray(values, dtype=float)
        meta[name] = dict(m)
    return pd.DataFrame(cols), meta

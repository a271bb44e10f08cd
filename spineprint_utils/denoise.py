"""Nuisance signals and slice-wise cleaning for spinal cord fMRI.

- :func:`acompcor`: principal components of the CSF signal (aCompCor, Behzadi et al. 2007).
- :func:`dvars`, :func:`spike_regressors`: outlier volumes (Power et al. 2012) as
  one-hot "spike" regressors (Lemieux et al. 2007; Satterthwaite et al. 2013).
- :func:`slicewise_regression`: for every axial slice, the slice-specific design
  (RETROICOR regressors of that slice's acquisition time, that slice's motion
  parameters) together with the shared confounds (CSF components, spikes) are
  regressed out of every voxel of the slice, with band-pass filtering, by the
  steps of :func:`nilearn.signal.clean` (re-implemented vectorised over voxels,
  since nilearn filters one column at a time; the tests compare both). nilearn
  (0.14) first removes a linear trend from the signals *and* the confounds, then
  applies the same Butterworth band-pass to both, then projects the filtered
  confounds out of the filtered signals (QR with pivoting). This "simultaneous"
  strategy (the default) keeps filter and regression orthogonal: Lindquist et al.
  (2019) show that regressing first and band-passing the residuals afterwards (the
  "sequential" order, kept as an option for comparison) re-introduces part of the
  nuisance signal that the regression had removed. :func:`effective_dof` counts
  what the band-pass and the regressors leave.
- :func:`variance_removed`: how much of the cord signal each model explains, for the
  QC table.
"""

from __future__ import annotations

import functools


import numpy as np

from ._io import SpineprintError

__all__ = [
    "acompcor",
    "dvars",
    "spike_regressors",
    "check_bandpass",
    "filter_min_volumes",
    "effective_dof",
    "half_blocks",
    "STRATEGY_DEFAULT",
    "slicewise_regression",
    "variance_removed",
]


def _detrend(y: np.ndarray) -> np.ndarray:
    """Remove a constant and a linear trend along axis 0 (least squares).

    The centred ramp ``t`` is orthogonal to the constant, so the least-squares fit
    is ``mean + t (t . y) / (t . t)`` in closed form.
    """
    y = np.asarray(y, dtype=np.float64)
    T = y.shape[0]
    t = np.linspace(-1.0, 1.0, T)
    flat = y.reshape(T, -1)
    out = flat - flat.mean(axis=0)
    if T > 1:
        out -= np.outer(t, (t @ flat) / (t @ t))
    return out.reshape(y.shape)


def acompcor(data, csf_mask, n_components: int = 5, *, return_variance: bool = False):
    """Anatomical CompCor: principal components of the CSF voxel time series.

    Behzadi et al. (2007): the time series of the voxels of a noise ROI (here the
    CSF around the cord) have constant and linear trends removed and are
    variance-normalised; the first principal components (left singular vectors of
    the T x V matrix) are nuisance regressors.

    Parameters
    ----------
    data : ndarray, (X, Y, Z, T)
    csf_mask : ndarray, (X, Y, Z) bool
    n_components : int
        Number of components (at most ``min(T, V) - 1``).
    return_variance : bool
        Also return the fraction of the (normalised) CSF variance of each component.

    Returns
    -------
    components : ndarray, (T, n_components)
        Unit-norm, zero-mean regressors (sign fixed so that the largest |loading|
        is positive, for reproducibility).
    explained : ndarray, (n_components,), if ``return_variance``
    """
    data = np.asarray(data)
    csf_mask = np.asarray(csf_mask, bool)
    if csf_mask.shape != data.shape[:3]:
        raise SpineprintError(f"aCompCor: CSF mask shape {csf_mask.shape} does not match the data {data.shape[:3]}")
    Y = np.asarray(data[csf_mask], dtype=np.float64).T  # (T, V)
    Y = Y[:, Y.std(axis=0) > 0]
    T, V = Y.shape
    if n_components <= 0:
        out = np.zeros((T, 0))
        return (out, np.zeros(0)) if return_variance else out
    if V < 2:
        raise SpineprintError(f"aCompCor: the CSF mask has {V} non-constant voxel(s); need at least 2")
    n_max = min(T, V) - 1
    if n_components > n_max:
        raise SpineprintError(f"aCompCor: {n_components} components requested but only {n_max} available "
                              f"({V} CSF voxels, {T} volumes)")
    Y = _detrend(Y)
    sd = Y.std(axis=0)
    Y = Y[:, sd > 0] / sd[sd > 0]
    # left singular vectors of Y = eigenvectors of the T x T matrix Y Y^T (cheaper when V >> T)
    evals, evecs = np.linalg.eigh(Y @ Y.T)
    order = np.argsort(evals)[::-1]
    S = np.sqrt(np.clip(evals[order], 0, None))
    comps = evecs[:, order[:n_components]]
    signs = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(n_components)])
    comps = comps * signs
    if return_variance:
        return comps, (S[:n_components] ** 2) / np.sum(S**2)
    return comps


def dvars(data, mask=None) -> np.ndarray:
    """DVARS (Power et al. 2012): RMS over voxels of the volume-to-volume signal change.

    ``DVARS_t = sqrt(mean_v (I_{v,t} - I_{v,t-1})^2)``, ``DVARS_0 = 0``.

    Parameters
    ----------
    data : ndarray, (X, Y, Z, T)
    mask : ndarray, (X, Y, Z) bool, optional

    Returns
    -------
    ndarray, (T,)
    """
    data = np.asarray(data)
    Y = data[mask] if mask is not None else data.reshape(-1, data.shape[-1])
    out = np.zeros(Y.shape[-1])
    out[1:] = np.sqrt(np.mean(np.diff(np.asarray(Y, dtype=np.float64), axis=-1) ** 2, axis=0))
    return out


def spike_regressors(metric, threshold: float, neighbours=(0, 0)) -> np.ndarray:
    """One-hot regressors for outlier volumes ("spike regression", Lemieux et al. 2007).

    A volume whose *metric* exceeds *threshold* gets its own regressor (a column
    with a single 1), which removes it from the fit. Power et al. (2012) censor, with
    FD > 0.5 mm, also the volume before and the two after (``neighbours=(1, 2)``);
    the pipeline's default flags the volume alone, and its FD is the in-plane
    translation-only FD of :func:`spineprint_utils.motion.framewise_displacement`
    (no rotations, no through-plane motion), so the same 0.5 mm threshold flags
    fewer volumes than Power's six-parameter FD would.

    Parameters
    ----------
    metric : ndarray, (T,)
        Framewise displacement (mm) or DVARS.
    threshold : float
        Volumes with ``metric > threshold`` are flagged. ``None`` or ``inf`` disables.
    neighbours : (int, int)
        Also flag this many volumes before and after each flagged one
        (Power et al. 2012: ``(1, 2)``).

    Returns
    -------
    ndarray, (T, n_spikes)
        One column per flagged volume, in time order.
    """
    metric = np.asarray(metric, dtype=float)
    if metric.ndim != 1:
        raise SpineprintError(f"spike_regressors: metric must be 1D, got shape {metric.shape}")
    T = metric.size
    if threshold is None or not np.isfinite(threshold):
        return np.zeros((T, 0))
    before, after = (int(n) for n in neighbours)
    if before < 0 or after < 0:
        raise SpineprintError(f"spike_regressors: neighbours must be non-negative, got {neighbours!r}")
    hit = metric > threshold
    flag = hit.copy()
    for k in range(1, before + 1):
        flag[:-k] |= hit[k:]
    for k in range(1, after + 1):
        flag[k:] |= hit[:-k]
    idx = np.flatnonzero(flag)
    out = np.zeros((T, idx.size))
    out[idx, np.arange(idx.size)] = 1.0
    return out


def check_bandpass(t_r: float, high_pass, low_pass):
    """Validate band-pass cut-offs (Hz) against the Nyquist frequency ``1 / (2 TR)``.

    Returns ``(high_pass, low_pass, notes)``: a low-pass at or above Nyquist is
    dropped (nothing to remove) with a note; a high-pass at or above Nyquist, or
    above the low-pass, is an error.
    """
    notes = []
    if t_r is None or not t_r > 0:
        raise SpineprintError(f"band-pass filtering needs a positive repetition time, got {t_r!r}")
    nyq = 0.5 / float(t_r)
    if low_pass is not None and low_pass >= nyq:
        notes.append(f"low-pass {low_pass} Hz >= Nyquist {nyq:.4f} Hz (TR {t_r} s): no low-pass applied")
        low_pass = None
    if high_pass is not None and high_pass >= nyq:
        raise SpineprintError(f"high-pass {high_pass} Hz is at or above the Nyquist frequency {nyq:.4f} Hz (TR {t_r} s)")
    if high_pass is not None and low_pass is not None and high_pass >= low_pass:
        raise SpineprintError(f"high-pass {high_pass} Hz must be below low-pass {low_pass} Hz")
    return high_pass, low_pass, notes


def filter_min_volumes(t_r: float, high_pass=None, low_pass=None, order: int = 5) -> int:
    """Smallest number of volumes nilearn's zero-phase Butterworth filter accepts.

    :func:`nilearn.signal.butterworth` designs an order-5 Butterworth filter as
    second-order sections and runs :func:`scipy.signal.sosfiltfilt`, whose default
    edge padding is ``3 * (2 * n_sections + 1 - n_trailing_zeros)`` samples; the
    series must be longer than that. Returns 0 when nothing is filtered.
    """
    if high_pass is None and low_pass is None:
        return 0
    sos = _butter_sos(float(t_r), high_pass, low_pass, order)
    ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * ntaps + 1


def _design_for_slice(slice_design, shared, z, T):
    parts = []
    if slice_design is not None and slice_design.shape[2]:
        parts.append(slice_design[z])
    if shared is not None and shared.shape[1]:
        parts.append(shared)
    if not parts:
        return None
    C = np.hstack(parts).astype(np.float64)
    C = C[:, np.ptp(C, axis=0) > 0]  # constant columns carry nothing after detrending
    return C if C.shape[1] else None


def _check_design(slice_design, shared, Z, T):
    if slice_design is not None:
        slice_design = np.asarray(slice_design, dtype=np.float64)
        if slice_design.ndim != 3 or slice_design.shape[:2] != (Z, T):
            raise SpineprintError(f"slice design must have shape ({Z}, {T}, P), got {slice_design.shape}")
    if shared is not None:
        shared = np.asarray(shared, dtype=np.float64)
        if shared.ndim == 1:
            shared = shared[:, None]
        if shared.ndim != 2 or shared.shape[0] != T:
            raise SpineprintError(f"shared confounds must have shape ({T}, Q), got {shared.shape}")
    for name, arr in (("slice design", slice_design), ("shared confounds", shared)):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise SpineprintError(f"{name} contains NaN or infinite values")
    return slice_design, shared


def _butterworth(x, t_r, high_pass, low_pass, order: int = 5):
    """Zero-phase Butterworth filter along axis 0, as :func:`nilearn.signal.butterworth`.

    Same design (order-5 ``scipy.signal.butter`` in second-order sections) and
    the same :func:`scipy.signal.sosfiltfilt` call (odd padding, default length),
    but vectorised over columns (nilearn loops over them one by one).
    """
    from scipy import signal as sp_signal

    return sp_signal.sosfiltfilt(_butter_sos(float(t_r), high_pass, low_pass, order), x, axis=0, padtype="odd")


@functools.lru_cache(maxsize=64)
def _butter_sos_cached(t_r: float, high_pass, low_pass, order: int) -> np.ndarray:
    from scipy import signal as sp_signal

    wn = [f for f in (high_pass, low_pass) if f is not None]
    btype = "band" if len(wn) == 2 else ("high" if high_pass is not None else "low")
    sos = sp_signal.butter(order, wn if len(wn) == 2 else wn[0], btype=btype, output="sos", fs=1.0 / t_r)
    return sos


def _butter_sos(t_r: float, high_pass, low_pass, order: int = 5) -> np.ndarray:
    """Second-order sections of the order-*order* Butterworth band-pass (as nilearn designs it),
    designed once per (TR, cut-offs, order): the design costs about a millisecond and the
    pipeline filters every slice's data and confounds with the same filter."""
    sos = _butter_sos_cached(float(t_r), None if high_pass is None else float(high_pass),
                             None if low_pass is None else float(low_pass), int(order))
    return sos.copy()  # scipy's filters need a writable array; the cached design stays intact


def _clean(Y, C, t_r, high_pass, low_pass):
    """The steps of :func:`nilearn.signal.clean` (0.14) with ``detrend=True``,
    ``standardize=None``, ``standardize_confounds=True`` and the Butterworth filter:
    linear detrending of signals and confounds, the same band-pass on both, z-scored
    confounds projected out with a pivoted QR (columns with
    ``|R_ii| <= 100 eps`` dropped). Re-implemented vectorised over voxels because
    nilearn filters one column at a time; ``tests/test_denoise.py`` checks it
    against :func:`nilearn.signal.clean`.
    """
    from scipy import linalg

    Y = _detrend(np.asarray(Y, dtype=np.float64))
    if C is not None:
        C = _detrend(np.asarray(C, dtype=np.float64))
    if high_pass is not None or low_pass is not None:
        Y = _butterworth(Y, t_r, high_pass, low_pass)
        if C is not None:
            C = _butterworth(C, t_r, high_pass, low_pass)
    if C is not None:
        C = C - C.mean(axis=0)
        sd = C.std(axis=0, ddof=1)
        sd[sd < np.finfo(np.float64).eps] = 1.0
        C = C / sd
        Q, R, _ = linalg.qr(C, mode="economic", pivoting=True)
        Q = Q[:, np.abs(np.diag(R)) > np.finfo(np.float64).eps * 100.0]
        Y = Y - Q @ (Q.T @ Y)
    return Y


#: default order of regression and band-pass (see :func:`slicewise_regression`):
#: confounds band-passed with the data, then projected out (Lindquist et al. 2019)
STRATEGY_DEFAULT = "simultaneous"


def slicewise_regression(data, slice_design=None, shared_confounds=None, mask=None, *, t_r=None, high_pass=None,
                         low_pass=None, keep_mean: bool = True, strategy: str = STRATEGY_DEFAULT,
                         clean_halves: bool = False) -> np.ndarray:
    """Slice-wise nuisance regression with band-pass filtering.

    For every slice *z*, the voxel time series ``Y_z`` (T x V_z) are cleaned with
    the design ``[slice_design[z], shared_confounds]`` by
    :func:`nilearn.signal.clean`: linear detrending of data and design, the same
    Butterworth band-pass on both, then ordinary least squares projection
    ``Y - C (C^T C)^+ C^T Y`` with the filtered design (Lindquist et al. 2019).
    Without filtering this equals the OLS residual of ``Y`` on ``[1, t, C]``
    (Frisch-Waugh-Lovell).

    ``strategy`` sets how regression and band-pass combine:

    ``"simultaneous"`` (default)
        nilearn's order above: the band-passed design is projected out of the
        band-passed data, so the cleaned series is orthogonal to every band-passed
        regressor (Lindquist, Geuter, Wager & Caffo 2019, Hum Brain Mapp
        40:2358, "Modular preprocessing pipelines can reintroduce artifacts into
        fMRI data"). Each regressor costs one degree of freedom inside the pass
        band; :func:`effective_dof` counts them.
    ``"sequential"``
        OLS of the unfiltered data on ``[1, t, C]`` first, then the band-pass of the
        residuals. The filter is not a projection onto a subspace orthogonal to the
        design, so it re-introduces part of the nuisance signal (Lindquist et al.
        2019; ``tests/test_denoise.py`` measures it). Kept only to show the
        difference (chapter 02).

    Parameters
    ----------
    data : ndarray, (X, Y, Z, T)
    slice_design : ndarray, (Z, T, P), optional
        Slice-specific regressors (RETROICOR for that slice's timing, slice-wise motion).
    shared_confounds : ndarray, (T, Q), optional
        Regressors common to all slices (aCompCor, spikes, HR/RVT).
    mask : ndarray, (X, Y, Z) bool, optional
        Voxels to clean; default every voxel with a non-constant time series.
        Other voxels are returned unchanged.
    t_r : float
        Repetition time (s); required when filtering.
    high_pass, low_pass : float, optional
        Cut-offs (Hz); see :func:`check_bandpass`.
    keep_mean : bool
        Add each voxel's temporal mean back (so tSNR stays meaningful).
    clean_halves : bool
        Clean the two row blocks :func:`half_blocks` (volumes ``0 .. T//2 - 1`` and
        ``T//2 .. T - 1``) separately: the same detrending, band-pass and projection
        applied to each half with the design's rows of that half (constant columns in a
        half dropped; each half's own mean kept). The residuals of the two halves are
        then independent of each other given the regressors, which the within-session
        split-half design needs (a fit over the whole run couples them through the
        off-diagonal block of ``I - P``: :func:`spineprint_utils.drivers.cleaning_leak`).
        Default False (the whole run is cleaned at once).

    Returns
    -------
    ndarray, (X, Y, Z, T) float32
    """
    data = np.asarray(data)
    if data.ndim != 4:
        raise SpineprintError(f"slice-wise regression needs a 4D series, got shape {data.shape}")
    X, Yd, Z, T = data.shape
    if strategy not in ("sequential", "simultaneous"):
        raise SpineprintError(f"unknown cleaning strategy {strategy!r}: use 'sequential' or 'simultaneous'")
    slice_design, shared = _check_design(slice_design, shared_confounds, Z, T)
    if high_pass is not None or low_pass is not None:
        high_pass, low_pass, _ = check_bandpass(t_r, high_pass, low_pass)
        need = filter_min_volumes(t_r, high_pass, low_pass)
        n_min = T // 2 if clean_halves else T
        if n_min < need:
            raise SpineprintError(f"band-pass filtering needs at least {need} volumes, the series"
                                  f"{' half' if clean_halves else ''} has {n_min}; "
                                  "disable it (high_pass=None, low_pass=None)")
    blocks = half_blocks(T) if clean_halves else (slice(0, T),)
    out = np.array(data, dtype=np.float32, copy=True)
    for z in range(Z):
        sl = np.asarray(data[:, :, z, :], dtype=np.float64).reshape(-1, T)
        m = (sl.std(axis=1) > 0) if mask is None else np.asarray(mask[:, :, z], bool).reshape(-1)
        if not m.any():
            continue
        Y = sl[m].T  # (T, V)
        C_run = _design_for_slice(slice_design, shared, z, T)
        cleaned = np.empty_like(Y)
        for b in blocks:  # the whole run, or each half on its own
            Yb, C = Y[b], None if C_run is None else C_run[b][:, np.ptp(C_run[b], axis=0) > 0]
            C = C if C is not None and C.shape[1] else None
            if strategy == "sequential" and C is not None and (high_pass is not None or low_pass is not None):
                cleaned[b] = _clean(_clean(Yb, C, t_r, None, None), None, t_r, high_pass, low_pass)
            else:
                cleaned[b] = _clean(Yb, C, t_r, high_pass, low_pass)
            if keep_mean:
                cleaned[b] += Yb.mean(axis=0)
        res = out[:, :, z, :].reshape(-1, T)
        res[m] = cleaned.T
        out[:, :, z, :] = res.reshape(X, Yd, T)
    return out


def half_blocks(n_volumes: int) -> tuple:
    """The two row blocks cleaned separately by ``clean_halves``: ``slice(0, T//2)`` and
    ``slice(T//2, T)``. The within-session halves of
    :func:`spineprint_utils.fingerprint.split_half` (volumes ``0 .. T//2 - 1`` and
    ``T - T//2 .. T - 1``) lie inside them (for odd T the middle volume belongs to the
    second block and to neither half)."""
    h = int(n_volumes) // 2
    return slice(0, h), slice(h, int(n_volumes))


def effective_dof(n_volumes: int, n_regressors: int = 0, *, t_r=None, high_pass=None, low_pass=None) -> float:
    """Degrees of freedom left after band-pass filtering and nuisance regression.

    A band-pass keeps about ``T * (f_high - f_low) / f_Nyquist`` independent
    samples (the fraction of the spectrum ``[0, 1 / (2 TR)]`` it passes; filtering
    leaves fewer independent samples, Davey et al. 2013, NeuroImage 64:728); the
    linear detrend takes 2 and every nuisance regressor one more, whatever the order
    of filter and regression (with the default simultaneous strategy each
    band-passed regressor is projected out inside the pass band). When few remain the regression fits the noise and removes
    signal too (Bright & Murphy 2015; Hallquist et al. 2013):
    :func:`spineprint_utils.preprocess.preprocess_run` warns when fewer than
    ``max(10, 0.1 T)`` are left.

    Parameters
    ----------
    n_volumes : int
        Number of volumes ``T``.
    n_regressors : int
        Number of nuisance regressors (slice-specific ones counted once per slice
        model, plus the shared ones).
    t_r : float, keyword-only
        Repetition time (s); needed when a cut-off is given.
    high_pass, low_pass : float or None, keyword-only
        Cut-offs (Hz); a low-pass at or above Nyquist counts as none.

    Returns
    -------
    float
        Effective degrees of freedom (can be negative: the model is over-fitted).
    """
    n_reg = int(n_regressors)
    if n_reg != n_regressors or n_reg < 0:
        raise SpineprintError(f"effective_dof: n_regressors must be a non-negative integer, got {n_regressors!r}")
    T = float(n_volumes)
    if high_pass is None and low_pass is None:
        kept = T
    else:
        if t_r is None or not t_r > 0:
            raise SpineprintError(f"effective_dof: band-pass cut-offs need a positive t_r, got {t_r!r}")
        nyq = 0.5 / float(t_r)
        lo = high_pass or 0.0
        hi = min(low_pass, nyq) if low_pass is not None else nyq
        kept = T * max(hi - lo, 0.0) / nyq
    return kept - 2.0 - float(n_reg)


def variance_removed(data, mask, models: dict, *, t_r=None, high_pass=None, low_pass=None, cleaned=None,
                     adjusted: bool = True) -> dict:
    """Percentage of the cord signal variance explained by each nuisance model.

    For each model *M* separately, the masked voxel series (linearly detrended)
    are regressed on *M* alone (detrended) and the pooled explained variance is
    ``100 * (1 - sum ||residual||^2 / sum ||Y||^2)`` (slice-specific models use
    each slice's own regressors). With ``adjusted`` (default) this is the adjusted
    R^2, ``100 * (1 - (SS_res / (T - 2 - p)) / (SS_tot / (T - 2)))`` for a model
    of *p* regressors (the 2 are the detrending), so that a model of many
    regressors does not look useful by chance alone (a model of pure noise scores
    about 0 instead of ``100 p / T``). ``"filter"`` is the percentage removed by the
    band-pass alone and, if *cleaned* is given, ``"total"`` is
    ``100 * (1 - sum ||Y_clean||^2 / sum ||Y||^2)`` for the full pipeline. The
    models overlap (e.g. motion and CSF), so the parts need not add up to the total.

    Parameters
    ----------
    data : ndarray, (X, Y, Z, T)
    mask : ndarray, (X, Y, Z) bool
    models : dict of str -> ndarray
        ``(Z, T, P)`` slice-specific or ``(T, Q)`` shared regressors.
    t_r, high_pass, low_pass : see :func:`slicewise_regression`
    cleaned : ndarray, (X, Y, Z, T), optional
        Output of the full cleaning, for ``"total"``.

    Returns
    -------
    dict of str -> float (percent)
    """
    data = np.asarray(data)
    mask = np.asarray(mask, bool)
    Z, T = data.shape[2], data.shape[3]
    result = {}
    ys = {}
    for z in range(Z):
        if mask[:, :, z].any():
            ys[z] = _detrend(np.asarray(data[:, :, z, :][mask[:, :, z]], dtype=np.float64).T)
    total_ss = sum(float(np.sum(y**2)) for y in ys.values())
    if total_ss <= 0:
        return {name: float("nan") for name in list(models) + ["filter", "total"]}
    for name, reg in models.items():
        reg = np.asarray(reg, dtype=np.float64)
        if reg.size == 0 or reg.shape[-1] == 0:
            result[name] = 0.0
            continue
        ss = 0.0
        for z, y in ys.items():
            C = reg[z] if reg.ndim == 3 else reg
            C = _detrend(C)
            coef, *_ = np.linalg.lstsq(C, y, rcond=None)
            ss += float(np.sum((y - C @ coef) ** 2))
        p = reg.shape[-1]
        scale = (T - 2.0) / max(T - 2.0 - p, 1.0) if adjusted else 1.0
        result[name] = 100.0 * (1.0 - scale * ss / total_ss)
    if high_pass is not None or low_pass is not None:
        hp, lp, _ = check_bandpass(t_r, high_pass, low_pass)
        ss = sum(float(np.sum(_clean(y, None, t_r, hp, lp) ** 2)) for y in ys.values())
        result["filter"] = 100.0 * (1.0 - ss / total_ss)
    else:
        result["filter"] = 0.0
    if cleaned is not None:
        ss = 0.0
        for z in ys:
            yc = _detrend(np.asarray(cleaned[:, :, z, :][mask[:, :, z]], dtype=np.float64).T)
            ss += float(np.sum(yc**2))
        result["total"] = 100.0 * (1.0 - ss / total_ss)
    return result

"""The embedded default study: a simulated cervical spinal cord resting-state BIDS dataset.

:func:`simulate_dataset` writes a valid BIDS dataset (N subjects x S sessions x R
runs of resting-state BOLD with physiological recordings) that carries a *known*
spine-print, and a ground truth under ``derivatives/groundtruth/`` so that every
step of the book can be checked. :func:`default_dataset` caches one under
:func:`spineprint_utils._io.cache_dir` so that the book, the tests and Binder
sessions reuse it.

Generative model (per run, every step seeded and byte-reproducible)
--------------------------------------------------------------------
Space and anatomy
    The images are on an axial EPI grid **in PAM50 template space**
    (De Leener et al. 2018): :func:`spineprint_utils.atlas.pam50_epi_grid` gives
    the grid, :func:`~spineprint_utils.atlas.tissue_maps` the cord, gray/white
    matter, four horns, CSF and spinal-level maps (the real PAM50 resampled to the
    grid when available, an analytic phantom with the same labels otherwise), and
    :func:`~spineprint_utils.atlas.region_labels` the horn x segment regions in which
    the neural signals are planted. Because the data are already in template
    space, the atlas step of the pipeline applies without registration; only the
    simulated motion has to be undone.
Baseline image
    T2*-weighted contrast ``S0 * (0.85 WM + 1.0 GM + 1.5 CSF + 0.45 other)`` with a
    subject-specific smooth bias field, tissue texture and slice-wise intensity
    (z-shim) factors.
Neural signal with a planted fingerprint
    For region pair (i, j) the group correlation is
    ``G_ij = A[h_i, h_j] * rho ** |s_i - s_j|`` (horn coupling ``A``, see
    :func:`horn_coupling`: strongest between the dorsal and ventral horn of the same
    side, then left-right dorsal-dorsal and ventral-ventral, weakest between dorsal and
    ventral horns of opposite sides, as Kowalczyk et al. 2024 report within a
    segment, with the left-right dorsal-dorsal and ventral-ventral coupling of Barry
    et al. 2014; decaying across segments, where Kowalczyk et al. 2024 found sparser
    connections). Subject *n*, session *e* gets
    ``C_ne = (G + f W_n + g W_ne) / (1 + f + g)`` with random low-rank correlation
    matrices ``W`` (subject deviation, strength ``f = fingerprint_strength``;
    session deviation, strength ``g = session_strength``). ``C`` is a correlation
    matrix (convex combination of correlation matrices). Region time series are
    ``L @ (h * e)`` with ``L L^T = C``, ``e`` white noise on a grid of
    ``TR / n_shots`` and ``h`` SPM's canonical double-gamma HRF (``spm_hrf``), so each
    slice samples the signal at its own acquisition time. Voxel signal =
    region signal x spatial weight (horn probability) x ``neural_amplitude`` % of
    the local baseline.
Physiological noise (RETROICOR model, Glover et al. 2000)
    Cardiac (pulse-oximeter) and respiratory (belt) traces with subject-specific
    heart rate (with variability and respiratory sinus arrhythmia), breathing rate
    and depth are generated at ``physio_sampling_frequency`` and written as BIDS
    physio files with a scanner ``trigger`` column. Their phases, sampled at each
    slice's acquisition time (``SliceTiming``), drive a 2nd-order Fourier series
    ``sum_m a_m(v) cos(m phi) + b_m(v) sin(m phi)``: cardiac with spatial maps
    strongest in CSF and ventral cord (Brooks et al. 2008),
    respiration as slice-wise global intensity changes plus a slice-wise B0 shift
    along the phase-encoding axis that grows caudally (towards the lungs). The
    spatial maps are a mix ``group + physio_subject_specificity x subject``: at 1
    physiological noise alone is participant-specific and can fake a fingerprint
    (Kaptan et al. 2023).
Motion
    Slice-wise in-plane translations (smooth drift, a z-gradient, slice jitter and
    occasional spikes), applied to the images by bilinear interpolation (the
    anatomy moves; thermal noise does not).
Anatomical image
    One T2-weighted image per participant (first session, ``anat/``), on the EPI grid.
Native space and distortion (options ``space="native"``, ``distortion=True``)
    The noise-free series is moved to a native space by a planted affine + smooth warp
    and distorted along the phase-encoding axis by a B0 field (Chang & Fitzpatrick
    1992 signal-conservation model), before motion and thermal noise; see
    :func:`simulate_dataset`.
Thermal noise
    Gaussian, spatially uniform, with standard deviation chosen per run so that the
    **cord tSNR of the raw data** - the median over cord voxels (cord probability
    >= 0.5) of temporal mean / temporal standard deviation of the written BOLD
    image, motion and physiological noise included - equals ``tsnr``
    (:func:`measure_tsnr`). With ``tsnr_reference="thermal"`` the standard deviation
    is instead ``median cord mean / tsnr`` (the tSNR thermal noise alone would give;
    the cord mean of the series before motion),
    so that it stays the same when physiological noise or motion change (chapter 5
    varies one factor at a time this way).

Files
-----
Raw BIDS (1.8.0): ``dataset_description.json``, ``README``, ``CHANGES``,
``participants.tsv/.json``, ``task-rest_bold.json``, and per run
``sub-XX/ses-YY/func/sub-XX_ses-YY_task-rest_run-Z_bold.nii.gz/.json`` (int16) and
``..._physio.tsv.gz/.json`` (columns ``cardiac, respiratory, trigger``), plus
``sub-XX/ses-01/anat/sub-XX_ses-01_T2w.nii.gz/.json``. Ground truth in
``derivatives/groundtruth/`` (read it with :func:`load_ground_truth`): ``params.json``,
``regions.tsv``, ``runs.tsv``, ``group_desc-model_connectivity.tsv``, the tissue
(``space-PAM50_label-<cord|gm|wm|csf|LV|RV|LD|RD>_probseg.nii.gz``), region
(``space-PAM50_atlas-PAM50horns_dseg.nii.gz``) and spinal-level images, per subject and
session ``sub-XX_ses-YY_desc-model_connectivity.tsv``, and per run
``<prefix>_desc-neural_timeseries.tsv``, ``<prefix>_desc-neural_connectivity.tsv``,
``<prefix>_desc-motion_timeseries.tsv`` (columns ``x_slice00..``, ``y_slice00..`` in mm,
as :mod:`spineprint_utils.motion`) and ``<prefix>_desc-physio_timeseries.tsv``
(acquisition time, cardiac and respiratory phase, B0 shift of every slice and volume).
With ``space="native"``: the T2w is on a 0.5 x 0.5 x 1 mm grid, its cord segmentation in
``derivatives/labels/sub-XX/ses-01/anat/sub-XX_ses-01_T2w_label-SC_seg.nii.gz``, and the
ground truth adds ``sub-XX/sub-XX_from-native_to-PAM50_desc-true_xfm.npz``,
``sub-XX/sub-XX_space-native_atlas-PAM50horns_dseg.nii.gz`` and
``sub-XX/sub-XX_space-native_label-cord_mask.nii.gz``; with ``distortion=True`` also
``sub-XX/ses-YY/fmap/sub-XX_ses-YY_dir-{PA,AP}_epi.nii.gz/.json`` (raw) and
``sub-XX/ses-YY/fmap/sub-XX_ses-YY_desc-true_fieldmap.nii.gz`` (ground truth, Hz).
A hidden marker ``.spineprint-simulation.json`` (parameter hash) is written last.

References
----------
Barry RL, Smith SA, Dula AN, Gore JC (2014). Resting state functional connectivity
in the human spinal cord. eLife 3:e02812.
Brooks JCW, Beckmann CF, Miller KL, et al. (2008). Physiological noise modelling
for spinal functional magnetic resonance imaging studies. NeuroImage 39:680-692.
De Leener B, Fonov VS, Collins DL, et al. (2018). PAM50: unbiased multimodal
template of the brainstem and spinal cord aligned with the ICBM152 space.
NeuroImage 165:170-179.
Glover GH (1999). Deconvolution of impulse response in event-related BOLD fMRI.
NeuroImage 9:416-429.
Glover GH, Li TQ, Ress D (2000). Image-based method for retrospective correction
of physiological motion effects in fMRI: RETROICOR. Magn Reson Med 44:162-167.
Kaptan M, Horn U, Vannesjo SJ, et al. (2023). Reliability of resting-state
functional connectivity in the human spinal cord. NeuroImage 275:120152.
Kowalczyk OS, Medina S, Tsivaka D, et al. (2024). Spinal fMRI demonstrates segmental
organisation of functionally connected networks in the cervical spinal cord: a test-retest
reliability study. Hum Brain Mapp 45:e26600.
Kinany N, Pirondini E, Micera S, Van De Ville D (2020). Dynamic functional
connectivity of resting-state spinal cord fMRI reveals fine-grained intrinsic
architecture. Neuron 108:424-435.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__
from ._io import (
    SpineprintError,
    _json_default,
    atomic_write_json,
    cache_dir,
    read_json,
)

__all__ = [
    "DEFAULTS",
    "HORNS",
    "slice_timing",
    "canonical_hrf",
    "horn_coupling",
    "group_fc_pattern",
    "random_correlation",
    "planted_correlations",
    "neural_timeseries",
    "physio_traces",
    "retroicor_basis",
    "slicewise_motion",
    "shift_slices",
    "measure_tsnr",
    "thermal_sigma_for_tsnr",
    "simulate_dataset",
    "default_dataset",
    "load_ground_truth",
    "params_hash",
    "register_cli",
]

#: Version of the generative model; part of the cache key (bump on any change of output).
SIMULATOR_VERSION = "6"

HORNS = ("LV", "RV", "LD", "RD")

#: Default parameters of :func:`simulate_dataset` (units in its docstring).
#: ``fingerprint_strength``, ``session_strength``, ``neural_amplitude`` and ``tsnr`` were
#: calibrated on 2026-12-03 (issue 15) against real data - the SCT testing EPI run and the real
#: cervical ROI series of ``datasets.fetch_spinal_graph_learning`` - on the measures of chapter
#: 1's realism table (``benchmarks/calibrate_simulator.py``; the grid and the distance in
#: ``benchmarks/README.md``, the record in ``data/simulator_calibration.tsv``). They were 0.4,
#: 0.8, 5 and 15, which gave a within-session Idiff about six times the real one and twice its
#: horn-pair coupling. The generative model did not change (``SIMULATOR_VERSION``): the
#: parameters are part of the cache key, so the default study is regenerated, while every
#: study that sets them explicitly keeps its bytes.
DEFAULTS = {
    "n_subjects": 10,
    "n_sessions": 2,
    "n_runs": 1,
    "n_volumes": 150,
    "tr": 2.0,
    "slice_order": "interleaved",
    "multiband": 1,
    "segments": ("C3", "C4", "C5", "C6", "C7", "C8"),
    "voxel_size": (1.0, 1.0, 5.0),
    "fov_mm": (32.0, 24.0),
    "n_slices": None,
    "fingerprint_strength": 0.8,
    "session_strength": 0.1,
    "neural_amplitude": 2.5,
    "physio_amplitude": 1.0,
    "physio_subject_specificity": 0.5,
    "motion_amplitude": 0.15,
    "tsnr": 11.0,
    "physio_sampling_frequency": 100.0,
    "seed": 0,
    "anatomy": "auto",
    "space": "PAM50",
    "distortion": False,
    "b0_peak_hz": 30.0,
    "tsnr_reference": "raw",
}

#: Parameters added after simulator version 5 (native space, distortion): left out of the
#: cache hash and of ``params.json`` at their default values, so the default study keeps its bytes.
_OPTIONAL_DEFAULTS = {"space": "PAM50", "distortion": False, "b0_peak_hz": 30.0, "tsnr_reference": "raw"}
_TSNR_REFERENCES = ("raw", "thermal")
_SPACES = ("PAM50", "native")
_TRT = 0.03  # TotalReadoutTime (s) of the simulated EPI
_ANAT_VOXEL = (0.5, 0.5, 1.0)  # native-space T2w grid (mm)

_MARKER = ".spineprint-simulation.json"
_SLICE_ORDERS = ("sequential", "descending", "interleaved")
_ANATOMY = ("auto", "pam50", "phantom")
_PHYSIO_LEAD_S = 5.0  # physio recording starts this long before the first volume
_PHYSIO_TAIL_S = 2.0
_BASELINE_S0 = 700.0  # scanner units; cord ~600-700, CSF ~1050
_RHO_SEGMENT = 0.5  # correlation decay factor per segment of distance
_W_RANK = 3  # rank of the random deviation matrices

# stream tags for np.random.SeedSequence (never reorder: they fix the bytes)
_T_GROUP, _T_SUBJ_FC, _T_SESS_FC, _T_NEURAL, _T_PHYS_SUBJ, _T_PHYS_RUN, _T_MOTION, _T_NOISE, _T_ANAT, _T_PART, _T_T2W = range(11)
_T_NATIVE, _T_B0, _T_FMAP = 11, 12, 13  # native-space options (appended: never reorder)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(k) for k in keys]]))


# =========================================================================== timing
def slice_timing(n_slices: int, tr: float, order: str = "interleaved", multiband: int = 1) -> np.ndarray:
    """Acquisition time of each slice relative to the start of the volume.

    Parameters
    ----------
    n_slices : int
        Number of slices (along the third voxel axis, index 0 = first slice).
    tr : float
        Repetition time (s).
    order : {"sequential", "descending", "interleaved"}
        ``sequential``: 0, 1, 2, ...; ``descending``: n-1, ..., 0; ``interleaved``:
        even-indexed slices first, then odd (0, 2, 4, ..., 1, 3, ...).
    multiband : int
        Simultaneous-multislice factor *m*; ``n_slices`` must be divisible by it.
        The slice stack is split into *m* packages of ``n_slices / m`` slices
        excited together, slice ``k`` and ``k + n_slices/m`` sharing a time.

    Returns
    -------
    ndarray, shape (n_slices,)
        Times in seconds in ``[0, tr)``: shot *k* of the ``n_slices / m`` shots is
        acquired at ``k * tr / n_shots`` (BIDS ``SliceTiming``).
    """
    n_slices, multiband = int(n_slices), int(multiband)
    if multiband < 1 or n_slices % multiband:
        raise SpineprintError(f"multiband factor {multiband} must be >= 1 and divide the number of slices ({n_slices})")
    if not (np.isfinite(tr) and tr > 0):
        raise SpineprintError(f"repetition time must be > 0 s, got {tr}")
    n_shots = n_slices // multiband
    base = np.arange(n_shots)
    if order == "sequential":
        acq = base
    elif order == "descending":
        acq = base[::-1]
    elif order == "interleaved":
        acq = np.concatenate([base[0::2], base[1::2]])
    else:
        raise SpineprintError(f"slice_order must be one of {', '.join(_SLICE_ORDERS)}, got {order!r}")
    shot_of_slice = np.empty(n_shots, dtype=int)
    shot_of_slice[acq] = np.arange(n_shots)  # acq[k] is the slice acquired at shot k
    shots = np.tile(shot_of_slice, multiband)
    return shots * (float(tr) / n_shots)


# =========================================================================== neural signal
def canonical_hrf(dt: float, length: float = 32.0) -> np.ndarray:
    """Canonical double-gamma haemodynamic response sampled every *dt* seconds.

    ``h(t) = t^5 e^{-t} / 5! - t^15 e^{-t} / (6 * 15!)``: the default of SPM's
    ``spm_hrf.m`` (gamma densities of shape 6 and 16, scale 1 s, undershoot ratio
    1/6; Friston et al. 1998, NeuroImage 7:30), normalised to unit sum.
    """
    t = np.arange(0.0, length, dt)
    h = t**5 * np.exp(-t) / math.factorial(5) - t**15 * np.exp(-t) / (6.0 * math.factorial(15))
    return h / h.sum()


def horn_coupling(vv: float = 0.45, dd: float = 0.45, same_side_dv: float = 0.5, cross_dv: float = 0.15) -> np.ndarray:
    """Within-segment coupling between the four horns, order ``LV, RV, LD, RD``.

    The defaults follow the order of the within-segment correlations that
    Kowalczyk et al. (2024, 23 participants, C5-C8) report: strongest between the
    dorsal and ventral horn of the same side (``same_side_dv``), followed by the
    left-right dorsal-dorsal (``dd``) and ventral-ventral (``vv``) connections,
    which Barry et al. (2014) and Kaptan et al. (2023) also find robustly; the
    dorsal-ventral coupling across sides (``cross_dv``) is the weakest. The values
    themselves are illustrative (correlations of the neural signal, before noise),
    not estimates from those studies. Returns a (4, 4) correlation matrix.
    """
    a = np.array([
        [1.0, vv, same_side_dv, cross_dv],
        [vv, 1.0, cross_dv, same_side_dv],
        [same_side_dv, cross_dv, 1.0, dd],
        [cross_dv, same_side_dv, dd, 1.0],
    ])
    if np.linalg.eigvalsh(a).min() <= 0:
        raise SpineprintError("horn coupling values do not form a positive definite correlation matrix")
    return a


def group_fc_pattern(segments, horns, rho: float = _RHO_SEGMENT, coupling: np.ndarray | None = None) -> np.ndarray:
    """The planted group connectivity ``G_ij = A[h_i, h_j] * rho ** |s_i - s_j|``.

    Parameters
    ----------
    segments : sequence of str
        Segment of each region (e.g. ``"C5"``); the distance ``|s_i - s_j|`` is the
        difference of segment numbers (C1..C8 = 1..8, T1.. = 9..).
    horns : sequence of str
        Horn of each region, one of ``LV, RV, LD, RD``.
    rho : float
        Correlation decay per segment of distance, ``0 <= rho < 1``.
    coupling : ndarray (4, 4), optional
        Horn coupling ``A``; default :func:`horn_coupling`.

    Returns
    -------
    ndarray, shape (R, R)
        A positive definite correlation matrix (principal submatrix of the
        Kronecker product of two positive definite matrices: the AR(1) matrix
        ``rho ** |i - j|`` and ``A``).
    """
    a = horn_coupling() if coupling is None else np.asarray(coupling, float)
    try:
        h = np.array([HORNS.index(x) for x in horns])
    except ValueError:
        raise SpineprintError(f"horns must be among {HORNS}, got {sorted(set(horns))}") from None
    s = np.array([_segment_number(x) for x in segments], dtype=float)
    return a[np.ix_(h, h)] * rho ** np.abs(s[:, None] - s[None, :])


def _segment_number(name: str) -> int:
    levels = [f"C{i}" for i in range(1, 9)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)] + [f"S{i}" for i in range(1, 6)]
    try:
        return levels.index(str(name)) + 1
    except ValueError:
        raise SpineprintError(f"unknown spinal segment {name!r} (expected C1..C8, T1..T12, L1..L5, S1..S5)") from None


def random_correlation(rng: np.random.Generator, n: int, rank: int = _W_RANK) -> np.ndarray:
    """A random low-rank correlation matrix ``D^-1/2 X X^T D^-1/2``, ``X ~ N(0, 1)^(n x rank)``.

    Low rank gives large, structured deviations (off-diagonal standard deviation
    about 0.5 for rank 3) rather than small independent ones.
    """
    x = rng.standard_normal((n, rank))
    c = x @ x.T
    d = np.sqrt(np.diag(c))
    return c / np.outer(d, d)


def planted_correlations(group: np.ndarray, n_subjects: int, n_sessions: int, fingerprint_strength: float,
                         session_strength: float, seed: int = 0) -> np.ndarray:
    """Subject- and session-specific correlation matrices with a planted fingerprint.

    ``C_ne = (G + f W_n + g W_ne) / (1 + f + g)`` where ``W_n`` (one per subject)
    and ``W_ne`` (one per subject and session) are independent
    :func:`random_correlation` matrices. With ``f = 0`` subjects differ only by
    session deviations (no fingerprint); with ``g = 0`` the sessions of a subject
    share the same covariance.

    Returns
    -------
    ndarray, shape (n_subjects, n_sessions, R, R)
    """
    f, g = float(fingerprint_strength), float(session_strength)
    r = group.shape[0]
    out = np.empty((n_subjects, n_sessions, r, r))
    for n in range(n_subjects):
        w_n = random_correlation(_rng(seed, _T_SUBJ_FC, n), r)
        for e in range(n_sessions):
            w_ne = random_correlation(_rng(seed, _T_SESS_FC, n, e), r)
            out[n, e] = (group + f * w_n + g * w_ne) / (1.0 + f + g)
    return out


def neural_timeseries(corr: np.ndarray, n_volumes: int, tr: float, n_shots: int, rng: np.random.Generator) -> np.ndarray:
    """Region time series with correlation *corr* on the fine grid ``dt = tr / n_shots``.

    ``x = L (h * e)``, ``L`` the Cholesky factor of *corr*, ``e`` white Gaussian
    noise, ``h`` the :func:`canonical_hrf`; every region is filtered by the same
    ``h``, so the expected correlation of ``x`` is *corr*. A 32 s burn-in removes
    the convolution edge. Each region is standardised (mean 0, variance 1).

    Returns
    -------
    ndarray, shape (n_volumes * n_shots, R)
        Sample ``t * n_shots + k`` is the signal at time ``t * tr + k * tr / n_shots``.
    """
    dt = tr / n_shots
    h = canonical_hrf(dt)
    n_fine = n_volumes * n_shots
    e = rng.standard_normal((corr.shape[0], n_fine + h.size))
    n_fft = 1 << int(math.ceil(math.log2(e.shape[1] + h.size)))
    y = np.fft.irfft(np.fft.rfft(e, n_fft, axis=1) * np.fft.rfft(h, n_fft)[None, :], n_fft, axis=1)
    y = y[:, h.size : h.size + n_fine]  # linear convolution after the burn-in
    x = np.linalg.cholesky(corr) @ y
    x -= x.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True)
    return x.T


# =========================================================================== physiology
def physio_traces(duration: float, fs: float, heart_rate: float, resp_rate: float, resp_depth: float,
                  rng: np.random.Generator, start: float = -_PHYSIO_LEAD_S) -> dict:
    """Simulated pulse-oximeter and respiratory-belt recordings with their true phases.

    Parameters
    ----------
    duration : float
        Recording length (s) from *start*.
    fs : float
        Sampling frequency (Hz).
    heart_rate, resp_rate : float
        Mean rates (beats / breaths per minute).
    resp_depth : float
        Mean breathing depth (belt amplitude, arbitrary units).
    rng : numpy Generator
    start : float
        Time of the first sample relative to the first volume (s), BIDS ``StartTime``.

    Returns
    -------
    dict
        ``time`` (s), ``cardiac`` and ``respiratory`` traces, ``cardiac_phase``
        (unwrapped, rad; a pulse peak at every multiple of 2 pi) and
        ``respiratory_phase`` (unwrapped, rad; end-expiration at multiples of
        2 pi, so wrapping to (-pi, pi] gives the Glover et al. 2000 respiratory phase
        for a sinusoidal breath), ``depth`` (breathing envelope). Heart rate varies
        slowly (about 4 %) and with respiration (sinus arrhythmia, 2 %).
    """
    from scipy.ndimage import gaussian_filter1d

    n = int(round(duration * fs))
    t = start + np.arange(n) / fs

    # slow unit-variance noise smoothed over sd_s seconds: drawn on a 2 Hz grid, interpolated
    n_low = int(math.ceil(duration * 2.0)) + 2
    t_low = start + np.arange(n_low) / 2.0

    def slow(sd_s):
        z = gaussian_filter1d(rng.standard_normal(n_low), sd_s * 2.0, mode="reflect")
        z = np.interp(t, t_low, z)
        return (z - z.mean()) / (z.std() + 1e-12)

    f_r = resp_rate / 60.0 * (1.0 + 0.08 * slow(10.0))
    phi_r = 2 * np.pi * np.cumsum(f_r) / fs
    f_c = heart_rate / 60.0 * (1.0 + 0.04 * slow(15.0) + 0.02 * np.sin(phi_r))
    phi_c = 2 * np.pi * np.cumsum(f_c) / fs
    depth = resp_depth * (1.0 + 0.15 * slow(20.0))
    # pulse wave: systolic peak at phase 0 and a dicrotic wave at ~0.4 of the cycle
    w = np.angle(np.exp(1j * phi_c))
    pulse = np.exp(-0.5 * (w / 0.35) ** 2) + 0.35 * np.exp(-0.5 * ((np.angle(np.exp(1j * (phi_c - 2.6)))) / 0.5) ** 2)
    cardiac = pulse + 0.15 * slow(8.0) + 0.02 * rng.standard_normal(n)
    belt = depth * (-np.cos(phi_r))
    respiratory = belt + 0.05 * resp_depth * slow(30.0) + 0.01 * rng.standard_normal(n)
    return {"time": t, "cardiac": cardiac, "respiratory": respiratory, "cardiac_phase": phi_c,
            "respiratory_phase": phi_r, "depth": depth, "belt": belt}


def retroicor_basis(phase: np.ndarray, order: int = 2) -> np.ndarray:
    """RETROICOR Fourier basis ``[cos(phi), sin(phi), cos(2 phi), sin(2 phi), ...]``.

    Glover et al. (2000), eq. 1: ``y_delta(t) = sum_m a_m cos(m phi(t)) + b_m sin(m phi(t))``.

    Returns
    -------
    ndarray, shape ``phase.shape + (2 * order,)``
    """
    m = np.arange(1, order + 1)
    arg = np.asarray(phase)[..., None] * m
    out = np.empty(arg.shape[:-1] + (2 * order,))
    out[..., 0::2] = np.cos(arg)
    out[..., 1::2] = np.sin(arg)
    return out


# =========================================================================== motion
def slicewise_motion(n_volumes: int, n_slices: int, amplitude: float, rng: np.random.Generator,
                     spike_rate: float = 0.01) -> np.ndarray:
    """True slice-wise in-plane translations (mm).

    Smooth drift (Gaussian-smoothed random walk, standard deviation *amplitude*)
    common to all slices, a smooth linear gradient along z (half the amplitude
    from bottom to top slice), independent slice jitter (0.15 x amplitude) and
    spikes (a Poisson number, rate *spike_rate* per volume, of single-volume jumps
    of 4 x amplitude).

    Returns
    -------
    ndarray, shape (n_volumes, n_slices, 2)
        Displacement of the anatomy along the first and second voxel axes (mm);
        positive = towards larger voxel index.
    """
    from scipy.ndimage import gaussian_filter1d

    out = np.zeros((n_volumes, n_slices, 2))
    if amplitude == 0:
        return out
    zc = np.linspace(-0.5, 0.5, n_slices) if n_slices > 1 else np.zeros(1)
    for ax in range(2):
        walk = gaussian_filter1d(np.cumsum(rng.standard_normal(n_volumes)), 3.0, mode="nearest")
        walk -= walk[0]
        walk *= amplitude / (walk.std() + 1e-12)
        grad = gaussian_filter1d(rng.standard_normal(n_volumes), 5.0, mode="nearest")
        grad *= 0.5 * amplitude / (grad.std() + 1e-12)
        out[:, :, ax] = walk[:, None] + grad[:, None] * zc[None, :]
    out += 0.15 * amplitude * rng.standard_normal(out.shape)
    n_spikes = rng.poisson(spike_rate * n_volumes)
    for _ in range(n_spikes):
        t0 = rng.integers(1, n_volumes) if n_volumes > 1 else 0
        direction = rng.standard_normal(2)
        out[t0] += 4.0 * amplitude * direction / np.linalg.norm(direction)
    return out


def shift_slices(data: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Translate every slice of every volume in-plane by bilinear interpolation.

    ``out[x, y, z, t] = data[x - dx[t, z], y - dy[t, z], z, t]`` with edge values
    repeated outside the field of view.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, T)
    shift : ndarray, shape (T, Z, 2)
        Shifts in voxels along the first two axes.

    Returns
    -------
    ndarray, shape (X, Y, Z, T), dtype of *data*
    """
    out = data
    for ax in (0, 1):
        d = shift[:, :, ax].T  # (Z, T)
        n = data.shape[ax]
        src = np.arange(n)[:, None, None] - d[None]  # (n, Z, T) source coordinate
        i0 = np.floor(src)
        frac = (src - i0).astype(data.dtype)
        i0 = i0.astype(np.intp)
        i1 = np.clip(i0 + 1, 0, n - 1)
        i0 = np.clip(i0, 0, n - 1)
        if ax == 0:
            idx0, idx1, fr = i0[:, None], i1[:, None], frac[:, None]
        else:
            idx0, idx1, fr = i0[None], i1[None], frac[None]
        a = np.take_along_axis(out, np.broadcast_to(idx0, out.shape[:ax] + (n,) + out.shape[ax + 1:]), axis=ax)
        b = np.take_along_axis(out, np.broadcast_to(idx1, out.shape[:ax] + (n,) + out.shape[ax + 1:]), axis=ax)
        out = a + fr * (b - a)
    return out


# =========================================================================== tSNR
def measure_tsnr(data: np.ndarray, mask: np.ndarray) -> float:
    """Cord tSNR: median over mask voxels of temporal mean / temporal standard deviation.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, T)
    mask : ndarray of bool, shape (X, Y, Z)
        E.g. cord probability >= 0.5.

    Returns
    -------
    float
        ``median_v( mean_t(y_v) / std_t(y_v) )`` (population standard deviation).
    """
    ts = np.asarray(data, dtype=np.float64)[np.asarray(mask, bool)]
    if ts.shape[0] == 0:
        raise SpineprintError("tSNR mask is empty")
    sd = ts.std(axis=1)
    return float(np.median(ts.mean(axis=1) / np.where(sd > 0, sd, np.inf)))


def thermal_sigma_for_tsnr(mean: np.ndarray, var: np.ndarray, tsnr: float) -> float:
    """Standard deviation of added white noise that brings the median tSNR to *tsnr*.

    Solves ``median_v( mean_v / sqrt(var_v + sigma^2) ) = tsnr`` for ``sigma >= 0``
    by bisection (the left side decreases monotonically with sigma). *mean* and
    *var* are the temporal mean and variance of the noise-free signal in each
    mask voxel.
    """
    mean = np.asarray(mean, float)
    var = np.asarray(var, float)

    def g(s):
        return float(np.median(mean / np.sqrt(var + s * s + 1e-12)))

    if g(0.0) <= tsnr:
        raise SpineprintError(
            f"requested cord tSNR {tsnr:g} is not reachable: neural, physiological and motion fluctuations alone "
            f"already give a tSNR of {g(0.0):.1f}; lower tsnr or the neural/physio/motion amplitudes")
    lo, hi = 0.0, float(np.max(mean)) + 1.0
    while g(hi) > tsnr:
        hi *= 2
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if g(mid) > tsnr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# =========================================================================== parameters
def _validate(params: dict) -> dict:
    p = dict(DEFAULTS)
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise SpineprintError(f"unknown simulation parameter(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    p.update(params)

    def integer(name, lo):
        v = p[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise SpineprintError(f"{name} must be an integer >= {lo}, got {v!r}")
        p[name] = int(v)

    def number(name, lo, strict=False, hi=None):
        v = p[name]
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise SpineprintError(f"{name} must be a number, got {p[name]!r}") from None
        if not np.isfinite(v) or v < lo or (strict and v == lo) or (hi is not None and v > hi):
            rng = f"{'>' if strict else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
            raise SpineprintError(f"{name} must be {rng}, got {p[name]!r}")
        p[name] = v

    integer("n_subjects", 1)
    integer("n_sessions", 1)
    integer("n_runs", 1)
    integer("n_volumes", 10)
    integer("multiband", 1)
    integer("seed", 0)
    number("tr", 0.0, strict=True)
    number("fingerprint_strength", 0.0)
    number("session_strength", 0.0)
    number("neural_amplitude", 0.0)
    number("physio_amplitude", 0.0)
    number("physio_subject_specificity", 0.0, hi=1.0)
    number("motion_amplitude", 0.0)
    number("tsnr", 0.0, strict=True)
    number("physio_sampling_frequency", 0.0, strict=True)
    if p["n_slices"] is not None:
        integer("n_slices", 1)
    if p["slice_order"] not in _SLICE_ORDERS:
        raise SpineprintError(f"slice_order must be one of {', '.join(_SLICE_ORDERS)}, got {p['slice_order']!r}")
    if p["anatomy"] not in _ANATOMY:
        raise SpineprintError(f"anatomy must be one of {', '.join(_ANATOMY)}, got {p['anatomy']!r}")
    if p["space"] not in _SPACES:
        raise SpineprintError(f"space must be one of {', '.join(_SPACES)}, got {p['space']!r}")
    if not isinstance(p["distortion"], (bool, np.bool_)):
        raise SpineprintError(f"distortion must be True or False, got {p['distortion']!r}")
    p["distortion"] = bool(p["distortion"])
    number("b0_peak_hz", 0.0)
    if p["tsnr_reference"] not in _TSNR_REFERENCES:
        raise SpineprintError(f"tsnr_reference must be one of {', '.join(_TSNR_REFERENCES)}, "
                              f"got {p['tsnr_reference']!r}")
    if p["distortion"] and p["space"] != "native":
        raise SpineprintError("distortion=True needs space='native' (distortion correction precedes registration "
                              "to PAM50, so distorted data are simulated in a native space)")
    segs = p["segments"]
    if isinstance(segs, str):
        segs = [s for s in segs.replace(",", " ").split() if s]
    segs = tuple(str(s) for s in segs)
    if not segs:
        raise SpineprintError("segments must name at least one spinal segment")
    for s in segs:
        _segment_number(s)
    p["segments"] = segs
    for name, n in (("voxel_size", 3), ("fov_mm", 2)):
        try:
            v = tuple(float(x) for x in p[name])
        except (TypeError, ValueError):
            raise SpineprintError(f"{name} must be {n} positive numbers (mm), got {p[name]!r}") from None
        if len(v) != n or not all(np.isfinite(x) and x > 0 for x in v):
            raise SpineprintError(f"{name} must be {n} positive numbers (mm), got {p[name]!r}")
        p[name] = v
    return p


def _resolve_anatomy(anatomy: str) -> str:
    """``auto`` -> ``pam50`` if a local or cached PAM50 copy exists, else ``phantom``
    (:func:`spineprint_utils.atlas.pam50_source`; never downloads for ``auto``)."""
    if anatomy != "auto":
        return anatomy
    from . import atlas

    return atlas.pam50_source(anatomy)[0]


def _public(p: dict) -> dict:
    """Parameters without the optional ones left at their defaults (stable hash and params.json)."""
    return {k: v for k, v in p.items() if not (k in _OPTIONAL_DEFAULTS and v == _OPTIONAL_DEFAULTS[k])}


def params_hash(params: dict) -> str:
    """Short SHA-256 of the normalised parameters, package and simulator versions (cache key)."""
    p = _validate(params)
    p["anatomy"] = _resolve_anatomy(p["anatomy"])
    blob = json.dumps({"params": _public(p), "package": __version__, "simulator": SIMULATOR_VERSION}, sort_keys=True,
                      default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# =========================================================================== anatomy
def _anatomy(p: dict):
    """Grid, tissue maps and regions from :mod:`spineprint_utils.atlas`."""
    import nibabel as nib

    from . import atlas

    source = p["anatomy"]
    affine, shape = atlas.pam50_epi_grid(segments=p["segments"], voxel_size=p["voxel_size"], fov_mm=p["fov_mm"], source=source)
    shape = tuple(int(s) for s in shape)[:3]
    affine = np.asarray(affine, float)
    if p["n_slices"] is not None:
        if p["n_slices"] > shape[2]:
            raise SpineprintError(
                f"n_slices={p['n_slices']} but segments {p['segments'][0]}-{p['segments'][-1]} are covered by only "
                f"{shape[2]} slices of {p['voxel_size'][2]:g} mm; use fewer slices or more segments")
        k0 = (shape[2] - p["n_slices"]) // 2
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, k0]) + affine[:3, 3]
        shape = shape[:2] + (p["n_slices"],)
    tissues = atlas.tissue_maps(affine, shape, source=source)
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    labels_img, regions = atlas.region_labels(ref, segments=p["segments"], source=source)
    labels = np.asarray(labels_img.dataobj).astype(np.int32)
    if labels.shape != shape:
        raise SpineprintError(f"atlas.region_labels returned shape {labels.shape}, expected {shape}")
    regions = regions.sort_values("label").reset_index(drop=True)
    if len(regions) == 0:
        raise SpineprintError(f"no gray-matter region of segments {', '.join(p['segments'])} lies in the {shape[2]}-slice grid")
    return affine, shape, {k: np.asarray(v) for k, v in tissues.items()}, labels, regions


def _baseline(tissues, affine, shape, rng) -> np.ndarray:
    """Subject baseline image (scanner units)."""
    from scipy.ndimage import gaussian_filter

    cord = np.clip(tissues["cord"], 0, 1)
    gm = np.clip(tissues["gm"], 0, 1)
    wm = np.clip(cord - gm, 0, 1)
    csf = np.clip(tissues["csf"], 0, 1)
    other = np.clip(1.0 - wm - gm - csf, 0, 1)
    texture = gaussian_filter(rng.standard_normal(shape), (2.0, 2.0, 0.7), mode="reflect")
    texture /= texture.std() + 1e-12
    contrast = 0.85 * wm + 1.0 * gm + 1.5 * csf + 0.45 * other * (1.0 + 0.15 * texture)
    ijk = np.indices(shape, dtype=float)
    centred = [(ijk[a] - (shape[a] - 1) / 2) / max(shape[a], 1) for a in range(3)]
    bias = 1.0 + sum(0.15 * rng.standard_normal() * c for c in centred)
    zshim = 1.0 + 0.07 * rng.standard_normal(shape[2])
    return (_BASELINE_S0 * contrast * bias * zshim[None, None, :]).astype(np.float32)


def _smooth_field(rng, coords, scale: float) -> np.ndarray:
    """Random quadratic polynomial of normalised coordinates (x, y, z), std ~ *scale*."""
    x, y, z = coords
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    c = rng.standard_normal(len(terms)) * scale / math.sqrt(len(terms) / 3)
    return sum(ci * ti for ci, ti in zip(c, terms))


def _physio_maps(tissues, affine, shape, s: float, amp: float, seed: int, subject: int):
    """Cardiac voxel coefficients (X,Y,Z,4) and respiratory slice coefficients (Z,4), in fraction of baseline,
    plus the B0 shift gain per slice (mm per unit belt)."""
    ijk = np.indices(shape, dtype=float)
    coords = [(ijk[a] - (shape[a] - 1) / 2) / max((shape[a] - 1) / 2, 1) for a in range(3)]
    g = _rng(seed, _T_PHYS_SUBJ, 10**6)  # group maps: same for everyone
    u = _rng(seed, _T_PHYS_SUBJ, subject)
    cord, csf = np.clip(tissues["cord"], 0, 1), np.clip(tissues["csf"], 0, 1)
    ventral = np.clip(tissues["LV"], 0, 1) + np.clip(tissues["RV"], 0, 1)
    # anterior = +y in PAM50 (RAS-like) space: ventral half of the cord
    world_y = (affine[1, :3] @ ijk.reshape(3, -1)).reshape(shape) + affine[1, 3]
    yc = world_y - np.average(world_y, weights=cord + 1e-9)
    ant = 1.0 / (1.0 + np.exp(-yc / 1.5))
    a_group = 0.04 * csf + cord * (0.006 + 0.010 * ant) + 0.008 * ventral + 0.003
    a_map = amp * a_group * np.exp(s * _smooth_field(u, coords, 0.4))
    theta_g = 0.8 * coords[1] + 0.5 * coords[2] + _smooth_field(g, coords, 0.5)
    theta = theta_g + s * _smooth_field(u, coords, 1.2)
    coef = np.empty(shape + (4,), np.float32)
    for m, rel in ((1, 1.0), (2, 0.4)):
        coef[..., 2 * (m - 1)] = a_map * rel * np.cos(m * theta)
        coef[..., 2 * (m - 1) + 1] = a_map * rel * np.sin(m * theta)
    # respiration: slice-wise, growing caudally (z index 0 = most caudal in PAM50 space)
    zz = coords[2][0, 0, :]
    caudal = 0.5 + 0.5 * (1.0 - zz) / 2.0
    r_theta = g.uniform(-np.pi, np.pi, 2)[None, :] + s * u.normal(0.0, 1.0, (shape[2], 2))
    r_amp = amp * 0.008 * caudal[:, None] * np.array([1.0, 0.3])[None, :] * np.exp(s * 0.3 * u.standard_normal((1, 2)))
    rcoef = np.empty((shape[2], 4))
    rcoef[:, 0::2] = r_amp * np.cos(r_theta)
    rcoef[:, 1::2] = r_amp * np.sin(r_theta)
    b0_gain = amp * 0.25 * caudal * (1.0 + s * 0.3 * u.standard_normal())
    return coef, rcoef, b0_gain


# =========================================================================== one run
def _subject_physiology(seed: int, subject: int):
    r = _rng(seed, _T_PART, subject)
    return {
        "heart_rate": float(np.clip(r.normal(68.0, 8.0), 50.0, 95.0)),
        "resp_rate": float(np.clip(r.normal(15.0, 3.0), 8.0, 24.0)),
        "resp_depth": float(np.clip(r.normal(1.0, 0.25), 0.4, 1.8)),
        "motion_scale": float(np.exp(r.normal(0.0, 0.25))),
        "age": int(r.integers(20, 46)),
        "sex": "F" if r.random() < 0.5 else "M",
    }


def _simulate_run(p, anat, corr, subj, ses, run, phys_maps, base, native=None):
    """Generate one run in memory. Returns a dict of arrays.

    With *native* (``{"transform": NativeTransform, "cord": native cord mask, "field": Hz or None}``)
    the noise-free PAM50-space series is moved to native space, then distorted along the
    phase-encoding axis (``j-``), before motion and thermal noise.
    """
    affine, shape, tissues, labels, regions = anat
    seed, n_vol, tr = p["seed"], p["n_volumes"], p["tr"]
    nz = shape[2]
    st = slice_timing(nz, tr, p["slice_order"], p["multiband"])
    n_shots = nz // p["multiband"]
    shot = np.rint(st / (tr / n_shots)).astype(int)
    phys = _subject_physiology(seed, subj)
    rr = _rng(seed, _T_PHYS_RUN, subj, ses, run)
    hr = float(phys["heart_rate"] * np.exp(rr.normal(0.0, 0.04)))
    resp = phys["resp_rate"] * np.exp(rr.normal(0.0, 0.08))
    depth = phys["resp_depth"] * np.exp(rr.normal(0.0, 0.1))
    fs = p["physio_sampling_frequency"]
    duration = _PHYSIO_LEAD_S + n_vol * tr + _PHYSIO_TAIL_S
    tr_phys = physio_traces(duration, fs, hr, resp, depth, rr)
    # acquisition time of every (volume, slice)
    acq = np.arange(n_vol)[:, None] * tr + st[None, :]  # (T, Z)
    phi_c = np.interp(acq, tr_phys["time"], tr_phys["cardiac_phase"])
    phi_r = np.interp(acq, tr_phys["time"], tr_phys["respiratory_phase"])
    belt = np.interp(acq, tr_phys["time"], tr_phys["belt"])
    # neural signal
    x = neural_timeseries(corr, n_vol, tr, n_shots, _rng(seed, _T_NEURAL, subj, ses, run))  # (T*n_shots, R)
    coef, rcoef, b0_gain = phys_maps
    # signal change (fraction of baseline), (X, Y, Z, T)
    frac = np.einsum("xyzk,tzk->xyzt", coef, retroicor_basis(phi_c, 2).astype(np.float32), optimize=True)
    frac += np.einsum("zk,tzk->zt", rcoef, retroicor_basis(phi_r, 2)).astype(np.float32)[None, None]
    lab_idx = labels - 1  # -1 outside
    in_roi = lab_idx >= 0
    if p["neural_amplitude"] > 0 and in_roi.any():
        horn_prob = np.zeros(shape, np.float32)
        for h in HORNS:
            rows = regions["horn"].to_numpy() == h
            sel = in_roi & np.isin(lab_idx, np.flatnonzero(rows))
            horn_prob[sel] = np.clip(tissues[h][sel], 0, 1)
        weight = horn_prob / max(float(horn_prob[in_roi].max()), 1e-6)
        vx, vy, vz = np.nonzero(in_roi)
        fine_idx = np.arange(n_vol)[None, :] * n_shots + shot[vz][:, None]  # (V, T)
        sig = x[fine_idx, lab_idx[vx, vy, vz][:, None]]  # (V, T)
        frac[vx, vy, vz, :] += (p["neural_amplitude"] / 100.0) * weight[vx, vy, vz][:, None] * sig.astype(np.float32)
    obj = base[..., None] * (1.0 + frac)
    del frac
    if native is not None:
        obj = _to_native(obj, affine, shape, native["transform"]) * _excitation_profile(shape)[..., None]
        if native.get("field") is not None:
            from . import distortion

            obj = distortion.distort(obj, native["field"], 1, _TRT, -1, order=1).astype(np.float32)
    cord_mask = np.asarray(tissues["cord"]) >= 0.5 if native is None else native["cord"]
    # the cord signal level before motion moves CSF into cord voxels: the reference of tsnr_reference="thermal"
    level = float(np.median(obj[cord_mask].mean(axis=1))) if p["tsnr_reference"] == "thermal" else None
    # motion + respiratory B0 shift along the phase-encoding (second) axis
    scale = phys["motion_scale"]
    motion = slicewise_motion(n_vol, nz, p["motion_amplitude"] * scale, _rng(seed, _T_MOTION, subj, ses, run))
    b0 = b0_gain[None, :] * belt  # (T, Z) mm
    shift_mm = motion.copy()
    shift_mm[:, :, 1] += b0
    vox = np.asarray(p["voxel_size"][:2])
    if np.any(shift_mm):
        obj = shift_slices(obj, shift_mm / vox)
    # thermal noise: the requested cord tSNR on the raw data ("raw"), or with thermal noise alone ("thermal")
    if level is not None:
        sigma = level / float(p["tsnr"])
    else:
        ts = obj[cord_mask].astype(np.float64)
        sigma = thermal_sigma_for_tsnr(ts.mean(axis=1), ts.var(axis=1), p["tsnr"])
    noise_rng = _rng(seed, _T_NOISE, subj, ses, run)
    obj += (sigma * noise_rng.standard_normal(obj.shape, dtype=np.float32))
    bold = np.clip(np.rint(obj), 0, 32767).astype(np.int16)
    del obj
    trig = np.zeros(tr_phys["time"].size, np.int8)
    onsets = np.rint((np.arange(n_vol) * tr - tr_phys["time"][0]) * fs).astype(int)
    trig[onsets[(onsets >= 0) & (onsets < trig.size)]] = 1
    neural_vol = x[np.arange(n_vol) * n_shots]  # (T, R) at the start of each volume
    return {
        "bold": bold, "slice_timing": st, "physio": tr_phys, "trigger": trig, "acq": acq,
        "cardiac_phase": np.mod(phi_c, 2 * np.pi), "respiratory_phase": np.angle(np.exp(1j * phi_r)),
        "b0_shift": b0, "motion": motion, "neural": neural_vol, "sigma": sigma,
        "tsnr": measure_tsnr(bold, cord_mask), "heart_rate": hr, "resp_rate": resp, "resp_depth": depth,
        "motion_scale": scale,
    }


# =========================================================================== native space
def _to_native(arr, affine, shape, transform, interpolation="linear"):
    """Resample a PAM50-space array (3D or 4D, on the grid *affine*/*shape*) onto the same
    voxel grid in native space through the planted transform (``transform.to_native``).

    The array is first padded by 4 voxels in-plane and 2 slices with its edge values, so
    that points the transform moves just outside the field of view are not zero-filled.
    """
    import nibabel as nib

    from . import registration

    arr = np.asarray(arr)
    pad = [(4, 4), (4, 4), (2, 2)] + [(0, 0)] * (arr.ndim - 3)
    padded = np.pad(arr, pad, mode="edge" if interpolation == "linear" else "constant")
    shift = np.eye(4)
    shift[:3, 3] = [-4, -4, -2]
    img = nib.Nifti1Image(padded, np.asarray(affine, float) @ shift)
    out = registration.apply_transforms(img, (shape, affine), transform.to_native, interpolation)
    return np.asarray(out.dataobj)


def _excitation_profile(shape, width: int = 3) -> np.ndarray:
    """Reduced-FOV excitation profile along the phase-encoding axis (axis 1), native data only.

    Spinal cord EPI excites only a band of the neck along the phase-encoding direction
    (2D-selective "zoomed" excitation), so that the reduced field of view does not alias;
    the band ends smoothly (raised cosine over *width* voxels) inside the field of view.
    Without the signal-free margin the lines would be cut by the field of view and the
    signal-conservation model of the reverse-PE correction would not hold at their ends.
    """
    ny = int(shape[1])
    j = np.arange(ny)
    w = np.clip((np.minimum(j, ny - 1 - j) + 0.5) / width, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * w)).astype(np.float32)[None, :, None]


def _native_subject(p, anat, subject: int):
    """Planted native transform, native tissues/labels on the EPI grid, native T2w and cord
    segmentation on a finer anatomical grid covering the same box (for one participant)."""
    from . import atlas, registration

    affine, shape, tissues, labels, regions = anat
    seed = int(_rng(p["seed"], _T_NATIVE, subject).integers(2**31))
    nt = registration.random_native_transform(seed, shape, affine)
    cord = _to_native(np.asarray(tissues["cord"], np.float32), affine, shape, nt)
    csf = _to_native(np.asarray(tissues["csf"], np.float32), affine, shape, nt)
    nat_labels = _to_native(labels.astype(np.int16), affine, shape, nt, "nearest").astype(np.int16)
    # anatomical grid: same box (voxel-centre extent) as the EPI grid at _ANAT_VOXEL
    epi_vox = np.sqrt((affine[:3, :3] ** 2).sum(0))
    anat_vox = np.asarray(_ANAT_VOXEL)
    a_shape = tuple(int(np.ceil(shape[k] * epi_vox[k] / anat_vox[k])) for k in range(3))
    a_aff = affine.copy()
    a_aff[:3, :3] = affine[:3, :3] / epi_vox * anat_vox
    a_aff[:3, 3] = affine[:3, :3] @ (-0.5 + 0.5 * anat_vox / epi_vox) + affine[:3, 3]
    a_tis = atlas.tissue_maps(a_aff, a_shape, source=p["anatomy"])
    wm = np.clip(np.clip(a_tis["cord"], 0, 1) - np.clip(a_tis["gm"], 0, 1), 0, 1)
    gm, csf_a = np.clip(a_tis["gm"], 0, 1), np.clip(a_tis["csf"], 0, 1)
    other = np.clip(1.0 - wm - gm - csf_a, 0, 1)
    t2 = (1000.0 * (0.55 * wm + 0.65 * gm + 2.0 * csf_a + 0.35 * other)).astype(np.float32)
    t2_nat = _to_native(t2, a_aff, a_shape, nt)
    seg_nat = _to_native(np.asarray(a_tis["cord"], np.float32), a_aff, a_shape, nt) >= 0.5
    t2_nat = t2_nat + 15.0 * _rng(p["seed"], _T_T2W, subject).standard_normal(a_shape)
    return {"transform": nt, "cord": cord >= 0.5, "csf": csf >= 0.5, "labels": nat_labels,
            "t2w": t2_nat, "seg": seg_nat, "anat_affine": a_aff, "anat_shape": a_shape}


# =========================================================================== writing
def _fmt_table(columns, arrays, fmts) -> str:
    """Tab-separated text with a header; *arrays* are equal-length 1-D columns."""

    buf = io.StringIO()
    mat = np.column_stack([np.asarray(a) for a in arrays]) if arrays else np.zeros((0, 0))
    buf.write("\t".join(columns) + "\n")
    np.savetxt(buf, mat, fmt=fmts, delimiter="\t")
    return buf.getvalue()


def _matrix_tsv(names, mat) -> str:
    return _fmt_table(list(names), list(np.asarray(mat).T), "%.6f")


def _labels(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [str(i + 1).zfill(width) for i in range(n)]


def _put(path: Path, payload, gz: int | None = None) -> Path:
    """Write *payload* (str or bytes) to *path*, gzip-compressed at level *gz* with mtime 0.

    Only used inside the temporary dataset folder, which :func:`simulate_dataset`
    renames into place when complete: the folder rename is the atomic step, so the
    ~200 files are written without a per-file fsync/rename.
    """
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if gz is not None:
        buf = io.BytesIO()
        # level 1: noisy int16 and physio text compress only a few % better at 6-9 but 5-20x slower
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=gz) as fh:
            fh.write(data)
        data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _put_json(path: Path, obj) -> Path:
    """Indented, key-sorted JSON (same bytes as :func:`spineprint_utils._io.atomic_write_json`)."""
    return _put(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _write_nifti(data, affine, path, dtype, tr=None):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    hdr = img.header
    hdr.set_data_dtype(dtype)
    if tr is not None:
        hdr.set_zooms(tuple(np.sqrt((affine[:3, :3] ** 2).sum(0))) + (float(tr),))
        hdr.set_xyzt_units("mm", "sec")
        hdr.set_dim_info(freq=0, phase=1, slice=2)
    else:
        hdr.set_xyzt_units("mm")
    _put(Path(path), img.to_bytes(), gz=1 if str(path).endswith(".gz") else None)


def _write_dataset(root: Path, p: dict, phash: str, progress: bool = False) -> dict:
    """Write the whole dataset into *root* (an empty folder). Returns a summary."""
    t0 = time.perf_counter()
    anat = _anatomy(p)
    affine, shape, tissues, labels, regions = anat
    names = regions["name"].tolist()
    group = group_fc_pattern(regions["segment"].tolist(), regions["horn"].tolist())
    corrs = planted_correlations(group, p["n_subjects"], p["n_sessions"], p["fingerprint_strength"],
                                 p["session_strength"], p["seed"])
    subs, sess = _labels(p["n_subjects"]), _labels(p["n_sessions"])
    gt = root / "derivatives" / "groundtruth"

    # ---- dataset-level raw files
    _put_json(root / "dataset_description.json", {
        "Name": "spineprint simulated resting-state cervical spinal cord fMRI study",
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["spineprint_utils.simulate", "The spineprint developers"],
        "HowToAcknowledge": "Generated by spineprint_utils.simulate; cite the spineprint book.",
        "GeneratedBy": [{"Name": "spineprint simulate", "Version": __version__,
                         "Description": f"simulator {SIMULATOR_VERSION}, parameter hash {phash}"}],
    })
    _put(root / "README", _readme(p, shape, len(names)))
    _put(root / "CHANGES", f"1.0.0 2026-01-01\n  - Simulated by spineprint {__version__} (parameter hash {phash}).\n")
    _put(root / ".bidsignore", "")
    prows = [_subject_physiology(p["seed"], i) for i in range(p["n_subjects"])]
    _put(root / "participants.tsv", "participant_id\tage\tsex\n" + "".join(
        f"sub-{s}\t{r['age']}\t{r['sex']}\n" for s, r in zip(subs, prows)))
    _put_json(root / "participants.json", {
        "age": {"Description": "age of the simulated participant", "Units": "year"},
        "sex": {"Description": "sex of the simulated participant", "Levels": {"F": "female", "M": "male"}},
    })
    _put_json(root / "task-rest_bold.json", {"TaskName": "rest",
                                                       "TaskDescription": "Simulated resting state, eyes open."})

    # ---- ground-truth dataset-level files
    _put_json(gt / "dataset_description.json", {
        "Name": "spineprint simulation ground truth",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "spineprint simulate", "Version": __version__,
                         "Description": f"simulator {SIMULATOR_VERSION}, parameter hash {phash}"}],
    })
    reg_out = regions[["label", "name", "segment", "horn", "n_voxels"]]
    _put(gt / "regions.tsv", reg_out.to_csv(sep="\t", index=False, lineterminator="\n"))
    _put(gt / "group_desc-model_connectivity.tsv", _matrix_tsv(names, group))
    for key in ("cord", "gm", "wm", "csf", *HORNS):
        _write_nifti(np.asarray(tissues[key], np.float32), affine, gt / f"space-PAM50_label-{key}_probseg.nii.gz", np.float32)
    _write_nifti(np.asarray(tissues["spinal_level"], np.int16), affine, gt / "space-PAM50_desc-spinallevels_dseg.nii.gz", np.int16)
    _write_nifti(labels.astype(np.int16), affine, gt / "space-PAM50_atlas-PAM50horns_dseg.nii.gz", np.int16)

    run_rows = []
    n_total = p["n_subjects"] * p["n_sessions"] * p["n_runs"]
    it = [(i, e, r) for i in range(p["n_subjects"]) for e in range(p["n_sessions"]) for r in range(p["n_runs"])]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_total, desc="simulate", leave=False)
    current = current_ses = None
    native = None
    for i, e, r in it:
        if current != i:
            base = _baseline(tissues, affine, shape, _rng(p["seed"], _T_ANAT, i))
            maps = _physio_maps(tissues, affine, shape, p["physio_subject_specificity"], p["physio_amplitude"], p["seed"], i)
            current = i
            if p["space"] == "native":
                native = _native_subject(p, anat, i)
                _write_native_subject(root, subs[i], sess[0], native, affine)
            else:
                _write_t2w(root, subs[i], sess[0], tissues, affine, shape, _rng(p["seed"], _T_T2W, i))
        sub, ses, run = subs[i], sess[e], str(r + 1)
        if native is not None and current_ses != (i, e):
            current_ses = (i, e)
            native["field"] = None
            if p["distortion"]:
                native["field"] = _write_session_fieldmap(root, p, sub, ses, i, e, native, base, affine, shape)
        out = _simulate_run(p, anat, corrs[i, e], i, e, r, maps, base, native)
        prefix = f"sub-{sub}_ses-{ses}_task-rest_run-{run}"
        func = root / f"sub-{sub}" / f"ses-{ses}" / "func"
        _write_nifti(out["bold"], affine, func / f"{prefix}_bold.nii.gz", np.int16, tr=p["tr"])
        sidecar = {
            "TaskName": "rest",
            "RepetitionTime": p["tr"],
            "SliceTiming": [round(float(v), 6) for v in out["slice_timing"]],
            "SliceEncodingDirection": "k",
            "EchoTime": 0.03,
            "FlipAngle": 80,
            "PhaseEncodingDirection": "j-",
            "TotalReadoutTime": 0.03,
            "MagneticFieldStrength": 3,
            "Manufacturer": "spineprint simulator",
            "ManufacturersModelName": f"spineprint_utils.simulate {SIMULATOR_VERSION}",
            "SoftwareVersions": __version__,
        }
        if p["multiband"] > 1:
            sidecar["MultibandAccelerationFactor"] = p["multiband"]
        _put_json(func / f"{prefix}_bold.json", sidecar)
        ph = out["physio"]
        _put(func / f"{prefix}_physio.tsv.gz", _physio_text(ph["cardiac"], ph["respiratory"], out["trigger"]), gz=1)
        _put_json(func / f"{prefix}_physio.json", {
            "SamplingFrequency": p["physio_sampling_frequency"],
            "StartTime": round(float(ph["time"][0]), 6),
            "Columns": ["cardiac", "respiratory", "trigger"],
            "cardiac": {"Description": "simulated pulse-oximeter signal", "Units": "a.u."},
            "respiratory": {"Description": "simulated respiratory belt signal", "Units": "a.u."},
            "trigger": {"Description": "scanner volume trigger (1 at the start of each volume)"},
        })
        # ground truth of the run
        gfunc = gt / f"sub-{sub}" / f"ses-{ses}" / "func"
        _put(gfunc / f"{prefix}_desc-neural_timeseries.tsv",
                          _fmt_table(names, list(out["neural"].T), "%.6f"))
        _put(gfunc / f"{prefix}_desc-neural_connectivity.tsv",
                          _matrix_tsv(names, np.corrcoef(out["neural"].T)))
        nz = shape[2]
        mcols = [f"x_slice{z:02d}" for z in range(nz)] + [f"y_slice{z:02d}" for z in range(nz)]
        _put(gfunc / f"{prefix}_desc-motion_timeseries.tsv",
                          _fmt_table(mcols, list(out["motion"][:, :, 0].T) + list(out["motion"][:, :, 1].T), "%.5f"))
        pcols = ([f"acqtime_slice{z:02d}" for z in range(nz)] + [f"cardiacphase_slice{z:02d}" for z in range(nz)]
                 + [f"respphase_slice{z:02d}" for z in range(nz)] + [f"b0shift_slice{z:02d}" for z in range(nz)])
        _put(gfunc / f"{prefix}_desc-physio_timeseries.tsv", _fmt_table(
            pcols, list(out["acq"].T) + list(out["cardiac_phase"].T) + list(out["respiratory_phase"].T)
            + list(out["b0_shift"].T), "%.5f"))
        if r == 0:
            _put(gt / f"sub-{sub}" / f"ses-{ses}" / f"sub-{sub}_ses-{ses}_desc-model_connectivity.tsv",
                              _matrix_tsv(names, corrs[i, e]))
        run_rows.append((prefix, f"sub-{sub}", f"ses-{ses}", run, out["heart_rate"], out["resp_rate"], out["resp_depth"],
                         out["motion_scale"], out["sigma"], p["tsnr"], out["tsnr"]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    cols = ["run", "participant_id", "session", "run_index", "heart_rate_bpm", "respiratory_rate_bpm",
            "respiratory_depth", "motion_scale", "thermal_sigma", "tsnr_target", "tsnr_measured"]
    lines = ["\t".join(cols)] + ["\t".join([a, b, c, d] + [f"{v:.4f}" for v in rest]) for a, b, c, d, *rest in run_rows]
    _put(gt / "runs.tsv", "\n".join(lines) + "\n")
    info = {"params": _public(p), "hash": phash, "package_version": __version__,
            "simulator_version": SIMULATOR_VERSION, "grid_shape": list(shape), "affine": np.asarray(affine).tolist(),
            "n_regions": len(names), "space": p["space"]}
    _put_json(gt / "params.json", info)
    return {"seconds": time.perf_counter() - t0, **info}


def _write_native_subject(root: Path, sub: str, ses: str, native: dict, affine) -> None:
    """Native T2w (raw), its cord segmentation (``derivatives/labels``) and the ground truth
    (planted transform, native regions and cord on the EPI grid)."""
    anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
    _write_nifti(np.clip(np.rint(native["t2w"]), 0, 32767), native["anat_affine"], anat / f"sub-{sub}_ses-{ses}_T2w.nii.gz",
                 np.int16)
    _put_json(anat / f"sub-{sub}_ses-{ses}_T2w.json", {
        "EchoTime": 0.12, "RepetitionTime": 1.5, "FlipAngle": 120, "MagneticFieldStrength": 3,
        "Manufacturer": "spineprint simulator",
        "ManufacturersModelName": f"spineprint_utils.simulate {SIMULATOR_VERSION}",
    })
    labels_root = root / "derivatives" / "labels"
    if not (labels_root / "dataset_description.json").is_file():
        _put_json(labels_root / "dataset_description.json", {
            "Name": "cord segmentations", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "spineprint simulate", "Version": __version__,
                             "Description": "true cord segmentation of the simulated T2w (as sct_deepseg_sc)"}]})
    _write_nifti(native["seg"].astype(np.uint8), native["anat_affine"],
                 labels_root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_T2w_label-SC_seg.nii.gz",
                 np.uint8)
    gt = root / "derivatives" / "groundtruth" / f"sub-{sub}"
    # NativeTransform.save: the same arrays, through the byte-reproducible npz writer of _io
    native["transform"].save(gt / f"sub-{sub}_from-native_to-PAM50_desc-true_xfm.npz")
    _write_nifti(native["labels"], affine, gt / f"sub-{sub}_space-native_atlas-PAM50horns_dseg.nii.gz", np.int16)
    _write_nifti(native["cord"].astype(np.uint8), affine, gt / f"sub-{sub}_space-native_label-cord_mask.nii.gz", np.uint8)


def _write_session_fieldmap(root, p, sub, ses, i, e, native, base, affine, shape):
    """Per-session B0 field (Hz, native EPI grid; ground truth) and the reverse-PE pair under fmap/."""
    import nibabel as nib

    from . import distortion

    seed = int(_rng(p["seed"], _T_B0, i, e).integers(2**31))
    field = distortion.simulate_b0_field(shape, affine, native["cord"], peak_hz=p["b0_peak_hz"], seed=seed)
    jac_min = 1.0 + np.min(np.gradient(field * _TRT, axis=1))
    if jac_min <= 0.2:  # keep the distortion invertible (no folding)
        field = field * (0.8 / (1.0 - jac_min))
    ref = _to_native(base, affine, shape, native["transform"]) * _excitation_profile(shape)
    fmap = root / f"sub-{sub}" / f"ses-{ses}" / "fmap"
    intended = [f"ses-{ses}/func/sub-{sub}_ses-{ses}_task-rest_run-{r + 1}_bold.nii.gz" for r in range(p["n_runs"])]
    # written into the temporary dataset folder (renamed into place at the end)
    distortion.write_fieldmap_pair(fmap, f"sub-{sub}_ses-{ses}", nib.Nifti1Image(ref.astype(np.float32), affine),
                                   field, _TRT, pe_axis=1, intended_for=intended, noise_sigma=0.01 * _BASELINE_S0,
                                   seed=int(_rng(p["seed"], _T_FMAP, i, e).integers(2**31)))
    gt = root / "derivatives" / "groundtruth" / f"sub-{sub}" / f"ses-{ses}" / "fmap"
    _write_nifti(field.astype(np.float32), affine, gt / f"sub-{sub}_ses-{ses}_desc-true_fieldmap.nii.gz", np.float32)
    return field


def _write_t2w(root: Path, sub: str, ses: str, tissues, affine, shape, rng) -> None:
    """A T2-weighted anatomical image of the participant on the EPI grid (first session).

    T2 contrast: CSF bright (myelographic), cord intermediate with gray matter slightly
    brighter than white matter, surrounding tissue darker; Gaussian noise (SNR ~40).
    """
    cord = np.clip(tissues["cord"], 0, 1)
    gm = np.clip(tissues["gm"], 0, 1)
    wm = np.clip(cord - gm, 0, 1)
    csf = np.clip(tissues["csf"], 0, 1)
    other = np.clip(1.0 - wm - gm - csf, 0, 1)
    img = 1000.0 * (0.55 * wm + 0.65 * gm + 2.0 * csf + 0.35 * other) + 15.0 * rng.standard_normal(shape)
    anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
    _write_nifti(np.clip(np.rint(img), 0, 32767), affine, anat / f"sub-{sub}_ses-{ses}_T2w.nii.gz", np.int16)
    _put_json(anat / f"sub-{sub}_ses-{ses}_T2w.json", {
        "EchoTime": 0.12, "RepetitionTime": 1.5, "FlipAngle": 120, "MagneticFieldStrength": 3,
        "Manufacturer": "spineprint simulator",
        "ManufacturersModelName": f"spineprint_utils.simulate {SIMULATOR_VERSION}",
    })


def _fixed_digits(values, decimals: int):
    """Characters of ``f"{v:.{decimals}f}"`` for every value, right-aligned, one column per value.

    Returns ``(chars, first)``: ``chars`` (W, n) uint8 ASCII codes, the number of value ``i``
    being ``chars[first[i]:, i]`` (the rows above it are padding). ``None`` when the fast path
    cannot guarantee the bytes of Python's formatting (non-finite or huge values), so that the
    caller formats value by value. Python rounds the exact binary value to *decimals* places
    (ties to even); ``rint`` of the product ``|v| 10**decimals`` agrees with it except within a
    few units in the last place of a half-integer, and those rare values are rounded by Python.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    y = np.abs(x) * 10.0 ** decimals
    if not np.all(np.isfinite(y)) or (y.size and y.max() >= 2.0 ** 52):
        return None
    k = np.rint(y)
    near_tie = np.abs(np.abs(y - np.floor(y)) - 0.5) <= 4 * np.spacing(y)
    for i in np.flatnonzero(near_tie):
        k[i] = abs(int(f"{x[i]:.{decimals}f}".replace(".", "")))
    ip, fp = np.divmod(k.astype(np.int64), 10 ** decimals)
    if ip.size and ip.max() < 2 ** 31:  # 32-bit integer division is several times faster
        ip, fp = ip.astype(np.int32), fp.astype(np.int32)
    neg = np.signbit(x)  # Python keeps the sign of -0.0 and of values that round to 0 ("-0.0000")
    nd = np.ones(x.size, dtype=np.int64)  # digits of the integer part
    p = 10
    while x.size and (ip >= p).any():
        nd += ip >= p
        p *= 10
    D = int(nd.max()) if x.size else 1
    W = 1 + D + (decimals + 1 if decimals else 0)
    chars = np.empty((W, x.size), dtype=np.uint8)
    q = ip.copy()
    for row in range(D, 0, -1):  # integer digits, from the right
        q, r = np.divmod(q, 10)
        chars[row] = 48 + r
    chars[0] = 32
    chars[D - nd[neg], np.flatnonzero(neg)] = 45  # "-"
    if decimals:
        chars[D + 1] = 46  # "."
        q = fp
        for row in range(W - 1, D + 1, -1):
            q, r = np.divmod(q, 10)
            chars[row] = 48 + r
    return chars, D + 1 - nd - neg


def _columns_text(columns, decimals) -> str | None:
    """Rows of tab-separated fixed-point columns (``"%.{d}f"``, ``d = 0`` for integers).

    The bytes of ``"\\t".join(f"{v:.{d}f}" ...) + "\\n"`` per row; ``None`` when a column
    cannot take the fast path of :func:`_fixed_digits`.
    """
    n = len(columns[0])
    blocks, firsts = [], []
    for i, (col, d) in enumerate(zip(columns, decimals)):
        got = _fixed_digits(col, d)
        if got is None:
            return None
        blocks += [got[0], np.full((1, n), 10 if i == len(columns) - 1 else 9, dtype=np.uint8)]  # "\n" / "\t"
        firsts.append(got[1])
    chars = np.vstack(blocks)  # (total width, n): one row of text per column
    valid = np.ones(chars.shape, dtype=bool)
    top = 0
    for block, first in zip(blocks[::2], firsts):
        valid[top:top + block.shape[0]] = np.arange(block.shape[0])[:, None] >= first[None, :]
        top += block.shape[0] + 1
    return chars.T[valid.T].tobytes().decode("ascii")


def _physio_text(cardiac, respiratory, trigger) -> str:
    """Headerless BIDS physio TSV (columns given in the JSON sidecar), 4 decimals.

    The bytes of ``f"{c:.4f}\\t{r:.4f}\\t{t}\\n"`` per sample (``t`` the integer trigger),
    formatted by whole columns (:func:`_columns_text`); ``tests/test_simulate.py`` checks
    that the text is identical.
    """
    trig = np.asarray(trigger).astype(int)
    text = _columns_text([cardiac, respiratory, trig], [4, 4, 0]) if trig.size else ""
    if text is None:  # non-finite or huge values: sample by sample, as Python formats them
        text = "".join(f"{c:.4f}\t{r:.4f}\t{t}\n" for c, r, t in zip(np.asarray(cardiac).tolist(),
                                                                   np.asarray(respiratory).tolist(),
                                                                   trig.tolist()))
    return text


def _readme(p: dict, shape, n_regions: int) -> str:
    return (
        "# spineprint simulated study\n\n"
        "A synthetic resting-state cervical spinal cord fMRI dataset generated by "
        "`spineprint_utils.simulate` (the default study of the spineprint book). "
        "The images are axial EPI slices in PAM50 template space (De Leener et al. 2018) "
        f"covering segments {p['segments'][0]}-{p['segments'][-1]} on a {shape[0]}x{shape[1]}x{shape[2]} grid of "
        f"{p['voxel_size'][0]:g}x{p['voxel_size'][1]:g}x{p['voxel_size'][2]:g} mm.\n\n"
        f"Design: {p['n_subjects']} subjects x {p['n_sessions']} sessions x {p['n_runs']} runs, "
        f"{p['n_volumes']} volumes, TR {p['tr']:g} s, {p['slice_order']} slice order, multiband {p['multiband']}.\n\n"
        f"Neural signals are planted in {n_regions} gray-matter horn x segment regions with a subject-specific "
        "connectivity fingerprint; cardiac and respiratory noise (RETROICOR model), slice-wise motion and "
        "thermal noise are added. The ground truth is in derivatives/groundtruth/.\n"
    )


# =========================================================================== public API
def simulate_dataset(out_dir, *, overwrite: bool = False, progress: bool = False, **params) -> Path:
    """Write the simulated BIDS study to *out_dir* and return its path.

    Parameters
    ----------
    out_dir : path-like
        Destination folder. It is generated in a temporary folder next to it and
        renamed at the end (atomic: no partial dataset is ever visible). If it
        already holds a complete dataset generated with the same parameters it is
        reused as is; any other non-empty folder is an error unless *overwrite*.
    n_subjects, n_sessions, n_runs : int
        Design (default 10 x 2 x 1).
    n_volumes : int
        Volumes per run (default 150 = 5 min at TR 2 s, at least 10).
    tr : float
        Repetition time in seconds (default 2.0).
    slice_order : {"interleaved", "sequential", "descending"}
        Slice acquisition order, see :func:`slice_timing`.
    multiband : int
        Simultaneous-multislice factor (must divide the number of slices).
    segments : sequence of str
        Spinal segments covered (default C3..C8).
    voxel_size : 3 floats
        EPI voxel size in mm (default 1 x 1 x 5).
    fov_mm : 2 floats
        In-plane field of view in mm, x (left-right) then y (antero-posterior, the
        phase-encoding axis). Default 32 x 24: the PAM50 CSF sac spans about
        24 x 18 mm, so this keeps a 3-4 mm margin with a reduced phase-encoding FOV
        as in spinal cord protocols, and keeps the default dataset small.
    n_slices : int, optional
        Keep only this many central slices (default: all slices covering *segments*);
        more slices than the anatomy covers is an error.
    fingerprint_strength : float >= 0
        Weight ``f`` of the subject-specific deviation (default 0.8; 0 = no fingerprint).
    session_strength : float >= 0
        Weight ``g`` of the subject-and-session-specific deviation (default 0.1: the two
        halves of a run share it, so it makes identification within a session easier than
        across sessions).
    neural_amplitude : float >= 0
        Standard deviation of the neural BOLD signal in percent of the local baseline
        at full horn probability (default 2.5).
    physio_amplitude : float >= 0
        Scale of cardiac and respiratory noise (1 = about 4 % in CSF, 1-2 % in the
        ventral cord, 0.25 mm caudal B0 shift per unit of breathing depth).
    physio_subject_specificity : float in [0, 1]
        Mix of subject-specific physiological noise maps (0 = the same maps for everyone).
    motion_amplitude : float >= 0
        Standard deviation of the slow in-plane drift in mm (default 0.15; subjects
        scale it by a log-normal factor).
    tsnr : float > 0
        Target cord tSNR of the raw data (realistic 5-30, default 11: the real SCT testing
        EPI run measures 10.6), see :func:`measure_tsnr`.
    tsnr_reference : {"raw", "thermal"}
        ``"raw"`` (default): *tsnr* is the cord tSNR of the raw data, all noise included,
        so adding physiological noise or motion lowers the thermal noise. ``"thermal"``:
        *tsnr* is the tSNR of the thermal noise alone (its standard deviation is the median
        cord signal / *tsnr*), independent of the other noise sources.
    physio_sampling_frequency : float
        Physiological recordings sampling rate in Hz (default 100).
    seed : int
        Random seed; the same parameters and seed give byte-identical files.
    anatomy : {"auto", "pam50", "phantom"}
        Real PAM50 template/atlas (``auto`` when available) or the analytic phantom.
    space : {"PAM50", "native"}
        ``"native"``: each participant's images are moved away from PAM50 by a planted
        random affine + smooth warp (:func:`spineprint_utils.registration.random_native_transform`;
        one per participant, shared by the sessions), the T2w image is written on a
        0.5 x 0.5 x 1 mm grid with its cord segmentation under
        ``derivatives/labels/sub-XX/ses-01/anat/sub-XX_ses-01_T2w_label-SC_seg.nii.gz``, and the
        ground truth holds the transform and the native regions.
    distortion : bool
        (``space="native"`` only) A B0 field per session
        (:func:`spineprint_utils.distortion.simulate_b0_field`) distorts the BOLD series along
        the phase-encoding axis (``j-``, ``TotalReadoutTime`` 0.03 s); a reverse-PE pair
        (``fmap/sub-XX_ses-YY_dir-{PA,AP}_epi``, ``IntendedFor`` the session's runs) is written
        and the true field goes to the ground truth.
    b0_peak_hz : float
        Amplitude of the periodic component of that field (default 30 Hz, about 0.9 voxel).
    overwrite : bool
        Replace a different simulated dataset in *out_dir* (a folder holding anything
        else is never replaced).
    progress : bool
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        *out_dir*.
    """
    p = _validate(params)
    p["anatomy"] = _resolve_anatomy(p["anatomy"])
    phash = params_hash(p)
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise SpineprintError(f"{out}: exists and is not a folder")
        if _complete(out) == phash:
            return out
        if any(out.iterdir()) and not overwrite:
            raise SpineprintError(f"{out}: folder is not empty and does not hold this simulation; "
                                  "choose another folder or pass overwrite=True (--overwrite)")
        if any(out.iterdir()) and _complete(out) is None:  # overwrite replaces only a simulation of ours
            raise SpineprintError(f"{out}: folder is not empty and is not a spineprint simulation (no {_MARKER}); "
                                  "it is kept, even with --overwrite. Choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_dataset(tmp, p, phash, progress=progress)
        _make_readable(tmp)
        # marker written last; no timing in it, so that every file is byte-reproducible
        atomic_write_json(tmp / _MARKER, {"hash": phash, "package_version": __version__,
                                          "simulator_version": SIMULATOR_VERSION})
        (tmp / _MARKER).chmod(0o644)
        if out.exists():
            if _complete(out) == phash:  # someone else finished the same dataset meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
                os.replace(out, old / "x")
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
                return out
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _make_readable(root: Path) -> None:
    """Temporary files and folders are created private (0600/0700); open the dataset
    for reading by everyone (0644/0755), as a shared raw dataset should be."""
    root.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)


def _complete(folder: Path) -> str | None:
    marker = Path(folder) / _MARKER
    if not marker.is_file():
        return None
    with contextlib.suppress(Exception):
        return json.loads(marker.read_text())["hash"]
    return None


def default_dataset(progress: bool = False, **overrides) -> Path:
    """The cached default study (generated on first use), with optional parameter overrides.

    Lives in ``cache_dir("datasets") / "sim-<hash>"`` where the hash covers the
    parameters, the package version and the simulator version; a complete dataset
    (marker file written last) is reused.
    """
    phash = params_hash(overrides)
    out = cache_dir("datasets") / f"sim-{phash}"
    if _complete(out) == phash:
        return out
    return simulate_dataset(out, progress=progress, **overrides)


def load_ground_truth(bids_dir) -> dict:
    """Read the ground truth of a simulated dataset.

    Returns
    -------
    dict
        ``params`` (dict, with ``hash``, ``grid_shape``, ``affine``),
        ``regions`` (DataFrame: label, name, segment, horn, n_voxels),
        ``group_fc`` (R, R) planted group pattern,
        ``runs`` (DataFrame, one row per run: physiology, thermal sigma, target and measured tSNR),
        and dictionaries keyed by the run prefix ``sub-XX_ses-YY_task-rest_run-Z``:
        ``neural`` (T, R) region signals at the start of each volume,
        ``fc`` (R, R) their correlation, ``model_fc`` (R, R) the planted correlation
        of that subject and session, ``motion`` (T, Z, 2) true translations (mm,
        voxel axes 1 and 2), ``b0_shift`` (T, Z) respiratory shift along axis 2 (mm),
        ``acquisition_time`` (T, Z) s, ``cardiac_phase`` (T, Z) in [0, 2 pi),
        ``respiratory_phase`` (T, Z) in (-pi, pi];
        ``tissues`` {name: Path} and ``labels`` (Path) of the images used (PAM50 space);
        ``space`` (``"PAM50"`` or ``"native"``); for native-space data, keyed by ``sub-XX``:
        ``native_transform`` (Path of the planted transform, read it with
        :meth:`spineprint_utils.registration.NativeTransform.load`), ``native_labels`` and
        ``native_cord`` (true regions and cord on the EPI grid), and keyed by ``sub-XX_ses-YY``:
        ``b0_field`` (Path of the true off-resonance field in Hz, native EPI grid).
    """
    import pandas as pd

    root = Path(bids_dir)
    gt = root / "derivatives" / "groundtruth"
    if not (gt / "params.json").is_file():
        raise SpineprintError(f"{root}: no derivatives/groundtruth/params.json; only datasets written by "
                              "`spineprint simulate` (spineprint_utils.simulate) carry a ground truth")
    info = read_json(gt / "params.json", required=("params", "grid_shape"))

    def table(path):
        if not path.is_file():
            raise SpineprintError(f"{path}: ground-truth file not found")
        return pd.read_csv(path, sep="\t")

    regions = table(gt / "regions.tsv")
    out = {"params": info, "regions": regions, "group_fc": table(gt / "group_desc-model_connectivity.tsv").to_numpy(),
           "runs": table(gt / "runs.tsv"), "neural": {}, "fc": {}, "model_fc": {}, "motion": {}, "b0_shift": {},
           "acquisition_time": {}, "cardiac_phase": {}, "respiratory_phase": {},
           "tissues": {k: gt / f"space-PAM50_label-{k}_probseg.nii.gz" for k in ("cord", "gm", "wm", "csf", *HORNS)},
           "labels": gt / "space-PAM50_atlas-PAM50horns_dseg.nii.gz",
           "spinal_levels": gt / "space-PAM50_desc-spinallevels_dseg.nii.gz",
           "space": str(info.get("space", "PAM50")), "native_transform": {}, "native_labels": {}, "native_cord": {},
           "b0_field": {}}
    for d in sorted(gt.glob("sub-*")):
        if (d / f"{d.name}_from-native_to-PAM50_desc-true_xfm.npz").is_file():
            out["native_transform"][d.name] = d / f"{d.name}_from-native_to-PAM50_desc-true_xfm.npz"
            out["native_labels"][d.name] = d / f"{d.name}_space-native_atlas-PAM50horns_dseg.nii.gz"
            out["native_cord"][d.name] = d / f"{d.name}_space-native_label-cord_mask.nii.gz"
        for f in sorted(d.glob("ses-*/fmap/*_desc-true_fieldmap.nii.gz")):
            out["b0_field"][f.name.split("_desc-")[0]] = f
    nz = int(info["grid_shape"][2])
    for prefix in out["runs"]["run"]:
        sub, ses = prefix.split("_")[:2]
        d = gt / sub / ses / "func"
        out["neural"][prefix] = table(d / f"{prefix}_desc-neural_timeseries.tsv").to_numpy()
        out["fc"][prefix] = table(d / f"{prefix}_desc-neural_connectivity.tsv").to_numpy()
        out["model_fc"][prefix] = table(gt / sub / ses / f"{sub}_{ses}_desc-model_connectivity.tsv").to_numpy()
        m = table(d / f"{prefix}_desc-motion_timeseries.tsv").to_numpy()
        out["motion"][prefix] = np.stack([m[:, :nz], m[:, nz:]], axis=-1)
        ph = table(d / f"{prefix}_desc-physio_timeseries.tsv").to_numpy()
        out["acquisition_time"][prefix] = ph[:, :nz]
        out["cardiac_phase"][prefix] = ph[:, nz:2 * nz]
        out["respiratory_phase"][prefix] = ph[:, 2 * nz:3 * nz]
        out["b0_shift"][prefix] = ph[:, 3 * nz:]
    return out


# =========================================================================== CLI
def register_cli(subparsers) -> None:
    """Add ``spineprint simulate OUT_DIR [options]``."""
    sp = subparsers.add_parser("simulate", help="write the simulated BIDS study (default study of the book)",
                               description="Write a simulated cervical spinal cord resting-state BIDS dataset with a "
                                           "planted functional-connectivity fingerprint and its ground truth.")
    sp.add_argument("out_dir", metavar="OUT_DIR")
    d = DEFAULTS
    sp.add_argument("--n-subjects", type=int, default=d["n_subjects"])
    sp.add_argument("--n-sessions", type=int, default=d["n_sessions"])
    sp.add_argument("--n-runs", type=int, default=d["n_runs"])
    sp.add_argument("--n-volumes", type=int, default=d["n_volumes"])
    sp.add_argument("--tr", type=float, default=d["tr"], help="repetition time (s)")
    sp.add_argument("--slice-order", choices=_SLICE_ORDERS, default=d["slice_order"])
    sp.add_argument("--multiband", type=int, default=d["multiband"])
    sp.add_argument("--segments", nargs="+", default=list(d["segments"]))
    sp.add_argument("--voxel-size", type=float, nargs=3, default=list(d["voxel_size"]), metavar=("X", "Y", "Z"))
    sp.add_argument("--fov-mm", type=float, nargs=2, default=list(d["fov_mm"]), metavar=("X", "Y"))
    sp.add_argument("--n-slices", type=int, default=None)
    sp.add_argument("--fingerprint-strength", type=float, default=d["fingerprint_strength"])
    sp.add_argument("--session-strength", type=float, default=d["session_strength"])
    sp.add_argument("--neural-amplitude", type=float, default=d["neural_amplitude"], help="percent of baseline")
    sp.add_argument("--physio-amplitude", type=float, default=d["physio_amplitude"])
    sp.add_argument("--physio-subject-specificity", type=float, default=d["physio_subject_specificity"])
    sp.add_argument("--motion-amplitude", type=float, default=d["motion_amplitude"], help="mm")
    sp.add_argument("--tsnr", type=float, default=d["tsnr"])
    sp.add_argument("--physio-sampling-frequency", type=float, default=d["physio_sampling_frequency"], help="Hz")
    sp.add_argument("--seed", type=int, default=d["seed"])
    sp.add_argument("--anatomy", choices=_ANATOMY, default=d["anatomy"])
    sp.add_argument("--space", choices=_SPACES, default=d["space"], help="PAM50 or a planted native space")
    sp.add_argument("--distortion", action="store_true", help="B0 distortion + reverse-PE fieldmaps (native only)")
    sp.add_argument("--b0-peak-hz", type=float, default=d["b0_peak_hz"])
    sp.add_argument("--tsnr-reference", choices=_TSNR_REFERENCES, default=d["tsnr_reference"],
                    help="raw: --tsnr is the raw-data tSNR (all noise); thermal: the tSNR of thermal noise alone")
    sp.add_argument("--overwrite", action="store_true", help="replace a different dataset in OUT_DIR")
    sp.set_defaults(func=_cli_main)


def _cli_main(args) -> int:
    params = {k: getattr(args, k) for k in DEFAULTS}
    t0 = time.perf_counter()
    out = simulate_dataset(args.out_dir, overwrite=args.overwrite, progress=True, **params)
    print(f"simulated dataset in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0

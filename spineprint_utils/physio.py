"""Physiological noise model: BIDS physio files, alignment, RETROICOR, HR/RVT.

The cardiac pulse and the breathing cycle move the spinal cord and the
cerebrospinal fluid around it and modulate the magnetic field in the neck, so
a large part of the spinal cord BOLD variance is physiological
(Brooks et al. 2008; Kaptan et al. 2023). This module turns a BIDS peripheral recording
(``*_physio.tsv.gz`` + JSON sidecar) into voxel-independent, **slice-specific**
nuisance regressors:

1. :func:`find_physio` / :func:`load_physio` read the recording (headerless
   gzip TSV whose columns are named by the sidecar ``Columns``).
2. :func:`scan_onsets` places the volumes on the physio clock, from the
   scanner trigger column when there is one, else from ``StartTime``.
3. :func:`detect_cardiac_peaks` finds heart beats and flags implausible rates
   and missing beats.
4. :func:`cardiac_phase` and :func:`respiratory_phase` implement the phases of
   RETROICOR (Glover et al. 2000).
5. :func:`retroicor_regressors` expands the phases in a Fourier series with the
   cardiac x respiratory interaction terms of Harvey et al. (2008) (4 cardiac,
   4 respiratory and 2 x 2 interaction orders = 32 regressors, the usual spinal
   setting, e.g. Kaptan et al. 2023, used with FSL PNM as ``pnm_evs --oc=4 --or=4
   --multc=2 --multr=2``; ``pnm_evs`` itself defaults to ``--oc=2 --or=1
   --multc=0 --multr=0``); :func:`slice_regressors` samples them at each slice's
   acquisition time (``SliceTiming``) as in Brooks et al. (2008) and PhysIO
   (Kasper et al. 2017).
6. :func:`hr_rvt_regressors` gives low-frequency heart-rate
   (Chang et al. 2009) and respiration-volume-per-time (Birn et al. 2006, 2008)
   regressors convolved with their response functions.

Clock convention
----------------
All times called "physio clock" are seconds since the **first physio sample**:
sample ``k`` is at ``k / SamplingFrequency``. The BIDS ``StartTime`` is the
time of the first sample relative to the first volume (negative when the
recording started before the scan), so without a trigger the first volume is
at ``-StartTime`` on the physio clock.

References
----------
Glover GH, Li TQ, Ress D (2000) Image-based method for retrospective correction
of physiological motion effects in fMRI: RETROICOR. Magn Reson Med 44:162-167.
Harvey AK et al. (2008) Brainstem functional magnetic resonance imaging:
disentangling signal from physiological noise. J Magn Reson Imaging 28:1337-1344.
Brooks JCW et al. (2008) Physiological noise modelling for spinal functional
magnetic resonance imaging studies. NeuroImage 39:680-692.
Kasper L et al. (2017) The PhysIO toolbox for modeling physiological noise in
fMRI data. J Neurosci Methods 276:56-72.
Chang C, Cunningham JP, Glover GH (2009) Influence of heart rate on the BOLD
signal: the cardiac response function. NeuroImage 44:857-869.
Birn RM et al. (2006) Separating respiratory-variation-related fluctuations from
neuronal-activity-related fluctuations in fMRI. NeuroImage 31:1536-1548.
Birn RM et al. (2008) The respiration response function: the temporal dynamics of
fMRI signal fluctuations related to changes in respiration. NeuroImage 40:644-654.
Kaptan M et al. (2023) Reliability of resting-state functional connectivity in the
human spinal cord: assessing the impact of distinct noise sources. NeuroImage, 120152.
(BibTeX keys in book/references.bib: glover2000, harvey2008, brooks2008,
kasper2017, chang2009, birn2006, birn2008, kaptan2023.)
"""

from __future__ import annotations

import gzip
import math
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import SpineprintError, read_json
from .plotting import figsize, styled

__all__ = [
    "PhysioWarning",
    "PhysioRecording",
    "COLUMN_ALIASES",
    "find_physio",
    "find_physio_files",
    "load_physio",
    "trigger_onsets",
    "scan_onsets",
    "combine_recordings",
    "load_run_physio",
    "detect_cardiac_peaks",
    "fill_missing_beats",
    "cardiac_phase",
    "respiratory_phase",
    "retroicor_names",
    "retroicor_regressors",
    "slice_regressors",
    "cardiac_response_function",
    "respiration_response_function",
    "heart_rate",
    "respiration_volume_per_time",
    "hr_rvt_regressors",
    "physio_summary",
    "plot_physio",
]


class PhysioWarning(UserWarning):
    """A recoverable problem with a physio recording (e.g. unusable trigger)."""


#: Accepted column names (lower case) for each canonical signal.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "cardiac": ("cardiac", "pulse", "puls", "ppu", "ppg", "ecg", "ecg1", "heart"),
    "respiratory": ("respiratory", "resp", "respiration", "breathing", "belt"),
    "trigger": ("trigger", "trig", "scanner_trigger", "volume", "ext", "ext1"),
}


# ---------------------------------------------------------------- recording
@dataclass
class PhysioRecording:
    """A peripheral physiological recording on its own clock.

    Attributes
    ----------
    signals : dict of str to ndarray, shape (n_samples,)
        Every column of the file, keyed by the canonical name (``cardiac``,
        ``respiratory``, ``trigger``) when the column name is a known alias
        (see :data:`COLUMN_ALIASES`), else by its original name.
    sampling_frequency : float
        Samples per second (Hz), from the sidecar ``SamplingFrequency``.
    start_time : float
        Time (s) of the first sample relative to the first volume (BIDS
        ``StartTime``; negative = recording started before the scan).
    path : Path or None
        The ``_physio.tsv.gz`` file (named in every error message).
    columns : list of str
        The column names as written in the sidecar.
    """

    signals: dict[str, np.ndarray]
    sampling_frequency: float
    start_time: float = 0.0
    path: Path | None = None
    columns: list[str] = field(default_factory=list)

    @property
    def cardiac(self) -> np.ndarray | None:
        """Cardiac trace (ECG or pulse oximeter), or None."""
        return self.signals.get("cardiac")

    @property
    def respiratory(self) -> np.ndarray | None:
        """Respiratory belt trace, or None."""
        return self.signals.get("respiratory")

    @property
    def trigger(self) -> np.ndarray | None:
        """Scanner trigger trace, or None."""
        return self.signals.get("trigger")

    @property
    def n_samples(self) -> int:
        """Number of samples."""
        return int(len(next(iter(self.signals.values())))) if self.signals else 0

    @property
    def duration(self) -> float:
        """Recording length (s): ``n_samples / sampling_frequency``."""
        return self.n_samples / self.sampling_frequency

    @property
    def name(self) -> str:
        """File name used in messages."""
        return str(self.path) if self.path is not None else "physio recording"

    def require(self, *names: str) -> None:
        """Raise :class:`SpineprintError` naming the file if a signal is missing."""
        missing = [n for n in names if n not in self.signals]
        if missing:
            aliases = "; ".join(f"{n}: {', '.join(COLUMN_ALIASES.get(n, (n,)))}" for n in missing)
            raise SpineprintError(
                f"{self.name}: no {' or '.join(missing)} column (columns are {self.columns or sorted(self.signals)}; "
                f"accepted names {aliases})"
            )


def _canonical(column: str) -> str:
    low = column.strip().lower()
    for canon, aliases in COLUMN_ALIASES.items():
        if low in aliases:
            return canon
    return column


_BOLD_RE = re.compile(r"^(?P<prefix>.+)_bold(\.nii(\.gz)?|\.json)$")


def find_physio_files(bold_path) -> list[Path]:
    """All BIDS physio files belonging to a BOLD run.

    Parameters
    ----------
    bold_path : path-like
        ``<prefix>_bold.nii.gz`` (or ``.nii`` / ``.json``).

    Returns
    -------
    list of Path
        ``<prefix>_physio.tsv.gz`` if it exists, followed by any
        ``<prefix>_recording-<label>_physio.tsv.gz`` (sorted), e.g. the CoSpine
        datasets store pulse and respiration in two recordings; ``echo-``/``part-``
        entities of the BOLD name are ignored (every echo finds the run's physio), see
        :func:`spineprint_utils.layout.physio_files`.
    """
    bold_path = Path(bold_path)
    match = _BOLD_RE.match(bold_path.name)
    if not match:
        raise SpineprintError(f"{bold_path}: not a BIDS BOLD file name (expected '<entities>_bold.nii.gz')")
    from . import layout

    # the dataset index's rule: every echo/part of a run shares its recordings
    return layout.physio_files(bold_path)


def find_physio(bold_path) -> Path | None:
    """The ``_physio.tsv.gz`` matching a BIDS BOLD file, or None.

    Same directory and entities as the BOLD file, suffix ``physio``
    (``sub-01_ses-1_task-rest_run-1_bold.nii.gz`` ->
    ``sub-01_ses-1_task-rest_run-1_physio.tsv.gz``). If there is no such file
    but exactly one ``_recording-<label>_physio.tsv.gz``, that one is returned;
    several recordings (one per device) are listed by
    :func:`find_physio_files`.

    Returns
    -------
    Path or None
        None when the run has no physio recording (the caller then processes
        the run without the physiological model and records it).
    """
    files = find_physio_files(bold_path)
    if not files:
        return None
    plain = [p for p in files if "_recording-" not in p.name]
    if plain:
        return plain[0]
    if len(files) > 1:
        warnings.warn(
            f"{bold_path}: {len(files)} physio recordings ({', '.join(p.name for p in files)}); "
            f"using {files[0].name}; load the others with load_physio",
            PhysioWarning,
            stacklevel=2,
        )
    return files[0]


def _sidecar(physio_path: Path) -> Path:
    name = physio_path.name
    for ext in (".tsv.gz", ".tsv"):
        if name.endswith(ext):
            return physio_path.with_name(name[: -len(ext)] + ".json")
    raise SpineprintError(f"{physio_path}: not a BIDS physio file name (expected '<entities>_physio.tsv.gz')")


def load_physio(physio_path) -> PhysioRecording:
    """Read a BIDS physiological recording and its JSON sidecar.

    Parameters
    ----------
    physio_path : path-like
        ``*_physio.tsv.gz``: gzip-compressed, tab-separated, **no header row**;
        its sidecar ``*_physio.json`` must give ``SamplingFrequency`` (Hz),
        ``StartTime`` (s) and ``Columns`` (one name per column).

    Returns
    -------
    PhysioRecording

    Raises
    ------
    SpineprintError
        Missing/invalid sidecar or field (message names the JSON and the
        field), unreadable or ragged TSV, non-numeric values, a header row,
        a column count different from ``Columns``, non-finite values in the
        cardiac/respiratory/trigger columns.
    """
    import pandas as pd

    path = Path(physio_path)
    sidecar = _sidecar(path)
    from . import layout

    # BIDS inheritance: a top-level task-<x>_physio.json applies to every recording below it
    meta, sources = layout.metadata(path, "physio")
    if not sources:
        read_json(sidecar)  # raises "sidecar file not found" naming the run's own sidecar
    missing = [k for k in ("SamplingFrequency", "StartTime", "Columns") if k not in meta]
    if missing:
        where = sidecar if sidecar.is_file() or not sources else sources[-1]
        raise SpineprintError(f"{where}: missing required field(s) {', '.join(missing)} (BIDS inheritance applied)")
    if not sidecar.is_file():
        sidecar = sources[-1]
    try:
        fs = float(meta["SamplingFrequency"])
    except (TypeError, ValueError):
        raise SpineprintError(
            f"{sidecar}: SamplingFrequency must be a number, found {meta['SamplingFrequency']!r}"
        ) from None
    if not math.isfinite(fs) or fs <= 0:
        raise SpineprintError(f"{sidecar}: SamplingFrequency must be positive, found {fs}")
    try:
        start = float(meta["StartTime"])
    except (TypeError, ValueError):
        raise SpineprintError(f"{sidecar}: StartTime must be a number (s), found {meta['StartTime']!r}") from None
    if not math.isfinite(start):
        raise SpineprintError(f"{sidecar}: StartTime must be finite, found {start}")
    columns = meta["Columns"]
    if (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) and c.strip() for c in columns)
    ):
        raise SpineprintError(f"{sidecar}: Columns must be a non-empty list of column names, found {columns!r}")
    canon = [_canonical(c) for c in columns]
    dupes = sorted({c for c in canon if canon.count(c) > 1})
    if dupes:
        raise SpineprintError(f"{sidecar}: several columns map to {dupes} (columns {columns})")

    if not path.is_file():
        raise SpineprintError(f"{path}: physio file not found")
    compression = "gzip" if path.name.endswith(".gz") else None
    try:
        values = pd.read_csv(
            path, sep="\t", header=None, compression=compression, na_values=["n/a"], dtype=float
        ).to_numpy(dtype=float)
    except (ValueError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError, zlib.error):
        values = _diagnose_table(path, compression, columns, sidecar)  # raises a clear error, or parses
    if values.ndim != 2 or values.shape[0] == 0:
        raise SpineprintError(f"{path}: physio file has no samples")
    if values.shape[1] != len(columns):
        raise SpineprintError(
            f"{path}: {values.shape[1]} column(s) but the sidecar {sidecar.name} names {len(columns)} ({columns})"
        )
    signals = {}
    for j, name in enumerate(canon):
        column = np.ascontiguousarray(values[:, j])
        if name in COLUMN_ALIASES and not np.all(np.isfinite(column)):
            n_bad = int(np.size(column) - np.count_nonzero(np.isfinite(column)))
            raise SpineprintError(f"{path}: {n_bad} missing or non-finite value(s) in column {columns[j]!r}")
        signals[name] = column
    return PhysioRecording(signals=signals, sampling_frequency=fs, start_time=start, path=path, columns=list(columns))


def _diagnose_table(path: Path, compression, columns, sidecar) -> np.ndarray:
    """Slow path of :func:`load_physio`: read as text to report what is wrong."""
    import pandas as pd

    try:
        table = pd.read_csv(
            path, sep="\t", header=None, compression=compression, na_values=["n/a"], dtype=str
        )
    except pd.errors.EmptyDataError:
        raise SpineprintError(f"{path}: physio file is empty") from None
    except pd.errors.ParserError as exc:
        raise SpineprintError(f"{path}: not a rectangular tab-separated table ({exc})") from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise SpineprintError(f"{path}: corrupt or truncated gzip TSV ({exc})") from None
    if table.shape[0] == 0:
        raise SpineprintError(f"{path}: physio file has no samples")
    if table.shape[1] != len(columns):
        raise SpineprintError(
            f"{path}: {table.shape[1]} column(s) but the sidecar {sidecar.name} names {len(columns)} ({columns})"
        )
    values = table.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = table.notna().to_numpy() & ~np.isfinite(values) & ~table.isin(["nan", "NaN", "inf", "-inf"]).to_numpy()
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        if row == 0 and bad[0].all():
            raise SpineprintError(
                f"{path}: first row {list(table.iloc[0])} is not numeric; BIDS physio files have no header row "
                f"(column names go in {sidecar.name} 'Columns')"
            )
        raise SpineprintError(
            f"{path}: non-numeric value {table.iat[row, col]!r} in column {columns[min(col, len(columns) - 1)]!r}, "
            f"row {row + 1}"
        )
    return values


# ---------------------------------------------------------------- alignment
def trigger_onsets(trigger, fs: float) -> np.ndarray:
    """Rising edges of a scanner trigger trace (s, physio clock).

    The threshold is halfway between the minimum and maximum of the trace; a
    trace that is already high at the first sample counts as an edge at 0. If
    the trace is high more than half of the time the trigger is taken to be
    active-low (pulses are dips) and falling edges are returned.

    Parameters
    ----------
    trigger : ndarray, shape (n_samples,)
    fs : float
        Sampling frequency (Hz).

    Returns
    -------
    ndarray, shape (n_edges,)
        Times of the first sample above threshold of each pulse.
    """
    trig = np.asarray(trigger, dtype=float)
    if trig.size == 0:
        return np.zeros(0)
    lo, hi = np.nanmin(trig), np.nanmax(trig)
    if not hi > lo:
        return np.zeros(0)
    high = trig > (lo + hi) / 2.0
    if high.mean() > 0.5:  # active-low trigger: pulses are short dips
        high = ~high
    edges = np.flatnonzero(high[1:] & ~high[:-1]) + 1
    if high[0]:
        edges = np.concatenate([[0], edges])
    return edges / float(fs)


def _onsets_from_trigger(rec: PhysioRecording, n_volumes: int, tr: float) -> np.ndarray | None:
    """Volume onsets from the trigger column, or None (with a warning) if unusable."""
    edges = trigger_onsets(rec.trigger, rec.sampling_frequency)
    if len(edges) < n_volumes:
        warnings.warn(
            f"{rec.name}: {len(edges)} trigger pulse(s) for {n_volumes} volumes; using StartTime instead",
            PhysioWarning,
            stacklevel=3,
        )
        return None
    tol = max(0.25 * tr, 1.5 / rec.sampling_frequency)
    first = edges[0]
    expected_first = -rec.start_time
    if len(edges) > n_volumes:
        near = edges[np.argmin(np.abs(edges - expected_first))]
        if abs(near - expected_first) <= tol:
            first = near  # StartTime and triggers agree: StartTime picks the first volume
        else:
            warnings.warn(
                f"{rec.name}: {len(edges)} trigger pulses for {n_volumes} volumes and StartTime does not pick one; "
                "assuming the first pulse marks the first volume",
                PhysioWarning,
                stacklevel=3,
            )
    # follow the pulses volume by volume: the pulse nearest the previous onset + TR (copes with
    # one pulse per slice and with a slow drift between the nominal and the actual TR)
    nearest = np.empty(n_volumes)
    nearest[0] = first
    worst = 0.0
    for j in range(1, n_volumes):
        expected = nearest[j - 1] + tr
        k = int(np.searchsorted(edges, expected))
        cands = edges[max(k - 1, 0) : k + 1]
        nearest[j] = cands[np.argmin(np.abs(cands - expected))]
        worst = max(worst, abs(nearest[j] - expected))
    if worst > tol or np.any(np.diff(nearest) <= 0):
        warnings.warn(
            f"{rec.name}: trigger pulses do not follow TR = {tr} s (largest deviation {worst:.3f} s); "
            "using StartTime instead",
            PhysioWarning,
            stacklevel=3,
        )
        return None
    return nearest


def scan_onsets(rec: PhysioRecording, n_volumes: int, tr: float, *, use_trigger: bool = True) -> np.ndarray:
    """Volume onset times on the physio clock (s since the first physio sample).

    With a trigger column (and ``use_trigger``) the onsets are its rising edges
    (:func:`trigger_onsets`): with more pulses than volumes, the pulse nearest
    ``-StartTime`` (if within TR/4) or else the first pulse marks the first
    volume, and each next volume takes the pulse nearest the previous onset +
    TR (within TR/4; copes with one pulse per slice and a slow TR drift). If
    there are too few pulses or they do not follow the TR, a
    :class:`PhysioWarning` is issued and ``StartTime`` is used:
    ``onset_j = -StartTime + j * TR``.

    Parameters
    ----------
    rec : PhysioRecording
    n_volumes : int
        Number of volumes in the BOLD run.
    tr : float
        Repetition time (s).
    use_trigger : bool
        Set False to ignore the trigger column.

    Returns
    -------
    ndarray, shape (n_volumes,)

    Raises
    ------
    SpineprintError
        If the recording does not cover the run (starts after the first
        volume or ends before the end of the last volume); the message names
        the physio file and gives both durations.
    """
    n_volumes = int(n_volumes)
    tr = float(tr)
    if n_volumes < 1 or not (math.isfinite(tr) and tr > 0):
        raise SpineprintError(f"{rec.name}: need n_volumes >= 1 and TR > 0 (got {n_volumes}, {tr})")
    onsets = None
    if use_trigger and rec.trigger is not None:
        onsets = _onsets_from_trigger(rec, n_volumes, tr)
    source = "trigger"
    if onsets is None:
        onsets = -rec.start_time + tr * np.arange(n_volumes)
        source = "StartTime"
    tol = 1.0 / rec.sampling_frequency
    run_end = onsets[-1] + tr
    if onsets[0] < -tol or run_end > rec.duration + tol:
        hint = ""
        if source == "StartTime" and abs(rec.start_time) > 1e4:
            hint = (f"; StartTime {rec.start_time:g} looks like a clock time, not seconds relative to the first "
                    "volume (a known converter defect): a trigger column is needed to align this recording")
        raise SpineprintError(
            f"{rec.name}: physio recording does not cover the run: it lasts {rec.duration:.2f} s "
            f"({rec.n_samples} samples at {rec.sampling_frequency:g} Hz), the run lasts {n_volumes * tr:.2f} s "
            f"({n_volumes} volumes x TR {tr:g} s) and, placed by {source}, spans {onsets[0]:.2f} to {run_end:.2f} s "
            f"of the recording{hint}"
        )
    return onsets


def combine_recordings(recordings, n_volumes: int, tr: float) -> PhysioRecording:
    """Merge recordings of one run made by different devices onto one clock.

    Some datasets (e.g. CoSpine, ds005883/ds005884) store the pulse and the
    respiratory belt in separate ``_recording-<label>_physio.tsv.gz`` files that
    start at different times. Each recording is placed relative to the first
    volume with :func:`scan_onsets` (its trigger column, else its
    ``StartTime``); the merged recording covers the span common to all of them,
    is sampled at the highest sampling frequency (linear interpolation;
    ``trigger`` by nearest sample) and has a ``StartTime`` relative to the first
    volume. A signal present in several recordings is taken from the first.

    Parameters
    ----------
    recordings : sequence of PhysioRecording
    n_volumes : int
    tr : float

    Returns
    -------
    PhysioRecording
        ``path`` is the first recording's path; ``columns`` lists the merged
        signals.
    """
    recs = list(recordings)
    if not recs:
        raise SpineprintError("no physio recordings to combine")
    if len(recs) == 1:
        return recs[0]
    first_vol = [float(scan_onsets(r, n_volumes, tr)[0]) for r in recs]
    lo = max(-f for f in first_vol)  # span common to all, relative to the first volume (s)
    hi = min(r.duration - f for r, f in zip(recs, first_vol))
    fs = max(r.sampling_frequency for r in recs)
    n = int(np.floor((hi - lo) * fs + 1e-9))
    if n < 2:
        raise SpineprintError(f"{recs[0].name}: the physio recordings of this run do not overlap in time")
    tau = lo + np.arange(n) / fs
    signals = {}
    for rec, f in zip(recs, first_vol):
        t_local = tau + f  # times on this recording's own clock
        for key, values in rec.signals.items():
            if key in signals:
                continue
            if key == "trigger":
                idx = np.clip(np.rint(t_local * rec.sampling_frequency).astype(int), 0, rec.n_samples - 1)
                signals[key] = values[idx]
            else:
                signals[key] = np.interp(t_local, np.arange(rec.n_samples) / rec.sampling_frequency, values)
    return PhysioRecording(signals=signals, sampling_frequency=fs, start_time=float(lo), path=recs[0].path,
                           columns=list(signals))


def load_run_physio(bold_path, n_volumes: int, tr: float) -> PhysioRecording | None:
    """Find, load and (if stored per device) combine the physio recordings of a BOLD run.

    :func:`find_physio_files` + :func:`load_physio` + :func:`combine_recordings`.
    Returns None when the run has no physio file.
    """
    files = find_physio_files(bold_path)
    if not files:
        return None
    plain = [p for p in files if "_recording-" not in p.name]
    if plain:
        return load_physio(plain[0])
    return combine_recordings([load_physio(p) for p in files], n_volumes, tr)


# ---------------------------------------------------------------- cardiac
def _bandpass(x, fs, low, high, order=2):
    """Zero-phase Butterworth band-pass (low-pass if ``low`` is None) of the demeaned trace."""
    from scipy.signal import butter, sosfiltfilt

    nyq = fs / 2.0
    high = min(high, 0.9 * nyq)
    if low is not None and low > 0 and low < high:
        sos = butter(order, [low / nyq, high / nyq], btype="bandpass", output="sos")
    else:
        sos = butter(order, high / nyq, btype="lowpass", output="sos")
    x = np.asarray(x, dtype=float)
    padlen = max(0, min(3 * (2 * len(sos) + 1), len(x) - 1))
    return sosfiltfilt(sos, x - np.mean(x), padlen=padlen)


def _check_trace(trace, what: str) -> np.ndarray:
    """A physiological trace as a finite 1-D float array of >= 3 samples, else a clear error."""
    x = np.asarray(trace, dtype=float)
    if x.ndim != 1 or x.size < 3:
        raise SpineprintError(f"{what} trace must be 1-D with >= 3 samples, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise SpineprintError(f"{what} trace contains NaN or infinite values")
    return x


def detect_cardiac_peaks(
    cardiac,
    fs: float,
    min_hr: float = 40.0,
    max_hr: float = 180.0,
    *,
    max_irregular_fraction: float = 0.05,
) -> tuple[np.ndarray, dict]:
    """Detect heart beats in an ECG or pulse-oximeter trace, with quality flags.

    The trace is band-passed (0.5-15 Hz, zero-phase Butterworth) and flipped
    if its skewness is below -0.5 (beats pointing down, e.g. an inverted ECG
    lead; reported as ``quality["inverted"]``). Peaks are
    found with :func:`scipy.signal.find_peaks` (minimum distance 0.5 x the beat
    period, estimated as the first main autocorrelation peak between 0.2 and
    3 s of the positive part low-passed at 3 Hz; prominence at least 30 % of the 1-99 % amplitude range). A
    peak closer than half the local median inter-beat interval (IBI, running
    median over +-5 beats) to the previous one is dropped (the lower of the two), which removes T waves and dicrotic
    notches.

    Parameters
    ----------
    cardiac : ndarray, shape (n_samples,)
    fs : float
        Sampling frequency (Hz).
    min_hr, max_hr : float
        Plausible heart-rate range (beats per minute).
    max_irregular_fraction : float
        ``ok`` requires at most this fraction of irregular intervals.

    Returns
    -------
    peaks : ndarray of int, shape (n_peaks,)
        Sample indices of the beats.
    quality : dict
        ``n_peaks``; ``mean_hr_bpm`` (60 / mean IBI), ``median_hr_bpm``,
        ``min_hr_bpm`` and ``max_hr_bpm`` (instantaneous 60 / IBI);
        ``implausible_rate`` (median rate outside [min_hr, max_hr] or fewer than
        3 beats); ``n_missing_beats`` (IBIs longer than 1.5 x the local median
        IBI: a beat was probably missed); ``n_extra_beats`` (IBIs shorter than
        0.5 x the local median, should be 0 after the clean-up); ``ok`` (plausible rate and at
        most ``max_irregular_fraction`` irregular IBIs); ``inverted``.
    """
    from scipy.signal import find_peaks

    x = _check_trace(cardiac, "cardiac")
    fs = float(fs)
    filt = _bandpass(x, fs, 0.5, 15.0)
    centred = filt - filt.mean()
    skewness = float(np.mean(centred**3) / max(np.mean(centred**2), 1e-300) ** 1.5)
    inverted = skewness < -0.5  # R waves / pulse peaks point down (e.g. an inverted ECG lead)
    if inverted:
        filt = -filt
    lo, hi = np.percentile(filt, [1, 99])
    # period from the autocorrelation of a smooth envelope (robust to heart-rate variability)
    envelope = _bandpass(np.clip(filt, 0.0, None), fs, None, 3.0)
    period = _dominant_period(envelope, fs)
    distance = max(1, int(round(0.5 * period * fs)))
    peaks, props = find_peaks(filt, distance=distance, prominence=max(0.3 * (hi - lo), 1e-12))
    peaks = np.asarray(peaks, dtype=int)
    if len(peaks) >= 3:
        # drop peaks that follow the previous kept one by < 0.5 local median IBI (keep the higher)
        half = 0.5 * _local_median(np.diff(peaks).astype(float))
        kept = [int(peaks[0])]
        for i, p in enumerate(peaks[1:]):
            if p - kept[-1] < half[i]:
                if filt[p] > filt[kept[-1]]:
                    kept[-1] = int(p)
            else:
                kept.append(int(p))
        peaks = np.asarray(kept, dtype=int)
    quality = _beat_quality(peaks / fs, min_hr, max_hr, max_irregular_fraction)
    quality["inverted"] = bool(inverted)
    return peaks, quality


def _dominant_period(x, fs, shortest=0.2, longest=3.0) -> float:
    """Beat period (s): the shortest autocorrelation peak in [shortest, longest] s reaching
    80 % of the highest one (avoids multiples of the period and T-wave/dicrotic lags)."""
    from scipy.signal import find_peaks

    n = len(x)
    spec = np.fft.rfft(x - x.mean(), 2 * n)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:n]
    if not ac[0] > 0:
        return shortest
    ac = ac / ac[0]
    lo, hi = int(shortest * fs), min(n - 1, int(np.ceil(longest * fs)))
    if hi <= lo + 2:
        return shortest
    cand, _ = find_peaks(ac[lo : hi + 1])
    if cand.size == 0:
        return shortest
    vals = ac[lo + cand]
    best = cand[np.flatnonzero(vals >= 0.8 * vals.max())[0]]
    return (lo + best) / fs


def _local_median(ibi, half_width: int = 5) -> np.ndarray:
    """Running median of the inter-beat intervals over +-``half_width`` beats (edge-padded)."""
    ibi = np.asarray(ibi, dtype=float)
    if ibi.size == 0:
        return ibi
    w = min(half_width, ibi.size)
    padded = np.pad(ibi, w, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1), axis=1)[: ibi.size]


def fill_missing_beats(peak_times) -> np.ndarray:
    """Insert beats in gaps left by missed detections.

    An inter-beat interval longer than 1.5 x the local median IBI (running
    median over +-5 beats) is split into ``round(IBI / local median)`` equal
    intervals, so that the cardiac phase (:func:`cardiac_phase`) advances by
    2 pi per heart beat across the gap instead of once over several beats.

    Parameters
    ----------
    peak_times : ndarray, shape (n_peaks,)
        Increasing beat times (s).

    Returns
    -------
    ndarray, shape (n_peaks + n_inserted,)
    """
    p = np.asarray(peak_times, dtype=float)
    if len(p) < 3:
        return p
    ibi = np.diff(p)
    local = _local_median(ibi)
    k = np.where(ibi > 1.5 * local, np.maximum(np.rint(ibi / local), 1), 1).astype(int)
    if np.all(k == 1):
        return p
    pieces = [p[:-1, None] + ibi[:, None] * (np.arange(kk) / kk)[None, :] for kk in np.unique(k)]
    out = np.concatenate([piece[k == kk].ravel() for piece, kk in zip(pieces, np.unique(k))] + [p[-1:]])
    return np.sort(out)


def _beat_quality(peak_times, min_hr, max_hr, max_irregular_fraction=0.05) -> dict:
    ibi = np.diff(np.asarray(peak_times, dtype=float))
    q = {"n_peaks": int(len(peak_times))}
    if len(ibi) < 2:
        q.update(
            mean_hr_bpm=float("nan"),
            median_hr_bpm=float("nan"),
            min_hr_bpm=float("nan"),
            max_hr_bpm=float("nan"),
            implausible_rate=True,
            n_missing_beats=0,
            n_extra_beats=0,
            ok=False,
        )
        return q
    med = float(np.median(ibi))
    local = _local_median(ibi)
    n_missing = int(np.count_nonzero(ibi > 1.5 * local))
    n_extra = int(np.count_nonzero(ibi < 0.5 * local))
    median_hr = 60.0 / med
    implausible = bool(not (min_hr <= median_hr <= max_hr))
    q.update(
        mean_hr_bpm=float(60.0 / np.mean(ibi)),
        median_hr_bpm=float(median_hr),
        min_hr_bpm=float(60.0 / ibi.max()),
        max_hr_bpm=float(60.0 / ibi.min()),
        implausible_rate=implausible,
        n_missing_beats=n_missing,
        n_extra_beats=n_extra,
        ok=bool(not implausible and (n_missing + n_extra) <= max_irregular_fraction * len(ibi)),
    )
    return q


def cardiac_phase(peak_times, t, *, outside: str = "extrapolate") -> np.ndarray:
    """Cardiac phase of RETROICOR (Glover et al. 2000).

    .. math:: \\varphi_c(t) = 2\\pi \\frac{t - t_1}{t_2 - t_1}

    where :math:`t_1` is the last R-peak at or before *t* and :math:`t_2` the
    next one (Glover et al. 2000).

    Parameters
    ----------
    peak_times : ndarray, shape (n_peaks,)
        Increasing beat times (s); at least 2.
    t : array-like, any shape
        Times (s, same clock) at which to evaluate the phase.
    outside : {"extrapolate", "nan"}
        Before the first beat (after the last), the first (last) inter-beat
        interval is continued periodically, i.e. the phase is
        ``2 pi (t - t_1) / (t_2 - t_1) mod 2 pi`` with the nearest interval;
        with ``"nan"`` those times get NaN.

    Returns
    -------
    ndarray, same shape as *t*, values in [0, 2 pi)
    """
    p = np.asarray(peak_times, dtype=float)
    t = np.asarray(t, dtype=float)
    if p.ndim != 1 or len(p) < 2:
        raise SpineprintError(f"cardiac phase needs at least 2 heart beats, got {p.size}")
    if np.any(np.diff(p) <= 0):
        raise SpineprintError("cardiac peak times must be strictly increasing")
    if outside not in ("extrapolate", "nan"):
        raise ValueError(f"outside must be 'extrapolate' or 'nan', not {outside!r}")
    i = np.searchsorted(p, t, side="right") - 1
    j = np.clip(i, 0, len(p) - 2)
    t1, t2 = p[j], p[j + 1]
    phase = np.mod(2.0 * np.pi * (t - t1) / (t2 - t1), 2.0 * np.pi)
    # mod can round 2 pi - eps up to 2 pi
    phase = np.where(phase >= 2.0 * np.pi, 0.0, phase)
    if outside == "nan":
        phase = np.where((t < p[0]) | (t >= p[-1]), np.nan, phase)
    return phase


# ---------------------------------------------------------------- respiration
def respiratory_phase(resp, fs: float, t, *, n_bins: int = 100, hist_window=None, smooth_hz: float = 1.0):
    """Respiratory phase of RETROICOR by histogram equalisation (Glover et al. 2000).

    .. math::
        \\varphi_r(t) = \\pi\\,\\frac{\\sum_{b=1}^{\\mathrm{rnd}(N R(t)/R_{max})} H(b)}
        {\\sum_{b=1}^{N} H(b)}\\,\\mathrm{sgn}\\!\\left(\\frac{dR}{dt}\\right)

    with the belt amplitude normalised to :math:`[0, R_{max}]`
    (``R = resp - min(resp)``), :math:`H(b)` the number of samples in bin
    :math:`b` of :math:`N` = ``n_bins`` equal bins (sample ``R`` falls in bin
    ``min(floor(N R / R_max), N - 1) + 1``) and ``rnd`` rounding half to even.
    :math:`dR/dt` is the gradient of the belt trace low-passed at
    ``smooth_hz`` (zero-phase 2nd-order Butterworth); a zero derivative counts
    as positive (Glover et al. 2000).

    Parameters
    ----------
    resp : ndarray, shape (n_samples,)
        Respiratory belt trace.
    fs : float
        Sampling frequency (Hz).
    t : array-like, any shape
        Times (s since the first sample) at which to evaluate the phase; the
        nearest sample is used.
    n_bins : int
        Number of histogram bins (100 in Glover et al.).
    hist_window : (float, float), optional
        Time range (s) of the samples used for the histogram and ``R_max``
        (default: the whole trace), e.g. the span of the run.
    smooth_hz : float
        Low-pass cut-off (Hz) of the trace used for the derivative sign.

    Returns
    -------
    ndarray, same shape as *t*, values in [-pi, pi]
    """
    r = _check_trace(resp, "respiratory")
    t = np.asarray(t, dtype=float)
    fs = float(fs)
    k = np.rint(t * fs).astype(int)
    if k.size and (k.min() < 0 or k.max() >= r.size):
        raise SpineprintError(
            f"respiratory phase requested at {t.min():.3f}-{t.max():.3f} s, outside the recording "
            f"(0-{(r.size - 1) / fs:.3f} s)"
        )
    if hist_window is None:
        seg = r
    else:
        a = max(0, int(np.floor(hist_window[0] * fs)))
        b = min(r.size, int(np.ceil(hist_window[1] * fs)) + 1)
        seg = r[a:b]
        if seg.size < 2:
            raise SpineprintError(f"respiratory histogram window {hist_window} holds no samples")
    rmin = seg.min()
    rmax = seg.max() - rmin
    if not rmax > 0:
        raise SpineprintError("respiratory trace is flat (no breathing signal)")
    nb = int(n_bins)
    counts = np.bincount(np.clip(np.floor((seg - rmin) / rmax * nb).astype(int), 0, nb - 1), minlength=nb)
    cum = np.concatenate([[0], np.cumsum(counts)])  # cum[b] = sum of H(1..b)
    rt = np.clip(r[k] - rmin, 0.0, rmax)  # samples outside the histogram window may exceed its range
    b = np.rint(rt / rmax * nb).astype(int)
    smooth = _bandpass(r, fs, None, smooth_hz) if fs > 2.2 * smooth_hz else r - r.mean()
    sign = np.where(np.gradient(smooth)[k] >= 0, 1.0, -1.0)
    return np.pi * cum[b] / cum[-1] * sign


# ---------------------------------------------------------------- RETROICOR
def _orders(cardiac_order, respiratory_order, interaction_order):
    if interaction_order is None:
        interaction_order = (0, 0)
    elif np.isscalar(interaction_order):
        interaction_order = (int(interaction_order), int(interaction_order))
    mc, mr = int(cardiac_order), int(respiratory_order)
    ic, ir = (int(v) for v in interaction_order)
    if min(mc, mr, ic, ir) < 0:
        raise SpineprintError(f"RETROICOR orders must be >= 0, got {mc}, {mr}, {interaction_order}")
    if (ic == 0) != (ir == 0):
        raise SpineprintError(f"interaction orders must both be 0 or both positive, got {interaction_order}")
    return mc, mr, ic, ir


def retroicor_names(cardiac_order: int = 4, respiratory_order: int = 4, interaction_order=(2, 2)) -> list[str]:
    """Column names of :func:`retroicor_regressors`, in order.

    ``card_cos1, card_sin1, ..., resp_cos1, resp_sin1, ..., int_cos_c1+r1,
    int_sin_c1+r1, int_cos_c1-r1, int_sin_c1-r1, int_cos_c1+r2, ...``.
    """
    mc, mr, ic, ir = _orders(cardiac_order, respiratory_order, interaction_order)
    names = [f"card_{f}{m}" for m in range(1, mc + 1) for f in ("cos", "sin")]
    names += [f"resp_{f}{m}" for m in range(1, mr + 1) for f in ("cos", "sin")]
    names += [
        f"int_{f}_c{m}{s}r{n}"
        for m in range(1, ic + 1)
        for n in range(1, ir + 1)
        for s in ("+", "-")
        for f in ("cos", "sin")
    ]
    return names


def retroicor_regressors(
    card_phase,
    resp_phase,
    cardiac_order: int = 4,
    respiratory_order: int = 4,
    interaction_order=(2, 2),
) -> tuple[np.ndarray, list[str]]:
    """RETROICOR Fourier expansion with cardiac x respiratory interactions.

    Columns (Fourier expansion of Glover et al. 2000; interaction terms of
    Harvey et al. 2008 as implemented in FSL PNM, Brooks et al. 2008):

    - :math:`\\cos(m\\varphi_c), \\sin(m\\varphi_c)`, m = 1..``cardiac_order``
    - :math:`\\cos(m\\varphi_r), \\sin(m\\varphi_r)`, m = 1..``respiratory_order``
    - :math:`\\cos(m\\varphi_c \\pm n\\varphi_r), \\sin(m\\varphi_c \\pm n\\varphi_r)`,
      m = 1..``interaction_order[0]``, n = 1..``interaction_order[1]``

    (these sums/differences span the same space as Harvey's products
    :math:`\\cos m\\varphi_c \\cos n\\varphi_r`, ...). The usual spinal setting
    (4, 4, (2, 2)) (e.g. Kaptan et al. 2023; FSL ``pnm_evs --oc=4 --or=4 --multc=2
    --multr=2``) gives 8 + 8 + 16 = 32 regressors; ``pnm_evs``'s own defaults
    (2, 1, (0, 0)) give 6.

    Parameters
    ----------
    card_phase, resp_phase : array-like, same shape (...)
        Phases (rad), e.g. (n_volumes,) or (n_slices, n_volumes).
    cardiac_order, respiratory_order : int
    interaction_order : (int, int), int or None

    Returns
    -------
    regressors : ndarray, shape (..., n_regressors)
    names : list of str (see :func:`retroicor_names`)
    """
    pc = np.asarray(card_phase, dtype=float)
    pr = np.asarray(resp_phase, dtype=float)
    if pc.shape != pr.shape:
        raise SpineprintError(f"cardiac and respiratory phases differ in shape: {pc.shape} vs {pr.shape}")
    mc, mr, ic, ir = _orders(cardiac_order, respiratory_order, interaction_order)
    cols = []
    for m in range(1, mc + 1):
        cols += [np.cos(m * pc), np.sin(m * pc)]
    for m in range(1, mr + 1):
        cols += [np.cos(m * pr), np.sin(m * pr)]
    for m in range(1, ic + 1):
        for n in range(1, ir + 1):
            for arg in (m * pc + n * pr, m * pc - n * pr):
                cols += [np.cos(arg), np.sin(arg)]
    names = retroicor_names(mc, mr, (ic, ir))
    out = np.stack(cols, axis=-1) if cols else np.zeros(pc.shape + (0,))
    return out, names


def _check_slice_timing(slice_timing, tr, name) -> np.ndarray:
    st = np.atleast_1d(np.asarray(slice_timing, dtype=float))
    if st.ndim != 1 or st.size == 0:
        raise SpineprintError(f"{name}: SliceTiming must be a non-empty list of times (s), got shape {st.shape}")
    if not np.all(np.isfinite(st)) or st.min() < 0 or st.max() >= tr:
        raise SpineprintError(
            f"{name}: SliceTiming values must lie in [0, TR = {tr:g} s), found {st.min():g} to {st.max():g}"
        )
    return st


def slice_regressors(
    rec: PhysioRecording,
    n_volumes: int,
    tr: float,
    slice_timing,
    cardiac_order: int = 4,
    respiratory_order: int = 4,
    interaction_order=(2, 2),
    *,
    onsets=None,
    min_hr: float = 40.0,
    max_hr: float = 180.0,
) -> tuple[np.ndarray, list[str]]:
    """Slice-specific RETROICOR regressors (Glover 2000; Harvey 2008; Brooks 2008).

    Each slice ``s`` of volume ``j`` is acquired at ``onset_j + SliceTiming[s]``
    (physio clock); the cardiac phase (:func:`cardiac_phase` from the beats of
    :func:`detect_cardiac_peaks` on the whole trace, gaps filled by
    :func:`fill_missing_beats`) and respiratory phase
    (:func:`respiratory_phase`, histogram over the span of the run) are sampled
    at those times and expanded by :func:`retroicor_regressors`
    (Glover et al. 2000; Harvey et al. 2008; Brooks et al. 2008; Kasper et al. 2017). A
    :class:`PhysioWarning` reports poor cardiac quality.

    Parameters
    ----------
    rec : PhysioRecording
        Needs ``cardiac`` (if any cardiac/interaction order > 0) and
        ``respiratory`` (if any respiratory/interaction order > 0).
    n_volumes : int
    tr : float
        Repetition time (s).
    slice_timing : array-like, shape (n_slices,)
        BIDS ``SliceTiming`` (s from the volume onset, in [0, TR)).
    cardiac_order, respiratory_order, interaction_order
        As in :func:`retroicor_regressors` (usual spinal setting 4, 4, (2, 2)).
    onsets : ndarray, shape (n_volumes,), optional
        Volume onsets on the physio clock (default :func:`scan_onsets`).
    min_hr, max_hr : float
        Plausible heart-rate range for the quality check (bpm).

    Returns
    -------
    regressors : ndarray, shape (n_slices, n_volumes, n_regressors)
    names : list of str
    """
    tr = float(tr)
    st = _check_slice_timing(slice_timing, tr, rec.name)
    mc, mr, ic, ir = _orders(cardiac_order, respiratory_order, interaction_order)
    need = []
    if mc or ic:
        need.append("cardiac")
    if mr or ir:
        need.append("respiratory")
    rec.require(*need)
    if onsets is None:
        onsets = scan_onsets(rec, n_volumes, tr)
    onsets = np.asarray(onsets, dtype=float)
    if onsets.shape != (int(n_volumes),):
        raise SpineprintError(f"{rec.name}: onsets must have shape ({n_volumes},), got {onsets.shape}")
    times = onsets[None, :] + st[:, None]  # (n_slices, n_volumes)
    fs = rec.sampling_frequency
    card = np.zeros_like(times)
    resp = np.zeros_like(times)
    if "cardiac" in need:
        peaks, quality = detect_cardiac_peaks(rec.cardiac, fs, min_hr, max_hr)
        if len(peaks) < 2:
            raise SpineprintError(f"{rec.name}: fewer than 2 heart beats detected in the cardiac trace")
        if not quality["ok"]:
            warnings.warn(
                f"{rec.name}: poor cardiac trace (median rate {quality['median_hr_bpm']:.0f} bpm, "
                f"{quality['n_missing_beats']} missing beat(s), {quality['n_extra_beats']} extra)",
                PhysioWarning,
                stacklevel=2,
            )
        card = cardiac_phase(fill_missing_beats(peaks / fs), times)
    if "respiratory" in need:
        resp = respiratory_phase(rec.respiratory, fs, times, hist_window=(onsets[0], onsets[-1] + tr))
    return retroicor_regressors(card, resp, mc, mr, (ic, ir))


# ---------------------------------------------------------------- HR / RVT
def cardiac_response_function(t) -> np.ndarray:
    """Cardiac response function of Chang et al. 2009.

    .. math:: CRF(t) = 0.6\\,t^{2.7} e^{-t/1.6} - \\frac{16}{\\sqrt{2\\pi \\cdot 9}}
              e^{-\\frac{(t-12)^2}{2 \\cdot 9}}

    (Chang et al. 2009); ``t`` in seconds, zero for t < 0.
    """
    t = np.asarray(t, dtype=float)
    tp = np.clip(t, 0.0, None)
    crf = 0.6 * tp**2.7 * np.exp(-tp / 1.6) - 16.0 / np.sqrt(2.0 * np.pi * 9.0) * np.exp(-((tp - 12.0) ** 2) / 18.0)
    return np.where(t >= 0, crf, 0.0)


def respiration_response_function(t) -> np.ndarray:
    """Respiration response function of Birn et al. 2008.

    .. math:: RRF(t) = 0.6\\,t^{2.1} e^{-t/1.6} - 0.0023\\,t^{3.54} e^{-t/4.25}

    (Birn et al. 2008); ``t`` in seconds, zero for t < 0.
    """
    t = np.asarray(t, dtype=float)
    tp = np.clip(t, 0.0, None)
    rrf = 0.6 * tp**2.1 * np.exp(-tp / 1.6) - 0.0023 * tp**3.54 * np.exp(-tp / 4.25)
    return np.where(t >= 0, rrf, 0.0)


def heart_rate(peak_times, t, window: float = 6.0) -> np.ndarray:
    """Heart rate (bpm) at times *t*, as in Chang et al. 2009.

    ``60 / mean(IBI)`` over the inter-beat intervals whose midpoint lies in a
    ``window``-second window centred on each time (Chang et al. 2009); where the
    window holds no interval midpoint, the interval containing *t* (or the
    nearest one) is used.

    Parameters
    ----------
    peak_times : ndarray, shape (n_peaks,)
    t : ndarray, shape (n_times,)
    window : float

    Returns
    -------
    ndarray, shape (n_times,)
    """
    p = np.asarray(peak_times, dtype=float)
    t = np.asarray(t, dtype=float)
    if len(p) < 2:
        raise SpineprintError(f"heart rate needs at least 2 heart beats, got {len(p)}")
    ibi = np.diff(p)
    mid = (p[:-1] + p[1:]) / 2.0
    csum = np.concatenate([[0.0], np.cumsum(ibi)])
    lo = np.searchsorted(mid, t - window / 2.0, side="left")
    hi = np.searchsorted(mid, t + window / 2.0, side="right")
    n = hi - lo
    mean_ibi = np.where(n > 0, (csum[hi] - csum[lo]) / np.maximum(n, 1), np.nan)
    nearest = np.clip(np.searchsorted(p, t, side="right") - 1, 0, len(ibi) - 1)
    mean_ibi = np.where(n > 0, mean_ibi, ibi[nearest])
    return 60.0 / mean_ibi


def respiration_volume_per_time(resp, fs: float, t, *, max_rate_hz: float = 1.0, smooth_hz: float = 1.5):
    """Respiration volume per time (RVT) of Birn et al. 2006, at times *t*.

    Breath maxima are peaks of the belt trace low-passed at ``smooth_hz``
    (zero-phase 4th-order Butterworth, flat up to ~1 Hz; at least
    ``1 / max_rate_hz`` s apart, prominence >= 20 % of the 1-99 % range); for
    the breath starting at maximum :math:`i`,

    .. math:: RVT_i = \\frac{R(p_i) - \\min_{p_i \\le k \\le p_{i+1}} R(k)}{t_{p_{i+1}} - t_{p_i}}

    (inspiration depth over breath period; Birn et al. 2006), placed at the
    midpoint of the breath and linearly interpolated to *t* (constant beyond the
    first/last breath).

    Returns
    -------
    ndarray, shape of *t* (belt units per second)
    """
    from scipy.signal import find_peaks

    r = np.asarray(resp, dtype=float)
    fs = float(fs)
    smooth = _bandpass(r, fs, None, smooth_hz, order=4) if fs > 2.2 * smooth_hz else r - r.mean()
    lo, hi = np.percentile(smooth, [1, 99])
    peaks, _ = find_peaks(smooth, distance=max(1, int(fs / max_rate_hz)), prominence=max(0.2 * (hi - lo), 1e-12))
    if len(peaks) < 2:
        raise SpineprintError("fewer than 2 breaths detected in the respiratory trace")
    troughs = np.array([smooth[a : b + 1].min() for a, b in zip(peaks[:-1], peaks[1:])])
    rvt = (smooth[peaks[:-1]] - troughs) / (np.diff(peaks) / fs)
    centres = (peaks[:-1] + peaks[1:]) / 2.0 / fs
    return np.interp(np.asarray(t, dtype=float), centres, rvt)


def _convolve_at(signal_fn, kernel_fn, onsets, tr, kernel_length, dt):
    """Convolve a demeaned signal (sampled on a fine grid) with a kernel; sample at onsets."""
    onsets = np.asarray(onsets, dtype=float)
    history = min(kernel_length, max(0.0, onsets[0]))
    n_before = int(np.floor(history / dt + 1e-9))
    n_after = int(np.ceil((onsets[-1] - onsets[0]) / dt - 1e-9))
    grid = onsets[0] + dt * np.arange(-n_before, n_after + 1)
    x = signal_fn(grid)
    x = x - x.mean()
    kernel = kernel_fn(np.arange(0.0, kernel_length, dt)) * dt
    y = np.convolve(x, kernel)[: len(grid)]
    return np.interp(onsets, grid, y)


def hr_rvt_regressors(
    rec: PhysioRecording,
    n_volumes: int,
    tr: float,
    *,
    onsets=None,
    kinds=("hr", "rvt"),
    window: float = 6.0,
    dt: float = 0.1,
    kernel_length: float = 60.0,
    min_hr: float = 40.0,
    max_hr: float = 180.0,
):
    """Heart-rate and respiration-volume regressors convolved with their response functions.

    On a fine grid (``dt`` s) starting up to ``kernel_length`` s before the
    first volume (as far as the recording goes): heart rate
    (:func:`heart_rate`, Chang et al. 2009) is demeaned and convolved with the
    cardiac response function (:func:`cardiac_response_function`); RVT
    (:func:`respiration_volume_per_time`, Birn et al. 2006) with the
    respiration response function (:func:`respiration_response_function`,
    Birn et al. 2008). Both are then sampled at the volume onsets.

    Parameters
    ----------
    rec : PhysioRecording
    n_volumes : int
    tr : float
    onsets : ndarray, optional
        Volume onsets (default :func:`scan_onsets`).
    kinds : tuple of {"hr", "rvt"}
    window, dt, kernel_length : float
        HR averaging window, grid step and response-function length (s).

    Returns
    -------
    pandas.DataFrame, n_volumes rows
        ``hr_bpm`` and ``hr_crf`` (convolved, demeaned) for "hr";
        ``rvt`` and ``rvt_rrf`` for "rvt".
    """
    import pandas as pd

    unknown = set(kinds) - {"hr", "rvt"}
    if unknown:
        raise SpineprintError(f"unknown regressor kind(s) {sorted(unknown)}; choose from 'hr', 'rvt'")
    rec.require(*(["cardiac"] if "hr" in kinds else []), *(["respiratory"] if "rvt" in kinds else []))
    if onsets is None:
        onsets = scan_onsets(rec, n_volumes, tr)
    onsets = np.asarray(onsets, dtype=float)
    fs = rec.sampling_frequency
    out = {}
    if "hr" in kinds:
        peaks, _ = detect_cardiac_peaks(rec.cardiac, fs, min_hr, max_hr)
        if len(peaks) < 2:
            raise SpineprintError(f"{rec.name}: fewer than 2 heart beats detected in the cardiac trace")
        pt = fill_missing_beats(peaks / fs)
        out["hr_bpm"] = heart_rate(pt, onsets, window)
        out["hr_crf"] = _convolve_at(
            lambda g: heart_rate(pt, g, window), cardiac_response_function, onsets, tr, kernel_length, dt
        )
    if "rvt" in kinds:
        try:
            out["rvt"] = respiration_volume_per_time(rec.respiratory, fs, onsets)
            out["rvt_rrf"] = _convolve_at(
                lambda g: respiration_volume_per_time(rec.respiratory, fs, g),
                respiration_response_function,
                onsets,
                tr,
                kernel_length,
                dt,
            )
        except SpineprintError as exc:
            raise SpineprintError(f"{rec.name}: {exc}") from None
    return pd.DataFrame(out)


# ---------------------------------------------------------------- summary
def _respiratory_rate_hz(resp, fs, fmin=0.05, fmax=1.0) -> float:
    """Dominant breathing frequency: peak of the Hann-windowed periodogram in [fmin, fmax] Hz."""
    r = np.asarray(resp, dtype=float)
    r = r - r.mean()
    n = len(r)
    nfft = max(n, int(np.ceil(fs / 0.005)))  # <= 0.005 Hz frequency grid
    spec = np.abs(np.fft.rfft(r * np.hanning(n), nfft)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1.0 / fs)
    band = (freqs >= fmin) & (freqs <= fmax)
    if not band.any() or not np.any(spec[band] > 0):
        return float("nan")
    return float(freqs[band][np.argmax(spec[band])])


def physio_summary(rec: PhysioRecording, n_volumes: int | None = None, tr: float | None = None, *,
                   min_hr: float = 40.0, max_hr: float = 180.0) -> dict:
    """Heart and breathing rates of a recording, for the dataset QC table.

    Parameters
    ----------
    rec : PhysioRecording
    n_volumes, tr : optional
        If both are given, only the span of the run (:func:`scan_onsets`) is
        summarised.

    Returns
    -------
    dict
        ``file``, ``sampling_frequency_hz``, ``duration_s``, ``columns``;
        ``heart_rate_bpm`` / ``heart_rate_hz`` (60 / mean IBI),
        ``cardiac_ok``, ``implausible_heart_rate``, ``n_missing_beats``,
        ``n_beats`` (NaN/None without a cardiac column);
        ``respiratory_rate_hz`` / ``respiratory_rate_bpm`` (periodogram peak in
        0.05-1 Hz; NaN without a respiratory column).
    """
    fs = rec.sampling_frequency
    a, b = 0, rec.n_samples
    if n_volumes is not None and tr is not None:
        onsets = scan_onsets(rec, n_volumes, tr)
        a = int(np.floor(onsets[0] * fs))
        b = min(rec.n_samples, int(np.ceil((onsets[-1] + tr) * fs - 1e-9)))
    out = {
        "file": rec.name,
        "sampling_frequency_hz": float(fs),
        "duration_s": float((b - a) / fs),
        "columns": list(rec.columns),
        "heart_rate_bpm": float("nan"),
        "heart_rate_hz": float("nan"),
        "cardiac_ok": None,
        "implausible_heart_rate": None,
        "n_missing_beats": None,
        "n_beats": None,
        "respiratory_rate_hz": float("nan"),
        "respiratory_rate_bpm": float("nan"),
    }
    if rec.cardiac is not None:
        peaks, q = detect_cardiac_peaks(rec.cardiac[a:b], fs, min_hr, max_hr)
        out.update(
            heart_rate_bpm=q["mean_hr_bpm"],
            heart_rate_hz=q["mean_hr_bpm"] / 60.0,
            cardiac_ok=q["ok"],
            implausible_heart_rate=q["implausible_rate"],
            n_missing_beats=q["n_missing_beats"],
            n_beats=q["n_peaks"],
        )
    if rec.respiratory is not None:
        f = _respiratory_rate_hz(rec.respiratory[a:b], fs)
        out.update(respiratory_rate_hz=f, respiratory_rate_bpm=60.0 * f)
    return out


# ---------------------------------------------------------------- figure
@styled
def plot_physio(rec: PhysioRecording, n_volumes: int | None = None, tr: float | None = None, *,
                window: float = 30.0, min_hr: float = 40.0, max_hr: float = 180.0):
    """Figure of a recording: traces, detected beats, volume onsets and RETROICOR phases.

    Three panels over the first ``window`` seconds of the run (of the recording
    if ``n_volumes``/``tr`` are not given): the cardiac trace with the beats of
    :func:`detect_cardiac_peaks`, the respiratory trace, and the cardiac
    (:func:`cardiac_phase`) and respiratory (:func:`respiratory_phase`) phases.
    Volume onsets (:func:`scan_onsets`) are drawn as vertical lines. Times are
    in seconds relative to the first volume.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    fs = rec.sampling_frequency
    onsets = scan_onsets(rec, n_volumes, tr) if n_volumes is not None and tr is not None else None
    t0 = float(onsets[0]) if onsets is not None else -rec.start_time
    a = max(0, int(np.floor(t0 * fs)))
    b = min(rec.n_samples, a + int(round(window * fs)))
    t = np.arange(a, b) / fs
    has_c, has_r = rec.cardiac is not None, rec.respiratory is not None
    fig, axes = plt.subplots(3, 1, figsize=figsize(1.0, 0.75), sharex=True, constrained_layout=True)
    if has_c:
        peaks, q = detect_cardiac_peaks(rec.cardiac, fs, min_hr, max_hr)
        axes[0].plot(t - t0, rec.cardiac[a:b], lw=0.8, color="C3", label="cardiac")
        shown = peaks[(peaks >= a) & (peaks < b)]
        axes[0].plot(shown / fs - t0, rec.cardiac[shown], "o", ms=3, color="k",
                     label=f"beats ({q['median_hr_bpm']:.0f} bpm)")
        if len(peaks) >= 2:
            axes[2].plot(t - t0, cardiac_phase(peaks / fs, t), lw=0.8, color="C3", label="cardiac phase")
    if has_r:
        axes[1].plot(t - t0, rec.respiratory[a:b], lw=0.8, color="C0", label="respiratory")
        axes[2].plot(t - t0, respiratory_phase(rec.respiratory, fs, t), lw=0.8, color="C0", label="respiratory phase")
    if onsets is not None:
        for ax in axes:
            for o in onsets[(onsets >= a / fs) & (onsets < b / fs)]:
                ax.axvline(o - t0, color="0.7", lw=0.5, zorder=0)
    axes[0].set_ylabel("cardiac (a.u.)")
    axes[1].set_ylabel("belt (a.u.)")
    axes[2].set_ylabel("phase (rad)")
    axes[2].set_yticks([-np.pi, 0, np.pi, 2 * np.pi], ["-π", "0", "π", "2π"])
    axes[2].set_xlabel("time from the first volume (s)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right")
    fig.suptitle(Path(rec.name).name)
    return fig

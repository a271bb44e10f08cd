"""Tests of spineprint_utils.physio against hand-made traces and loop implementations of the formulas."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from spineprint_utils import physio as P
from spineprint_utils._io import SpineprintError

FS = 100.0
TWO_PI = 2.0 * np.pi


# ---------------------------------------------------------------- hand-made traces
def planted_beats(duration, fs=FS, seed=0, first=0.35, ibi_range=(0.75, 1.0)):
    """Beat sample indices with irregular intervals (heart-rate variability)."""
    rng = np.random.default_rng(seed)
    ibis = rng.uniform(*ibi_range, size=int(duration / ibi_range[0]) + 2)
    times = first + np.concatenate([[0.0], np.cumsum(ibis)])
    idx = np.rint(times[times < duration - 0.5] * fs).astype(int)
    return idx


def ecg_trace(n, beat_idx, fs=FS, t_wave=0.0, noise=0.0, wander=0.0, seed=1):
    """Gaussian R waves (sigma 20 ms) at the beats, optional T waves, baseline wander, noise."""
    t = np.arange(n) / fs
    x = np.zeros(n)
    width = int(0.2 * fs)
    for b in beat_idx:
        lo, hi = max(0, b - width), min(n, b + width + 1)
        x[lo:hi] += np.exp(-0.5 * ((t[lo:hi] - b / fs) / 0.02) ** 2)
        if t_wave:
            c = b / fs + 0.25
            lo2, hi2 = max(0, b), min(n, b + 3 * width)
            x[lo2:hi2] += t_wave * np.exp(-0.5 * ((t[lo2:hi2] - c) / 0.05) ** 2)
    x += wander * np.sin(TWO_PI * 0.27 * t)
    if noise:
        x += noise * np.random.default_rng(seed).standard_normal(n)
    return x


def belt_trace(n, fs=FS, freq=0.23):
    """A smooth, slightly irregular belt: two incommensurate sinusoids."""
    t = np.arange(n) / fs
    return 2.0 + np.sin(TWO_PI * freq * t) + 0.3 * np.sin(TWO_PI * 0.071 * t + 0.4)


def belt_derivative(n, fs=FS, freq=0.23):
    t = np.arange(n) / fs
    return TWO_PI * freq * np.cos(TWO_PI * freq * t) + 0.3 * TWO_PI * 0.071 * np.cos(TWO_PI * 0.071 * t + 0.4)


def trigger_trace(n, onsets, fs=FS, width=0.01, high=5.0):
    trig = np.zeros(n)
    w = max(1, int(round(width * fs)))
    for o in onsets:
        k = int(round(o * fs))
        trig[k : k + w] = high
    return trig


def write_physio(folder, stem, data, columns, fs=FS, start=0.0, extra=None, drop=()):
    """Write a BIDS physio pair (headerless gz TSV + JSON); return the TSV path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tsv = folder / f"{stem}_physio.tsv.gz"
    meta = {"SamplingFrequency": fs, "StartTime": start, "Columns": list(columns)}
    meta.update(extra or {})
    for key in drop:
        meta.pop(key)
    (folder / f"{stem}_physio.json").write_text(json.dumps(meta))
    lines = "\n".join("\t".join(f"{v:.10g}" for v in row) for row in np.atleast_2d(data)) + "\n"
    with gzip.open(tsv, "wt") as fh:
        fh.write(lines)
    return tsv


# ---------------------------------------------------------------- independent loop implementations
def loop_cardiac_phase(beat_times, t):
    """Glover 2000 eq. 2 with an explicit search for the surrounding beats."""
    for k in range(len(beat_times) - 1):
        if beat_times[k] <= t < beat_times[k + 1]:
            return 2 * math.pi * (t - beat_times[k]) / (beat_times[k + 1] - beat_times[k])
    raise AssertionError("time outside the beats in this test")


def loop_histogram(values, n_bins=100):
    """H(b), b = 1..n_bins, of values normalised to [0, Rmax], counted one by one."""
    rmin = min(values)
    rmax = max(values) - rmin
    hist = [0] * (n_bins + 1)  # index 0 unused: bins are 1-based as in Glover
    for v in values:
        b = int(math.floor((v - rmin) / rmax * n_bins)) + 1
        hist[min(b, n_bins)] += 1
    return hist, rmin, rmax


def loop_resp_phase(value, slope, hist, rmin, rmax, n_bins=100):
    """Glover 2000 eq. 3 for one sample."""
    top = int(round((value - rmin) / rmax * n_bins))
    num = sum(hist[b] for b in range(1, top + 1))
    den = sum(hist[b] for b in range(1, n_bins + 1))
    return math.pi * num / den * (1.0 if slope >= 0 else -1.0)


def loop_retroicor(pc, pr, mc=4, mr=4, ic=2, ir=2):
    row = []
    for m in range(1, mc + 1):
        row += [math.cos(m * pc), math.sin(m * pc)]
    for m in range(1, mr + 1):
        row += [math.cos(m * pr), math.sin(m * pr)]
    for m in range(1, ic + 1):
        for n in range(1, ir + 1):
            row += [math.cos(m * pc + n * pr), math.sin(m * pc + n * pr)]
            row += [math.cos(m * pc - n * pr), math.sin(m * pc - n * pr)]
    return row


# ---------------------------------------------------------------- find / load
def test_find_physio(tmp_path):
    func = tmp_path / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-01_ses-1_task-rest_run-1_bold.nii.gz"
    bold.write_bytes(b"")
    assert P.find_physio(bold) is None
    tsv = write_physio(func, "sub-01_ses-1_task-rest_run-1", np.zeros((5, 1)), ["cardiac"])
    write_physio(func, "sub-01_ses-1_task-rest_run-2", np.zeros((5, 1)), ["cardiac"])
    assert P.find_physio(bold) == tsv
    assert P.find_physio(func / "sub-01_ses-1_task-rest_run-1_bold.json") == tsv
    assert P.find_physio(func / "sub-01_ses-1_task-rest_run-3_bold.nii.gz") is None
    with pytest.raises(SpineprintError, match="not a BIDS BOLD"):
        P.find_physio(func / "sub-01_T1w.nii.gz")


def test_find_physio_recording_entity(tmp_path):
    """CoSpine layout: one recording per device (recording-pulse, recording-respiratory)."""
    bold = tmp_path / "sub-04_task-motorR_bold.nii.gz"
    pulse = write_physio(tmp_path, "sub-04_task-motorR_recording-pulse", np.zeros((5, 1)), ["PULS"])
    assert P.find_physio(bold) == pulse
    resp = write_physio(tmp_path, "sub-04_task-motorR_recording-respiratory", np.zeros((5, 1)), ["RESP"])
    assert P.find_physio_files(bold) == [pulse, resp]
    with pytest.warns(P.PhysioWarning, match="2 physio recordings"):
        assert P.find_physio(bold) == pulse


def test_load_physio_roundtrip_and_aliases(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.standard_normal((50, 4))
    tsv = write_physio(tmp_path, "sub-01_task-rest", data, ["PPU", "resp", "Trigger", "spo2"], fs=50.0, start=-2.5)
    rec = P.load_physio(tsv)
    assert rec.sampling_frequency == 50.0 and rec.start_time == -2.5 and rec.path == tsv
    np.testing.assert_allclose(rec.cardiac, data[:, 0], rtol=1e-9)
    np.testing.assert_allclose(rec.respiratory, data[:, 1], rtol=1e-9)
    np.testing.assert_allclose(rec.trigger, data[:, 2], rtol=1e-9)
    np.testing.assert_allclose(rec.signals["spo2"], data[:, 3], rtol=1e-9)
    assert rec.n_samples == 50 and rec.duration == pytest.approx(1.0)
    assert rec.columns == ["PPU", "resp", "Trigger", "spo2"]


def test_real_cospine_sidecar(tmp_path, shared_data):
    """The real CoSpine pulse sidecar (PULS, Trigger at 400 Hz; StartTime is a clock time, not
    relative to the scan — a metadata defect) still aligns through the trigger column."""
    src = shared_data / "openneuro/ds005884/sub-04/func/sub-04_task-motorR_recording-pulse_physio.json"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    meta = json.loads(src.read_text())
    fs = float(meta["SamplingFrequency"])
    assert meta["Columns"] == ["PULS", "Trigger"] and fs == 400
    n_vol, tr = 12, 2.68
    onsets_true = 3.0 + tr * np.arange(n_vol)
    n = int((onsets_true[-1] + tr + 2.0) * fs)
    beats = planted_beats(n / fs, fs=fs)
    data = np.column_stack([ecg_trace(n, beats, fs=fs), trigger_trace(n, onsets_true, fs=fs)])
    tsv = tmp_path / "sub-04_task-motorR_recording-pulse_physio.tsv.gz"
    with gzip.open(tsv, "wt") as fh:
        fh.write("\n".join(f"{a:.6g}\t{b:g}" for a, b in data) + "\n")
    shutil.copy(src, tsv.with_name(src.name))
    rec = P.load_physio(tsv)
    assert rec.cardiac is not None and rec.trigger is not None and rec.respiratory is None
    np.testing.assert_allclose(P.scan_onsets(rec, n_vol, tr), onsets_true, atol=0.5 / fs)
    with pytest.raises(SpineprintError, match="StartTime 4.77514e\\+07 looks like a clock time"):
        P.scan_onsets(rec, n_vol, tr, use_trigger=False)  # StartTime 47751420 s is not scan-relative
    with pytest.raises(SpineprintError, match=r"no respiratory column.*PULS"):
        P.slice_regressors(rec, n_vol, tr, [0.0, 1.0])
    regs, names = P.slice_regressors(rec, n_vol, tr, [0.0, 1.0], respiratory_order=0, interaction_order=0)
    assert regs.shape == (2, n_vol, 8) and names[0] == "card_cos1"


@pytest.mark.parametrize(
    "drop, extra, match",
    [
        (("SamplingFrequency",), None, r"_physio\.json: missing required field\(s\) SamplingFrequency"),
        (("StartTime",), None, r"_physio\.json: missing required field\(s\) StartTime"),
        (("Columns",), None, r"_physio\.json: missing required field\(s\) Columns"),
        ((), {"SamplingFrequency": "fast"}, "SamplingFrequency must be a number"),
        ((), {"SamplingFrequency": 0}, "SamplingFrequency must be positive"),
        ((), {"Columns": "cardiac"}, "Columns must be a non-empty list"),
        ((), {"Columns": ["cardiac", "pulse"]}, "several columns map to"),
    ],
)
def test_sidecar_errors(tmp_path, drop, extra, match):
    tsv = write_physio(tmp_path, "sub-01_task-rest", np.zeros((10, 1)), ["cardiac"], extra=extra, drop=drop)
    if extra and "Columns" in extra and isinstance(extra["Columns"], list):
        tsv = write_physio(tmp_path, "sub-01_task-rest", np.zeros((10, 2)), extra["Columns"])
    with pytest.raises(SpineprintError, match=match):
        P.load_physio(tsv)


def test_non_json_and_missing_sidecar(tmp_path):
    tsv = write_physio(tmp_path, "sub-01_task-rest", np.zeros((10, 1)), ["cardiac"])
    sidecar = tmp_path / "sub-01_task-rest_physio.json"
    sidecar.write_text("SamplingFrequency: 100\n")
    with pytest.raises(SpineprintError, match=r"sub-01_task-rest_physio\.json: not valid JSON"):
        P.load_physio(tsv)
    sidecar.unlink()
    with pytest.raises(SpineprintError, match=r"sub-01_task-rest_physio\.json: sidecar file not found"):
        P.load_physio(tsv)


def test_tsv_errors(tmp_path):
    tsv = write_physio(tmp_path, "sub-01_task-rest", np.zeros((10, 2)), ["cardiac"])
    with pytest.raises(SpineprintError, match=r"physio\.tsv\.gz: 2 column\(s\) but the sidecar"):
        P.load_physio(tsv)
    tsv = write_physio(tmp_path, "sub-01_task-rest", np.zeros((10, 2)), ["cardiac", "respiratory"])
    with gzip.open(tsv, "wt") as fh:
        fh.write("cardiac\trespiratory\n1\t2\n3\t4\n")
    with pytest.raises(SpineprintError, match="no header row"):
        P.load_physio(tsv)
    with gzip.open(tsv, "wt") as fh:
        fh.write("1\t2\n3\tabc\n")
    with pytest.raises(SpineprintError, match=r"non-numeric value 'abc' in column 'respiratory', row 2"):
        P.load_physio(tsv)
    with gzip.open(tsv, "wt") as fh:
        fh.write("1\t2\nn/a\t4\n")
    with pytest.raises(SpineprintError, match=r"1 missing or non-finite value\(s\) in column 'cardiac'"):
        P.load_physio(tsv)
    tsv.write_bytes(gzip.compress(b"1\t2\n3\t4\n")[:-12])
    with pytest.raises(SpineprintError, match="corrupt or truncated"):
        P.load_physio(tsv)
    tsv.unlink()
    with pytest.raises(SpineprintError, match="physio file not found"):
        P.load_physio(tsv)


# ---------------------------------------------------------------- alignment
def consistent_recording(n_vol=30, tr=2.0, lead=4.3, tail=3.0, extra_triggers=0, per_slice=0):
    """Recording starting `lead` s before the first volume, with a matching trigger column."""
    n = int(round((lead + n_vol * tr + tail) * FS))
    onsets = lead + tr * np.arange(n_vol)
    pulses = onsets
    if per_slice:
        pulses = (onsets[:, None] + tr / per_slice * np.arange(per_slice)[None, :]).ravel()
    if extra_triggers:
        pulses = np.concatenate([lead - tr * np.arange(extra_triggers, 0, -1), pulses])
    beats = planted_beats(n / FS)
    rec = P.PhysioRecording(
        {"cardiac": ecg_trace(n, beats), "respiratory": belt_trace(n), "trigger": trigger_trace(n, pulses)},
        FS,
        start_time=-lead,
        path=Path("sub-01_task-rest_physio.tsv.gz"),
        columns=["cardiac", "respiratory", "trigger"],
    )
    return rec, onsets, beats


def test_trigger_and_starttime_agree():
    rec, onsets, _ = consistent_recording()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_trigger = P.scan_onsets(rec, 30, 2.0)
    by_start = P.scan_onsets(rec, 30, 2.0, use_trigger=False)
    np.testing.assert_allclose(by_trigger, onsets, atol=0.5 / FS)
    np.testing.assert_allclose(by_start, onsets, atol=1e-9)
    np.testing.assert_allclose(by_trigger, by_start, atol=0.5 / FS)


def test_trigger_edges_analog_and_high_at_start():
    trig = np.array([3.0, 3.0, 0.1, 0.1, 2.9, 3.1, 0.0, 0.0, 0.0, 3.0])
    np.testing.assert_allclose(P.trigger_onsets(trig, 10.0), [0.0, 0.4, 0.9])
    assert P.trigger_onsets(np.zeros(10), 10.0).size == 0
    # active-low trigger: short dips mark the volumes
    np.testing.assert_allclose(P.trigger_onsets(5.0 - trigger_trace(100, [0.2, 0.5], fs=10.0, width=0.1), 10.0), [0.2, 0.5])


def test_extra_and_per_slice_triggers():
    rec, onsets, _ = consistent_recording(extra_triggers=2)  # dummy-scan pulses before the run
    np.testing.assert_allclose(P.scan_onsets(rec, 30, 2.0), onsets, atol=0.5 / FS)
    rec, onsets, _ = consistent_recording(per_slice=5)
    np.testing.assert_allclose(P.scan_onsets(rec, 30, 2.0), onsets, atol=0.5 / FS)
    # actual TR 2.01 s while the header says 2.0: the triggers carry the true timing
    rec, _, _ = consistent_recording(n_vol=60, tr=2.01, per_slice=8, tail=8.0)
    true = 4.3 + 2.01 * np.arange(60)
    np.testing.assert_allclose(P.scan_onsets(rec, 60, 2.0), true, atol=0.5 / FS)


def test_too_few_triggers_fall_back_to_starttime():
    rec, onsets, _ = consistent_recording()
    trig = rec.trigger.copy()
    trig[int(20 * FS) :] = 0.0  # trigger cable unplugged half way
    rec.signals["trigger"] = trig
    with pytest.warns(P.PhysioWarning, match="using StartTime instead"):
        got = P.scan_onsets(rec, 30, 2.0)
    np.testing.assert_allclose(got, onsets, atol=1e-9)


def test_short_physio_error_names_file_and_durations():
    rec, _, _ = consistent_recording(tail=0.0)
    cut = P.PhysioRecording({k: v[: int(40 * FS)] for k, v in rec.signals.items()}, FS, rec.start_time, rec.path)
    with pytest.raises(SpineprintError) as err, pytest.warns(P.PhysioWarning):
        P.scan_onsets(cut, 30, 2.0)
    msg = str(err.value)
    assert "sub-01_task-rest_physio.tsv.gz" in msg and "40.00 s" in msg and "60.00 s" in msg
    late = P.PhysioRecording({"cardiac": rec.cardiac}, FS, start_time=+1.0, path=rec.path)
    with pytest.raises(SpineprintError, match="does not cover the run"):
        P.scan_onsets(late, 30, 2.0)


# ---------------------------------------------------------------- cardiac peaks
def test_peaks_recover_planted_beats_ecg_with_t_waves():
    n = int(120 * FS)
    beats = planted_beats(n / FS, seed=5)
    x = ecg_trace(n, beats, t_wave=0.35, noise=0.03, wander=0.5)
    peaks, q = P.detect_cardiac_peaks(x, FS)
    assert len(peaks) == len(beats)
    assert np.max(np.abs(peaks - beats)) <= 1  # within one sample (10 ms)
    expected_mean_hr = 60.0 / np.mean(np.diff(beats) / FS)
    assert q["mean_hr_bpm"] == pytest.approx(expected_mean_hr, rel=1e-3)
    assert q["ok"] and not q["implausible_rate"] and q["n_missing_beats"] == 0 and not q["inverted"]
    # an inverted lead gives the same beats
    peaks_inv, q_inv = P.detect_cardiac_peaks(-x, FS)
    assert q_inv["inverted"] and np.max(np.abs(peaks_inv - beats)) <= 1


def test_peaks_pulse_oximeter_waveform():
    """A smooth PPU-like wave (systolic peak + dicrotic wave) at 72 bpm."""
    t = np.arange(int(60 * FS)) / FS
    phase = np.mod(t * 1.2, 1.0)
    x = np.exp(-0.5 * ((phase - 0.2) / 0.07) ** 2) + 0.3 * np.exp(-0.5 * ((phase - 0.5) / 0.07) ** 2)
    peaks, q = P.detect_cardiac_peaks(x, FS)
    assert q["median_hr_bpm"] == pytest.approx(72.0, abs=1.0)
    assert q["n_extra_beats"] == 0 and q["ok"]
    np.testing.assert_allclose(np.mod(peaks / FS * 1.2, 1.0), 0.2, atol=0.02)


def test_missing_beat_flagged():
    n = int(60 * FS)
    beats = planted_beats(n / FS, seed=2, ibi_range=(0.8, 0.9))
    dropped = np.delete(beats, 30)
    _, q = P.detect_cardiac_peaks(ecg_trace(n, dropped, noise=0.02), FS)
    assert q["n_missing_beats"] == 1
    assert q["n_peaks"] == len(dropped)
    _, q = P.detect_cardiac_peaks(ecg_trace(n, np.delete(beats, [10, 20, 30, 40, 50]), noise=0.02), FS)
    assert q["n_missing_beats"] == 5 and not q["ok"]


def test_fill_missing_beats():
    beats = np.cumsum(np.full(40, 0.8)) + np.random.default_rng(0).uniform(-0.03, 0.03, 40)
    dropped = np.delete(beats, [10, 25, 26])  # one and two consecutive beats missed
    filled = P.fill_missing_beats(dropped)
    assert len(filled) == len(beats)
    np.testing.assert_allclose(filled, beats, atol=0.07)
    np.testing.assert_array_equal(P.fill_missing_beats(beats), beats)  # nothing to fill
    # the phase then advances once per beat across the gap
    t = np.linspace(beats[9], beats[11], 50, endpoint=False)
    np.testing.assert_allclose(
        np.unwrap(P.cardiac_phase(filled, t))[-1] - np.unwrap(P.cardiac_phase(filled, t))[0], 2 * TWO_PI, atol=0.6
    )


@pytest.mark.parametrize("bpm", [30.0, 220.0])
def test_implausible_rate_flagged(bpm):
    n = int(60 * FS)
    beats = np.rint(np.arange(0.5, 59.5, 60.0 / bpm) * FS).astype(int)
    _, q = P.detect_cardiac_peaks(ecg_trace(n, beats, noise=0.02), FS)
    assert q["median_hr_bpm"] == pytest.approx(bpm, rel=0.02)
    assert q["implausible_rate"] and not q["ok"]


# ---------------------------------------------------------------- phases
def test_cardiac_phase_known_values_and_loop():
    beats = np.array([1.0, 2.0, 2.5, 4.0])
    t = np.array([1.0, 1.5, 1.75, 2.0, 2.25, 3.25, 3.999])
    expected = TWO_PI * np.array([0.0, 0.5, 0.75, 0.0, 0.5, 0.5, 1.499 / 1.5])
    np.testing.assert_allclose(P.cardiac_phase(beats, t), expected, atol=1e-12)
    rng = np.random.default_rng(0)
    beats = np.cumsum(rng.uniform(0.6, 1.2, 60))
    t = rng.uniform(beats[0], beats[-1] - 1e-9, (7, 40))
    loop = np.vectorize(lambda s: loop_cardiac_phase(beats, s))(t)
    got = P.cardiac_phase(beats, t)
    assert got.shape == t.shape
    np.testing.assert_allclose(got, loop, atol=1e-12)
    assert got.min() >= 0 and got.max() < TWO_PI


def test_cardiac_phase_outside_beats():
    beats = np.array([1.0, 2.0, 3.5])
    ext = P.cardiac_phase(beats, [0.25, 4.25])
    # periodic continuation of the first (1 s) and last (1.5 s) intervals
    np.testing.assert_allclose(ext, [TWO_PI * 0.25, TWO_PI * 0.5], atol=1e-12)
    nan = P.cardiac_phase(beats, [0.25, 1.5, 4.25], outside="nan")
    assert np.isnan(nan[0]) and np.isnan(nan[2]) and nan[1] == pytest.approx(np.pi)
    with pytest.raises(SpineprintError, match="at least 2 heart beats"):
        P.cardiac_phase([1.0], [1.0])


def test_respiratory_phase_matches_loop():
    n = int(90 * FS)
    resp = belt_trace(n)
    deriv = belt_derivative(n)
    rng = np.random.default_rng(4)
    t = rng.uniform(0, (n - 1) / FS, 300)
    got = P.respiratory_phase(resp, FS, t)
    hist, rmin, rmax = loop_histogram(list(resp))
    k = np.rint(t * FS).astype(int)
    steep = np.abs(deriv[k]) > 0.1 * np.abs(deriv).max()  # derivative sign unambiguous
    assert steep.mean() > 0.85
    loop = np.array([loop_resp_phase(resp[i], deriv[i], hist, rmin, rmax) for i in k])
    np.testing.assert_allclose(got[steep], loop[steep], atol=1e-12)
    # near extrema only the sign may differ: |phase| agrees
    np.testing.assert_allclose(np.abs(got), np.abs(loop), atol=1e-12)
    assert got.min() >= -np.pi and got.max() <= np.pi


def test_respiratory_phase_sinusoid_closed_form():
    """For R = sin(w t) over whole cycles the amplitude CDF is 1/2 + arcsin(R)/pi, so on the
    rising half phi_r = pi/2 + w t (Glover's equalisation linearises the phase)."""
    f = 0.25
    n = int(40 * FS)  # 10 whole cycles
    t = np.arange(n) / FS
    resp = np.sin(TWO_PI * f * t)
    got = P.respiratory_phase(resp, FS, t)
    theta = np.angle(np.exp(1j * (TWO_PI * f * t + np.pi / 2)))  # pi/2 + wt wrapped to (-pi, pi]
    err = np.abs(np.angle(np.exp(1j * (got - theta))))
    middle = np.abs(resp) < 0.8
    assert err[middle].max() < 0.05
    assert err.max() < 0.35  # the extreme bins hold many samples (arcsine density)


# ---------------------------------------------------------------- RETROICOR
def test_retroicor_fsl_default_is_32_and_matches_loop():
    rng = np.random.default_rng(7)
    pc = rng.uniform(0, TWO_PI, 50)
    pr = rng.uniform(-np.pi, np.pi, 50)
    regs, names = P.retroicor_regressors(pc, pr)
    assert regs.shape == (50, 32) and len(names) == 32 == len(set(names))
    assert names[:2] == ["card_cos1", "card_sin1"] and names[8] == "resp_cos1" and names[16] == "int_cos_c1+r1"
    loop = np.array([loop_retroicor(a, b) for a, b in zip(pc, pr)])
    np.testing.assert_allclose(regs, loop, atol=1e-12)
    # Harvey et al.'s products span the same space as the sum/difference terms
    prods = np.column_stack(
        [f(m * pc) * g(k * pr) for m in (1, 2) for k in (1, 2) for f in (np.cos, np.sin) for g in (np.cos, np.sin)]
    )
    coef, *_ = np.linalg.lstsq(regs[:, 16:], prods, rcond=None)
    np.testing.assert_allclose(regs[:, 16:] @ coef, prods, atol=1e-10)


@pytest.mark.parametrize("orders, count", [((3, 2, (1, 1)), 14), ((2, 0, None), 4), ((1, 1, 0), 4)])
def test_retroicor_orders(orders, count):
    regs, names = P.retroicor_regressors(np.zeros(3), np.zeros(3), *orders)
    assert regs.shape == (3, count) and len(names) == count
    with pytest.raises(SpineprintError):
        P.retroicor_regressors(np.zeros(3), np.zeros(3), 1, 1, (2, 0))


def test_slice_regressors_reproduce_glover_per_slice():
    """Hand-made recording: slice-specific regressors vs a loop over slices and volumes of
    Glover's formulas with the planted beat times and the analytic belt derivative."""
    n_vol, tr = 25, 2.0
    rec, onsets, beats = consistent_recording(n_vol=n_vol, tr=tr)
    peaks, q = P.detect_cardiac_peaks(rec.cardiac, FS)
    np.testing.assert_array_equal(peaks, beats)  # clean trace: detection is exact
    slice_timing = np.array([0.0, 1.0, 0.2, 1.2, 0.4, 1.4, 0.6, 1.6, 0.8, 1.8, 0.0, 1.0])  # interleaved, MB 2
    regs, names = P.slice_regressors(rec, n_vol, tr, slice_timing)
    assert regs.shape == (12, n_vol, 32) and names == P.retroicor_names()

    resp = rec.respiratory
    deriv = belt_derivative(rec.n_samples)
    a, b = int(np.floor(onsets[0] * FS)), int(np.ceil((onsets[-1] + tr) * FS)) + 1
    hist, rmin, rmax = loop_histogram(list(resp[a:b]))
    beat_times = beats / FS
    n_checked = 0
    for s, st in enumerate(slice_timing):
        for j, onset in enumerate(P.scan_onsets(rec, n_vol, tr)):
            t = onset + st
            i = int(round(t * FS))
            if abs(deriv[i]) < 0.1 * np.abs(deriv).max():
                continue  # derivative sign of the smoothed trace may differ at a breath extremum
            pc = loop_cardiac_phase(beat_times, t)
            pr = loop_resp_phase(resp[i], deriv[i], hist, rmin, rmax)
            np.testing.assert_allclose(regs[s, j], loop_retroicor(pc, pr), atol=1e-12, err_msg=f"slice {s}, vol {j}")
            n_checked += 1
    assert n_checked > 0.8 * regs.shape[0] * regs.shape[1]
    # same acquisition time -> same regressors; different times -> different
    np.testing.assert_array_equal(regs[0], regs[10])
    assert not np.allclose(regs[0], regs[2])


def test_slice_regressors_bad_slice_timing():
    rec, _, _ = consistent_recording(n_vol=10)
    with pytest.raises(SpineprintError, match=r"SliceTiming values must lie in \[0, TR"):
        P.slice_regressors(rec, 10, 2.0, [0.0, 2.5])


# ---------------------------------------------------------------- HR / RVT
def test_response_functions_closed_form():
    for t in (0.5, 4.0, 12.0, 20.0):
        crf = 0.6 * t**2.7 * math.exp(-t / 1.6) - 16 / math.sqrt(2 * math.pi * 9) * math.exp(-((t - 12) ** 2) / 18)
        rrf = 0.6 * t**2.1 * math.exp(-t / 1.6) - 0.0023 * t**3.54 * math.exp(-t / 4.25)
        assert P.cardiac_response_function(t) == pytest.approx(crf, rel=1e-12)
        assert P.respiration_response_function(t) == pytest.approx(rrf, rel=1e-12)
    assert P.cardiac_response_function(-1.0) == 0.0 and P.respiration_response_function(-1.0) == 0.0
    # the RRF dips to its minimum near 15 s (Birn et al. 2008, Fig. 5)
    tt = np.arange(0, 40, 0.01)
    assert 13.0 < tt[np.argmin(P.respiration_response_function(tt))] < 17.0


def test_heart_rate_matches_loop():
    beats = np.cumsum(np.random.default_rng(1).uniform(0.6, 1.1, 80))
    t = np.linspace(beats[0], beats[-1], 57)
    got = P.heart_rate(beats, t, window=6.0)
    for ti, g in zip(t, got):
        ibis = [b2 - b1 for b1, b2 in zip(beats[:-1], beats[1:]) if abs((b1 + b2) / 2 - ti) <= 3.0]
        assert g == pytest.approx(60.0 / (sum(ibis) / len(ibis)), rel=1e-12)


def test_rvt_sinusoid():
    """Breath depth 2A over period 1/f: RVT = 2 A f."""
    t = np.arange(int(120 * FS)) / FS
    for amp, f in ((1.0, 0.25), (0.5, 0.3)):
        rvt = P.respiration_volume_per_time(amp * np.sin(TWO_PI * f * t), FS, t[::50])
        np.testing.assert_allclose(rvt, 2 * amp * f, rtol=0.01)


def test_hr_rvt_regressors_convolution():
    """A heart-rate step: the HR regressor equals a brute-force convolution with the CRF."""
    n_vol, tr = 40, 2.0
    rec, onsets, _ = consistent_recording(n_vol=n_vol, tr=tr, lead=20.0)
    n = rec.n_samples
    step = 20.0 + 40.0
    # beat midpoints at x.x5 s never tie with the +-3 s HR window edges on the 0.1 s grid
    beats = np.concatenate([np.arange(0.55, step, 1.0), np.arange(step + 0.15, n / FS - 0.5, 0.6)])
    rec.signals["cardiac"] = ecg_trace(n, np.rint(beats * FS).astype(int))
    rec.signals["respiratory"] = np.sin(TWO_PI * 0.25 * np.arange(n) / FS)  # regular breathing
    df = P.hr_rvt_regressors(rec, n_vol, tr, onsets=onsets, dt=0.1)
    assert list(df.columns) == ["hr_bpm", "hr_crf", "rvt", "rvt_rrf"] and len(df) == n_vol
    hr = df["hr_bpm"].to_numpy()
    assert hr[onsets < step - 3.5] == pytest.approx(60.0, rel=1e-6)
    assert hr[onsets > step + 3.5] == pytest.approx(100.0, rel=1e-6)
    # brute force on the documented grid: 0.1 s steps from 20 s before the first volume
    grid = np.arange(0.0, onsets[-1] + 0.05, 0.1)
    x = P.heart_rate(beats, grid)
    x = x - x.mean()
    expected = []
    for o in onsets:
        i = int(round(o / 0.1))
        acc = 0.0
        for k in range(0, min(i + 1, 600)):
            acc += x[i - k] * P.cardiac_response_function(k * 0.1) * 0.1
        expected.append(acc)
    np.testing.assert_allclose(df["hr_crf"].to_numpy(), expected, atol=1e-9)
    # regular breathing: RVT = 2 A f = 0.5 throughout, its demeaned convolution ~ 0
    np.testing.assert_allclose(df["rvt"], 0.5, rtol=0.01)
    assert np.abs(df["rvt_rrf"]).max() < 0.01 * 0.5


# ---------------------------------------------------------------- summary
def test_physio_summary(tmp_path):
    n = int(120 * FS)
    t = np.arange(n) / FS
    beats = np.rint(np.arange(0.4, 119.5, 60.0 / 66.0) * FS).astype(int)
    data = np.column_stack([ecg_trace(n, beats, noise=0.02), 1 + np.sin(TWO_PI * 0.3 * t)])
    rec = P.load_physio(write_physio(tmp_path, "sub-01_task-rest", data, ["cardiac", "respiratory"]))
    s = P.physio_summary(rec)
    assert s["heart_rate_bpm"] == pytest.approx(66.0, rel=0.01)
    assert s["heart_rate_hz"] == pytest.approx(1.1, rel=0.01)
    assert s["respiratory_rate_hz"] == pytest.approx(0.3, abs=0.006)
    assert s["respiratory_rate_bpm"] == pytest.approx(18.0, abs=0.4)
    assert s["cardiac_ok"] and s["n_missing_beats"] == 0 and s["duration_s"] == pytest.approx(120.0)
    window = P.physio_summary(rec, n_volumes=20, tr=2.0)
    assert window["duration_s"] == pytest.approx(40.0, abs=0.02)
    assert window["heart_rate_bpm"] == pytest.approx(66.0, rel=0.01)


# ---------------------------------------------------------------- simulated default study
def test_phases_match_simulated_ground_truth(tmp_path):
    """On a small simulated study (pulse-oximeter with dicrotic wave, breathing with varying
    depth and rate, HR variability), the phases computed from its BIDS physio file match the
    generator's true phases of every slice and volume."""
    simulate = pytest.importorskip("spineprint_utils.simulate")
    root = simulate.simulate_dataset(
        tmp_path / "sim", n_subjects=1, n_sessions=1, n_volumes=30, anatomy="phantom", segments=("C5", "C6")
    )
    gt = simulate.load_ground_truth(root)
    prefix = gt["runs"]["run"].iloc[0]
    bold = next(root.rglob(f"{prefix}_bold.nii.gz"))
    meta = json.loads(bold.with_name(f"{prefix}_bold.json").read_text())
    tr, st = float(meta["RepetitionTime"]), np.asarray(meta["SliceTiming"], dtype=float)
    true_c, true_r = gt["cardiac_phase"][prefix], gt["respiratory_phase"][prefix]  # (T, Z)
    n_vol = true_c.shape[0]
    rec = P.load_physio(P.find_physio(bold))
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.PhysioWarning)  # trigger and StartTime must agree
        onsets = P.scan_onsets(rec, n_vol, tr)
    by_start = P.scan_onsets(rec, n_vol, tr, use_trigger=False)
    np.testing.assert_allclose(onsets, by_start, atol=0.5 / rec.sampling_frequency)
    times = onsets[:, None] + st[None, :]
    np.testing.assert_allclose(times - onsets[0], gt["acquisition_time"][prefix], atol=1e-6)
    fs = rec.sampling_frequency
    peaks, q = P.detect_cardiac_peaks(rec.cardiac, fs)
    assert q["ok"]
    err_c = np.angle(np.exp(1j * (P.cardiac_phase(peaks / fs, times) - true_c)))
    assert np.median(np.abs(err_c)) < 0.05 and np.abs(err_c).max() < 0.2
    pr = P.respiratory_phase(rec.respiratory, fs, times, hist_window=(onsets[0], onsets[-1] + tr))
    err_r = np.angle(np.exp(1j * (pr - true_r)))
    assert np.median(np.abs(err_r)) < 0.25 and np.mean(np.cos(err_r)) > 0.9
    # the slice regressors are the Fourier expansion of exactly these phases
    regs, names = P.slice_regressors(rec, n_vol, tr, st, onsets=onsets)
    assert regs.shape == (len(st), n_vol, 32)
    card_cos1 = np.cos(P.cardiac_phase(peaks / fs, times)).T  # (Z, T)
    np.testing.assert_allclose(regs[:, :, names.index("card_cos1")], card_cos1, atol=1e-12)
    summary = P.physio_summary(rec, n_vol, tr)
    true_hr = float(gt["runs"]["heart_rate_bpm"].iloc[0])
    true_rr = float(gt["runs"]["respiratory_rate_bpm"].iloc[0])
    assert summary["heart_rate_bpm"] == pytest.approx(true_hr, rel=0.06)
    assert summary["respiratory_rate_bpm"] == pytest.approx(true_rr, rel=0.15)
    assert summary["duration_s"] == pytest.approx(n_vol * tr)


def test_combine_recordings_per_device(tmp_path):
    """CoSpine-like run: pulse and belt in two files that start at different (clock) times;
    combined, they give the same regressors as a single recording of both signals."""
    n_vol, tr = 20, 2.0
    rec, onsets, _ = consistent_recording(n_vol=n_vol, tr=tr, lead=8.0, tail=6.0)
    st = np.linspace(0, 1.8, 6)
    expected, names = P.slice_regressors(rec, n_vol, tr, st)
    lead_p, lead_r = int(3.0 * FS), int(6.5 * FS)  # pulse starts 3 s, belt 6.5 s before the scan
    start_p, start_r = int(8.0 * FS) - lead_p, int(8.0 * FS) - lead_r
    pulse = np.column_stack([rec.cardiac, rec.trigger])[start_p : start_p + int(50 * FS)]
    belt = np.column_stack([rec.respiratory, rec.trigger])[start_r:]
    stem = "sub-04_task-motorR"
    extra = {"Duration": 1}
    write_physio(tmp_path, f"{stem}_recording-pulse", pulse, ["PULS", "Trigger"], start=47751420, extra=extra)
    write_physio(tmp_path, f"{stem}_recording-respiratory", belt, ["RESP", "Trigger"], start=47727980, extra=extra)
    combined = P.load_run_physio(tmp_path / f"{stem}_bold.nii.gz", n_vol, tr)
    assert set(combined.signals) == {"cardiac", "trigger", "respiratory"}
    assert combined.start_time == pytest.approx(-3.0)  # common span starts with the later (pulse) file
    assert combined.duration == pytest.approx(min(50.0, (len(belt) - (lead_r - lead_p)) / FS))
    np.testing.assert_allclose(P.scan_onsets(combined, n_vol, tr), 3.0 + tr * np.arange(n_vol), atol=0.5 / FS)
    got, got_names = P.slice_regressors(combined, n_vol, tr, st)
    assert got_names == names
    # identical: integer-sample offsets, the belt histogram spans the run in both cases
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert P.load_run_physio(tmp_path / "sub-05_task-motorR_bold.nii.gz", n_vol, tr) is None


def test_slice_regressors_explain_simulated_physio_noise(tmp_path):
    """End to end on a simulated run with physiological noise only (no neural signal, no motion):
    each slice's own RETROICOR regressors explain the CSF signal better than the regressors of
    another slice (slice timing matters) or of the volume onset."""
    simulate = pytest.importorskip("spineprint_utils.simulate")
    nib = pytest.importorskip("nibabel")
    root = simulate.simulate_dataset(
        tmp_path / "sim", n_subjects=1, n_sessions=1, n_volumes=120, anatomy="phantom", segments=("C5", "C6"),
        motion_amplitude=0.0, neural_amplitude=0.0, tsnr=40.0, slice_order="interleaved",
    )
    gt = simulate.load_ground_truth(root)
    prefix = gt["runs"]["run"].iloc[0]
    bold = next(root.rglob(f"{prefix}_bold.nii.gz"))
    meta = json.loads(bold.with_name(f"{prefix}_bold.json").read_text())
    tr, st = float(meta["RepetitionTime"]), np.asarray(meta["SliceTiming"], dtype=float)
    data = np.asarray(nib.load(bold).dataobj, dtype=float)
    csf = np.asarray(nib.load(gt["tissues"]["csf"]).dataobj) > 0.5
    rec = P.load_physio(P.find_physio(bold))
    n_z, n_t = data.shape[2], data.shape[3]
    # the simulator's model: 2 cardiac + 2 respiratory harmonics, no interactions (8 regressors, 120 volumes)
    own, _ = P.slice_regressors(rec, n_t, tr, st, 2, 2, 0)
    onset_only, _ = P.slice_regressors(rec, n_t, tr, np.zeros(n_z), 2, 2, 0)

    def median_r2(y, x):
        x = np.column_stack([np.ones(len(x)), x])
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        return float(np.median(1.0 - (y - x @ beta).var(axis=0) / y.var(axis=0)))

    r2_own, r2_other, r2_onset = [], [], []
    for z in range(n_z):
        y = data[:, :, z][csf[:, :, z]].T  # (T, voxels)
        if y.shape[1] < 5 or st[z] == st[(z + n_z // 2) % n_z]:
            continue
        r2_own.append(median_r2(y, own[z]))
        r2_other.append(median_r2(y, own[(z + n_z // 2) % n_z]))
        r2_onset.append(median_r2(y, onset_only[z]))
    assert len(r2_own) >= 2
    assert min(r2_own) > 0.8
    assert np.mean(r2_own) > np.mean(r2_other) + 0.02
    if np.any(st > 0):
        assert np.mean(r2_own) > np.mean(r2_onset) + 0.02


# ---------------------------------------------------------------- properties
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    ibis=hst.lists(hst.floats(0.3, 2.0), min_size=1, max_size=30),
    fractions=hst.lists(hst.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=20),
)
def test_cardiac_phase_property(ibis, fractions):
    beats = 10.0 + np.concatenate([[0.0], np.cumsum(ibis)])
    t = beats[0] + np.asarray(fractions) * (beats[-1] - beats[0])
    t = t[t < beats[-1]]  # rounding can land on the last beat (phase 0 by periodic continuation)
    got = P.cardiac_phase(beats, t)
    assert np.all((got >= 0) & (got < TWO_PI))
    loop = [loop_cardiac_phase(list(beats), float(ti)) for ti in t]
    np.testing.assert_allclose(got, loop, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(mc=hst.integers(0, 5), mr=hst.integers(0, 5), inter=hst.integers(0, 3))
def test_retroicor_count_property(mc, mr, inter):
    regs, names = P.retroicor_regressors(np.linspace(0, 6, 7), np.linspace(-3, 3, 7), mc, mr, (inter, inter))
    assert regs.shape == (7, 2 * mc + 2 * mr + 4 * inter * inter) and len(names) == regs.shape[1]
    assert np.all(np.abs(regs) <= 1.0)


def test_plot_physio():
    import matplotlib.pyplot as plt

    rec, onsets, beats = consistent_recording(n_vol=20, tr=2.0)
    fig = P.plot_physio(rec, 20, 2.0, window=10.0)
    try:
        axes = fig.axes
        assert len(axes) == 3
        markers = [ln for ln in axes[0].get_lines() if ln.get_marker() == "o"][0]
        expected = beats[(beats >= onsets[0] * FS) & (beats < (onsets[0] + 10.0) * FS)] / FS - onsets[0]
        np.testing.assert_allclose(markers.get_xdata(), expected, atol=1e-9)
        assert len([ln for ln in axes[2].get_lines() if ln.get_marker() != "o"]) >= 2
    finally:
        plt.close(fig)

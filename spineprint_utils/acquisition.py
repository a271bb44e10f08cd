"""Chapter 1: the acquisition protocol, read from BIDS metadata.

Reads the JSON sidecars of a BIDS dataset (with the BIDS *inheritance principle*:
a top-level ``task-<t>_bold.json`` is merged with subject-level sidecars, the more
specific file winning), summarises the functional protocol (TR, TE, flip angle,
slices, slice order, multiband factor, phase encoding, readout time, physiological
recordings, fieldmaps, subjects/sessions/runs) and reports upstream metadata
defects as a list of issues instead of crashing.

Only text files are needed; when the NIfTI images are present their header adds
the in-plane resolution, the slice count and the number of volumes.

References
----------
Gorgolewski KJ et al. (2016). The brain imaging data structure. Sci Data 3:160044.
doi:10.1038/sdata.2016.44 (inheritance principle, sidecar fields).
Wei Z et al. (2025). CoSpine database: simultaneous cortico-spinal fMRI. Sci Data.
doi:10.1038/s41597-025-05982-x (ds005883, ds005884).
Kaptan M et al. (2023). Reliability of resting-state functional connectivity in the
human spinal cord. NeuroImage 275:120152. doi:10.1016/j.neuroimage.2023.120152 (ds004386).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import layout as _layout
from ._io import SpineprintError, atomic_write_json, atomic_write_text, cache_dir, read_json
from .plotting import figsize, styled
from .prose import count

__all__ = [
    "BidsMetadata",
    "read_bids_metadata",
    "slice_timing_info",
    "slice_timing_table",
    "protocol",
    "protocol_table",
    "issues_table",
    "issues_admonition",
    "sources_admonition",
    "slice_timing_figure",
    "example_sidecars",
    "load_datasets",
    "MetadataWarning",
    "register_cli",
]

#: Relative tolerance for grouping slice times into simultaneous (multiband) groups, in s.
TIME_TOL = 1e-3


class MetadataWarning(UserWarning):
    """An upstream metadata defect the chapter can live with (reported, not fatal)."""


# ------------------------------------------------------------------ BIDS names
_ENTITY_RE = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")


def _split_name(name: str) -> tuple[dict[str, str], str]:
    """``sub-01_task-rest_bold.nii.gz`` -> ({'sub': '01', 'task': 'rest'}, 'bold') (the dataset index's parser)."""
    ents, suffix, _ = _layout.parse_name(name)
    return ents, suffix


def _inherited(root: Path, data_file: Path, suffix: str) -> tuple[dict, list[Path]]:
    """Every applicable ``*_<suffix>.json`` merged from the dataset root down to the file's folder
    (BIDS inheritance principle; :func:`spineprint_utils.layout.metadata`)."""
    return _layout.metadata(data_file, suffix, root)


# ------------------------------------------------------------------ data classes
@dataclass
class Run:
    """One functional run: merged sidecar metadata, image header facts, physio set-up."""

    key: str  #: file name without ``_bold`` suffix/extension, e.g. ``sub-01_task-rest``
    entities: dict
    sidecar: Path | None  #: the run's own ``_bold.json`` (None if only inherited)
    meta: dict  #: merged metadata (inheritance applied)
    sources: list  #: sidecar files merged, top-level first
    nifti: Path | None = None
    shape: tuple | None = None  #: image shape from the NIfTI header, if present
    zooms: tuple | None = None  #: voxel size (mm, mm, mm[, s]) from the header
    physio: dict = field(default_factory=dict)  #: recording label -> merged physio JSON


@dataclass
class BidsMetadata:
    """Everything the acquisition chapter needs from one BIDS dataset."""

    root: Path
    description: dict
    runs: list
    fieldmaps: list  #: dicts with keys ``file``, ``meta`` for ``fmap/*_epi.json``
    participants: pd.DataFrame | None
    readme: str | None
    readme_path: Path | None
    issues: list = field(default_factory=list)  #: dicts: severity, file, problem

    @property
    def name(self) -> str:
        return str(self.description.get("Name", self.root.name))


def _issue(issues: list, severity: str, file, problem: str, warn: bool = True) -> None:
    issues.append({"severity": severity, "file": str(file) if file else "", "problem": problem})
    if warn and severity == "warning":
        warnings.warn(f"{file}: {problem}" if file else problem, MetadataWarning, stacklevel=4)


# ------------------------------------------------------------------ slice timing
def slice_timing_info(slice_timing, tr: float | None = None, n_slices: int | None = None, source=None) -> dict:
    """Slice order and multiband factor implied by a BIDS ``SliceTiming`` list.

    The multiband (simultaneous multi-slice) factor is the number of slices excited
    at the same time: ``n_slices / n_distinct_times`` when every distinct time is
    shared by the same number of slices (e.g. CoSpine: 70 slices, 35 distinct times
    -> 2; Wei et al. 2025). The slice order is the order in which the slices of one
    excitation group ("package", the first ``n_slices / MB`` slices) are acquired:
    sequential ascending/descending, or interleaved (odd/even first).

    Parameters
    ----------
    slice_timing : sequence of float, shape (n_slices,)
        Acquisition time of each slice relative to the start of the volume, in s
        (BIDS ``SliceTiming``, slices in the order of the image's third axis).
    tr : float, optional
        Repetition time in s; every time must lie in ``[0, tr)``.
    n_slices : int, optional
        Number of slices from the image header; must equal ``len(slice_timing)``.
    source : path-like, optional
        File named in error messages.

    Returns
    -------
    dict
        ``n_slices``, ``n_distinct`` (distinct times, tolerance :data:`TIME_TOL` s),
        ``multiband`` (int, or None if the times are not evenly shared),
        ``order`` ("sequential ascending", "sequential descending",
        "interleaved ascending (odd first)" ..., "other", "simultaneous"),
        ``acquisition_order`` (slice indices of the first package, in acquisition
        order), ``group`` (array: excitation index of every slice),
        ``slice_gap`` (time between consecutive excitations, s).

    Raises
    ------
    SpineprintError
        Empty or non-numeric list, negative times or times >= TR, or a length that
        does not match *n_slices*.
    """
    where = f"{source}: " if source else ""
    try:
        t = np.asarray(slice_timing, dtype=float).ravel()
    except (TypeError, ValueError):
        raise SpineprintError(f"{where}SliceTiming is not a list of numbers") from None
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise SpineprintError(f"{where}SliceTiming is empty or has non-finite values")
    if n_slices is not None and t.size != int(n_slices):
        raise SpineprintError(
            f"{where}SliceTiming has {t.size} entries but the image has {int(n_slices)} slices"
        )
    if np.any(t < 0):
        raise SpineprintError(f"{where}SliceTiming has negative values (min {t.min():g} s)")
    if tr is not None and np.any(t >= float(tr)):
        raise SpineprintError(
            f"{where}SliceTiming values must lie in [0, TR={float(tr):g} s); max is {t.max():g} s"
        )
    n = t.size
    # excitation groups: times closer than TIME_TOL belong to the same excitation
    order_t = np.argsort(t, kind="stable")
    new_group = np.r_[True, np.diff(t[order_t]) > TIME_TOL]
    group_sorted = np.cumsum(new_group) - 1
    group = np.empty(n, dtype=int)
    group[order_t] = group_sorted
    n_distinct = int(group_sorted[-1] + 1)
    counts = np.bincount(group)
    multiband = int(counts[0]) if np.all(counts == counts[0]) and n % n_distinct == 0 else None
    starts = t[order_t][new_group]
    slice_gap = float(np.median(np.diff(starts))) if n_distinct > 1 else 0.0

    if n_distinct == 1:
        order, acq = "simultaneous", np.arange(n)
    else:
        package = n // multiband if multiband else n
        if multiband and multiband > 1:
            # the simultaneous slices must be one package apart (k, k + n/MB, ...)
            first = group[:package]
            regular = all(np.array_equal(group[i * package : (i + 1) * package], first) for i in range(multiband))
            if not regular:
                package = n
        acq = np.argsort(t[:package], kind="stable")
        order = _classify_order(acq)
    return {
        "n_slices": n,
        "n_distinct": n_distinct,
        "multiband": multiband,
        "order": order,
        "acquisition_order": acq.tolist(),
        "group": group,
        "slice_gap": slice_gap,
    }


def _classify_order(acq: np.ndarray) -> str:
    """Name the acquisition order of one package of slices (indices in acquisition order)."""
    m = acq.size
    idx = np.arange(m)
    if np.array_equal(acq, idx):
        return "sequential ascending"
    if np.array_equal(acq, idx[::-1]):
        return "sequential descending"
    even, odd = idx[0::2], idx[1::2]
    patterns = {
        "interleaved ascending (even first)": np.r_[even, odd],
        "interleaved ascending (odd first)": np.r_[odd, even],
        "interleaved descending": np.r_[idx[::-1][0::2], idx[::-1][1::2]],
    }
    for name, pat in patterns.items():
        if np.array_equal(acq, pat):
            return name
    return "other"


def slice_timing_table(slice_timing, tr: float | None = None) -> pd.DataFrame:
    """Per-slice timing, ready to plot (slice index vs acquisition time).

    Parameters
    ----------
    slice_timing : sequence of float, shape (n_slices,)
        BIDS ``SliceTiming`` in s.
    tr : float, optional
        Repetition time in s (validation only).

    Returns
    -------
    DataFrame
        One row per slice: ``slice`` (0-based index along the slice axis),
        ``time_s``, ``excitation`` (0-based rank of its excitation in the TR),
        ``band`` (0-based index of the slice among those excited simultaneously).
    """
    info = slice_timing_info(slice_timing, tr)
    group = info["group"]
    band = np.zeros_like(group)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        band[members] = np.arange(members.size)
    return pd.DataFrame(
        {"slice": np.arange(group.size), "time_s": np.asarray(slice_timing, float), "excitation": group, "band": band}
    )


# ------------------------------------------------------------------ reading
def _find_readme(root: Path) -> Path | None:
    for name in ("README", "README.md", "README.rst", "README.txt"):
        if (root / name).is_file():
            return root / name
    return None


def _header(path: Path) -> tuple[tuple, tuple]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return tuple(int(s) for s in img.shape), tuple(float(z) for z in img.header.get_zooms())
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise SpineprintError(f"{path}: unreadable NIfTI header ({exc})") from None


def read_bids_metadata(bids_dir) -> BidsMetadata:
    """Read the metadata of every functional run of a BIDS dataset.

    Parameters
    ----------
    bids_dir : path-like
        BIDS dataset root (must hold ``dataset_description.json``). Only the text
        files are required; NIfTI headers are read when present.

    Returns
    -------
    BidsMetadata
        Runs with merged sidecars (BIDS inheritance principle), fieldmaps,
        participants table, README text and a list of upstream metadata issues
        (each also emitted as a :class:`MetadataWarning`).

    Raises
    ------
    SpineprintError
        Missing folder or ``dataset_description.json``; a sidecar that is not JSON;
        no functional run; a run without ``RepetitionTime``; ``SliceTiming``
        inconsistent with the image or outside ``[0, TR)``.
    """
    root = Path(bids_dir).expanduser()
    if not root.is_dir():
        raise SpineprintError(f"{root}: BIDS folder not found")
    root = root.resolve()
    desc_path = root / "dataset_description.json"
    if not desc_path.is_file():
        raise SpineprintError(f"{root}: not a BIDS dataset (no dataset_description.json)")
    description = read_json(desc_path)
    issues: list = []

    # --- functional runs: union of sidecars and images, from the dataset index (sessions optional,
    # hidden files and .bidsignore skipped, derivatives never taken as runs)
    index = _layout.DatasetIndex(root)
    found: dict[Path, dict] = {}
    for p, ents, suf, ext in index.files:
        if suf != "bold" or "desc" in ents or ext not in (".json", ".nii.gz", ".nii"):
            continue
        base = p.parent / p.name[: -len("_bold" + ext)]
        if ext == ".json":
            found.setdefault(base, {})["json"] = p
        elif ext == ".nii.gz" or "nifti" not in found.get(base, {}):
            found.setdefault(base, {})["nifti"] = p
    if not found:
        raise SpineprintError(f"{root}: no functional runs (sub-*/[ses-*/]func/*_bold.json or .nii[.gz])")

    runs = []
    for base, files in sorted(found.items()):
        anchor = files.get("json") or files["nifti"]
        meta, sources = _inherited(root, anchor, "bold")
        entities, _ = _split_name(base.name + "_bold")
        shown = files.get("json") or files.get("nifti")
        if "RepetitionTime" not in meta:
            raise SpineprintError(
                f"{shown}: no RepetitionTime in the run's sidecars "
                f"({', '.join(str(s) for s in sources) or 'none found'})"
            )
        try:
            tr = float(meta["RepetitionTime"])
        except (TypeError, ValueError):
            raise SpineprintError(f"{shown}: RepetitionTime {meta['RepetitionTime']!r} is not a number") from None
        if not tr > 0:
            raise SpineprintError(f"{shown}: RepetitionTime must be positive, found {tr}")
        if tr > 30:
            raise SpineprintError(f"{sources[-1] if sources else shown}: RepetitionTime {tr:g} looks like "
                                  "milliseconds; BIDS gives it in seconds")
        run = Run(key=base.name, entities=entities, sidecar=files.get("json"), meta=meta, sources=sources)
        if "nifti" in files:
            nifti = files["nifti"]
            if nifti.is_symlink() and not nifti.exists():
                _issue(issues, "warning", nifti, "broken symbolic link (image content not present: a git-annex/"
                       "DataLad clone without the data?); header not read")
            else:
                run.nifti = nifti
                run.shape, run.zooms = _header(nifti)
        if "SliceTiming" in meta:
            n_slices = run.shape[2] if run.shape is not None and len(run.shape) >= 3 else None
            slice_timing_info(meta["SliceTiming"], tr, n_slices, source=shown)
        # physiological recordings belonging to this run (every echo/part shares them)
        bold_name = base.parent / (base.name + "_bold.json")
        for p in _layout.physio_files(bold_name, (".json", ".tsv.gz", ".tsv")):
            ents, _ = _split_name(p.name)
            label = ents.get("recording", "physio")
            if label in run.physio:
                continue
            json_path = p if p.name.endswith(".json") else p.with_name(p.name.split(".", 1)[0] + ".json")
            pmeta, _ = _inherited(root, json_path, "physio")
            if not pmeta:
                _issue(issues, "warning", p, "physiological recording without JSON sidecar (sampling rate and columns unknown)")
            run.physio[label] = pmeta
        runs.append(run)

    # --- fieldmaps (reverse phase-encoding EPI pairs), metadata with inheritance
    fieldmaps = []
    for p, ents, suf, ext in index.files:
        if suf == "epi" and ext == ".json" and p.parent.name == "fmap":
            fieldmaps.append({"file": p, "meta": _inherited(root, p, "epi")[0]})

    participants = None
    if (root / "participants.tsv").is_file():
        try:
            participants = pd.read_csv(root / "participants.tsv", sep="\t", dtype=str)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise SpineprintError(f"{root / 'participants.tsv'}: not a valid TSV ({exc})") from None
    readme_path = _find_readme(root)
    readme = readme_path.read_text(encoding="utf-8", errors="replace") if readme_path else None

    meta = BidsMetadata(root, description, runs, fieldmaps, participants, readme, readme_path, issues)
    _check_defects(meta)
    return meta


# ------------------------------------------------------------------ defect detection
_FILE_MENTION_RE = re.compile(r"(?<![\w<>*{-])((?:[A-Za-z0-9]+-[A-Za-z0-9]+_)*[A-Za-z0-9_-]+\.(?:json|tsv\.gz|tsv|nii\.gz|nii))\b")


def _check_defects(meta: BidsMetadata) -> None:
    """Detect common upstream metadata defects generically and append them to ``meta.issues``."""
    issues, root, runs = meta.issues, meta.root, meta.runs

    # 1. multiband factor missing while SliceTiming shows simultaneous slices
    missing_mb = []
    for run in runs:
        st = run.meta.get("SliceTiming")
        if st is None:
            continue
        info = slice_timing_info(st)
        if info["multiband"] and info["multiband"] > 1 and "MultibandAccelerationFactor" not in run.meta:
            missing_mb.append((run, info))
    if missing_mb:
        run, info = missing_mb[0]
        _issue(
            issues, "warning", run.sidecar or root,
            f"MultibandAccelerationFactor missing in {len(missing_mb)}/{len(runs)} run sidecars; "
            f"SliceTiming has {info['n_slices']} slices at {info['n_distinct']} distinct times, "
            f"so multiband {info['multiband']} is inferred",
        )
    for run in runs:
        st, mbf = run.meta.get("SliceTiming"), run.meta.get("MultibandAccelerationFactor")
        if st is not None and mbf is not None:
            info = slice_timing_info(st)
            if info["multiband"] is not None and int(mbf) != info["multiband"]:
                _issue(issues, "warning", run.sidecar, f"MultibandAccelerationFactor {mbf} disagrees with SliceTiming ({info['multiband']})")
    if any("SliceTiming" not in r.meta for r in runs):
        bad = [r for r in runs if "SliceTiming" not in r.meta]
        _issue(issues, "warning", bad[0].sidecar or root, f"SliceTiming missing for {len(bad)}/{len(runs)} runs (slice order unknown)")

    # 2. TaskDescription that does not mention the task it describes
    mism = Counter()
    example = {}
    for run in runs:
        desc = str(run.meta.get("TaskDescription", "")).lower()
        if not desc:
            continue
        names = {str(run.meta.get("TaskName", "")).lower(), run.entities.get("task", "").lower()} - {""}
        if names and not any(_mentions(desc, n) for n in names):
            key = (run.meta.get("TaskName", ""), run.meta.get("TaskDescription"))
            mism[key] += 1
            example.setdefault(key, []).append(run)
    for (tname, tdesc), count in mism.items():
        labels = sorted({r.entities.get("task", "") for r in example[(tname, tdesc)]})
        _issue(
            issues, "warning", example[(tname, tdesc)][0].sidecar,
            f"TaskDescription of {count}/{len(runs)} runs (task {', '.join(labels)}) does not mention "
            f"the task (TaskName {tname!r}): {tdesc!r}",
        )
    # TaskName vs task label (BIDS: the label is the TaskName without non-alphanumerics)
    names = Counter()
    for run in runs:
        tname = run.meta.get("TaskName")
        label = run.entities.get("task")
        if tname is not None and label is not None and re.sub(r"[^A-Za-z0-9]", "", str(tname)) != label:
            names[(label, tname)] += 1
    for (label, tname), count in names.items():
        _issue(issues, "info", root, f"TaskName {tname!r} differs from the file-name task label 'task-{label}' ({count} runs)", warn=False)

    # 3. physiological recordings present for some runs only
    labels = sorted({lab for r in runs for lab in r.physio})
    if labels:
        for lab in labels:
            lacking = [r.key for r in runs if lab not in r.physio]
            if lacking:
                shown = ", ".join(lacking[:5]) + (f", ... ({len(lacking)} in total)" if len(lacking) > 5 else "")
                _issue(issues, "warning", root, f"'{lab}' physiological recording missing for {len(lacking)}/{len(runs)} runs: {shown}")
    else:
        _issue(issues, "info", root, "no physiological recordings next to the raw BOLD runs (they may be under derivatives/)", warn=False)

    # 4. README that names files absent from the dataset
    if meta.readme:
        present = {p.name for p in root.rglob("*") if p.is_file()}
        absent = []
        for name in dict.fromkeys(_FILE_MENTION_RE.findall(meta.readme)):
            alts = {name, re.sub(r"\.(nii\.gz|nii|tsv\.gz)$", ".json", name)}
            if not alts & present:
                absent.append(name)
        if absent:
            _issue(issues, "warning", meta.readme_path, f"README names {'a file that does' if len(absent) == 1 else 'files that do'} not exist in the dataset: " + ", ".join(absent))

    # 5. participants.tsv vs subject folders
    subjects = {r.entities.get("sub") for r in runs}
    if meta.participants is not None and "participant_id" in meta.participants:
        listed = {str(s).removeprefix("sub-") for s in meta.participants["participant_id"]}
        if listed != subjects:
            extra, miss = sorted(listed - subjects), sorted(subjects - listed)
            _issue(
                issues, "warning", root / "participants.tsv",
                f"participants.tsv and subject folders with BOLD runs differ (listed only: {extra}; folders only: {miss})",
            )

    # 6. EPI fieldmaps whose phase-encoding direction disagrees with their dir- label
    majority = _fieldmap_pe(meta.fieldmaps)
    for f in meta.fieldmaps:
        label = _split_name(f["file"].name)[0].get("dir", "")
        pe = f["meta"].get("PhaseEncodingDirection")
        if label in majority and pe != majority[label]:
            _issue(
                issues, "warning", f["file"],
                f"PhaseEncodingDirection {pe!r} disagrees with the other dir-{label} fieldmaps "
                f"({majority[label]!r}) (mislabelled or mis-converted fieldmap?)",
            )

    # 7. acquisition parameters that vary across runs
    for key in ("RepetitionTime", "EchoTime", "FlipAngle", "SliceThickness"):
        values = Counter(_hashable(r.meta.get(key)) for r in runs)
        if len(values) > 1:
            _issue(issues, "warning", root, f"{key} differs across runs: " + ", ".join(f"{v} ({c} runs)" for v, c in values.most_common()))


def _fieldmap_pe(fieldmaps: list) -> dict:
    """Majority ``PhaseEncodingDirection`` of the EPI fieldmaps, per ``dir-`` label (or "?")."""
    by_dir: dict[str, Counter] = {}
    for f in fieldmaps:
        pe = f["meta"].get("PhaseEncodingDirection")
        if pe:
            label = _split_name(f["file"].name)[0].get("dir", "?")
            by_dir.setdefault(label, Counter())[str(pe)] += 1
    return {d: c.most_common(1)[0][0] for d, c in sorted(by_dir.items())}


def _mentions(text: str, name: str) -> bool:
    """Whether *text* mentions *name* (also as a word stem: 'rest' in 'resting')."""
    name = re.sub(r"[^a-z0-9]", "", name.lower())
    return bool(name) and name in re.sub(r"[^a-z0-9]", "", text)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


# ------------------------------------------------------------------ protocol
def _mode(values):
    values = [_hashable(v) for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def _scanner(manufacturer, model):
    """Scanner name for the protocol table; the simulator's sidecars say ``simulated``."""
    if manufacturer and str(manufacturer).startswith("spineprint simulator"):
        return "none (simulated data)"
    return " ".join(str(x) for x in (manufacturer, model) if x) or None


def protocol(meta: BidsMetadata) -> dict:
    """Summarise the functional acquisition protocol of a dataset.

    Every value is the most common one across runs (differences are reported in
    ``meta.issues``). The multiband factor comes from ``MultibandAccelerationFactor``
    when present, else is inferred from ``SliceTiming`` (:func:`slice_timing_info`).

    Parameters
    ----------
    meta : BidsMetadata
        From :func:`read_bids_metadata`.

    Returns
    -------
    dict
        Plain Python values (floats in SI units except where named: TE in s, flip
        angle in degrees, thickness/resolution in mm, sampling rate in Hz), keys
        listed in :data:`PROTOCOL_ROWS`; missing information is ``None``.
    """
    runs = meta.runs
    m = lambda key: _mode(r.meta.get(key) for r in runs)  # noqa: E731
    tr = float(m("RepetitionTime"))
    st = m("SliceTiming")
    info = slice_timing_info(st, tr) if st is not None else None
    shapes = [r.shape for r in runs if r.shape is not None]
    zooms = [r.zooms for r in runs if r.zooms is not None]
    n_slices = info["n_slices"] if info else (int(_mode(s[2] for s in shapes)) if shapes else None)
    mb_field = m("MultibandAccelerationFactor")
    if mb_field is not None:
        mb, mb_source = int(mb_field), "sidecar"
    elif info is not None and info["multiband"] is not None:
        mb, mb_source = int(info["multiband"]), "SliceTiming (no MultibandAccelerationFactor)"
    else:
        mb, mb_source = None, "unknown"
    inplane = _mode(tuple(round(z, 3) for z in zz[:2]) for zz in zooms) if zooms else None
    subjects = sorted({r.entities.get("sub") for r in runs})
    sessions = sorted({r.entities.get("ses") for r in runs if "ses" in r.entities})
    acqs = sorted({r.entities["acq"] for r in runs if "acq" in r.entities})
    tasks = sorted({r.entities.get("task", "") for r in runs} - {""})
    n_vols = _mode(s[3] for s in shapes if len(s) > 3) if shapes else None

    physio_labels = sorted({lab for r in runs for lab in r.physio})
    physio_desc = []
    for lab in physio_labels:
        pm = [r.physio[lab] for r in runs if lab in r.physio]
        fs = _mode(p.get("SamplingFrequency") for p in pm)
        cols = _mode(p.get("Columns") for p in pm)
        physio_desc.append(f"{lab}: {fs:g} Hz [{', '.join(cols) if cols else '?'}]" if fs is not None else f"{lab}: ? Hz")
    n_physio = sum(1 for r in runs if r.physio)
    fs_all = sorted({float(p.get("SamplingFrequency")) for r in runs for p in r.physio.values() if p.get("SamplingFrequency") is not None})

    pe_by_dir = _fieldmap_pe(meta.fieldmaps)
    pe_set = set(pe_by_dir.values())
    pairs = ", ".join(f"{d}: {pe}" for d, pe in pe_by_dir.items())
    if any(pe.endswith("-") and pe[:-1] in pe_set for pe in pe_set):
        fmap_desc = f"reverse-PE EPI pair ({pairs})"
    else:
        fmap_desc = f"EPI ({pairs})" if pe_by_dir else "none"

    return {
        "name": meta.name,
        "manufacturer": _scanner(m("Manufacturer"), m("ManufacturersModelName")),
        "field_strength_T": _float(m("MagneticFieldStrength")),
        "tasks": ", ".join(tasks) or None,
        "acq_labels": ", ".join(acqs) or None,
        "n_subjects": len(subjects),
        "n_sessions": max(1, len(sessions)),
        "n_runs": len(runs),
        "runs_per_subject": round(len(runs) / max(1, len(subjects)), 2),
        "tr_s": tr,
        "te_s": _float(m("EchoTime")),
        "flip_angle_deg": _float(m("FlipAngle")),
        "n_slices": n_slices,
        "slice_thickness_mm": _float(m("SliceThickness")) if m("SliceThickness") is not None else (
            float(_mode(round(zz[2], 3) for zz in zooms)) if zooms and all(len(zz) > 2 for zz in zooms) else None),
        "inplane_resolution_mm": (f"{inplane[0]:g} x {inplane[1]:g}" if inplane else None),
        "n_volumes": int(n_vols) if n_vols is not None else None,
        "slice_order": info["order"] if info else None,
        "excitation_interval_s": round(info["slice_gap"], 6) if info else None,
        "multiband": mb,
        "multiband_source": mb_source,
        "inplane_acceleration": _float(m("ParallelReductionFactorInPlane")),
        "phase_encoding_direction": m("PhaseEncodingDirection"),
        "total_readout_time_s": _float(m("TotalReadoutTime")),
        "fieldmaps": fmap_desc,
        "physio": "; ".join(physio_desc) if physio_desc else "none in raw data",
        "physio_sampling_hz": fs_all[0] if len(fs_all) == 1 else (", ".join(f"{f:g}" for f in fs_all) if fs_all else None),
        "runs_with_physio": f"{n_physio}/{len(runs)}",
    }


def _float(v):
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


#: Row labels (with units) of :func:`protocol_table`, in display order.
PROTOCOL_ROWS = {
    "name": "Dataset name",
    "manufacturer": "Scanner",
    "field_strength_T": "Field strength (T)",
    "tasks": "Tasks",
    "acq_labels": "Acquisition variants (acq-)",
    "n_subjects": "Subjects",
    "n_sessions": "Sessions",
    "n_runs": "BOLD runs",
    "runs_per_subject": "Runs per subject",
    "tr_s": "TR (s)",
    "te_s": "TE (s)",
    "flip_angle_deg": "Flip angle (deg)",
    "n_slices": "Slices",
    "slice_thickness_mm": "Slice thickness (mm)",
    "inplane_resolution_mm": "In-plane resolution (mm)",
    "n_volumes": "Volumes per run",
    "slice_order": "Slice order",
    "excitation_interval_s": "Time between excitations (s)",
    "multiband": "Multiband factor",
    "multiband_source": "Multiband factor from",
    "inplane_acceleration": "In-plane acceleration (GRAPPA)",
    "phase_encoding_direction": "Phase-encoding direction",
    "total_readout_time_s": "Total readout time (s)",
    "fieldmaps": "Fieldmaps",
    "physio": "Physiological recordings",
    "runs_with_physio": "Runs with physio",
}


def protocol_table(datasets: dict) -> pd.DataFrame:
    """Protocols of several datasets side by side.

    Parameters
    ----------
    datasets : dict
        ``{column name: BIDS folder or BidsMetadata}``.

    Returns
    -------
    DataFrame
        Rows: :data:`PROTOCOL_ROWS` labels (units in the label); columns: the names
        given; cells: the values of :func:`protocol` (``"n/a"`` when unknown).
    """
    cols = {}
    for name, ds in datasets.items():
        meta = ds if isinstance(ds, BidsMetadata) else read_bids_metadata(ds)
        p = protocol(meta)
        cols[name] = ["n/a" if p[k] is None else p[k] for k in PROTOCOL_ROWS]
    return pd.DataFrame(cols, index=list(PROTOCOL_ROWS.values()), dtype=object)


def issues_table(datasets: dict) -> pd.DataFrame:
    """Upstream metadata issues of several datasets, one row per issue.

    Parameters
    ----------
    datasets : dict
        ``{name: BidsMetadata}``.

    Returns
    -------
    DataFrame
        Columns ``dataset``, ``severity`` ("warning" or "info"), ``file`` (relative
        to the dataset root), ``problem``.
    """
    rows = []
    for name, meta in datasets.items():
        for issue in meta.issues:
            f = issue["file"]
            try:
                f = str(Path(f).relative_to(meta.root)) if f else ""
            except ValueError:
                pass
            rows.append({"dataset": name, "severity": issue["severity"], "file": f or ".", "problem": issue["problem"]})
    return pd.DataFrame(rows, columns=["dataset", "severity", "file", "problem"])


# ------------------------------------------------------------------ figure
@styled
def slice_timing_figure(datasets: dict, ncols: int = 2):
    """Slice index versus acquisition time within the TR, one panel per dataset.

    Slices excited simultaneously (multiband) share a time and are joined by a
    grey line; the colour gives the band (position of the slice within its
    simultaneous group: band ``b`` holds slices ``b * n_slices / MB`` to
    ``(b + 1) * n_slices / MB - 1``).

    Parameters
    ----------
    datasets : dict
        ``{title: BidsMetadata}``; datasets without ``SliceTiming`` are skipped.
    ncols : int
        Panels per row.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    items = [(name, meta) for name, meta in datasets.items() if _mode(r.meta.get("SliceTiming") for r in meta.runs)]
    n = max(1, len(items))
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize(1.0, 0.78 * nrows / ncols), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for a, (name, meta) in zip(axes.ravel(), items):
        p = protocol(meta)
        st = _mode(r.meta.get("SliceTiming") for r in meta.runs)
        tab = slice_timing_table(st, p["tr_s"])
        for _, grp in tab.groupby("excitation"):
            if len(grp) > 1:
                a.plot(grp["time_s"], grp["slice"], color="0.75", lw=0.8, zorder=1)
        for b, grp in tab.groupby("band"):
            a.scatter(grp["time_s"], grp["slice"], s=12, color=colors[int(b) % 10], zorder=2,
                      label=f"band {int(b) + 1}")
        a.axvline(p["tr_s"], color="k", ls=":", lw=1)
        a.set_xlim(-0.05 * p["tr_s"], 1.08 * p["tr_s"])
        a.set_xlabel("acquisition time within the TR (s)")
        a.set_ylabel("slice index (0-based)")
        a.set_title(f"{name}: {p['n_slices']} slices, MB {p['multiband']}\n{p['slice_order']}")
        if tab["band"].max() > 0:
            a.legend(loc="lower right", title="simultaneous")
    for a in axes.ravel()[len(items):]:
        a.set_visible(False)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ offline fallback
def example_sidecars(n_subjects: int = 3, path=None) -> Path:
    """Write a small CoSpine-like BIDS dataset of sidecars (text only) and return its root.

    Used when neither a network nor a local copy of the real datasets is available,
    so that the chapter still builds. Values follow the published CoSpine protocol
    (Wei et al. 2025: TR 2.68 s, TE 27 ms, flip angle 80 deg, 70 slices of 4 mm,
    interleaved, multiband 2, reverse-PE EPI fieldmaps, Siemens PMU pulse and
    respiration at 400 Hz). ``dataset_description.json`` says that it is generated.

    Parameters
    ----------
    n_subjects : int
        Number of subjects; the last one has no respiratory recording (a defect the
        chapter's checks detect, as in the real data).
    path : path-like, optional
        Destination; default ``cache_dir("examples", "cospine_like_sidecars")``.

    Returns
    -------
    Path
    """
    root = Path(path) if path is not None else cache_dir("examples", "cospine_like_sidecars")
    n, mb, tr = 70, 2, 2.68
    package = n // mb
    acq = np.r_[np.arange(1, package, 2), np.arange(0, package, 2)]  # odd first, as CoSpine
    t_pkg = np.empty(package)
    t_pkg[acq] = np.round(np.arange(package) * tr / package, 4)
    slice_timing = np.tile(t_pkg, mb).tolist()
    atomic_write_json(root / "dataset_description.json", {
        "Name": "Example CoSpine-like sidecars (GENERATED, not real data)",
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "spineprint_utils.acquisition.example_sidecars"}],
    })
    atomic_write_json(root / "task-motor_bold.json", {
        "TaskName": "motor", "TaskDescription": "Hand grasping (motor task), example.",
        "RepetitionTime": tr, "EchoTime": 0.027, "FlipAngle": 80, "SliceThickness": 4,
        "SliceTiming": slice_timing, "PhaseEncodingDirection": "j", "TotalReadoutTime": 0.0406401,
        "ParallelReductionFactorInPlane": 2, "MagneticFieldStrength": 3, "Manufacturer": "Siemens",
        "ManufacturersModelName": "Prisma",
    })
    lines = ["participant_id"]
    for i in range(1, n_subjects + 1):
        sub = f"sub-{i:02d}"
        lines.append(sub)
        func = root / sub / "func"
        atomic_write_json(func / f"{sub}_task-motor_bold.json", {"AcquisitionNumber": 1})
        recs = {"pulse": ["PULS", "Trigger"], "respiratory": ["RESP", "Trigger"]}
        if i == n_subjects:
            recs.pop("respiratory")
        for lab, cols in recs.items():
            atomic_write_json(func / f"{sub}_task-motor_recording-{lab}_physio.json",
                              {"SamplingFrequency": 400, "StartTime": 0, "Columns": cols})
        for d, pe in (("AP", "j-"), ("PA", "j")):
            atomic_write_json(root / sub / "fmap" / f"{sub}_dir-{d}_epi.json",
                              {"PhaseEncodingDirection": pe, "TotalReadoutTime": 0.0406401,
                               "IntendedFor": f"func/{sub}_task-motor_bold.nii.gz"})
    atomic_write_text(root / "participants.tsv", "\n".join(lines) + "\n")
    atomic_write_text(root / "README", "Generated example sidecars mimicking the CoSpine protocol "
                      "(Wei et al. 2025); no images.\n")
    return root


def load_datasets(dataset_ids, fallback: bool = True) -> tuple[dict, dict]:
    """Locate the metadata of OpenNeuro datasets, falling back to generated examples.

    Parameters
    ----------
    dataset_ids : sequence of str
        OpenNeuro accessions known to :func:`spineprint_utils.datasets.known_openneuro`.
    fallback : bool
        If a dataset is unavailable (no network, no local copy), use
        :func:`example_sidecars` instead of raising (once, under the name
        ``"example"``).

    Returns
    -------
    paths : dict
        ``{dataset id or "example": BIDS folder}``.
    sources : dict
        ``{same keys: "pinned OpenNeuro snapshot v<version>" or an explanation of the
        fallback}``.
    """
    from . import datasets as _ds

    paths, sources = {}, {}
    for ds in dataset_ids:
        try:
            paths[ds] = _ds.fetch_openneuro(ds)
            sources[ds] = f"pinned OpenNeuro snapshot v{_ds.known_openneuro()[ds]}"
        except SpineprintError as exc:
            if not fallback or "unknown OpenNeuro dataset" in str(exc):
                raise
            reason = str(exc).split(". Without network access")[0]
            warnings.warn(
                f"{ds} unavailable, using generated example sidecars ({reason}); to use the real "
                "metadata offline set SPINEPRINT_DATA_DIR to a local copy",
                MetadataWarning, stacklevel=2,
            )
            if "example" not in paths:
                paths["example"] = example_sidecars()
                sources["example"] = (
                    "GENERATED CoSpine-like example sidecars: the real metadata could not be "
                    "downloaded and SPINEPRINT_DATA_DIR is not set"
                )
    return paths, sources


def issues_admonition(issues: pd.DataFrame, title: str = "Upstream metadata defects") -> str:
    """HTML for a warning box (Jupyter Book admonition style) listing metadata issues.

    Parameters
    ----------
    issues : DataFrame
        From :func:`issues_table`.
    title : str
        Box title; the number of issues is appended.

    Returns
    -------
    str
        ``<div class="admonition warning">`` with an escaped HTML table, or a short
        "no issues" note (class ``admonition note``) when *issues* is empty.
    """
    import html

    if issues.empty:
        return f'<div class="admonition note"><p class="admonition-title">{html.escape(title)}</p><p>No issues found.</p></div>'
    n_warn = int((issues["severity"] == "warning").sum())
    head = f"{title}: {count(n_warn, 'warning')}, {count(len(issues) - n_warn, 'note')}"
    table = issues.to_html(index=False, escape=True, border=0, classes="table text-table break-words")  # words wrap
    return f'<div class="admonition warning"><p class="admonition-title">{html.escape(head)}</p>{table}</div>'


def sources_admonition(sources: dict) -> str:
    """HTML box saying where each dataset's metadata came from.

    A warning box (``admonition warning``) when any source is generated example
    data (see :func:`load_datasets`), else a note box.

    Parameters
    ----------
    sources : dict
        ``{dataset name: source description}`` from :func:`load_datasets`.

    Returns
    -------
    str
    """
    import html

    generated = any("GENERATED" in str(v) for v in sources.values())
    kind, title = ("warning", "Example data: the real metadata are not available here") if generated else (
        "note", "Data sources")
    items = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in sources.items())
    return f'<div class="admonition {kind}"><p class="admonition-title">{html.escape(title)}</p><ul>{items}</ul></div>'


# ------------------------------------------------------------------ command line
def register_cli(subparsers) -> None:
    """``spineprint protocol BIDS_DIR [BIDS_DIR ...] [--issues]``: print the protocol table."""
    p = subparsers.add_parser(
        "protocol",
        help="print the acquisition protocol of BIDS datasets (from their JSON sidecars)",
        description="Read the metadata of one or more BIDS datasets and print their acquisition "
        "protocols side by side, and optionally the upstream metadata issues found.",
    )
    p.add_argument("bids_dirs", nargs="+", help="BIDS dataset folder(s)")
    p.add_argument("--issues", action="store_true", help="also list metadata issues")
    p.set_defaults(func=_cli_protocol)


def _cli_protocol(args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetadataWarning)
        metas = {Path(d).name: read_bids_metadata(d) for d in args.bids_dirs}
    with pd.option_context("display.max_colwidth", 70, "display.width", 200):
        print(protocol_table(metas).to_string())
        if args.issues:
            print()
            print(issues_table(metas).to_string(index=False))
    return 0

"""Susceptibility distortion correction from a reverse phase-encoding (blip-up/down) pair.

Echo-planar images are acquired with a very low bandwidth along the
phase-encoding (PE) axis, so a local off-resonance frequency ``f(x)`` (Hz; from
the susceptibility differences between cord, CSF, vertebrae, discs and the air in
the lungs) shifts each voxel along that axis by

    e(x) = s * f(x) * T_ro   [voxels]

where ``T_ro`` is the BIDS ``TotalReadoutTime`` (seconds; the reciprocal of the
bandwidth per pixel along PE) and ``s = +1`` for ``PhaseEncodingDirection``
``i``/``j``/``k`` and ``-1`` for ``i-``/``j-``/``k-`` (BIDS specification,
"Echo-planar imaging and B0 mapping"). Signal is conserved along the PE line, so
the distorted image is ``I_s(x + e(x)) * (1 + e'(x)) = I_0(x)`` (the Jacobian
term piles intensity up where lines are compressed and thins it where they are
stretched). Two images acquired with opposite PE directions are distorted in
opposite directions (``+d`` and ``-d``); Chang & Fitzpatrick (1992) showed that
``d`` then follows, line by line, from the equality of the cumulative
intensities (:func:`estimate_displacement`); FSL TOPUP (Andersson et al. 2003)
fits the same model as a regularised least-squares problem. In the spinal cord
the field varies periodically along the cord with the vertebrae and discs and
steeply towards the lungs (Finsterbusch et al. 2012; Cohen-Adad 2017), which is
why cord fMRI protocols shim tightly over the cord and add slice-wise z-shim
gradients, and why the distortion is worth correcting before normalisation.

Public API
----------
:func:`parse_pe_direction`, :func:`read_fieldmap_pair`, :func:`fieldmap_plan`,
:func:`estimate_displacement`, :func:`field_from_displacement`,
:func:`displacement_from_field`, :func:`apply_displacement`, :func:`distort`,
:func:`simulate_b0_field`, :func:`correct_run`, :func:`write_fieldmap_pair`.

References
----------
Chang H, Fitzpatrick JM (1992). A technique for accurate magnetic resonance
imaging in the presence of field inhomogeneities. IEEE Trans Med Imaging
11(3):319-329. doi:10.1109/42.158935
Andersson JLR, Skare S, Ashburner J (2003). How to correct susceptibility
distortions in spin-echo echo-planar images: application to diffusion tensor
imaging. NeuroImage 20(2):870-888. doi:10.1016/S1053-8119(03)00336-7
Finsterbusch J, Eippert F, Buechel C (2012). Single, slice-specific z-shim
gradient pulses improve T2*-weighted imaging of the spinal cord. NeuroImage
59(3):2307-2315. doi:10.1016/j.neuroimage.2011.09.038
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import layout as _layout
from ._io import SpineprintError, read_json

__all__ = [
    "FieldmapPair",
    "parse_pe_direction",
    "read_fieldmap_pair",
    "fieldmap_plan",
    "estimate_displacement",
    "field_from_displacement",
    "displacement_from_field",
    "apply_displacement",
    "distort",
    "simulate_b0_field",
    "correct_run",
    "write_fieldmap_pair",
]

_PE_RE = re.compile(r"^([ijk])(-?)$")
_AXIS = {"i": 0, "j": 1, "k": 2}


# ---------------------------------------------------------------- metadata
def parse_pe_direction(value, source="") -> tuple[int, int]:
    """Voxel axis and sign of a BIDS ``PhaseEncodingDirection``.

    Parameters
    ----------
    value : str
        ``"i"``, ``"j"``, ``"k"``, optionally followed by ``"-"``.
    source : str or Path
        File named in the error message.

    Returns
    -------
    axis : int
        0, 1 or 2 (voxel axis of the NIfTI data array).
    sign : int
        +1 or -1.
    """
    match = _PE_RE.match(str(value)) if isinstance(value, str) else None
    if match is None:
        raise SpineprintError(
            f"{source}: PhaseEncodingDirection {value!r} is not one of i, j, k, i-, j-, k-"
        )
    return _AXIS[match.group(1)], (-1 if match.group(2) else 1)


def _trt(meta: dict, source) -> float:
    if "TotalReadoutTime" not in meta:
        hint = ""
        if "EffectiveEchoSpacing" in meta:
            hint = (" (EffectiveEchoSpacing is present: TotalReadoutTime = EffectiveEchoSpacing x "
                    "(ReconMatrixPE - 1); add it to the sidecar)")
        raise SpineprintError(f"{source}: missing TotalReadoutTime, needed to convert displacement to Hz{hint}")
    value = meta["TotalReadoutTime"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0 < value < 1):
        raise SpineprintError(f"{source}: TotalReadoutTime {value!r} is not a duration in seconds in (0, 1)")
    return float(value)


def _nifti_for(json_path: Path) -> Path:
    stem = json_path.name[: -len(".json")]
    for ext in (".nii.gz", ".nii"):
        cand = json_path.with_name(stem + ext)
        if cand.is_file():
            return cand
    raise SpineprintError(f"{json_path}: no NIfTI image {stem}.nii[.gz] next to the sidecar")


def _json_for(path: Path) -> Path:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path


def _subject_dir(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.name.startswith("sub-"):
            return parent
    return None


def _entity(name: str, key: str) -> str | None:
    match = re.search(rf"(?:^|_){key}-([A-Za-z0-9]+)", name)
    return match.group(1) if match else None


def _resolve_intended(entry: str, json_path: Path) -> Path:
    subj = _subject_dir(json_path)
    if entry.startswith("bids::"):
        root = subj.parent if subj is not None else json_path.parent
        return (root / entry[len("bids::"):]).resolve()
    base = subj if subj is not None else json_path.parent
    return (base / entry).resolve()


@dataclass(frozen=True)
class FieldmapPair:
    """A validated reverse phase-encoding pair.

    Attributes
    ----------
    up, down : Path
        NIfTI images acquired with ``+`` and ``-`` phase encoding (e.g. ``j`` and ``j-``).
    pe_axis : int
        Voxel axis of phase encoding (0, 1, 2).
    total_readout_time : float
        Seconds (identical in both sidecars).
    intended_for : tuple of Path
        Resolved ``IntendedFor`` targets (empty if the sidecars have none).
    b0_field_identifier : str or None
        ``B0FieldIdentifier`` shared by the pair, if any.
    matched_by : str
        How the pair was tied to a BOLD run: ``"IntendedFor"``, ``"B0FieldIdentifier"``,
        ``"acq-task"`` (the fieldmap ``acq-`` label equals the BOLD ``task-`` label, as in
        CoSpine), ``"only-pair"`` or ``"unchecked"`` (no BOLD given).
    """

    up: Path
    down: Path
    pe_axis: int
    total_readout_time: float
    intended_for: tuple = ()
    b0_field_identifier: str | None = None
    matched_by: str = "unchecked"
    notes: tuple = field(default_factory=tuple)


def _pair_from_jsons(json_a: Path, json_b: Path) -> FieldmapPair:
    metas = {}
    for path in (json_a, json_b):
        meta = _layout.metadata(path, "epi")[0]  # BIDS inheritance, as for every sidecar
        if "PhaseEncodingDirection" not in meta:
            read_json(path, required=("PhaseEncodingDirection",))  # the error names the file
        metas[path] = (meta, parse_pe_direction(meta["PhaseEncodingDirection"], path), _trt(meta, path))
    (ma, (axa, sga), ta), (mb, (axb, sgb), tb) = metas[json_a], metas[json_b]
    if axa != axb:
        raise SpineprintError(
            f"{json_a} and {json_b}: phase-encoding axes differ ({ma['PhaseEncodingDirection']} vs "
            f"{mb['PhaseEncodingDirection']}); a reverse-PE pair must share the axis with opposite signs"
        )
    if sga == sgb:
        raise SpineprintError(
            f"{json_a} and {json_b}: identical PhaseEncodingDirection {ma['PhaseEncodingDirection']!r}; "
            "a reverse-PE pair needs opposite directions (e.g. j and j-)"
        )
    if not np.isclose(ta, tb, rtol=1e-3):
        raise SpineprintError(
            f"{json_a} and {json_b}: TotalReadoutTime differs ({ta} vs {tb} s); the pair must be "
            "acquired with the same readout"
        )
    up_json, down_json = (json_a, json_b) if sga > 0 else (json_b, json_a)
    intended = []
    for path, meta in ((json_a, ma), (json_b, mb)):
        entries = meta.get("IntendedFor", [])
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise SpineprintError(f"{path}: IntendedFor must be a string or a list of strings")
        for entry in entries:
            target = _resolve_intended(entry, path)
            if not target.exists():
                raise SpineprintError(f"{path}: IntendedFor entry {entry!r} points to a missing file ({target})")
            if target not in intended:
                intended.append(target)
    ids = {m.get("B0FieldIdentifier") for m in (ma, mb)}
    b0id = ids.pop() if len(ids) == 1 else None
    if isinstance(b0id, list):  # BIDS allows a list; keep the first
        b0id = b0id[0] if b0id else None
    return FieldmapPair(
        up=_nifti_for(up_json), down=_nifti_for(down_json), pe_axis=axa, total_readout_time=ta,
        intended_for=tuple(intended), b0_field_identifier=b0id,
    )


def _epi_jsons(fmap_dir: Path) -> list[Path]:
    return sorted(p for p in fmap_dir.glob("*_epi.json") if not p.name.startswith("."))


def _group_pairs(fmap_dir: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in _epi_jsons(fmap_dir):
        key = "_".join(f"{k}-{v}" for k in ("acq", "run") if (v := _entity(path.name, k)))
        groups.setdefault(key, []).append(path)
    return groups


def read_fieldmap_pair(sources, bold=None, acq=None) -> FieldmapPair:
    """Read and validate a reverse phase-encoding fieldmap pair (BIDS ``fmap/*_epi``).

    Parameters
    ----------
    sources : path-like or sequence of two path-likes
        Two ``*_epi.json`` sidecars (or their NIfTI files), or a ``fmap/`` folder holding
        exactly one pair (use *acq* to choose among several).
    bold : path-like, optional
        A BOLD run (NIfTI or JSON). The pair must be meant for it: listed in
        ``IntendedFor``; else the same ``B0FieldIdentifier``/``B0FieldSource``; else the
        fieldmap ``acq-`` label equals the BOLD ``task-`` label; else the only pair of the
        folder. The BOLD ``PhaseEncodingDirection`` (if given) must lie on the pair's axis.
    acq : str, optional
        ``acq-`` label selecting one pair in a folder.

    Returns
    -------
    FieldmapPair

    Raises
    ------
    SpineprintError
        Missing ``TotalReadoutTime`` or ``PhaseEncodingDirection``, identical or
        non-opposite directions, different readout times, an ``IntendedFor`` pointing to a
        missing file or not listing *bold*, ambiguous pairs; the message names the file.
    """
    if isinstance(sources, (str, Path)) and Path(sources).is_dir():
        fmap_dir = Path(sources)
        groups = _group_pairs(fmap_dir)
        if acq is not None:
            groups = {k: v for k, v in groups.items() if _entity(v[0].name, "acq") == acq}
        if not groups:
            raise SpineprintError(f"{fmap_dir}: no *_epi.json fieldmap sidecars" + (f" with acq-{acq}" if acq else ""))
        if len(groups) > 1 and bold is not None:
            chosen = _choose_group(groups, Path(bold))
            if chosen is not None:
                groups = {chosen: groups[chosen]}
        if len(groups) > 1:
            raise SpineprintError(f"{fmap_dir}: several fieldmap pairs ({', '.join(sorted(groups))}); pass acq=")
        (key, jsons), = groups.items()
        if len(jsons) != 2:
            raise SpineprintError(f"{fmap_dir}: expected 2 sidecars for pair {key or '(no acq)'}, found {len(jsons)}")
        pair = _pair_from_jsons(*jsons)
        n_pairs = len(_group_pairs(fmap_dir))
    else:
        try:
            a, b = [Path(s) for s in sources]
        except (TypeError, ValueError):
            raise SpineprintError(f"{sources!r}: give a fmap/ folder or exactly two fieldmap sidecars") from None
        pair = _pair_from_jsons(_json_for(a), _json_for(b))
        n_pairs = 1
    if bold is None:
        return pair
    return _check_bold(pair, Path(bold), n_pairs)


def _choose_group(groups, bold: Path):
    task = _entity(bold.name, "task")
    hits = [k for k, v in groups.items() if _entity(v[0].name, "acq") == task]
    return hits[0] if len(hits) == 1 else None


def _check_bold(pair: FieldmapPair, bold: Path, n_pairs: int) -> FieldmapPair:
    bold_json = _json_for(bold)
    bold_nii = bold if bold.name.endswith((".nii", ".nii.gz")) else _nifti_for(bold_json)
    meta = _layout.metadata(bold_json, "bold")[0]
    notes = []
    if "PhaseEncodingDirection" in meta:
        axis, _ = parse_pe_direction(meta["PhaseEncodingDirection"], bold_json)
        if axis != pair.pe_axis:
            raise SpineprintError(
                f"{bold_json}: BOLD phase-encoding axis {meta['PhaseEncodingDirection']!r} differs from the "
                f"fieldmap pair's axis ({pair.up.name}); the field cannot be applied"
            )
    else:
        notes.append(f"{bold_json.name}: no PhaseEncodingDirection; assumed the fieldmap axis with + sign")
    if "TotalReadoutTime" not in meta:
        notes.append(f"{bold_json.name}: no TotalReadoutTime; the fieldmap's {pair.total_readout_time} s is used")
    resolved = bold_nii.resolve()
    if pair.intended_for:
        if resolved not in pair.intended_for:
            raise SpineprintError(
                f"{_json_for(pair.up)}: IntendedFor does not list {bold_nii.name} "
                f"(lists {', '.join(p.name for p in pair.intended_for)})"
            )
        how = "IntendedFor"
    elif pair.b0_field_identifier is not None and meta.get("B0FieldSource") is not None:
        src = meta["B0FieldSource"]
        src = src if isinstance(src, list) else [src]
        if pair.b0_field_identifier not in src:
            raise SpineprintError(
                f"{bold_json}: B0FieldSource {meta['B0FieldSource']!r} does not name the fieldmap pair's "
                f"B0FieldIdentifier {pair.b0_field_identifier!r} ({pair.up.name})"
            )
        how = "B0FieldIdentifier"
    elif _entity(pair.up.name, "acq") is not None and _entity(pair.up.name, "acq") == _entity(bold.name, "task"):
        how = "acq-task"
    elif n_pairs == 1:
        how = "only-pair"
        notes.append(f"{pair.up.name}: no IntendedFor/B0FieldSource; the only fieldmap pair was used for {bold_nii.name}")
    else:
        raise SpineprintError(
            f"{bold_nii}: cannot tell which fieldmap pair is meant for this run (no IntendedFor, "
            "B0FieldSource or matching acq-/task- label)"
        )
    return FieldmapPair(
        up=pair.up, down=pair.down, pe_axis=pair.pe_axis, total_readout_time=pair.total_readout_time,
        intended_for=pair.intended_for, b0_field_identifier=pair.b0_field_identifier, matched_by=how,
        notes=tuple(notes),
    )


def fieldmap_plan(bids_dir):
    """Which fieldmap pair corrects which BOLD run, with every skip recorded.

    Parameters
    ----------
    bids_dir : path-like
        BIDS root.

    Returns
    -------
    pandas.DataFrame
        One row per BOLD run: ``bold``, ``status`` (``"ok"`` or ``"skip"``), ``up``,
        ``down``, ``pe_axis``, ``total_readout_time``, ``matched_by``, ``reason`` (why the
        run is skipped, or notes). A run is skipped, never silently, when its session has
        no ``fmap/*_epi`` pair or the metadata are inconsistent.
    """
    import pandas as pd

    root = Path(bids_dir)
    if not root.is_dir():
        raise SpineprintError(f"{root}: BIDS folder not found")
    rows = []
    from .layout import DatasetIndex  # the dataset index: any layout, hidden/ignored files skipped

    bolds = [r.path for r in DatasetIndex(root).runs("bold")]
    for bold in bolds:
        fmap_dir = bold.parent.parent / "fmap"
        row = {"bold": str(bold), "status": "skip", "up": None, "down": None, "pe_axis": None,
               "total_readout_time": None, "matched_by": None, "reason": ""}
        if not fmap_dir.is_dir() or not _epi_jsons(fmap_dir):
            row["reason"] = f"no reverse phase-encoding fieldmap (*_epi) in {fmap_dir}"
        else:
            try:
                pair = read_fieldmap_pair(fmap_dir, bold=bold)
            except SpineprintError as exc:
                row["reason"] = str(exc)
            else:
                row.update(status="ok", up=str(pair.up), down=str(pair.down), pe_axis=pair.pe_axis,
                           total_readout_time=pair.total_readout_time, matched_by=pair.matched_by,
                           reason="; ".join(pair.notes))
        rows.append(row)
    return pd.DataFrame(rows, columns=["bold", "status", "up", "down", "pe_axis", "total_readout_time",
                                       "matched_by", "reason"])


# ---------------------------------------------------------------- numerics
def _volumes(img):
    """Image data as float64 (3D) or float32 (4D)."""
    ndim = len(img.shape) if hasattr(img, "shape") else np.ndim(img)
    dtype = np.float32 if ndim == 4 else np.float64
    arr = np.asarray(img.dataobj if hasattr(img, "dataobj") else img, dtype=dtype)
    if arr.ndim not in (3, 4):
        raise SpineprintError(f"img: expected a 3D or 4D image, found shape {arr.shape}")
    return arr


def _as_array(img, what="image", dtype=np.float64):
    if hasattr(img, "dataobj"):
        arr = np.asarray(img.dataobj, dtype=dtype)
    else:
        arr = np.asarray(img, dtype=dtype)
    if arr.ndim not in (3, 4):
        raise SpineprintError(f"{what}: expected a 3D or 4D image, found shape {arr.shape}")
    return arr


def _lines(arr: np.ndarray, axis: int) -> np.ndarray:
    """View *arr* as (n_lines, n) with the PE axis last (a copy)."""
    return np.moveaxis(arr, axis, -1).reshape(-1, arr.shape[axis])


def _unlines(lines: np.ndarray, shape, axis: int) -> np.ndarray:
    moved = list(shape)
    n = moved.pop(axis)
    return np.moveaxis(lines.reshape(*moved, n), -1, axis)


def _interp_rows(xq: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Row-wise ``np.interp`` (xp increasing in each row), vectorised.

    Rows are made globally increasing by adding ``row * span`` to abscissae, so a
    single :func:`numpy.interp` call interpolates every row (values outside a row's
    range are clamped to its end values, as ``np.interp`` does).
    """
    n_rows = xp.shape[0]
    lo = min(xp.min(), xq.min())
    span = max(xp.max(), xq.max()) - lo + 1.0
    off = (np.arange(n_rows) * span)[:, None]
    xq_c = np.clip(xq, xp[:, :1], xp[:, -1:])
    return np.interp((xq_c - lo + off).ravel(), (xp - lo + off).ravel(), fp.ravel()).reshape(xq.shape)


def _smooth_weighted(values, weights, sigma):
    from scipy.ndimage import gaussian_filter

    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), (values.ndim,))
    if not np.any(sigma > 0):
        return values
    num = gaussian_filter(values * weights, sigma, mode="nearest")
    den = gaussian_filter(weights, sigma, mode="nearest")
    return np.where(den > 1e-12, num / np.maximum(den, 1e-12), 0.0)


def estimate_displacement(img_up, img_down, pe_axis: int, *, sigma=1.0, slice_axis: int | None = 2,
                          oversample: int = 4, floor: float = 1e-3, mask=None) -> np.ndarray:
    """Displacement along the PE axis from a reverse phase-encoding pair (Chang & Fitzpatrick).

    Along each PE line, signal conservation gives, for the undistorted position ``x``,
    ``C+(x + d(x)) = C-(x - d(x)) = C0(x)`` where ``C+``, ``C-`` are the cumulative
    intensities of the ``+`` and ``-`` images (Chang & Fitzpatrick 1992, eq. 9). For
    every cumulative level ``c``, ``u+ = C+^-1(c)`` and ``u- = C-^-1(c)`` are the two
    distorted positions of the same point, so ``x = (u+ + u-)/2`` and
    ``d(x) = (u+ - u-)/2``; ``d`` is then interpolated at the voxel centres and
    smoothed with signal-weighted Gaussian (normalised convolution) regularisation.
    Fully vectorised over lines.

    The method assumes that each PE line holds the whole object (background at both
    ends, as when the neck lies inside the field of view) and that the two images
    differ only by the distortion; signal leaving the field of view or differing
    dropout biases it (FSL TOPUP's least-squares fit, Andersson et al. 2003, is more
    robust there).

    Parameters
    ----------
    img_up, img_down : array-like or nibabel image, 3D (4D: averaged over volumes)
        Images with ``+`` and ``-`` phase encoding, same grid.
    pe_axis : int
        Voxel axis of phase encoding.
    sigma : float or sequence of 3 floats
        Gaussian regularisation of the estimate (voxels; 0 disables). A scalar smooths
        within slices only (not along *slice_axis*): the cord field changes quickly from
        one thick slice to the next (vertebrae/discs), and smoothing across slices biases it.
    slice_axis : int or None
        Axis left unsmoothed when *sigma* is a scalar (None: smooth isotropically).
    oversample : int
        Cumulative levels per voxel of a line.
    floor : float
        Added intensity (fraction of the image maximum) so that the cumulative
        intensity is strictly increasing in empty background.
    mask : array-like of bool, optional
        Voxels trusted for the weighted smoothing (default: all, weighted by signal).

    Returns
    -------
    ndarray, float64, same 3D shape
        ``d`` in voxels: the ``+`` image is displaced by ``+d`` and the ``-`` image by
        ``-d`` along the positive PE axis (``d = f * TotalReadoutTime``).
    """
    up, down = _as_array(img_up, "img_up"), _as_array(img_down, "img_down")
    if up.ndim == 4:
        up = up.mean(axis=3)
    if down.ndim == 4:
        down = down.mean(axis=3)
    if up.shape != down.shape:
        raise SpineprintError(f"reverse-PE images have different shapes {up.shape} and {down.shape}")
    if pe_axis not in (0, 1, 2):
        raise SpineprintError(f"pe_axis must be 0, 1 or 2, got {pe_axis!r}")
    if not (np.all(np.isfinite(up)) and np.all(np.isfinite(down))):
        raise SpineprintError("reverse-PE images contain NaN or infinite values")
    top = max(up.max(), down.max(), 1e-12)
    lu = np.clip(_lines(up, pe_axis), 0, None) + floor * top
    ld = np.clip(_lines(down, pe_axis), 0, None) + floor * top
    n = lu.shape[1]
    bounds = np.broadcast_to(np.arange(n + 1, dtype=float) - 0.5, (lu.shape[0], n + 1))

    def cdf(lines):
        c = np.concatenate([np.zeros((lines.shape[0], 1)), np.cumsum(lines, axis=1)], axis=1)
        return c / c[:, -1:]

    cu, cd = cdf(lu), cdf(ld)
    levels = np.broadcast_to(np.linspace(0.0, 1.0, oversample * n + 1), (lu.shape[0], oversample * n + 1))
    u_up = _interp_rows(levels, cu, bounds)
    u_dn = _interp_rows(levels, cd, bounds)
    x = 0.5 * (u_up + u_dn)
    d = 0.5 * (u_up - u_dn)
    # x is non-decreasing; make it strictly increasing for interpolation
    x = x + np.arange(x.shape[1])[None, :] * 1e-9
    grid = np.broadcast_to(np.arange(n, dtype=float), (lu.shape[0], n))
    disp = _unlines(_interp_rows(grid, x, d), up.shape, pe_axis)
    weights = up + down
    weights = np.clip(weights, 0, None) / top
    if mask is not None:
        weights = weights * np.asarray(mask, dtype=bool)
    if np.ndim(sigma) == 0:
        sig = np.full(3, float(sigma))
        if slice_axis is not None:
            sig[slice_axis] = 0.0
    else:
        sig = np.asarray(sigma, dtype=float)
        if sig.shape != (3,):
            raise SpineprintError(f"sigma must be a scalar or 3 values, got {sigma!r}")
    return _smooth_weighted(disp, weights, sig)


def field_from_displacement(disp, total_readout_time: float) -> np.ndarray:
    """Off-resonance field (Hz) from the ``+``-image displacement (voxels): ``f = d / T_ro``.

    BIDS definition of ``TotalReadoutTime`` (the displacement in voxels of an
    off-resonance ``f`` is ``f * TotalReadoutTime``); Andersson et al. (2003).
    """
    if not total_readout_time > 0:
        raise SpineprintError(f"TotalReadoutTime must be positive, got {total_readout_time!r}")
    return np.asarray(disp, dtype=np.float64) / float(total_readout_time)


def displacement_from_field(field_hz, total_readout_time: float, direction: int = 1) -> np.ndarray:
    """Signed displacement (voxels, along the positive PE axis): ``e = s * f * T_ro``."""
    if not total_readout_time > 0:
        raise SpineprintError(f"TotalReadoutTime must be positive, got {total_readout_time!r}")
    if direction not in (1, -1):
        raise SpineprintError(f"direction must be +1 or -1, got {direction!r}")
    return direction * np.asarray(field_hz, dtype=np.float64) * float(total_readout_time)


def _direction(direction) -> int:
    if isinstance(direction, str):
        return parse_pe_direction(direction, "direction")[1]
    if direction not in (1, -1):
        raise SpineprintError(f"direction must be +1, -1 or a BIDS PhaseEncodingDirection, got {direction!r}")
    return int(direction)


def _line_weights(pos: np.ndarray, axis: int, order: int):
    """Sparse matrix sampling a 3D grid at positions *pos* along *axis* (other indices fixed).

    ``order`` 1: linear; 3: cubic B-spline (apply to spline coefficients, see
    :func:`_resample_along`). Indices beyond the line are clamped (``mode="nearest"``).
    Returns a CSR matrix of shape (N, N), N = number of voxels (C order).
    """
    from scipy import sparse

    shape = pos.shape
    n = shape[axis]
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    flat_base = (np.arange(pos.size) - np.unravel_index(np.arange(pos.size), shape)[axis] * strides[axis])
    p = np.clip(pos.ravel(), -1.0, n)  # far outside: nearest
    i0 = np.floor(p).astype(np.int64)
    f = p - i0
    if order == 1:
        taps = [(0, 1 - f), (1, f)]
    elif order == 3:
        taps = [(-1, (1 - f) ** 3 / 6), (0, (3 * f**3 - 6 * f**2 + 4) / 6),
                (1, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6), (2, f**3 / 6)]
    else:
        raise SpineprintError(f"order must be 1 or 3, got {order!r}")
    rows = np.arange(pos.size)
    data, cols = [], []
    for off, w in taps:
        idx = np.clip(i0 + off, 0, n - 1)
        cols.append(flat_base + idx * strides[axis])
        data.append(w)
    mat = sparse.csr_matrix((np.concatenate(data), (np.tile(rows, len(taps)), np.concatenate(cols))),
                            shape=(pos.size, pos.size))
    return mat


def _resample_along(vols, pos: np.ndarray, axis: int, order: int):
    """Sample every volume of *vols* (X, Y, Z[, T]) at *pos* (X, Y, Z) along *axis*.

    One sparse matrix is built for all volumes (the positions are shared) and applied
    block by block of volumes (bounded temporary memory); cubic interpolation first
    computes B-spline coefficients along *axis* (:func:`scipy.ndimage.spline_filter1d`),
    which makes it equal to ``map_coordinates(order=3)`` with positions moving along one
    axis only (up to the handling of the ~5 voxels at each end of a line).
    """
    from scipy.ndimage import spline_filter1d

    four = vols.ndim == 4
    v = vols if four else vols[..., None]
    mat = _line_weights(pos, axis, order)
    dtype = np.float32 if four else np.float64
    mat = mat.astype(dtype)
    out = np.empty(v.shape, dtype=dtype)
    chunk = max(1, int(2**25 // max(1, pos.size)))  # ~32M values (128 MB float32) per block of volumes
    for t0 in range(0, v.shape[3], chunk):
        block = v[..., t0:t0 + chunk]
        if order == 3:
            block = spline_filter1d(block, order=3, axis=axis, mode="nearest", output=dtype)
        else:
            block = np.ascontiguousarray(block, dtype=dtype)
        out[..., t0:t0 + chunk] = (mat @ block.reshape(pos.size, -1)).reshape(block.shape)
    return out if four else out[..., 0]


def _derivative(e: np.ndarray, axis: int) -> np.ndarray:
    return np.gradient(e, axis=axis) if e.shape[axis] > 1 else np.zeros_like(e)


def _wrap(img, data):
    if hasattr(img, "affine"):
        import nibabel as nib

        out = nib.Nifti1Image(data.astype(np.float32, copy=False), img.affine, img.header)
        out.set_data_dtype(np.float32)
        return out
    return data


def apply_displacement(img, disp, pe_axis: int, direction=1, jacobian: bool = True, order: int = 3):
    """Undo a displacement along the PE axis: ``I0(x) = Is(x + e(x)) (1 + e'(x))``.

    Parameters
    ----------
    img : array-like or nibabel image, 3D or 4D
        Distorted image(s).
    disp : array-like, 3D
        Displacement ``d`` (voxels) of a ``+`` acquisition, e.g. from
        :func:`estimate_displacement` or :func:`displacement_from_field`.
    pe_axis : int
        Voxel axis of phase encoding.
    direction : +1, -1 or str
        PE sign of *img* (``"j-"`` etc. accepted); the applied displacement is
        ``e = direction * d``.
    jacobian : bool
        Multiply by ``1 + e'(x)`` (intensity conservation; Chang & Fitzpatrick 1992).
    order : {1, 3}
        Linear or cubic B-spline interpolation along the PE axis (cubic equals
        :func:`scipy.ndimage.map_coordinates` ``order=3``; all volumes share one sparse
        sampling matrix, so a 250-volume run costs about one spline filter and one
        sparse product).

    Returns
    -------
    Same type as *img* (nibabel image with float32 data, or ndarray: float64 for 3D,
    float32 for 4D).
    """
    data = _volumes(img)
    s = _direction(direction)
    e = s * np.asarray(disp, dtype=np.float64)
    if e.shape != data.shape[:3]:
        raise SpineprintError(f"displacement shape {e.shape} does not match image shape {data.shape[:3]}")
    pos = np.indices(e.shape, dtype=np.float64)[pe_axis] + e
    out = _resample_along(data, pos, pe_axis, order)
    del data
    if jacobian:
        jac = np.clip(1.0 + _derivative(e, pe_axis), 0.0, None)
        out *= (jac[..., None] if out.ndim == 4 else jac).astype(out.dtype)
    return _wrap(img, out)


def distort(img, field_hz, pe_axis: int, total_readout_time: float, direction=1, order: int = 3):
    """Forward model of EPI distortion (for simulation): ``Is(x + e(x)) = I0(x) / (1 + e'(x))``.

    The displacement ``e = s * f * T_ro`` (voxels) moves the signal at ``x`` to
    ``u = x + e(x)``; on the output grid ``u`` the source ``x(u)`` is found by
    inverting the monotone map line by line, and the intensity is divided by the
    Jacobian ``1 + e'`` (signal conservation; Chang & Fitzpatrick 1992; Jezzard &
    Balaban 1995). Requires ``1 + e' > 0`` (no folding).

    Parameters
    ----------
    img : array-like or nibabel image, 3D or 4D
        Undistorted image(s).
    field_hz : array-like, 3D
        Off-resonance field (Hz).
    pe_axis : int
        Voxel axis of phase encoding.
    total_readout_time : float
        Seconds.
    direction : +1, -1 or str
        PE sign (``"j"``/``"j-"`` accepted).
    order : {1, 3}
        Linear or cubic B-spline resampling along the PE axis.

    Returns
    -------
    Same type as *img*.
    """
    from scipy.ndimage import map_coordinates

    data = _volumes(img)
    e = displacement_from_field(field_hz, total_readout_time, _direction(direction))
    if e.shape != data.shape[:3]:
        raise SpineprintError(f"field shape {e.shape} does not match image shape {data.shape[:3]}")
    jac = 1.0 + _derivative(e, pe_axis)
    if np.any(jac <= 0.05):
        raise SpineprintError(
            f"the field folds the image along the PE axis (min 1 + de/dx = {jac.min():.3f}); "
            "reduce its amplitude or the readout time"
        )
    le = _lines(e, pe_axis)
    n = le.shape[1]
    grid = np.broadcast_to(np.arange(n, dtype=float), le.shape)
    src = _interp_rows(grid, grid + le, grid)  # x(u)
    # beyond the ends of a line, extrapolate with the end displacement
    u = grid
    first, last = (grid + le)[:, :1], (grid + le)[:, -1:]
    src = np.where(u < first, u - le[:, :1], np.where(u > last, u - le[:, -1:], src))
    src = _unlines(src, e.shape, pe_axis)
    coords = np.indices(e.shape, dtype=np.float64)
    coords[pe_axis] = src
    jac_at = map_coordinates(jac, coords, order=1, mode="nearest")
    out = _resample_along(data, src, pe_axis, order)
    del data
    out /= (jac_at[..., None] if out.ndim == 4 else jac_at).astype(out.dtype)
    return _wrap(img, out)


def simulate_b0_field(shape, affine, cord_mask=None, *, peak_hz: float = 30.0, period_mm: float = 20.0,
                      lung_gradient_hz_per_mm: float = 0.5, random_hz: float = 5.0, seed: int = 0) -> np.ndarray:
    """A smooth off-resonance field (Hz) like the one around the cervical cord at 3 T.

    ``f(x) = peak * sin(2 pi z / period) * w(x) + g * (z0 - z) + r(x)``: a component
    periodic along the cord with the vertebrae and intervertebral discs (period about one
    vertebral level; Finsterbusch et al. 2012; Cooke et al. 2004), concentrated near the
    cord when *cord_mask* is given (``w`` a Gaussian of the in-plane distance to the cord
    centre, 15 mm wide), a gradient increasing caudally towards the lungs, and a smooth
    random component ``r`` (sum of a few random low-frequency cosines).

    Parameters
    ----------
    shape : tuple of 3 ints
    affine : (4, 4) array
        Voxel to world (mm); world z is taken as the superior axis.
    cord_mask : array-like, optional
        Cord voxels (shape *shape*).
    peak_hz, period_mm, lung_gradient_hz_per_mm, random_hz : float
    seed : int

    Returns
    -------
    ndarray, float64, shape *shape*
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = (np.asarray(affine, dtype=float)[:3, :3] @ ijk + np.asarray(affine, dtype=float)[:3, 3:]).reshape(3, *shape)
    x, y, z = xyz
    z0 = z.max()
    if cord_mask is not None:
        cm = np.asarray(cord_mask, dtype=bool)
        if cm.shape != shape or not cm.any():
            raise SpineprintError(f"cord_mask must be a non-empty mask of shape {shape}")
        cx, cy = x[cm].mean(), y[cm].mean()
        w = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 15.0**2))
    else:
        w = 1.0
    phase = rng.uniform(0, 2 * np.pi)
    f = peak_hz * np.sin(2 * np.pi * z / period_mm + phase) * w
    f = f + lung_gradient_hz_per_mm * (z0 - z)
    for _ in range(4):
        k = rng.normal(size=3) / 40.0  # wavelengths of ~40 mm and more
        f = f + random_hz / 2 * np.cos(2 * np.pi * (k[0] * x + k[1] * y + k[2] * z) + rng.uniform(0, 2 * np.pi))
    return f


def correct_run(bold_img, pair: FieldmapPair, bold_direction=1, bold_total_readout_time=None, *,
                sigma=1.0, jacobian: bool = True):
    """Estimate the field from a validated pair and correct a BOLD run.

    Parameters
    ----------
    bold_img : nibabel image (3D or 4D)
        BOLD run on the grid of the fieldmap pair.
    pair : FieldmapPair
        From :func:`read_fieldmap_pair`.
    bold_direction : +1, -1 or str
        PE sign of the BOLD run (its ``PhaseEncodingDirection``).
    bold_total_readout_time : float, optional
        Readout time of the BOLD run (default: the pair's).
    sigma : float
        Regularisation passed to :func:`estimate_displacement`.
    jacobian : bool
        Intensity modulation.

    Returns
    -------
    corrected : nibabel image
    field_hz : ndarray
        Estimated off-resonance field (Hz).
    """
    from ._io import load_nifti

    up_img, up = load_nifti(pair.up, finite=True)
    _, down = load_nifti(pair.down, finite=True)
    if up.shape[:3] != tuple(bold_img.shape[:3]) or not np.allclose(up_img.affine, bold_img.affine, atol=1e-3):
        raise SpineprintError(
            f"{pair.up}: fieldmap grid {up.shape[:3]} differs from the BOLD grid {tuple(bold_img.shape[:3])}; "
            "resample the field first"
        )
    disp = estimate_displacement(up, down, pair.pe_axis, sigma=sigma)
    field_hz = field_from_displacement(disp, pair.total_readout_time)
    trt = pair.total_readout_time if bold_total_readout_time is None else float(bold_total_readout_time)
    e = displacement_from_field(field_hz, trt, 1)
    return apply_displacement(bold_img, e, pair.pe_axis, _direction(bold_direction), jacobian=jacobian), field_hz


def write_fieldmap_pair(fmap_dir, prefix: str, undistorted_img, field_hz, total_readout_time: float, *,
                        pe_axis: int = 1, intended_for=(), extra_meta=None, noise_sigma: float = 0.0,
                        seed: int = 0) -> FieldmapPair:
    """Write a simulated reverse phase-encoding pair as BIDS ``fmap/*_epi`` files (atomic).

    ``<prefix>_dir-PA_epi`` is acquired with ``+`` phase encoding and ``<prefix>_dir-AP_epi``
    with ``-`` (the names follow CoSpine, where PA is ``j``; for another *pe_axis* the
    ``dir-`` labels are ``plus``/``minus``); both are :func:`distort` of *undistorted_img*
    by *field_hz*, plus optional Gaussian noise.

    Parameters
    ----------
    fmap_dir : path-like
        ``sub-<s>[/ses-<e>]/fmap`` folder.
    prefix : str
        e.g. ``"sub-01_ses-1"``.
    undistorted_img : nibabel image, 3D
        Spin-echo-like reference (e.g. the BOLD baseline).
    field_hz : array-like, 3D
        Off-resonance field (Hz), the ground truth.
    total_readout_time : float
        Seconds, written as ``TotalReadoutTime``.
    pe_axis : int
    intended_for : sequence of str
        ``IntendedFor`` entries relative to the subject folder (e.g. ``"ses-1/func/..._bold.nii.gz"``).
    extra_meta : dict, optional
        Added to both sidecars (e.g. ``B0FieldIdentifier``).
    noise_sigma : float
    seed : int

    Returns
    -------
    FieldmapPair
        The written pair (``IntendedFor`` targets are not checked: they may be written later;
        :func:`read_fieldmap_pair` checks them).
    """
    import nibabel as nib

    from ._io import atomic_save_nifti, atomic_write_json, check_label

    fmap_dir = Path(fmap_dir)
    for part in str(prefix).split("_"):
        key, _, value = part.partition("-")
        check_label(value, key)
    rng = np.random.default_rng(seed)
    axis_letter = "ijk"[pe_axis]
    names = {1: "PA", -1: "AP"} if pe_axis == 1 else {1: "plus", -1: "minus"}
    paths = {}
    for sign in (1, -1):
        data = distort(np.asarray(undistorted_img.dataobj, dtype=np.float64), field_hz, pe_axis,
                       total_readout_time, sign)
        if noise_sigma > 0:
            data = data + rng.normal(0.0, noise_sigma, data.shape)
        img = nib.Nifti1Image(data.astype(np.float32), undistorted_img.affine)
        img.set_data_dtype(np.float32)
        stem = fmap_dir / f"{prefix}_dir-{names[sign]}_epi"
        meta = {"PhaseEncodingDirection": axis_letter + ("" if sign > 0 else "-"),
                "TotalReadoutTime": float(total_readout_time)}
        if intended_for:
            meta["IntendedFor"] = [str(x) for x in intended_for]
        meta.update(extra_meta or {})
        atomic_save_nifti(img, Path(str(stem) + ".nii.gz"))
        atomic_write_json(Path(str(stem) + ".json"), meta)
        paths[sign] = Path(str(stem) + ".nii.gz")
    # not read back through read_fieldmap_pair: the IntendedFor targets may not be written yet
    return FieldmapPair(up=paths[1], down=paths[-1], pe_axis=pe_axis, total_readout_time=float(total_readout_time),
                        intended_for=tuple(_resolve_intended(str(x), paths[1]) for x in intended_for),
                        b0_field_identifier=(extra_meta or {}).get("B0FieldIdentifier"))

"""Spinal cord anatomy on an EPI grid: the PAM50 template, horn x segment regions.

Everything here lives in **PAM50 space** (De Leener et al. 2018), the straightened
spinal cord template of the Spinal Cord Toolbox: world coordinates in millimetres,
RAS+ (``+x`` = right, ``+y`` = anterior/ventral, ``+z`` = superior/rostral). Data made
with these grids (the simulated default study) or normalised to the template with
the Spinal Cord Toolbox can use the atlas directly after resampling to their grid.

- :func:`pam50_epi_grid` builds an axial EPI grid centred on the cord centerline and
  covering a set of spinal segments (``PAM50_spinal_levels``: 1..30 = C1..S5; the
  template's spinal levels, placed from the vertebral levels with the segment/vertebra
  relation of Frostell et al. 2016).
- :func:`tissue_maps` averages the 0.5 mm PAM50 maps into each EPI voxel (partial
  volume fractions of cord, gray matter, white matter, CSF; probabilities of the four
  gray-matter horns; majority spinal level).
- :func:`region_labels` turns the horn probability maps into a labelled image of
  gray-matter horn x spinal segment regions (``C5_LV`` ...), thresholding each horn
  map per slice at a percentile as in Kaptan et al. (2023).
- :func:`load_label_image` reads a user's own (e.g. native-space) label image.

``source="auto"`` uses the real PAM50 when a local copy (``$SPINEPRINT_DATA_DIR``) or
a previously downloaded copy exists and **never downloads**; otherwise an analytic
phantom with the same keys and grid semantics is used (an elliptic 13 x 8 mm cord in
a 2 mm CSF annulus, a butterfly of gray-matter blobs with four horns, 12 mm spinal
segments along z). ``source="pam50"`` forces the real template (downloading it
through :func:`spineprint_utils.datasets.fetch_pam50` if needed);
``source="phantom"`` forces the phantom.

References
----------
De Leener B, Fonov VS, Collins DL, Callot V, Stikov N, Cohen-Adad J (2018). PAM50:
Unbiased multimodal template of the brainstem and spinal cord aligned with the
ICBM152 space. NeuroImage 165:170-179. doi:10.1016/j.neuroimage.2017.10.041

Frostell A, Hakim R, Thelin EP, Mattsson P, Svensson M (2016). A review of the
segmental diameter of the healthy human spinal cord. Front Neurol 7:238.
doi:10.3389/fneur.2016.00238

Kaptan M, Horn U, Vannesjo SJ, et al. (2023). Reliability of resting-state functional
connectivity in the human spinal cord: assessing the impact of distinct noise
sources. NeuroImage 275:120152. doi:10.1016/j.neuroimage.2023.120152
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import SpineprintError, atomic_save_npz, cache_dir, data_dir, load_nifti

__all__ = [
    "SEGMENTS",
    "HORNS",
    "HORN_ATLAS_IDS",
    "HORN_NAMES",
    "DEFAULT_SEGMENTS",
    "pam50_epi_grid",
    "tissue_maps",
    "region_labels",
    "load_label_image",
    "segment_level",
    "pam50_source",
]

#: Spinal segments in the order of ``PAM50_spinal_levels`` values 1..30.
SEGMENTS = (
    tuple(f"C{i}" for i in range(1, 9))
    + tuple(f"T{i}" for i in range(1, 13))
    + tuple(f"L{i}" for i in range(1, 6))
    + tuple(f"S{i}" for i in range(1, 6))
)
DEFAULT_SEGMENTS = ("C3", "C4", "C5", "C6", "C7", "C8")

#: Gray-matter horns: short name -> PAM50 atlas id (``atlas/info_label.txt``).
HORN_ATLAS_IDS = {"LV": 30, "RV": 31, "LD": 34, "RD": 35}
HORN_NAMES = {
    "LV": "GM left ventral horn",
    "RV": "GM right ventral horn",
    "LD": "GM left dorsal horn",
    "RD": "GM right dorsal horn",
}
HORNS = tuple(HORN_ATLAS_IDS)

_TISSUES = ("cord", "gm", "wm", "csf")
_PAM50_FILES = {
    "cord": "template/PAM50_cord.nii.gz",
    "gm": "template/PAM50_gm.nii.gz",
    "wm": "template/PAM50_wm.nii.gz",
    "csf": "template/PAM50_csf.nii.gz",
    **{h: f"atlas/PAM50_atlas_{i}.nii.gz" for h, i in HORN_ATLAS_IDS.items()},
}
_LEVELS_FILE = "template/PAM50_spinal_levels.nii.gz"
_CENTERLINE_FILE = "template/PAM50_centerline.nii.gz"
_PAM50_SPACING = 0.5  # mm, isotropic

# ------------------------------------------------------------------ phantom geometry (mm)
_PH_CENTER = (0.0, -46.0)  # cord centre (x, y): PAM50 centerline position
_PH_CORD = (6.5, 4.0)  # semi-axes of the elliptic cord (13 x 8 mm)
_PH_CSF = (8.5, 6.0)  # cord + 2 mm CSF annulus
_PH_TOP = -70.0  # rostral end of C1 (close to the PAM50 value)
_PH_SEGMENT_MM = 12.0
_PH_BLOB_SD = 0.9
_PH_BLOBS = {  # (x, y) offsets from the cord centre; +y ventral
    "LV": (-2.3, 1.6),
    "RV": (2.3, 1.6),
    "LD": (-1.9, -2.0),
    "RD": (1.9, -2.0),
    "LI": (-1.0, 0.0),  # intermediate zones / commissure: gray matter, not a horn
    "RI": (1.0, 0.0),
}


# ------------------------------------------------------------------ helpers
def segment_level(segment: str) -> int:
    """PAM50 spinal-level value (1..30) of a segment name such as ``"C5"``."""
    seg = str(segment).upper()
    if seg not in SEGMENTS:
        raise SpineprintError(f"unknown spinal segment {segment!r}; expected one of C1..C8, T1..T12, L1..L5, S1..S5")
    return SEGMENTS.index(seg) + 1


def _check_segments(segments) -> tuple[str, ...]:
    if isinstance(segments, str):
        segments = (segments,)
    segs = tuple(str(s).upper() for s in segments)
    if not segs:
        raise SpineprintError("no spinal segments requested")
    for s in segs:
        segment_level(s)
    if len(set(segs)) != len(segs):
        raise SpineprintError(f"duplicate spinal segments in {list(segments)}")
    return segs


def _check_horns(horns) -> tuple[str, ...]:
    if isinstance(horns, str):
        horns = (horns,)
    hs = tuple(str(h).upper() for h in horns)
    if not hs:
        raise SpineprintError("no gray-matter horns requested")
    bad = [h for h in hs if h not in HORN_ATLAS_IDS]
    if bad:
        raise SpineprintError(f"unknown horn(s) {bad}; expected some of {list(HORNS)}")
    if len(set(hs)) != len(hs):
        raise SpineprintError(f"duplicate horns in {list(horns)}")
    return hs


def pam50_source(source: str = "auto"):
    """Resolve *source* to ``("pam50", root)`` or ``("phantom", None)``.

    ``"auto"`` picks the real PAM50 if a local copy (``$SPINEPRINT_DATA_DIR/pam50``)
    or an earlier download exists, else the phantom; it never downloads.
    ``"pam50"`` calls :func:`spineprint_utils.datasets.fetch_pam50` (may download).
    """
    if source not in ("auto", "pam50", "phantom"):
        raise SpineprintError(f"unknown anatomy source {source!r}; use 'auto', 'pam50' or 'phantom'")
    if source == "phantom":
        return "phantom", None
    from .datasets import fetch_pam50

    if source == "pam50":
        return "pam50", Path(fetch_pam50())
    env = data_dir()
    local = (env is not None and (env / "pam50").is_dir()) or (cache_dir() / "pam50" / "release-r20250730").is_dir()
    if local:
        try:
            return "pam50", Path(fetch_pam50())
        except SpineprintError as exc:
            warnings.warn(f"PAM50 not usable ({exc}); using the analytic phantom instead", stacklevel=3)
    return "phantom", None


_CROP_VERSION = 1


def _pam50_cache_file() -> Path | None:
    """Disk cache of the cropped maps, keyed by the pinned SHA-256 of the source files.

    Valid because :func:`pam50_source` only returns copies verified against
    :data:`spineprint_utils.datasets.PAM50_REGISTRY`.
    """
    try:
        from .datasets import PAM50_REGISTRY
    except ImportError:  # pragma: no cover
        return None
    rels = sorted({*_PAM50_FILES.values(), _LEVELS_FILE, _CENTERLINE_FILE})
    if any(r not in PAM50_REGISTRY for r in rels):
        return None
    key = hashlib.sha256(("|".join(PAM50_REGISTRY[r] for r in rels) + f"|crop-v{_CROP_VERSION}").encode()).hexdigest()
    return cache_dir() / "pam50" / f"cropped-{key[:16]}.npz"


@functools.lru_cache(maxsize=2)
def _pam50_arrays(root: str):
    """Load the PAM50 maps once, cropped to the non-zero region (lossless: cval 0).

    The cropped maps are also cached on disk (compressed ``.npz`` under
    :func:`~spineprint_utils._io.cache_dir`), which makes later processes start fast.

    Returns (arrays dict, affine of the cropped grid, level z-bounds, centerline xy).
    """
    cache_file = _pam50_cache_file()
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("spinal_level", *_PAM50_FILES)}
                crop_affine, cl_world = z["crop_affine"], z["centerline"]
                bounds = {int(lv): (float(a), float(b)) for lv, a, b in z["level_bounds"]}
            for arr in arrays.values():
                arr.setflags(write=False)
            return arrays, crop_affine, bounds, cl_world
        except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt below
            pass
    out = _pam50_arrays_from_files(Path(root))
    if cache_file is not None:
        arrays, crop_affine, bounds, cl_world = out
        level_bounds = np.array([(lv, a, b) for lv, (a, b) in sorted(bounds.items())], dtype=np.float64)
        try:
            atomic_save_npz(cache_file, crop_affine=crop_affine, centerline=cl_world, level_bounds=level_bounds, **arrays)
        except OSError:  # read-only cache: work without it
            pass
    return out


def _pam50_arrays_from_files(root: Path):
    import nibabel as nib

    img, levels = load_nifti(root / _LEVELS_FILE, ndim=3, dtype=np.int16)
    affine = img.affine
    _, csf = load_nifti(root / _PAM50_FILES["csf"], ndim=3)
    support = (levels > 0) | (csf > 0)
    ii, jj = np.nonzero(support.any(axis=2))
    kk = np.nonzero(support.any(axis=(0, 1)))[0]
    pad = 4
    lo = np.array([ii.min() - pad, jj.min() - pad, kk.min() - pad]).clip(0)
    hi = np.minimum(np.array([ii.max(), jj.max(), kk.max()]) + pad + 1, levels.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    arrays = {"spinal_level": np.ascontiguousarray(levels[crop]), "csf": np.ascontiguousarray(csf[crop])}
    for key, rel in _PAM50_FILES.items():
        if key in arrays:
            continue
        path = root / rel
        im, data = load_nifti(path, ndim=3)
        if data.shape != levels.shape or not np.allclose(im.affine, affine, atol=1e-4):
            raise SpineprintError(f"{path}: grid differs from {root / _LEVELS_FILE}")
        arrays[key] = np.ascontiguousarray(data[crop])
    crop_affine = affine.copy()
    crop_affine[:3, 3] = nib.affines.apply_affine(affine, lo)
    # world z extent (voxel centres) of each level, and the centerline
    lv = arrays["spinal_level"]
    zw = crop_affine[2, 2] * np.arange(lv.shape[2]) + crop_affine[2, 3]
    bounds = {}
    present = lv.reshape(-1, lv.shape[2])
    for level in np.unique(lv[lv > 0]):
        zs = zw[np.nonzero((present == level).any(axis=0))[0]]
        bounds[int(level)] = (float(zs.min()), float(zs.max()))
    _, cl = load_nifti(root / _CENTERLINE_FILE, ndim=3)
    cl_idx = np.argwhere(cl > 0)
    cl_world = nib.affines.apply_affine(affine, cl_idx) if len(cl_idx) else np.empty((0, 3))
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays, crop_affine, bounds, cl_world


def _phantom_level_bounds():
    half = _PAM50_SPACING / 2
    return {
        lv: (_PH_TOP - _PH_SEGMENT_MM * lv + half, _PH_TOP - _PH_SEGMENT_MM * (lv - 1) - half)
        for lv in range(1, len(SEGMENTS) + 1)
    }


def _phantom_values(xyz):
    """Analytic phantom at world points ``xyz`` (N, 3): dict of (N,) arrays."""
    u = xyz[:, 0] - _PH_CENTER[0]
    v = xyz[:, 1] - _PH_CENTER[1]
    z = xyz[:, 2]
    cord = ((u / _PH_CORD[0]) ** 2 + (v / _PH_CORD[1]) ** 2 <= 1.0).astype(np.float64)
    inside_csf = (u / _PH_CSF[0]) ** 2 + (v / _PH_CSF[1]) ** 2 <= 1.0
    csf = inside_csf & (cord == 0)
    out = {"cord": cord, "csf": csf.astype(np.float64)}
    gm = np.zeros_like(u)
    for key, (bx, by) in _PH_BLOBS.items():
        g = np.exp(-((u - bx) ** 2 + (v - by) ** 2) / (2 * _PH_BLOB_SD**2))
        g = np.where(g >= 0.05, g, 0.0) * cord
        gm += g
        if key in HORN_ATLAS_IDS:
            out[key] = g
    out["gm"] = np.minimum(gm, 1.0)
    out["wm"] = cord - out["gm"]
    level = np.ceil((_PH_TOP - z) / _PH_SEGMENT_MM)
    ok = (level >= 1) & (level <= len(SEGMENTS)) & (cord > 0)
    out["spinal_level"] = np.where(ok, level, 0).astype(np.int64)
    return out


def _as_affine_shape(affine, shape):
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise SpineprintError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise SpineprintError("affine is singular")
    shape = tuple(int(s) for s in tuple(shape)[:3])
    if len(shape) != 3 or min(shape) < 1:
        raise SpineprintError(f"grid shape must have 3 positive dimensions, got {shape}")
    return affine, shape


# ------------------------------------------------------------------ public API
def pam50_epi_grid(
    segments=DEFAULT_SEGMENTS,
    voxel_size=(1.0, 1.0, 5.0),
    fov_mm=(40.0, 40.0),
    source: str = "auto",
):
    """An axial EPI grid in PAM50 space centred on the cord, covering *segments*.

    The PAM50 cord is straightened, so its centerline is (nearly) constant in x/y;
    the grid is centred on the mean centerline position over the requested
    segments, with slices spanning the rostro-caudal extent of the segments in
    ``PAM50_spinal_levels`` (De Leener et al. 2018; levels after Frostell et al. 2016),
    centred on that extent.

    Parameters
    ----------
    segments : sequence of str
        Spinal segments to cover, e.g. ``("C3", ..., "C8")`` (levels 1..30 = C1..S5).
    voxel_size : (float, float, float)
        Voxel size in mm (x, y, z); z is the slice thickness.
    fov_mm : (float, float)
        In-plane field of view in mm (x, y); rounded to whole voxels.
    source : {"auto", "pam50", "phantom"}
        Anatomy source (see the module docstring).

    Returns
    -------
    affine : ndarray, shape (4, 4)
        Voxel-to-world (PAM50 space, RAS+ mm) matrix, diagonal (axis-aligned).
    shape : tuple of int
        ``(nx, ny, nz)``.
    """
    segs = _check_segments(segments)
    vs = np.asarray(voxel_size, dtype=np.float64).ravel()
    fov = np.asarray(fov_mm, dtype=np.float64).ravel()
    if vs.size != 3 or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise SpineprintError(f"voxel_size must be three positive numbers, got {voxel_size}")
    if fov.size != 2 or not np.all(np.isfinite(fov)) or np.any(fov < vs[:2]):
        raise SpineprintError(f"fov_mm must be two numbers at least one voxel wide, got {fov_mm}")
    kind, root = pam50_source(source)
    if kind == "pam50":
        _, _, bounds, cl_world = _pam50_arrays(str(root))
    else:
        bounds, cl_world = _phantom_level_bounds(), None
    levels = [segment_level(s) for s in segs]
    missing = [s for s, lv in zip(segs, levels) if lv not in bounds]
    if missing:
        raise SpineprintError(f"spinal segment(s) {missing} not present in the {kind} spinal levels")
    half = _PAM50_SPACING / 2
    z_lo = min(bounds[lv][0] for lv in levels) - half
    z_hi = max(bounds[lv][1] for lv in levels) + half
    if cl_world is not None and len(cl_world):
        sel = (cl_world[:, 2] >= z_lo) & (cl_world[:, 2] <= z_hi)
        pts = cl_world[sel] if sel.any() else cl_world
        cx, cy = (float(c) for c in pts[:, :2].mean(axis=0))
    else:
        cx, cy = _PH_CENTER
    nx, ny = (int(round(f / v)) for f, v in zip(fov, vs[:2]))
    nz = max(1, int(np.ceil((z_hi - z_lo) / vs[2] - 1e-6)))
    cz = (z_lo + z_hi) / 2
    origin = np.array([cx, cy, cz]) - (np.array([nx, ny, nz]) - 1) / 2 * vs
    affine = np.eye(4)
    affine[[0, 1, 2], [0, 1, 2]] = vs
    affine[:3, 3] = origin
    return affine, (nx, ny, nz)


def tissue_maps(affine, shape, source: str = "auto", _method: str = "auto") -> dict:
    """Partial-volume tissue, horn and spinal-level maps on an EPI grid in PAM50 space.

    Each EPI voxel is sampled on a regular sub-grid of ``ceil(voxel_size / 0.5 mm)``
    points per axis (the PAM50 resolution); the 0.5 mm maps are interpolated
    (trilinear) at those points and averaged, which approximates the partial-volume
    fraction of each tissue in the voxel (box-filter downsampling). The spinal level
    is the most frequent non-zero level among the sub-samples (nearest neighbour).

    Parameters
    ----------
    affine : array-like, shape (4, 4)
        Voxel-to-world matrix of the grid, in PAM50 space (mm).
    shape : tuple of int
        Grid shape; only the first three entries are used.
    source : {"auto", "pam50", "phantom"}
        Anatomy source (see the module docstring).

    Returns
    -------
    dict
        ``cord, gm, wm, csf``: float32 fractions in [0, 1]; ``LV, RV, LD, RD``:
        float32 horn probabilities in [0, 1] (PAM50 atlas ids 30, 31, 34, 35); and
        ``spinal_level``: int16, 1..30 = C1..S5, 0 where the voxel contains no cord.
        All maps have shape ``shape[:3]``. A key ``"source"`` (str) says which anatomy
        was used.
    """
    affine, shape = _as_affine_shape(affine, shape)
    kind, root = pam50_source(source)
    vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    nsub = np.maximum(1, np.ceil(vox / _PAM50_SPACING - 1e-6)).astype(int)
    offsets = [(np.arange(n) + 0.5) / n - 0.5 for n in nsub]
    if kind == "pam50":
        arrays, pam_affine, _, _ = _pam50_arrays(str(root))
        to_pam = np.linalg.solve(pam_affine, affine)  # EPI voxel -> PAM50 crop voxel
        if _method == "separable" or (_method == "auto" and _is_diagonal(to_pam)):
            out = _separable_maps(arrays, to_pam, shape, offsets)
            out["source"] = kind
            return out
    out = _pointwise_maps(kind, arrays if kind == "pam50" else None, to_pam if kind == "pam50" else None,
                          affine, shape, offsets)
    out["source"] = kind
    return out


def _is_diagonal(m) -> bool:
    lin = np.asarray(m)[:3, :3]
    return bool(np.allclose(lin - np.diag(np.diag(lin)), 0.0, atol=1e-9))


def _majority_level(counts) -> np.ndarray:
    """Most frequent non-zero level per voxel (lowest level on ties), 0 without cord."""
    cord_counts = counts[..., 1:]
    return np.where(cord_counts.sum(axis=-1) > 0, cord_counts.argmax(axis=-1) + 1, 0).astype(np.int16)


def _pointwise_maps(kind, arrays, to_pam, affine, shape, offsets) -> dict:
    """General grids: sample every sub-voxel point (trilinear / nearest), then average."""
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    n_vox = ijk.shape[0]
    keys = _TISSUES + HORNS
    acc = {k: np.zeros(n_vox) for k in keys}
    n_levels = len(SEGMENTS) + 1
    counts = np.zeros((n_vox, n_levels), dtype=np.int32)
    rows = np.arange(n_vox)
    if kind == "pam50":
        from scipy.ndimage import map_coordinates
    for ox in offsets[0]:
        for oy in offsets[1]:
            for oz in offsets[2]:
                pts = ijk + (ox, oy, oz)
                if kind == "pam50":
                    coords = (pts @ to_pam[:3, :3].T + to_pam[:3, 3]).T
                    for k in keys:
                        acc[k] += map_coordinates(arrays[k], coords, order=1, mode="grid-constant", cval=0.0)
                    # nearest neighbour as floor(c + 0.5), the same rule as the separable path
                    idx = np.floor(coords + 0.5).astype(np.int64)
                    ok = np.all((idx >= 0) & (idx < np.array(arrays["spinal_level"].shape)[:, None]), axis=0)
                    lev = np.zeros(n_vox, dtype=np.int64)
                    lev[ok] = arrays["spinal_level"][idx[0, ok], idx[1, ok], idx[2, ok]]
                else:
                    world = pts @ affine[:3, :3].T + affine[:3, 3]
                    vals = _phantom_values(world)
                    for k in keys:
                        acc[k] += vals[k]
                    lev = vals["spinal_level"]
                lev = np.clip(np.asarray(lev, dtype=np.int64), 0, n_levels - 1)
                counts[rows, lev] += 1
    n_total = int(np.prod([len(o) for o in offsets]))
    out = {k: np.clip(acc[k] / n_total, 0.0, 1.0).astype(np.float32).reshape(shape) for k in keys}
    out["spinal_level"] = _majority_level(counts).reshape(shape)
    return out


def _axis_operator(n_epi, offsets, scale, shift, n_pam, order):
    """(n_epi, n_pam) matrix averaging 1-D linear (order 1) or nearest (order 0)
    interpolation over the sub-voxel offsets; zero outside the array (grid-constant)."""
    c = (scale * (np.arange(n_epi)[:, None] + offsets[None, :]) + shift).ravel()
    rows = np.repeat(np.arange(n_epi), len(offsets))
    op = np.zeros((n_epi, n_pam))
    if order == 1:
        f = np.floor(c)
        frac = c - f
        f = f.astype(np.int64)
        parts = ((f, 1.0 - frac), (f + 1, frac))
    else:
        parts = ((np.floor(c + 0.5).astype(np.int64), np.ones_like(c)),)
    for idx, w in parts:
        ok = (idx >= 0) & (idx < n_pam)
        np.add.at(op, (rows[ok], idx[ok]), w[ok])
    return op / len(offsets)


def _apply_separable(vol, ops):
    """``vol`` (Nx, Ny, Nz) -> (nx, ny, nz) with one operator per axis, on the support only."""
    support = [np.nonzero(op.any(axis=0))[0] for op in ops]
    if any(len(sup) == 0 for sup in support):
        return np.zeros(tuple(op.shape[0] for op in ops))
    sl = tuple(slice(int(sup[0]), int(sup[-1]) + 1) for sup in support)
    t = np.asarray(vol[sl], dtype=np.float64)
    t = np.tensordot(t, ops[2][:, sl[2]], axes=([2], [1]))  # (X, Y, nz)
    t = np.tensordot(t, ops[1][:, sl[1]], axes=([1], [1]))  # (X, nz, ny)
    t = np.tensordot(t, ops[0][:, sl[0]], axes=([0], [1]))  # (nz, ny, nx)
    return t.transpose(2, 1, 0)


def _separable_maps(arrays, to_pam, shape, offsets) -> dict:
    """Axis-aligned grids: the sub-voxel average of trilinear interpolation is a product of
    1-D operators (exactly the pointwise result, computed with three matrix products)."""
    pam_shape = arrays["spinal_level"].shape
    lin = [_axis_operator(shape[a], offsets[a], to_pam[a, a], to_pam[a, 3], pam_shape[a], 1) for a in range(3)]
    out = {k: np.clip(_apply_separable(arrays[k], lin), 0.0, 1.0).astype(np.float32) for k in _TISSUES + HORNS}
    near = [_axis_operator(shape[a], offsets[a], to_pam[a, a], to_pam[a, 3], pam_shape[a], 0) for a in range(3)]
    lv = arrays["spinal_level"]
    sl = tuple(slice(int(np.nonzero(op.any(axis=0))[0].min()), int(np.nonzero(op.any(axis=0))[0].max()) + 1)
               if op.any() else slice(0, 0) for op in near)
    present = [int(v) for v in np.unique(lv[sl]) if v > 0]
    counts = np.zeros(tuple(shape) + (len(SEGMENTS) + 1,), dtype=np.float64)
    n_total = int(np.prod([len(o) for o in offsets]))
    for level in present:
        counts[..., level] = np.rint(_apply_separable((lv == level), near) * n_total)
    out["spinal_level"] = _majority_level(counts)
    return out


def region_labels(
    ref_img,
    segments=DEFAULT_SEGMENTS,
    horns=HORNS,
    percentile: float = 50.0,
    source: str = "auto",
    min_voxels: int = 3,
):
    """Gray-matter horn x spinal segment regions on the grid of *ref_img*.

    For each slice (third voxel axis) and each horn, the horn probability map
    (:func:`tissue_maps`, PAM50 atlas ids 30/31/34/35) is thresholded at the given
    percentile of its non-zero values in that slice, following the slice-wise
    thresholding of the PAM50 horn masks in Kaptan et al. (2023). Each voxel goes to
    its most probable horn and is kept if it survives that horn's threshold; its
    segment is the majority ``PAM50_spinal_levels`` value of the voxel.

    Parameters
    ----------
    ref_img : nibabel image or path-like
        Image in PAM50 space whose grid is used (3D or 4D; the first 3 dims).
    segments : sequence of str
        Spinal segments, e.g. ``("C3", ..., "C8")``.
    horns : sequence of str
        Horns among ``LV, RV, LD, RD`` (left/right ventral/dorsal).
    percentile : float
        Per-slice percentile (0..100) of each horn's non-zero probabilities below
        which voxels are discarded; 0 keeps every voxel with a non-zero probability.
    source : {"auto", "pam50", "phantom"}
        Anatomy source (see the module docstring).
    min_voxels : int
        Regions with fewer voxels are dropped (with a warning).

    Returns
    -------
    labels_img : nibabel.Nifti1Image
        int16 labels 1..R on the grid of *ref_img* (0 = background), ordered
        segment-major then horn in the order given.
    regions : pandas.DataFrame
        Columns ``label, name, segment, horn, n_voxels, atlas_id`` (``name`` is
        ``<segment>_<horn>``, e.g. ``C5_LV``).

    Warns
    -----
    UserWarning
        Naming the regions dropped because they fall outside the field of view or
        have fewer than *min_voxels* voxels.

    Raises
    ------
    SpineprintError
        Bad parameters, or no region left.
    """
    import nibabel as nib

    segs = _check_segments(segments)
    hs = _check_horns(horns)
    pct = float(percentile)
    if not 0.0 <= pct < 100.0:
        raise SpineprintError(f"percentile must be in [0, 100), got {percentile}")
    if int(min_voxels) < 1:
        raise SpineprintError(f"min_voxels must be at least 1, got {min_voxels}")
    name = "reference image"
    if isinstance(ref_img, (str, Path)):
        name = str(ref_img)
        if not Path(ref_img).is_file():
            raise SpineprintError(f"{ref_img}: reference image not found")
        try:
            ref_img = nib.load(str(ref_img))
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types
            raise SpineprintError(f"{name}: cannot read image ({exc})") from None
    if not hasattr(ref_img, "affine") or not hasattr(ref_img, "shape") or len(ref_img.shape) < 3:
        raise SpineprintError(f"{name}: expected a 3D or 4D NIfTI image")
    affine, shape = _as_affine_shape(ref_img.affine, ref_img.shape[:3])
    maps = tissue_maps(affine, shape, source=source)
    prob = np.stack([maps[h] for h in hs]).astype(np.float64)  # (H, X, Y, Z)
    keep = np.zeros(prob.shape, dtype=bool)
    for z in range(shape[2]):
        for i in range(len(hs)):
            sl = prob[i, :, :, z]
            pos = sl > 0
            if pos.any():
                thr = np.percentile(sl[pos], pct) if pct > 0 else 0.0
                keep[i, :, :, z] = pos & (sl >= thr)
    best = prob.argmax(axis=0)
    horn_idx = np.where(np.take_along_axis(keep, best[None], 0)[0], best, -1)
    level = maps["spinal_level"]
    labels = np.zeros(shape, dtype=np.int16)
    rows, dropped = [], []
    for seg in segs:
        lv = segment_level(seg)
        in_seg = level == lv
        for i, h in enumerate(hs):
            region = in_seg & (horn_idx == i)
            n = int(region.sum())
            rname = f"{seg}_{h}"
            if n < int(min_voxels):
                dropped.append(f"{rname} ({'outside the field of view' if n == 0 else f'{n} voxels'})")
                continue
            label = len(rows) + 1
            labels[region] = label
            rows.append(
                {"label": label, "name": rname, "segment": seg, "horn": h, "n_voxels": n, "atlas_id": HORN_ATLAS_IDS[h]}
            )
    if dropped:
        warnings.warn(
            f"{name}: dropped {len(dropped)} region(s) with fewer than {int(min_voxels)} voxels: " + ", ".join(dropped),
            UserWarning,
            stacklevel=2,
        )
    if not rows:
        raise SpineprintError(
            f"{name}: no gray-matter horn region left on this grid (segments {list(segs)}, source "
            f"{maps['source']}); is the image in PAM50 space and covering these segments?"
        )
    img = nib.Nifti1Image(labels, affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = f"PAM50 horns x segments, percentile {pct:g}, {maps['source']}".encode()[:79]
    regions = pd.DataFrame(rows, columns=["label", "name", "segment", "horn", "n_voxels", "atlas_id"])
    return img, regions


def load_label_image(path, names_tsv=None, ref_img=None):
    """Read a user-supplied label image (e.g. horn x segment regions in native space).

    Parameters
    ----------
    path : path-like
        3D integer NIfTI, 0 = background, 1..R = regions.
    names_tsv : path-like, optional
        TSV with columns ``label`` and ``name`` (``<segment>_<horn>`` names allow the
        coupling summaries); without it regions are named ``region<label>``.
    ref_img : nibabel image, optional
        If given, the label image must be on the same grid (shape and affine).

    Returns
    -------
    labels_img : nibabel.Nifti1Image
    regions : pandas.DataFrame
        Columns ``label, name, segment, horn, n_voxels`` (segment/horn parsed from
        ``<segment>_<horn>`` names, else empty strings).
    """
    import nibabel as nib

    path = Path(path)
    img, data = load_nifti(path, finite=True, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SpineprintError(f"{path}: a label image must be 3D, found shape {data.shape}")
    if np.any(data < 0) or np.any(data != np.round(data)):
        raise SpineprintError(f"{path}: labels must be non-negative integers")
    labels = data.astype(np.int64)
    present = [int(v) for v in np.unique(labels) if v > 0]
    if not present:
        raise SpineprintError(f"{path}: the label image has no non-zero label")
    if ref_img is not None:
        if tuple(ref_img.shape[:3]) != labels.shape or not np.allclose(ref_img.affine, img.affine, atol=1e-3):
            raise SpineprintError(f"{path}: label image grid differs from the reference image grid")
    names = {v: f"region{v}" for v in present}
    if names_tsv is not None:
        names_tsv = Path(names_tsv)
        if not names_tsv.is_file():
            raise SpineprintError(f"{names_tsv}: region names file not found")
        try:
            table = pd.read_csv(names_tsv, sep="\t", dtype={"name": str})
        except Exception as exc:  # noqa: BLE001
            raise SpineprintError(f"{names_tsv}: cannot read TSV ({exc})") from None
        if not {"label", "name"} <= set(table.columns):
            raise SpineprintError(f"{names_tsv}: needs columns 'label' and 'name'")
        given = dict(zip(table["label"].astype(int), table["name"].astype(str)))
        missing = [v for v in present if v not in given]
        if missing:
            raise SpineprintError(f"{names_tsv}: no name for label(s) {missing} of {path}")
        names = {v: given[v] for v in present}
        if len(set(names.values())) != len(names):
            raise SpineprintError(f"{names_tsv}: duplicate region names")
    counts = np.bincount(labels.ravel(), minlength=max(present) + 1)
    rows = []
    for v in present:
        nm = names[v]
        seg, _, horn = nm.partition("_")
        ok = seg.upper() in SEGMENTS and horn.upper() in HORN_ATLAS_IDS
        rows.append(
            {
                "label": v,
                "name": nm,
                "segment": seg.upper() if ok else "",
                "horn": horn.upper() if ok else "",
                "n_voxels": int(counts[v]),
            }
        )
    out = nib.Nifti1Image(labels.astype(np.int16 if max(present) < 32768 else np.int32), img.affine)
    return out, pd.DataFrame(rows, columns=["label", "name", "segment", "horn", "n_voxels"])

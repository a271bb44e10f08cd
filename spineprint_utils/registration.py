"""Spatial normalisation of native-space cord data to the PAM50 template.

The steps follow the Spinal Cord Toolbox's ``sct_register_to_template`` with
``type=seg`` steps (De Leener et al. 2017; 2018): the subject's cord
segmentation is registered to the PAM50 cord mask

1. **z placement** - where along the template the subject's coverage lies: from
   vertebral/spinal level labels when given (least-squares fit of the level
   centroids), else from the T2 intensity profile in front of the cord (vertebral
   bodies and discs) matched to the PAM50 T2 template's
   (:func:`spineprint_utils.levels.z_from_t2_profile`; needs a PAM50 T2 image and a
   correlation of at least :data:`PROFILE_MIN_R`), else from the cord
   cross-sectional-area profile (normalised cross-correlation with the PAM50 profile
   over the cervical cord; a heuristic, about one vertebral level off on the SCT test
   image), recorded in :attr:`Registration.z_method`, or an explicit offset;
2. **centre-of-mass alignment** of the cords (translation);
3. **affine**: closed-form match of the cords' centrelines (straight-line fit) and
   in-plane second moments (counterpart of SCT's ``centermassrot``), optionally
   refined by dipy's :class:`~dipy.align.imaffine.AffineRegistration` (mutual
   information between the smoothed masks);
4. **regularised SyN** (symmetric diffeomorphic normalisation, Avants et al. 2008;
   dipy :class:`~dipy.align.imwarp.SymmetricDiffeomorphicRegistration`) of the
   smoothed masks on a working grid cropped around the subject's coverage.

The mean functional image is registered rigidly to the anatomical
(:func:`register_func_to_anat`, mutual information, optionally restricted to a
dilated cord mask), and transforms compose as lists (:func:`apply_transforms`),
so the atlas can be brought to native functional space (:func:`atlas_to_native`)
or the data to template space.

Transform convention
--------------------
A transform maps *points* (world mm, RAS+ as in the NIfTI affine).
``apply_transforms(img, reference, [T1, T2, ...])`` samples *img* at
``... T2(T1(p))`` for each voxel centre ``p`` of *reference* (ANTs' convention
with the list in application order). :attr:`Registration.to_template` is the list
that brings native images into template space (it maps template points to native
points); :attr:`Registration.to_native` brings template images (atlas) into
native space.

References
----------
Avants BB, Epstein CL, Grossman M, Gee JC (2008). Symmetric diffeomorphic image
registration with cross-correlation. Med Image Anal 12(1):26-41.
doi:10.1016/j.media.2007.06.004
De Leener B, Levy S, Dupont SM, et al. (2017). SCT: Spinal Cord Toolbox, an
open-source software for processing spinal cord MRI data. NeuroImage 145:24-43.
doi:10.1016/j.neuroimage.2016.10.009
De Leener B, Fonov VS, Collins DL, et al. (2018). PAM50: unbiased multimodal
template of the brainstem and spinal cord aligned with the ICBM152 space.
NeuroImage 165:170-179. doi:10.1016/j.neuroimage.2017.10.041
Garyfallidis E, et al. (2014). Dipy, a library for the analysis of diffusion MRI
data. Front Neuroinform 8:8. doi:10.3389/fninf.2014.00008
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import SpineprintError

__all__ = [
    "AffineTransform",
    "DisplacementField",
    "Registration",
    "FuncToAnat",
    "NativeTransform",
    "apply_transforms",
    "dice",
    "register_to_template",
    "register_func_to_anat",
    "atlas_to_native",
    "random_native_transform",
    "cord_profile",
    "save_transforms",
    "load_transforms",
]

#: PAM50 vertebral levels searched for the z placement without labels (C1..T1).
CERVICAL_LEVELS = (1, 8)
#: smallest correlation of the T2 vertebral profile with the PAM50 T2's accepted for the z placement
#: (real SCT T2w: 0.57; a simulated T2w without vertebrae: 0.09); below it the CSA profile is used
PROFILE_MIN_R = 0.3


# ---------------------------------------------------------------- transforms
@dataclass(frozen=True)
class AffineTransform:
    """Point map ``p -> M @ p`` (world mm).

    Attributes
    ----------
    matrix : (4, 4) ndarray
    """

    matrix: np.ndarray

    def map_points(self, pts: np.ndarray) -> np.ndarray:
        """Map (N, 3) points."""
        m = np.asarray(self.matrix, dtype=np.float64)
        return pts @ m[:3, :3].T + m[:3, 3]

    def inverse(self) -> "AffineTransform":
        return AffineTransform(np.linalg.inv(self.matrix))


@dataclass(frozen=True)
class DisplacementField:
    """Point map ``p -> p + u(p)`` with ``u`` (mm) sampled on a grid, trilinear in between.

    Outside the grid the displacement of the nearest edge voxel is used.

    Attributes
    ----------
    field : (X, Y, Z, 3) ndarray
        Displacement in world mm.
    affine : (4, 4) ndarray
        Voxel to world of the grid.
    """

    field: np.ndarray
    affine: np.ndarray

    def map_points(self, pts: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        inv = np.linalg.inv(np.asarray(self.affine, dtype=np.float64))
        vox = (pts @ inv[:3, :3].T + inv[:3, 3]).T
        disp = np.stack([map_coordinates(self.field[..., k], vox, order=1, mode="nearest") for k in range(3)], axis=1)
        return pts + disp


def save_transforms(path, transforms):
    """Write a transform chain to ``.npz`` (atomic; e.g. ``<prefix>_from-T2w_to-PAM50_xfm.npz``).

    Parameters
    ----------
    path : path-like
    transforms : sequence of AffineTransform / DisplacementField

    Returns
    -------
    Path
    """
    from ._io import atomic_save_npz

    arrays = {"n": np.array(len(transforms))}
    for i, t in enumerate(transforms):
        if isinstance(t, AffineTransform):
            arrays[f"t{i}_matrix"] = np.asarray(t.matrix, dtype=np.float64)
        elif isinstance(t, DisplacementField):
            arrays[f"t{i}_field"] = np.asarray(t.field, dtype=np.float32)
            arrays[f"t{i}_affine"] = np.asarray(t.affine, dtype=np.float64)
        else:
            raise SpineprintError(f"{path}: cannot save a {type(t).__name__}")
    return atomic_save_npz(path, **arrays)


def load_transforms(path) -> list:
    """Read a chain written by :func:`save_transforms`; clear error for a bad file."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise SpineprintError(f"{path}: transform file not found")
    try:
        with np.load(path) as z:
            out = []
            for i in range(int(z["n"])):
                if f"t{i}_matrix" in z:
                    out.append(AffineTransform(z[f"t{i}_matrix"]))
                else:
                    out.append(DisplacementField(z[f"t{i}_field"], z[f"t{i}_affine"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise SpineprintError(f"{path}: not a spineprint transform file ({exc})") from None
    return out


def _as_img(img, what="image"):
    import nibabel as nib

    from ._io import load_nifti

    if isinstance(img, (str, Path)):
        img, _ = load_nifti(img, finite=True)
        return img
    if not hasattr(img, "affine") or not hasattr(img, "dataobj"):
        raise SpineprintError(f"{what}: expected a NIfTI image or a path, got {type(img).__name__}")
    return img if isinstance(img, nib.Nifti1Image) else nib.Nifti1Image(np.asarray(img.dataobj), img.affine)


def _data(img, dtype=np.float32):
    return np.asarray(img.dataobj, dtype=dtype)


def _grid_points(shape, affine, sl=slice(None)):
    """World coordinates (N, 3) of voxel centres of the slab ``[..., sl]`` of a grid."""
    k = np.arange(shape[2])[sl]
    ijk = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), k, indexing="ij"), axis=-1).reshape(-1, 3)
    return ijk @ np.asarray(affine, dtype=np.float64)[:3, :3].T + np.asarray(affine, dtype=np.float64)[:3, 3]


def apply_transforms(img, reference, transforms, interpolation: str = "linear", fill: float = 0.0):
    """Resample *img* onto the grid of *reference* through a chain of point transforms.

    For each voxel centre ``p`` of *reference*, the output is *img* sampled at
    ``T_n(...T_2(T_1(p)))`` (world mm), i.e. *transforms* map reference points to
    *img* points, in application order.

    Parameters
    ----------
    img : nibabel image or path, 3D or 4D
    reference : nibabel image or path (grid only), or ``(shape, affine)``
    transforms : sequence of AffineTransform / DisplacementField (may be empty)
    interpolation : {"linear", "nearest"}
        Trilinear or nearest-neighbour (labels).
    fill : float
        Value outside *img*.

    Returns
    -------
    nibabel.Nifti1Image
        Float32 (linear) or the input dtype (nearest), on the reference grid.
    """
    import nibabel as nib
    from scipy.ndimage import map_coordinates

    if interpolation not in ("linear", "nearest"):
        raise SpineprintError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    img = _as_img(img, "img")
    if isinstance(reference, tuple):
        ref_shape, ref_affine = tuple(int(s) for s in reference[0][:3]), np.asarray(reference[1], dtype=float)
    else:
        reference = _as_img(reference, "reference")
        ref_shape, ref_affine = tuple(reference.shape[:3]), reference.affine
    for t in transforms:
        if not hasattr(t, "map_points"):
            raise SpineprintError(f"not a transform: {type(t).__name__}")
    data = np.asarray(img.dataobj)
    if interpolation == "linear":
        data = data.astype(np.float32)
    vols = data[..., None] if data.ndim == 3 else data
    order = 1 if interpolation == "linear" else 0
    out = np.empty(ref_shape + (vols.shape[3],), dtype=vols.dtype)
    inv = np.linalg.inv(img.affine)
    step = max(1, int(2_000_000 // max(1, ref_shape[0] * ref_shape[1])))
    for k0 in range(0, ref_shape[2], step):
        sl = slice(k0, min(ref_shape[2], k0 + step))
        pts = _grid_points(ref_shape, ref_affine, sl)
        for t in transforms:
            pts = t.map_points(pts)
        vox = (pts @ inv[:3, :3].T + inv[:3, 3]).T
        nk = sl.stop - sl.start
        for v in range(vols.shape[3]):
            out[:, :, sl, v] = map_coordinates(vols[..., v], vox, order=order, mode="constant", cval=fill).reshape(
                ref_shape[0], ref_shape[1], nk)
    out = out[..., 0] if data.ndim == 3 else out
    res = nib.Nifti1Image(out, ref_affine)
    res.set_data_dtype(out.dtype)
    return res


def dice(a, b) -> float:
    """Sørensen-Dice overlap ``2|A n B| / (|A| + |B|)`` of two masks (images or arrays).

    Non-zero voxels are the mask. Returns NaN when both are empty.
    """
    a = np.asarray(a.dataobj if hasattr(a, "dataobj") else a) != 0
    b = np.asarray(b.dataobj if hasattr(b, "dataobj") else b) != 0
    if a.shape != b.shape:
        raise SpineprintError(f"dice: masks have different shapes {a.shape} and {b.shape}")
    total = a.sum() + b.sum()
    return float("nan") if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


# ---------------------------------------------------------------- template
def _template(template, template_dir):
    if template != "PAM50":
        raise SpineprintError(f"unknown template {template!r}; only 'PAM50' is available")
    import os

    key = (str(template_dir) if template_dir is not None else None, os.environ.get("SPINEPRINT_DATA_DIR"))
    return _fetch_cached(*key)


@functools.lru_cache(maxsize=4)
def _fetch_cached(template_dir, _env):
    """fetch_pam50 (SHA-256 verification of every file) once per process and location."""
    from .datasets import fetch_pam50

    return Path(fetch_pam50(template_dir))


@functools.lru_cache(maxsize=8)
def _load_template_cached(path: str):
    import nibabel as nib

    from ._io import load_nifti

    img, data = load_nifti(path, dtype=np.float32)
    if data.max() <= 255 and np.array_equal(data, np.rint(data)):
        data = data.astype(np.uint8)
    out = nib.Nifti1Image(data, img.affine)
    out.set_data_dtype(data.dtype)
    return out


def _load_template_img(root: Path, name: str):
    """A PAM50 image held in memory (decompressed once per process; do not modify its data)."""
    path = root / "template" / name if (root / "template" / name).is_file() else root / name
    return _load_template_cached(str(path))


@functools.lru_cache(maxsize=4)
def _template_profile(root: str, lo_level: int, hi_level: int):
    cord = _load_template_img(Path(root), "PAM50_cord.nii.gz")
    lev_img = _load_template_img(Path(root), "PAM50_levels.nii.gz")
    z_t, csa_t, _ = cord_profile(cord)
    lev = np.asarray(lev_img.dataobj)
    ks = np.nonzero(((lev >= lo_level) & (lev <= hi_level)).any((0, 1)))[0]
    if len(ks) == 0:
        raise SpineprintError(f"{root}: PAM50_levels has no levels {lo_level}..{hi_level}")
    zz = lev_img.affine[2, 2] * ks + lev_img.affine[2, 3]
    return z_t, csa_t, float(zz.min()), float(zz.max())


def cord_profile(seg_img, step_mm: float = 1.0):
    """Cord cross-sectional area and centre along world z (superior axis).

    Parameters
    ----------
    seg_img : nibabel image
        Binary cord mask.
    step_mm : float
        Bin width along z.

    Returns
    -------
    z : ndarray (n,)
        Bin centres (mm).
    csa : ndarray (n,)
        Cross-sectional area (mm^2): voxel count x voxel volume / bin width.
    center : ndarray (n, 3)
        Cord centre of mass of each bin (mm); NaN where empty.
    """
    seg = _data(seg_img) > 0.5
    if not seg.any():
        raise SpineprintError("cord segmentation is empty")
    ijk = np.argwhere(seg)
    xyz = ijk @ seg_img.affine[:3, :3].T + seg_img.affine[:3, 3]
    vox = abs(np.linalg.det(seg_img.affine[:3, :3]))
    lo = np.floor(xyz[:, 2].min() / step_mm) * step_mm
    idx = np.floor((xyz[:, 2] - lo) / step_mm).astype(int)
    n = idx.max() + 1
    counts = np.bincount(idx, minlength=n).astype(float)
    center = np.stack([np.bincount(idx, weights=xyz[:, k], minlength=n) for k in range(3)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        center = center / counts[:, None]
    return lo + step_mm * (np.arange(n) + 0.5), counts * vox / step_mm, center


def _level_centroids(levels_img):
    """Centroid (world mm) of each positive integer label, via one pass and bincount."""
    lev = np.rint(np.asarray(levels_img.dataobj, dtype=np.float32)).astype(np.int64)
    ijk = np.argwhere(lev > 0)
    if len(ijk) == 0:
        return {}
    labels = lev[tuple(ijk.T)]
    xyz = ijk @ levels_img.affine[:3, :3].T + levels_img.affine[:3, 3]
    cnt = np.bincount(labels)
    sums = np.stack([np.bincount(labels, weights=xyz[:, k], minlength=len(cnt)) for k in range(3)], axis=1)
    return {int(v): sums[v] / cnt[v] for v in np.nonzero(cnt)[0]}


@functools.lru_cache(maxsize=4)
def _template_level_centroids(path: str):
    return _level_centroids(_load_template_cached(path))


def _z_from_levels(levels_img, tpl, notes):
    """Least-squares ``z_t = a z_s + b`` from level centroids (a = 1 with one level)."""
    sub = _level_centroids(levels_img)
    common = sorted(set(sub) & set(tpl))
    if not common:
        raise SpineprintError(f"levels_img: labels {sorted(sub)} match none of the template levels {sorted(tpl)}")
    zs = np.array([sub[v][2] for v in common])
    zt = np.array([tpl[v][2] for v in common])
    if len(common) >= 2 and np.ptp(zs) > 5:
        a, b = np.polyfit(zs, zt, 1)
        if not 0.7 < a < 1.4:
            notes.append(f"level-based z scaling {a:.2f} implausible; translation only")
            a, b = 1.0, float(np.mean(zt - zs))
    else:
        a, b = 1.0, float(np.mean(zt - zs))
    notes.append(f"z placement from labels {common} (z_t = {a:.3f} z + {b:.1f} mm)")
    return float(a), float(b)


def _z_from_csa(z_s, csa_s, z_t, csa_t, lo, hi, notes):
    """Offset b maximising the normalised correlation of CSA profiles (1 mm bins)."""
    good = np.isfinite(csa_s) & (csa_s > 0)
    # drop partial end bins
    z_s, csa_s = z_s[good][1:-1], csa_s[good][1:-1]
    if len(z_s) < 10:
        raise SpineprintError("cord segmentation covers < 12 mm along z: cannot place it on the template "
                              "without levels_img or z_offset")
    n = len(z_s)
    best = (-np.inf, 0.0)
    tz = np.floor(z_t).astype(int)
    lookup = dict(zip(tz.tolist(), csa_t.tolist()))
    s = (csa_s - csa_s.mean()) / (csa_s.std() + 1e-9)
    for start in range(int(np.ceil(lo)), int(np.floor(hi)) - n + 2):
        seg = np.array([lookup.get(start + i, np.nan) for i in range(n)])
        if np.any(~np.isfinite(seg)) or seg.std() < 1e-9:
            continue
        r = float(np.mean(s * (seg - seg.mean()) / seg.std()))
        if r > best[0]:
            best = (r, float(start - np.floor(z_s[0])))
    if not np.isfinite(best[0]):
        raise SpineprintError("could not place the cord on the template by its CSA profile")
    notes.append(f"z placement from the cord CSA profile (r = {best[0]:.2f}; heuristic, give levels_img "
                 "for vertebral-level accuracy)")
    return 1.0, float(best[1]), best[0]


# ---------------------------------------------------------------- results
@dataclass
class Registration:
    """Result of :func:`register_to_template`.

    Attributes
    ----------
    to_template : list of transforms
        Use with :func:`apply_transforms` to bring native images into template space
        (maps template points to native points): ``[DisplacementField(forward), Affine(A)]``.
    to_native : list of transforms
        Brings template images (atlas) into native space: ``[Affine(A^-1), DisplacementField(backward)]``.
    reference : nibabel image
        The template-space working grid (cropped around the subject's coverage).
    affine : (4, 4) ndarray
        Template-to-native affine part ``A`` (points).
    warped_seg : nibabel image
        Subject cord mask in template space (reference grid, nearest).
    warped_anat : nibabel image
        Subject anatomical image in template space (reference grid, linear), for display.
    template_cord : nibabel image
        PAM50 cord on the reference grid.
    dice : float
        Dice of ``warped_seg`` vs ``template_cord`` over the template slices the subject covers.
    dice_affine : float
        Same after the affine steps only (before SyN).
    z_method : str
        ``"levels"``, ``"t2-profile"``, ``"csa-profile"``, ``"offset"`` or ``"header"``.
    z_scale, z_offset : float
        Initial placement ``z_t = z_scale * z_native + z_offset`` (mm).
    template_dir : Path
    notes : list of str
    timings : dict of float (s)
    """

    to_template: list
    to_native: list
    reference: object
    affine: np.ndarray
    warped_seg: object
    warped_anat: object
    template_cord: object
    dice: float
    dice_affine: float
    z_method: str
    z_scale: float
    z_offset: float
    template_dir: Path
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


@dataclass
class FuncToAnat:
    """Result of :func:`register_func_to_anat`.

    Attributes
    ----------
    matrix : (4, 4) ndarray
        Anat-to-func point map (rigid): use ``[AffineTransform(matrix)]`` to bring the
        functional image onto the anatomical grid.
    to_anat, to_func : list of transforms
        For :func:`apply_transforms`: functional images onto the anat grid, anatomical
        images (or anything in anat space) onto the functional grid.
    warped : nibabel image
        Mean functional image on the anatomical grid.
    """

    matrix: np.ndarray
    to_anat: list
    to_func: list
    warped: object
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------- helpers
def _grid_img(shape, affine):
    import nibabel as nib

    return nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)


def _crop_grid(z_lo, z_hi, center_xy, half_width_mm, resolution):
    """Axis-aligned grid in template space (LAS like PAM50 but at *resolution*)."""
    res = np.broadcast_to(np.asarray(resolution, dtype=float), (3,))
    hw = float(half_width_mm)
    nx = int(np.ceil(2 * hw / res[0])) + 1
    ny = int(np.ceil(2 * hw / res[1])) + 1
    nz = int(np.ceil((z_hi - z_lo) / res[2])) + 1
    aff = np.diag([-res[0], res[1], res[2], 1.0])
    aff[:3, 3] = [center_xy[0] + hw, center_xy[1] - hw, z_lo]
    return (nx, ny, nz), aff


def _pyramid(iterations):
    """dipy pyramid arguments: factors 2^(n-1)..1, smoothing sigmas n-1..0 (voxels)."""
    n = len(iterations)
    return dict(level_iters=[int(i) for i in iterations], sigmas=[float(n - 1 - i) for i in range(n)],
                factors=[2 ** (n - 1 - i) for i in range(n)], verbosity=0)


def _shift_k(k0):
    m = np.eye(4)
    m[2, 3] = k0
    return m


def _slice_moments(seg_img, step_mm=1.0):
    """Per 1-mm z bin: z centre, in-plane centre (2,), in-plane covariance (2, 2), count."""
    seg = _data(seg_img) > 0.5
    ijk = np.argwhere(seg)
    xyz = ijk @ seg_img.affine[:3, :3].T + seg_img.affine[:3, 3]
    lo = np.floor(xyz[:, 2].min() / step_mm) * step_mm
    idx = np.floor((xyz[:, 2] - lo) / step_mm).astype(int)
    n = idx.max() + 1
    cnt = np.bincount(idx, minlength=n).astype(float)
    ok = cnt > 0
    m1 = np.stack([np.bincount(idx, weights=xyz[:, k], minlength=n) for k in range(2)], 1)[ok] / cnt[ok, None]
    xx = np.stack([np.bincount(idx, weights=xyz[:, i] * xyz[:, j], minlength=n) for i, j in ((0, 0), (0, 1), (1, 1))], 1)
    xx = xx[ok] / cnt[ok, None]
    cov = np.empty((ok.sum(), 2, 2))
    cov[:, 0, 0] = xx[:, 0] - m1[:, 0] ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = xx[:, 1] - m1[:, 0] * m1[:, 1]
    cov[:, 1, 1] = xx[:, 2] - m1[:, 1] ** 2
    z = lo + step_mm * (np.nonzero(ok)[0] + 0.5)
    return z, m1, cov, cnt[ok]


def _sqrtm2(c):
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 1e-6, None))) @ v.T


def _moments_affine(seg_img, tmpl_seg_img, a, b):
    """Affine (template point -> native point) matching the cords' first and second moments.

    Closed-form counterpart of SCT's ``centermassrot`` step (De Leener et al. 2017):
    the cord centreline of each image is fitted by a straight line ``c(z)``
    (least squares over 1-mm bins), the average in-plane covariances ``S`` are matched
    with ``L = S_s^1/2 S_t^-1/2`` (so ``L S_t L^T = S_s``), and z follows the placement
    ``z_t = a z_s + b``:
    ``native_xy = c_s(z_s) + L (t_xy - c_t(z_t))``, ``z_s = (z_t - b) / a``.
    """
    zs, cs, covs, ns = _slice_moments(seg_img)
    zt, ct, covt, nt = _slice_moments(tmpl_seg_img)
    inner_s = slice(1, -1) if len(zs) > 4 else slice(None)
    inner_t = slice(1, -1) if len(zt) > 4 else slice(None)
    ps = np.polyfit(zs[inner_s], cs[inner_s], 1)  # (2, 2): slope, intercept per column
    pt = np.polyfit(zt[inner_t], ct[inner_t], 1)
    big_s = ns[inner_s] >= 0.5 * np.median(ns[inner_s])
    big_t = nt[inner_t] >= 0.5 * np.median(nt[inner_t])
    s_s = covs[inner_s][big_s].mean(axis=0)
    s_t = covt[inner_t][big_t].mean(axis=0)
    lin = _sqrtm2(s_s) @ np.linalg.inv(_sqrtm2(s_t))
    # native_xy = ps0*z_s + ps1 + L (t_xy - pt0*z_t - pt1), z_s = (z_t - b)/a
    m = np.eye(4)
    m[:2, :2] = lin
    m[:2, 2] = ps[0] / a - lin @ pt[0]
    m[:2, 3] = ps[1] - ps[0] * b / a - lin @ pt[1]
    m[2, 2] = 1.0 / a
    m[2, 3] = -b / a
    return m


def _smooth(arr, sigma_mm, zooms):
    from scipy.ndimage import gaussian_filter

    if sigma_mm <= 0:
        return arr.astype(np.float64)
    return gaussian_filter(arr.astype(np.float64), [sigma_mm / z for z in zooms])


class _quiet:
    """Silence dipy's INFO logging and warnings inside a registration call."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("dipy")
        self._level = self._logger.level
        self._logger.setLevel(logging.WARNING)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._warn.__exit__(*exc)
        self._logger.setLevel(self._level)
        return False


# ---------------------------------------------------------------- main steps
#: Template image matched by each kind of subject labels (``levels_kind``).
LEVEL_TEMPLATES = {
    "levels": "PAM50_levels.nii.gz",  # vertebral levels painted in the cord (1 = C1)
    "spinal_levels": "PAM50_spinal_levels.nii.gz",  # spinal (segmental) levels 1..30 = C1..S5
    "discs": "PAM50_label_disc.nii.gz",  # point labels of intervertebral discs (sct_label_vertebrae)
}


def register_to_template(anat_img, cord_seg_img, template: str = "PAM50", levels_img=None, *,
                         levels_kind: str = "levels", template_dir=None, z_offset=None, resolution=(0.5, 0.5, 1.0), margin_mm: float = 8.0,
                         smooth_mm: float = 1.0, affine_iterations=None, syn_iterations=(50, 30, 10),
                         syn_sigma_diff: float = 3.0, restrict_levels=CERVICAL_LEVELS) -> Registration:
    """Register a subject's anatomical image and cord segmentation to the PAM50 template.

    Mask-to-mask registration as ``sct_register_to_template`` with ``type=seg`` steps
    (De Leener et al. 2017): z placement (levels, CSA profile or offset), centre-of-mass
    alignment, moments affine (optionally refined with dipy's mutual information) and symmetric
    diffeomorphic normalisation (SyN, Avants et al. 2008; dipy, cross-correlation metric)
    of the smoothed masks, on a template-space grid cropped around the subject's coverage.
    The PAM50 cord mask (De Leener et al. 2018) is the target (no intensity template is
    needed).

    Parameters
    ----------
    anat_img : nibabel image or path
        Anatomical image (T2-weighted), native space; warped along for display.
    cord_seg_img : nibabel image or path
        Binary cord segmentation on the grid of *anat_img*.
    template : str
        Only ``"PAM50"``.
    levels_img : nibabel image or path, optional
        Labels for the z placement, matched label by label (centroids) with the PAM50 image
        of *levels_kind*.
    levels_kind : {"levels", "spinal_levels", "discs"}
        ``"levels"``: vertebral levels in the cord (values as ``PAM50_levels``, 1 = C1);
        ``"spinal_levels"``: spinal segments (``PAM50_spinal_levels``); ``"discs"``: point
        labels of the intervertebral discs as written by SCT's ``sct_label_vertebrae``
        (values as ``PAM50_label_disc``; e.g. the ds004386 ``disc_labels_edited`` derivatives).
    template_dir : path-like, optional
        PAM50 folder (default: :func:`spineprint_utils.datasets.fetch_pam50`).
    z_offset : float or "header", optional
        Explicit placement ``z_template = z_native + z_offset`` (mm); ``"header"`` trusts the
        native world coordinates (already near template space, e.g. simulated data).
    resolution : float or 3 floats
        Working grid voxel size (mm).
    margin_mm : float
        In-plane margin around the cord on the working grid.
    smooth_mm : float
        Gaussian smoothing (sigma, mm) of the masks before the metrics.
    affine_iterations : sequence of int, optional
        If given, the closed-form moments affine is refined by dipy's mutual-information
        affine registration (translation, rigid, affine) with these iterations per level
        (slower; it did not improve the cord Dice on the SCT test data).
    syn_iterations : sequence of int
        SyN iterations per resolution level (coarse to fine).
    syn_sigma_diff : float
        Gaussian regularisation of the SyN update field (voxels).
    restrict_levels : (int, int)
        Vertebral levels searched by the CSA-profile placement.

    Returns
    -------
    Registration

    Raises
    ------
    SpineprintError
        Empty or mismatched segmentation, unknown template, levels without overlap.
    """
    import time

    import nibabel as nib
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    t0 = time.perf_counter()
    timings = {}
    notes: list[str] = []
    anat = _as_img(anat_img, "anat_img")
    seg_img = _as_img(cord_seg_img, "cord_seg_img")
    if anat.shape[:3] != seg_img.shape[:3] or not np.allclose(anat.affine, seg_img.affine, atol=1e-3):
        raise SpineprintError(f"cord_seg_img grid {seg_img.shape[:3]} differs from anat_img grid {anat.shape[:3]}")
    seg = _data(seg_img) > 0.5
    if seg.sum() < 20:
        raise SpineprintError(f"cord_seg_img: segmentation has only {int(seg.sum())} voxels")
    if isinstance(z_offset, str) and z_offset != "header":
        raise SpineprintError(f"z_offset must be a number or 'header', got {z_offset!r}")
    if levels_kind not in LEVEL_TEMPLATES:
        raise SpineprintError(f"levels_kind must be one of {sorted(LEVEL_TEMPLATES)}, got {levels_kind!r}")
    root = _template(template, template_dir)
    t_cord_img = _load_template_img(root, "PAM50_cord.nii.gz")

    # 1. z placement ---------------------------------------------------------------
    z_s, csa_s, _ = cord_profile(seg_img)
    if levels_img is not None:
        name = LEVEL_TEMPLATES[levels_kind]
        tpl_cent = _template_level_centroids(str(root / "template" / name) if (root / "template").is_dir()
                                             else str(root / name))
        a, b = _z_from_levels(_as_img(levels_img, "levels_img"), tpl_cent, notes)
        z_method = "levels"
    elif isinstance(z_offset, str):
        if z_offset != "header":
            raise SpineprintError(f"z_offset must be a number or 'header', got {z_offset!r}")
        a, b, z_method = 1.0, 0.0, "header"
    elif z_offset is not None:
        a, b, z_method = 1.0, float(z_offset), "offset"
    else:
        z_t, csa_t, zmin, zmax = _template_profile(str(root), int(restrict_levels[0]), int(restrict_levels[1]))
        # the vertebral intensity profile in front of the cord matched to the PAM50 T2's
        # (spineprint_utils.levels.z_from_t2_profile); the CSA profile only without a T2 template
        from .levels import z_from_t2_profile

        prof = z_from_t2_profile(anat, seg_img, root, z_range=(zmin - 10.0, zmax + 10.0))
        if prof is not None and prof[2] < PROFILE_MIN_R:
            notes.append(f"T2 vertebral profile not used: correlation {prof[2]:.2f} < {PROFILE_MIN_R} (no vertebral "
                         "pattern in the image)")
            prof = None
        if prof is not None:
            a, b, r, r2, tpath = prof
            notes.append(f"z placement from the T2 vertebral profile vs {Path(tpath).name} (z_t = {a:.2f} z + "
                         f"{b:.1f} mm, r = {r:.2f}; best placement >= 8 mm away r = {r2:.2f})")
            z_method = "t2-profile"
        else:
            a, b, _ = _z_from_csa(z_s, csa_s, z_t, csa_t, zmin, zmax, notes)
            z_method = "csa-profile"
    timings["z_placement"] = time.perf_counter() - t0

    # 2. centre of mass + working grid --------------------------------------------
    zt_lo, zt_hi = a * z_s.min() + b, a * z_s.max() + b
    t_data = _data(t_cord_img) > 0.5
    t_zidx = (np.arange(t_data.shape[2]) * t_cord_img.affine[2, 2] + t_cord_img.affine[2, 3])
    in_cov = (t_zidx >= zt_lo) & (t_zidx <= zt_hi)
    if not t_data[:, :, in_cov].any():
        raise SpineprintError(f"the subject's placement ({zt_lo:.0f}..{zt_hi:.0f} mm) is outside the template cord")
    s_ijk = np.argwhere(seg)
    s_xyz = s_ijk @ seg_img.affine[:3, :3].T + seg_img.affine[:3, 3]
    t_seg_img = nib.Nifti1Image(t_data[:, :, in_cov].astype(np.uint8),
                                t_cord_img.affine @ _shift_k(np.nonzero(in_cov)[0][0]))
    init = _moments_affine(seg_img, t_seg_img, a, b)  # template point -> native point
    t_com = np.linalg.solve(init[:3, :3], s_xyz.mean(axis=0) - init[:3, 3])
    half = max(np.ptp(s_xyz[:, 0]), np.ptp(s_xyz[:, 1])) / 2 + margin_mm
    shape, ref_aff = _crop_grid(zt_lo, zt_hi, t_com[:2], half, resolution)
    reference = _grid_img(shape, ref_aff)
    zooms = np.abs(np.diag(ref_aff)[:3])

    static_mask = _data(apply_transforms(t_cord_img, reference, [], "linear"))
    static = _smooth(static_mask, smooth_mm, zooms)
    seg_f = nib.Nifti1Image(seg.astype(np.float32), seg_img.affine)
    moving_native = _smooth(seg.astype(np.float32), smooth_mm, seg_img.header.get_zooms()[:3])
    moving_native_img = nib.Nifti1Image(moving_native.astype(np.float32), seg_img.affine)

    # 3. affine (dipy, MI) on the reference grid: map reference -> native --------------
    t1 = time.perf_counter()
    moving_on_ref = _data(apply_transforms(moving_native_img, reference, [AffineTransform(init)], "linear"))
    # dipy registers "moving" (already on the reference grid through init) to "static".
    affreg = AffineRegistration(metric=MutualInformationMetric(nbins=16, sampling_proportion=None),
                                **_pyramid(affine_iterations or [1]))
    current = np.eye(4)
    with _quiet():
        for tf in (TranslationTransform3D(), RigidTransform3D(), AffineTransform3D()) if affine_iterations else ():
            res = affreg.optimize(static, moving_on_ref, tf, None, ref_aff, ref_aff, starting_affine=current)
            current = res.affine
    A = init @ current  # template point -> native point
    moving_aff = _data(apply_transforms(moving_native_img, reference, [AffineTransform(A)], "linear"))
    seg_aff = _data(apply_transforms(seg_f, reference, [AffineTransform(A)], "linear")) > 0.5
    timings["affine"] = time.perf_counter() - t1

    # 4. SyN (dipy) ----------------------------------------------------------------
    t2 = time.perf_counter()
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, sigma_diff=syn_sigma_diff, radius=2),
                                             level_iters=list(syn_iterations))
    with _quiet():
        mapping = sdr.optimize(static, moving_aff, ref_aff, ref_aff)
    fwd = np.asarray(mapping.get_forward_field(), dtype=np.float32)
    bwd = np.asarray(mapping.get_backward_field(), dtype=np.float32)
    timings["syn"] = time.perf_counter() - t2

    to_template = [DisplacementField(fwd, ref_aff), AffineTransform(A)]
    to_native = [AffineTransform(np.linalg.inv(A)), DisplacementField(bwd, ref_aff)]
    warped_seg = apply_transforms(seg_f, reference, to_template, "linear")
    warped_seg = nib.Nifti1Image((_data(warped_seg) > 0.5).astype(np.uint8), ref_aff)
    t_cord_ref = nib.Nifti1Image((static_mask > 0.5).astype(np.uint8), ref_aff)
    # Dice over template slices covered by the subject (inner slices: the ends are cut by the FOV)
    cov = _data(warped_seg).any((0, 1))
    cov_idx = np.nonzero(cov)[0]
    sl = slice(cov_idx[0] + 1, cov_idx[-1]) if len(cov_idx) > 2 else slice(None)
    d_syn = dice(_data(warped_seg)[:, :, sl], _data(t_cord_ref)[:, :, sl])
    d_aff = dice(seg_aff[:, :, sl], _data(t_cord_ref)[:, :, sl])
    timings["total"] = time.perf_counter() - t0
    anat3 = anat if anat.ndim == 3 else nib.Nifti1Image(_data(anat).mean(axis=3), anat.affine)
    warped_anat = apply_transforms(anat3, reference, to_template, "linear")
    return Registration(to_template=to_template, to_native=to_native, reference=reference, affine=A,
                        warped_seg=warped_seg, warped_anat=warped_anat, template_cord=t_cord_ref, dice=d_syn, dice_affine=d_aff,
                        z_method=z_method, z_scale=a, z_offset=b, template_dir=root, notes=notes, timings=timings)


def register_func_to_anat(mean_func_img, anat_img, cord_mask=None, *, dilate_mm: float = 10.0,
                          iterations=(200, 100), nbins: int = 32) -> FuncToAnat:
    """Rigid registration of the mean functional image to the anatomical image.

    Mutual information (Mattes et al. 2003 as implemented in dipy), centre-of-mass
    initialisation, translation then rigid; with *cord_mask* (on the anat grid) the
    metric is restricted to the mask dilated by *dilate_mm* (as SCT restricts the
    functional registration to the cord neighbourhood).

    Parameters
    ----------
    mean_func_img : nibabel image or path, 3D (4D: averaged)
    anat_img : nibabel image or path, 3D
    cord_mask : nibabel image or path, optional
        Cord mask on the anat grid.
    dilate_mm : float
    iterations : sequence of int
    nbins : int
        Histogram bins of the mutual information.

    Returns
    -------
    FuncToAnat
    """
    import nibabel as nib
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric, transform_centers_of_mass
    from dipy.align.transforms import RigidTransform3D, TranslationTransform3D
    from scipy.ndimage import binary_dilation

    func = _as_img(mean_func_img, "mean_func_img")
    anat = _as_img(anat_img, "anat_img")
    fdata = _data(func, np.float64)
    if fdata.ndim == 4:
        fdata = fdata.mean(axis=3)
    adata = _data(anat, np.float64)
    if adata.ndim != 3 or fdata.ndim != 3:
        raise SpineprintError("register_func_to_anat: expected 3D anat and 3D/4D functional images")
    static_mask = None
    notes = []
    if cord_mask is not None:
        cm_img = _as_img(cord_mask, "cord_mask")
        if cm_img.shape[:3] != anat.shape[:3]:
            raise SpineprintError(f"cord_mask grid {cm_img.shape[:3]} differs from anat grid {anat.shape[:3]}")
        cm = _data(cm_img) > 0.5
        zooms = np.asarray(anat.header.get_zooms()[:3], dtype=float)
        it = max(1, int(round(dilate_mm / zooms.min())))
        static_mask = binary_dilation(cm, iterations=it).astype(np.int32)
        notes.append(f"metric restricted to the cord mask dilated by {dilate_mm} mm")
    c_of_mass = transform_centers_of_mass(adata, anat.affine, fdata, func.affine)
    affreg = AffineRegistration(metric=MutualInformationMetric(nbins=nbins, sampling_proportion=None),
                                **_pyramid(iterations))
    current = c_of_mass.affine
    with _quiet():
        for tf in (TranslationTransform3D(), RigidTransform3D()):
            res = affreg.optimize(adata, fdata, tf, None, anat.affine, func.affine, starting_affine=current,
                                  static_mask=static_mask)
            current = res.affine
    to_anat = [AffineTransform(current)]
    to_func = [AffineTransform(np.linalg.inv(current))]
    fimg3 = nib.Nifti1Image(fdata.astype(np.float32), func.affine)
    warped = apply_transforms(fimg3, anat, to_anat, "linear")
    return FuncToAnat(matrix=current, to_anat=to_anat, to_func=to_func, warped=warped, notes=notes)


def atlas_to_native(labels_img, registration: Registration, reference, func_to_anat: FuncToAnat | None = None,
                    interpolation: str = "nearest"):
    """Bring a template-space image (atlas labels or probabilities) into native space.

    Parameters
    ----------
    labels_img : nibabel image or path
        In PAM50 space (any grid with the template's world coordinates).
    registration : Registration
        From :func:`register_to_template` (anat <-> template).
    reference : nibabel image or path
        Native grid (anatomical, or functional when *func_to_anat* is given).
    func_to_anat : FuncToAnat, optional
        From :func:`register_func_to_anat`; composes func -> anat -> template.
    interpolation : {"nearest", "linear"}
        Nearest for labels, linear for probabilistic maps.

    Returns
    -------
    nibabel.Nifti1Image on the *reference* grid.
    """
    chain = list(func_to_anat.to_func) if func_to_anat is not None else []
    chain += list(registration.to_native)
    return apply_transforms(labels_img, reference, chain, interpolation)


# ---------------------------------------------------------------- simulation
@dataclass(frozen=True)
class NativeTransform:
    """A planted native <-> template transform (simulation ground truth).

    Native point ``n`` maps to template point ``t = M (n + w(n))`` with ``w`` a smooth
    displacement field (mm) on the native grid.

    Attributes
    ----------
    matrix : (4, 4) ndarray
        ``M``.
    field : (X, Y, Z, 3) ndarray
        ``w`` (mm).
    affine : (4, 4) ndarray
        Grid of ``w`` (voxel to world).
    inverse_field : (X, Y, Z, 3) ndarray
        ``v`` on the same grid with ``n = q + v(q)``, ``q = M^-1 t`` (fixed-point inverse).
    """

    matrix: np.ndarray
    field: np.ndarray
    affine: np.ndarray
    inverse_field: np.ndarray

    @property
    def to_native(self) -> list:
        """Transforms bringing template-space images to native space (simulate native data)."""
        return [DisplacementField(self.field, self.affine), AffineTransform(self.matrix)]

    @property
    def to_template(self) -> list:
        """Transforms bringing native images to template space (the true inverse)."""
        return [AffineTransform(np.linalg.inv(self.matrix)), DisplacementField(self.inverse_field, self.affine)]

    def save(self, path):
        """Write the ground truth as ``.npz`` (atomic)."""
        from ._io import atomic_save_npz

        return atomic_save_npz(path, matrix=self.matrix, field=self.field, affine=self.affine,
                               inverse_field=self.inverse_field)

    @classmethod
    def load(cls, path):
        with np.load(path) as z:
            return cls(z["matrix"], z["field"], z["affine"], z["inverse_field"])


def _rotation(angles_rad):
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_native_transform(seed: int, shape, affine, *, rotation_deg: float = 4.0, translation_mm: float = 2.0,
                            scale: float = 0.05, warp_mm: float = 1.0, warp_wavelength_mm: float = 30.0,
                            center=None) -> NativeTransform:
    """A random affine + smooth warp taking native space away from PAM50 (for simulation).

    ``t = M (n + w(n))``: ``M`` rotates by up to *rotation_deg* about each axis (about
    *center*, default the grid centre), scales each axis by up to ``1 +/- scale`` and
    translates by up to *translation_mm*; ``w`` is a sum of random cosines with
    wavelengths >= *warp_wavelength_mm*, scaled to a maximum of *warp_mm* per component,
    smooth enough to be invertible (its Jacobian stays near 1). The inverse field is
    found by the fixed-point iteration ``v <- -w(q + v)`` (converges because
    ``|grad w| < 1``).

    Parameters
    ----------
    seed : int
    shape, affine
        Native grid on which ``w`` is sampled (e.g. the native image grid).
    rotation_deg, translation_mm, scale, warp_mm, warp_wavelength_mm : float
    center : 3 floats, optional

    Returns
    -------
    NativeTransform
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape[:3])
    affine = np.asarray(affine, dtype=np.float64)
    pts = _grid_points(shape, affine)
    if center is None:
        center = pts.mean(axis=0)
    center = np.asarray(center, dtype=float)
    rot = _rotation(np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3)))
    lin = rot @ np.diag(1 + rng.uniform(-scale, scale, 3))
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = center - lin @ center + rng.uniform(-translation_mm, translation_mm, 3)

    def warp_at(p):
        out = np.zeros_like(p)
        for comp in range(3):
            acc = np.zeros(len(p))
            for _ in range(3):
                k = rng_w.normal(size=3)
                k = k / np.linalg.norm(k) / (warp_wavelength_mm * rng_w.uniform(1.0, 2.0))
                acc += np.cos(2 * np.pi * (p @ k) + rng_w.uniform(0, 2 * np.pi)) * rng_w.uniform(0.5, 1.0)
            out[:, comp] = acc
        return out

    rng_w = np.random.default_rng(rng.integers(2**32))
    w = warp_at(pts)
    w *= warp_mm / max(np.abs(w).max(), 1e-12)
    field_arr = w.reshape(*shape, 3).astype(np.float64)
    # inverse: v(q) = -w(q + v(q))
    wf = DisplacementField(field_arr, affine)
    v = -w.copy()
    for _ in range(50):
        v_new = -(wf.map_points(pts + v) - (pts + v))
        done = np.abs(v_new - v).max() < 1e-5
        v = v_new
        if done:
            break
    inv_field = v.reshape(*shape, 3)
    return NativeTransform(matrix=m, field=field_arr, affine=affine, inverse_field=inv_field)

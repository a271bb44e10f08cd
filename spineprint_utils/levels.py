"""Vertebral levels of a T2w image: the user's labels as SCT users have them, and QC.

Accepted label images (in ``derivatives/<pipeline>/sub-*/**/anat/``, named after the T2w,
:func:`find_vertebral_labels`), all on the T2w grid:

- **point labels at vertebral body centres** (SCT's ``-l`` convention for
  ``sct_register_to_template``, e.g. ``sct_testing_data/t2/labels.nii.gz``: value 3 at the
  centre of C3, 5 at C5): ``<T2w>_labels.nii.gz``, ``<T2w>_label-body*.nii.gz``,
  ``<T2w>_labels-manual.nii.gz``;
- **disc labels** (SCT ``sct_label_vertebrae``/spine-generic: value n at the posterior tip of
  the disc below vertebra n-1, as ``PAM50_label_disc``): ``<T2w>_labels-disc*.nii.gz``,
  ``<T2w>_label-disc*.nii.gz``;
- **a labelled segmentation** (the cord coloured by vertebral level, SCT's
  ``<T2w>_seg_labeled.nii.gz``; values as ``PAM50_levels``, 1 = C1): ``<T2w>_seg_labeled.nii.gz``,
  ``<T2w>_label-vertebrae*.nii.gz``, ``<T2w>_levels.nii.gz``.

Point labels at body centres and labelled segmentations are matched with the centroids of
the same values in ``PAM50_levels`` (the body centre lies mid-way between the discs that bound
the level), disc labels with ``PAM50_label_disc`` (:func:`spineprint_utils.registration.register_to_template`,
``levels_kind``). :func:`level_centres` measures where the PAM50 levels land in the T2w
(the test of a registration against the labels) and :func:`plot_levels_sagittal` draws them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._io import SpineprintError
from .plotting import MIN_FONT_PT, styled

__all__ = [
    "find_vertebral_labels",
    "is_point_labels",
    "label_kind",
    "label_points",
    "level_centres",
    "levels_on_anat",
    "plot_levels_sagittal",
    "vertebral_profile",
    "z_from_t2_profile",
]

_PATTERNS = (
    ("discs", ("_labels-disc*.nii*", "_label-disc*.nii*")),
    ("levels", ("_labels.nii*", "_label-body*.nii*", "_labels-manual.nii*", "_seg_labeled.nii*",
                "_label-vertebrae*.nii*", "_levels.nii*")),
)


def find_vertebral_labels(t2w, root, sub):
    """The vertebral label image of a T2w in ``<root>/derivatives/*/sub-<sub>/**/anat/``, or None.

    Returns
    -------
    (path, kind) with kind ``"discs"`` or ``"levels"`` (body-centre points or a labelled
    segmentation: both matched with ``PAM50_levels``), or ``(None, None)``.
    """
    from .layout import derivative_files  # the dataset index (hidden files, .bidsignore skipped)

    stem = Path(t2w).name.split(".nii")[0]
    for kind, pats in _PATTERNS:
        for pat in pats:
            hits = derivative_files(root, sub, (f"{stem}{pat}",), datatype="anat")
            if hits:
                return hits[0], label_kind(hits[0], kind)
    return None, None


def label_kind(path, default: str = "levels") -> str:
    """``"discs"`` when the file name says disc, else *default*; checks the image has labels."""
    import nibabel as nib

    from ._io import verify_nifti

    verify_nifti(path)  # gzip CRC: a damaged file is an error, never wrong labels
    img = nib.load(str(path))
    v = np.rint(np.asarray(img.dataobj, dtype=np.float32))
    vals = np.unique(v[v > 0])
    if len(vals) == 0:
        raise SpineprintError(f"{path}: vertebral label image has no positive label")
    if np.any(vals > 30):
        raise SpineprintError(f"{path}: vertebral label values {vals.tolist()} are not levels (1 = C1 ... 30)")
    return "discs" if "disc" in Path(path).name else default


def is_point_labels(path, max_voxels: int = 27) -> bool:
    """True when every label value of the image has at most *max_voxels* voxels (point labels)."""
    import nibabel as nib

    v = np.rint(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)).astype(int)
    counts = np.bincount(v[v > 0].ravel())
    return bool(counts.size) and int(counts.max()) <= max_voxels


def levels_on_anat(registration, anat_img, template_dir=None):
    """PAM50 vertebral levels (``PAM50_levels``, 1 = C1) brought onto the T2w grid
    (nearest neighbour through ``registration.to_native``); an int16 array."""
    from . import registration as reg

    root = Path(template_dir) if template_dir is not None else Path(registration.template_dir)
    lev = reg._load_template_img(root, "PAM50_levels.nii.gz")
    out = reg.apply_transforms(lev, anat_img, list(registration.to_native), "nearest")
    return np.asarray(out.dataobj).astype(np.int16)


def level_centres(levels, affine, axis_si=None) -> dict:
    """Superior-inferior world coordinate (mm) of the centroid of each level in *levels*.

    Parameters
    ----------
    levels : ndarray (X, Y, Z) int
    affine : (4, 4)
    axis_si : ignored (world z is the superior axis)

    Returns
    -------
    dict level -> z (mm)
    """
    lev = np.asarray(levels)
    out = {}
    for v in np.unique(lev[lev > 0]):
        ijk = np.argwhere(lev == v)
        out[int(v)] = float((ijk @ np.asarray(affine)[2, :3] + affine[2, 3]).mean())
    return out


def label_points(labels_img) -> dict:
    """World z (mm) of each label value of a point-label image (centroid of its voxels)."""
    from .registration import _level_centroids

    return {k: float(c[2]) for k, c in _level_centroids(labels_img).items()}


@styled
def plot_levels_sagittal(anat_img, levels, labels_img=None, *, title: str = "", path=None):
    """QC figure: mid-sagittal slice of the T2w (through the cord) with the PAM50 vertebral
    levels brought to it (colours, level names) and the user's labels (red crosses).

    Parameters
    ----------
    anat_img : nibabel image
    levels : ndarray int on the anat grid (:func:`levels_on_anat`)
    labels_img : nibabel image, optional
    title : str
    path : path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import nibabel as nib
    from matplotlib.figure import Figure

    from .motion import _save_fig

    img = nib.as_closest_canonical(anat_img)  # RAS: axis 0 = left-right, 2 = superior
    data = np.asarray(img.dataobj, dtype=np.float32)
    # bring the levels to the canonical orientation with the same reorientation
    lev_img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(levels, np.int16), anat_img.affine))
    lev = np.asarray(lev_img.dataobj)
    x = int(round(np.argwhere(lev > 0)[:, 0].mean())) if (lev > 0).any() else data.shape[0] // 2
    fig = Figure(figsize=(3.6, 4.6), layout="constrained")
    ax = fig.subplots()
    zooms = img.header.get_zooms()[:3]
    ext = (0, data.shape[1] * zooms[1], 0, data.shape[2] * zooms[2])
    ax.imshow(data[x].T, origin="lower", cmap="gray", extent=ext)
    lv = np.ma.masked_equal(lev[x].T, 0)
    ax.imshow(lv % 2 + 1, origin="lower", cmap="Set1", alpha=0.35, extent=ext,
              interpolation="nearest", vmin=0, vmax=8)
    names = {i: f"C{i}" for i in range(1, 8)} | {i: f"T{i - 7}" for i in range(8, 20)}
    for v in np.unique(lev[x][lev[x] > 0]):
        jk = np.argwhere(lev[x] == v)
        ax.text(jk[:, 0].mean() * zooms[1], jk[:, 1].mean() * zooms[2], names.get(int(v), str(v)),
                color="yellow", fontsize=MIN_FONT_PT, ha="center", va="center")
    if labels_img is not None:
        lab = np.asarray(nib.as_closest_canonical(labels_img).dataobj)
        for i, j, k in np.argwhere(lab > 0):
            ax.plot(j * zooms[1], k * zooms[2], "r+", ms=9)
            ax.text(j * zooms[1] + 2, k * zooms[2], f"label {int(lab[i, j, k])}", color="r", fontsize=MIN_FONT_PT)
    ax.set_xlabel("posterior -> anterior (mm)")
    ax.set_ylabel("inferior -> superior (mm)")
    ax.set_title(title or "PAM50 vertebral levels on the T2w")
    if path is not None:
        _save_fig(fig, path)
    return fig


# ---------------------------------------------------------------- levels from the T2w image itself
#: anterior distances (mm) from the cord centre sampled for the vertebral profile: anterior CSF,
#: then the vertebral bodies and discs (cervical canal AP diameter ~ 13-16 mm; Fradet 2014)
PROFILE_D_MM = np.arange(4.0, 26.0, 1.0)


def _t2_template(template_root):
    """(T2 image, its cord, its levels, z offset to PAM50 world z) or None.

    The full ``PAM50_t2.nii.gz`` in the PAM50 folder when present (offset 0), else the SCT
    testing data's ``PAM50_small_t2`` (1 x 1 x 2 mm, its own world origin: the offset is the
    median difference of the vertebral level centroids with ``PAM50_levels``)."""
    import os

    import nibabel as nib

    from . import registration as reg

    root = Path(template_root)
    full = root / "template" / "PAM50_t2.nii.gz" if (root / "template").is_dir() else root / "PAM50_t2.nii.gz"
    if full.is_file():
        return (nib.load(str(full)), reg._load_template_img(root, "PAM50_cord.nii.gz"),
                reg._load_template_img(root, "PAM50_levels.nii.gz"), 0.0, str(full))
    base = os.environ.get("SPINEPRINT_DATA_DIR")
    small = Path(base) / "sct_testing_data" / "template" if base else None
    if small is None or not (small / "PAM50_small_t2.nii.gz").is_file():
        return None
    t2 = nib.load(str(small / "PAM50_small_t2.nii.gz"))
    cord = nib.load(str(small / "PAM50_small_cord.nii.gz"))
    lev = nib.load(str(small / "PAM50_small_levels.nii.gz"))
    full_c = reg._template_level_centroids(str(root / "template" / "PAM50_levels.nii.gz")
                                           if (root / "template").is_dir() else str(root / "PAM50_levels.nii.gz"))
    small_c = level_centres(np.asarray(lev.dataobj), lev.affine)
    common = sorted(set(full_c) & set(small_c))
    off = float(np.median([full_c[k][2] - small_c[k] for k in common]))
    return t2, cord, lev, off, str(small / "PAM50_small_t2.nii.gz")


def vertebral_profile(img, seg, d_mm=PROFILE_D_MM, half_width_mm: float = 2.0):
    """T2 intensity in front of the cord along its centerline.

    For each 1 mm bin along world z with cord in *seg*: the centre of the cord (centerline
    smoothed with a 3 mm Gaussian), then the image sampled (trilinear) at ``d`` mm anterior
    (world +y) of it for each ``d`` in *d_mm*, averaged over ``+/- half_width_mm`` left-right:
    the vertebral bodies (dark on T2) and intervertebral discs (bright) alternate along z
    (the profile SCT's ``sct_label_vertebrae`` matched to the template's before its learned
    models; Ullmann et al. 2014, PLoS One 9:e93104).

    Returns
    -------
    z : ndarray (n,) mm
    profile : ndarray (n, len(d_mm))
    """
    from scipy import ndimage

    from .registration import cord_profile

    z, _, cen = cord_profile(seg)
    ok = np.isfinite(cen).all(axis=1)
    z, cen = z[ok], cen[ok].copy()
    for k in range(2):
        cen[:, k] = ndimage.gaussian_filter1d(cen[:, k], 3.0, mode="nearest")
    data = np.asarray(img.dataobj, dtype=np.float32)
    inv = np.linalg.inv(img.affine)
    d = np.asarray(d_mm, float)
    prof = np.zeros((len(z), len(d)))
    dxs = np.arange(-half_width_mm, half_width_mm + 1e-9, 1.0)
    for dx in dxs:
        pts = np.stack([np.repeat(cen[:, 0] + dx, len(d)), (cen[:, 1][:, None] + d[None, :]).ravel(),
                        np.repeat(z, len(d))], axis=1)
        vox = pts @ inv[:3, :3].T + inv[:3, 3]
        prof += ndimage.map_coordinates(data, vox.T, order=1, mode="nearest").reshape(len(z), len(d))
    return z, prof / len(dxs)


def _highpass_norm(p, sigma):
    from scipy import ndimage

    p = p - ndimage.gaussian_filter1d(p, sigma, axis=0, mode="nearest")
    p = p - p.mean(axis=0)
    return p / (p.std() + 1e-9)


#: z scalings searched by :func:`z_from_t2_profile` (subject neck length / PAM50's)
PROFILE_SCALES = tuple(np.round(np.arange(0.9, 1.121, 0.02), 2))


def z_from_t2_profile(anat_img, seg_img, template_root, z_range=None, scales=PROFILE_SCALES,
                      highpass_mm: float = 6.0):
    """Place a T2w on PAM50 along z from its vertebral intensity profile.

    The profile of :func:`vertebral_profile` (subject) is compared with the PAM50 T2
    template's (same function on the template and its cord) for every placement
    ``z_template = a z + b`` (``a`` in *scales*, ``b`` in 1 mm steps over *z_range*); both are
    high-passed along z (minus a Gaussian of *highpass_mm*, keeping the ~16 mm disc/body
    period) and normalised; the placement with the largest mean product (normalised
    cross-correlation) wins.

    Returns
    -------
    (a, b, r, r_second, template_path) or None when no PAM50 T2 template is available.
    ``r_second`` is the best correlation at least 8 mm (half a level) away from the winner:
    a small margin means the level is ambiguous.
    """
    tpl = _t2_template(template_root)
    if tpl is None:
        return None
    t2, tcord, _, off, path = tpl
    zs, ps = vertebral_profile(anat_img, seg_img)
    zt, pt = vertebral_profile(t2, tcord)
    step_t = float(np.median(np.diff(zt))) if len(zt) > 1 else 1.0
    from scipy import ndimage

    A = _highpass_norm(ps, highpass_mm)
    T_hp = pt - ndimage.gaussian_filter1d(pt, highpass_mm / step_t, axis=0, mode="nearest")
    lo_t, hi_t = zt[0] + off, zt[-1] + off
    if z_range is not None:
        lo_t, hi_t = max(lo_t, z_range[0]), min(hi_t, z_range[1])
    best = []
    for a in scales:
        for b in np.arange(np.ceil(lo_t - a * zs[0]), np.floor(hi_t - a * zs[-1]) + 1, 1.0):
            fi = np.clip((a * zs + b - off - zt[0]) / step_t, 0, len(zt) - 1.000001)
            i0 = fi.astype(int)
            w = (fi - i0)[:, None]
            T = (1 - w) * T_hp[i0] + w * T_hp[np.minimum(i0 + 1, len(zt) - 1)]
            T = T - T.mean(axis=0)
            T = T / (T.std() + 1e-9)
            best.append((float((A * T).mean()), float(a), float(b), float(a * zs.mean() + b)))
    if not best:
        return None
    best.sort(reverse=True)
    r, a, b, zc = best[0]
    far = [x for x in best if abs(x[3] - zc) >= 8.0]
    return a, b, r, (far[0][0] if far else float("nan")), path

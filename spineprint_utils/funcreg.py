"""Functional -> anatomical alignment that lands on the cord.

Mutual information between a mean EPI with 5-17 mm slices and a 1 mm T2w is a poor guide
in the neck (few, thick slices; the cord is a small part of the field of view; different
distortions), and on the real SCT test run it moved the cord 15-22 mm away (issue 14). Here
the alignment is driven by the two cords themselves, as SCT's slice-wise cord-centred
registration of fMRI to anatomy (``sct_register_multimodal`` with ``type=seg``,
``algo=centermass``/``slicereg``: per-slice translation of the segmentations; De Leener et
al. 2017, NeuroImage 145:24; Cohen-Adad et al. 2009, "slice-by-slice" motion and
registration of spinal fMRI):

1. the run's cord on the mean EPI (:func:`spineprint_utils.cord.find_cord`, or the user's
   EPI segmentation) and the T2w cord segmentation sampled on the EPI grid through the
   scanner (header) coordinates, shifted along z by ``s``;
2. **in-plane, per slice**: the translation that moves the EPI cord's centroid onto the T2w
   cord's centroid in that slice (world mm);
3. **along z**: ``s`` is searched in ``[-z_search_mm, z_search_mm]`` (1 mm steps) for the
   largest mean per-slice Dice after step 2; among shifts within 0.01 of the best Dice the
   one closest to the header (0) is kept (the cord's cross-section changes slowly along z,
   so z is only weakly determined by the masks);
4. slices the T2w does not cover take their translation from a fallback target (the PAM50
   cord brought through T2w -> PAM50, when given) or, without one, from the neighbouring
   slices (linear interpolation);

giving a :class:`~spineprint_utils.registration.DisplacementField` on the EPI grid (constant
within each slice) that maps functional points to anatomical points. The QC number is the
**Dice of the EPI cord mask with the T2w cord brought to the EPI grid** through this transform,
over the slices the T2w covers (before: the same with the header alignment).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np

from ._io import SpineprintError
from .plotting import COLUMN_WIDTH_IN, styled

__all__ = ["CordAlignment", "align_func_to_anat_cord"]


@dataclass
class CordAlignment:
    """Result of :func:`align_func_to_anat_cord`.

    Attributes
    ----------
    shifts_mm : ndarray (Z, 3)
        World displacement (mm) of each EPI slice: functional point -> anatomical point.
    z_shift_mm : float
    slice_source : list of str
        Per slice: ``"t2w"``, ``"template"`` (fallback target) or ``"interpolated"``.
    to_func : list
        ``[DisplacementField]``: maps EPI-grid points to anatomical points; use with
        :func:`~spineprint_utils.registration.apply_transforms` to bring anatomical (or,
        followed by T2w -> PAM50, template) images onto the EPI grid.
    dice : float
        EPI cord vs T2w cord on the EPI grid through this alignment (slices the T2w covers).
    dice_header : float
        The same with the header (scanner-coordinate) alignment.
    dice_per_slice : ndarray (Z,)
        NaN where the T2w does not cover the slice.
    warped_cord : ndarray (X, Y, Z) bool
        T2w cord on the EPI grid through the alignment.
    notes : list of str
    """

    shifts_mm: np.ndarray
    z_shift_mm: float
    slice_source: list
    to_func: list
    dice: float
    dice_header: float
    dice_per_slice: np.ndarray
    warped_cord: np.ndarray
    notes: list = field(default_factory=list)


def _centroids(mask, affine):
    """World centroid (Z, 3) of each slice of a (X, Y, Z) mask; NaN where empty."""
    Z = mask.shape[2]
    out = np.full((Z, 3), np.nan)
    for k in range(Z):
        ij = np.argwhere(mask[:, :, k])
        if len(ij):
            ijk = np.column_stack([ij, np.full(len(ij), k)]).astype(float)
            out[k] = (ijk @ affine[:3, :3].T + affine[:3, 3]).mean(axis=0)
    return out


def _slice_dice(a, b):
    out = np.full(a.shape[2], np.nan)
    for k in range(a.shape[2]):
        s = a[:, :, k].sum() + b[:, :, k].sum()
        if b[:, :, k].any():
            out[k] = 2.0 * np.logical_and(a[:, :, k], b[:, :, k]).sum() / s
    return out


def _field(shifts, shape):
    f = np.zeros(tuple(shape[:3]) + (3,), np.float32)
    f[:] = np.asarray(shifts, np.float32)[None, None, :, :]
    return f


def align_func_to_anat_cord(epi_cord, epi_affine, anat_cord_img, *, fallback_target=None,
                            z_search_mm: float = 6.0, max_shift_mm: float = 20.0) -> CordAlignment:
    """Align a run's EPI cord mask with the T2w cord segmentation, slice by slice.

    Parameters
    ----------
    epi_cord : ndarray (X, Y, Z) bool
        The run's cord on the mean EPI.
    epi_affine : (4, 4) ndarray
    anat_cord_img : nibabel image or path
        T2w cord segmentation (any grid, world coordinates shared with the EPI header).
    fallback_target : ndarray (X, Y, Z) bool, optional
        Cord expected on the EPI grid under the header alignment for slices the T2w does not
        cover (e.g. the PAM50 cord through T2w -> PAM50).
    z_search_mm : float
        Half-range of the z shift search (0: header z).
    max_shift_mm : float
        In-plane shifts larger than this are an error (wrong subject/session or a cord not found).

    Returns
    -------
    CordAlignment
    """
    from .registration import (
        AffineTransform,
        DisplacementField,
        _as_img,
        apply_transforms,
    )

    epi_cord = np.asarray(epi_cord, bool)
    aff = np.asarray(epi_affine, dtype=np.float64)
    shape = epi_cord.shape
    if epi_cord.ndim != 3 or not epi_cord.any():
        raise SpineprintError("align_func_to_anat_cord: the EPI cord mask is empty")
    seg = _as_img(anat_cord_img, "anat_cord_img")
    seg = seg.__class__((np.asarray(seg.dataobj) > 0.5).astype(np.float32), seg.affine)
    grid = (shape, aff)
    c_e = _centroids(epi_cord, aff)
    notes = []

    def target(s):
        t = [AffineTransform(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, s], [0, 0, 0, 1.0]]))]
        return np.asarray(apply_transforms(seg, grid, t, "linear").dataobj) >= 0.5

    header = target(0.0)
    d_header = _slice_dice(epi_cord, header)
    best = None
    zs = np.arange(-z_search_mm, z_search_mm + 1e-9, 1.0) if z_search_mm > 0 else np.array([0.0])
    results = []
    for s in zs:
        tg = target(float(s))
        c_t = _centroids(tg, aff)
        u = c_t - c_e
        u[:, 2] = s
        ok = np.isfinite(u).all(axis=1)
        if not ok.any():
            results.append((s, -1.0, None, None))
            continue
        f = np.zeros((shape[2], 3))
        f[ok] = u[ok]
        warped = np.asarray(apply_transforms(seg, grid, [DisplacementField(_field(f, shape), aff)],
                                             "linear").dataobj) >= 0.5
        dps = _slice_dice(epi_cord, warped)
        dps[~ok] = np.nan
        results.append((float(s), float(np.nanmean(dps)) if np.isfinite(dps).any() else -1.0, u, ok))
    top = max(r[1] for r in results)
    if top < 0:
        raise SpineprintError("align_func_to_anat_cord: the T2w cord and the EPI cord share no slice under "
                              f"the header alignment (+/- {z_search_mm} mm); are they from the same session?")
    cands = [r for r in results if r[1] >= top - 0.01]
    best = min(cands, key=lambda r: abs(r[0]))
    s, _, u, ok = best
    if s != 0.0:
        notes.append(f"z shift {s:+.0f} mm (mean slice Dice {best[1]:.3f} vs {results[len(zs) // 2][1]:.3f} at 0)")
    source = ["t2w" if o else "" for o in ok]
    if fallback_target is not None:
        c_f = _centroids(np.asarray(fallback_target, bool), aff)
        for k in np.nonzero(~ok)[0]:
            if np.isfinite(c_f[k]).all() and np.isfinite(c_e[k]).all():
                u[k] = c_f[k] - c_e[k]
                u[k, 2] = s
                source[k] = "template"
    have = np.array([bool(x) for x in source])
    if not have.any():
        raise SpineprintError("align_func_to_anat_cord: no slice has both an EPI cord and a target cord")
    idx = np.arange(shape[2])
    for a in range(2):
        u[~have, a] = np.interp(idx[~have], idx[have], u[have, a])
    u[:, 2] = s
    for k in np.nonzero(~have)[0]:
        source[k] = "interpolated"
    big = np.hypot(u[:, 0], u[:, 1]) > max_shift_mm
    if big.any():
        raise SpineprintError(f"align_func_to_anat_cord: in-plane shifts above {max_shift_mm} mm in slice(s) "
                              f"{np.nonzero(big)[0].tolist()} ({np.round(np.hypot(u[:, 0], u[:, 1])[big], 1).tolist()} "
                              "mm): the EPI and T2w cords do not correspond")
    dfield = DisplacementField(_field(u, shape), aff)
    warped = np.asarray(apply_transforms(seg, grid, [dfield], "linear").dataobj) >= 0.5
    dps = _slice_dice(epi_cord, warped)
    covered = np.isfinite(dps)
    d_final = float(2.0 * (epi_cord[:, :, covered] & warped[:, :, covered]).sum()
                    / max(epi_cord[:, :, covered].sum() + warped[:, :, covered].sum(), 1))
    hc = np.isfinite(d_header)
    d_head = float(2.0 * (epi_cord[:, :, hc] & header[:, :, hc]).sum()
                   / max(epi_cord[:, :, hc].sum() + header[:, :, hc].sum(), 1)) if hc.any() else 0.0
    return CordAlignment(shifts_mm=u, z_shift_mm=float(s), slice_source=source, to_func=[dfield], dice=d_final,
                         dice_header=d_head, dice_per_slice=dps, warped_cord=warped, notes=notes)


@styled
def plot_func_anat_overlay(mean, epi_cord, warped_cord, labels=None, *, title: str = "", path=None,
                           max_slices: int = 8):
    """QC figure: each slice of the mean EPI (cropped around the cord) with the EPI cord (cyan),
    the T2w cord brought to the EPI grid (yellow, dashed) and the horn regions (colours).

    Parameters
    ----------
    mean : ndarray (X, Y, Z)
    epi_cord, warped_cord : ndarray (X, Y, Z) bool
    labels : ndarray (X, Y, Z) int, optional
    title : str
    path : path-like, optional
        Written with :func:`spineprint_utils.motion._save_fig` (deterministic PNG).
    max_slices : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    from .motion import _save_fig

    mean = np.asarray(mean, float)
    Z = mean.shape[2]
    ks = np.unique(np.linspace(0, Z - 1, min(Z, max_slices)).round().astype(int))
    both = np.asarray(epi_cord, bool) | np.asarray(warped_cord, bool)
    if both.any():
        ij = np.argwhere(both)[:, :2]
        c = ij.mean(axis=0)
    else:
        c = np.array(mean.shape[:2]) / 2
    h = 14
    x0, x1 = int(max(c[0] - h, 0)), int(min(c[0] + h, mean.shape[0]))
    y0, y1 = int(max(c[1] - h, 0)), int(min(c[1] + h, mean.shape[1]))
    ncols = min(4, len(ks))  # at most 4 slices per row: the figure fits the book's column
    nrows = -(-len(ks) // ncols)
    fig = Figure(figsize=(COLUMN_WIDTH_IN, 1.9 * nrows + 0.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes[len(ks):]:
        ax.set_visible(False)
    for ax, k in zip(axes, ks):
        sl = np.s_[x0:x1, y0:y1, k]
        ax.imshow(mean[sl].T, origin="lower", cmap="gray", interpolation="nearest")
        if labels is not None and np.asarray(labels)[sl].any():
            lab = np.ma.masked_equal(np.asarray(labels)[sl].T, 0)
            ax.imshow(lab, origin="lower", cmap="tab10", alpha=0.55, interpolation="nearest")
        for m, col, ls in ((epi_cord, "c", "-"), (warped_cord, "y", "--")):
            if np.asarray(m)[sl].any():
                ax.contour(np.asarray(m)[sl].T.astype(float), levels=[0.5], colors=col, linewidths=0.9,
                           linestyles=ls)
        ax.set_title(f"slice {k}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(textwrap.fill(
        title or "mean EPI: EPI cord (cyan), T2w cord on the EPI (yellow dashed), horn regions", 64))
    if path is not None:
        _save_fig(fig, path)
    return fig

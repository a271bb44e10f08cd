"""The spinal cord on the mean functional image (no anatomical image needed).

On T2*-weighted gradient-echo EPI the cerebrospinal fluid is the brightest tissue of the
spinal canal and the cord is a darker, roughly elliptical disc inside the bright CSF ring
(Stroman et al. 2014, NeuroImage 84:1070; the contrast SCT's PropSeg initialises on with a
circular Hough transform, De Leener, Kadoury & Cohen-Adad 2014, NeuroImage 98:528). :func:`find_cord` finds it in three steps:

1. **Candidate centres per slice** - a ring score on the slice normalised to its
   2nd-99.5th percentile range: the median over 16 directions of the brightest voxel 2.5-10 mm
   away (the CSF around a cervical cord of 6-9 mm antero-posterior and 10-14 mm left-right
   diameter; Fradet et al. 2014, Spine 39:E262), against the mean of a central 2.5 mm disc
   (:func:`_ring_scores`).
2. **Centerline** - the best path through the per-slice score maps under a continuity
   penalty (dynamic programming / Viterbi over slices: a localisation map traded against the
   rostro-caudal continuity of the cord, as SCT's OptiC, Gros et al. 2018, Med Image Anal
   44:215): the cord moves at most
   ``max_step_mm`` per slice (default: 0.35 mm per mm of slice spacing + 3 mm).
3. **Cord per slice** - rays cast from the centre every 10 degrees; along each ray the cord
   ends where the intensity leaves the cord band (above the mid-point between cord and CSF,
   or below the mid-point between cord and dark tissue, both estimated locally); the ray
   lengths are median-filtered around the circle and the star-shaped polygon filled. The
   CSF mask is the bright (above the cord/CSF mid-point) voxels within 4 mm of the cord.

A slice where no ring is found (score below ``min_score``, or an implausible cord area
outside 25-250 mm^2: cervical cord cross-sectional area about 60-90 mm^2, Fradet et al. 2014) is
reported in :attr:`CordResult.failed_slices`; :func:`find_cord` raises
:class:`~spineprint_utils._io.SpineprintError` when more than a third of the slices fail.

A user's own EPI cord segmentation is found by :func:`find_epi_cord_seg` (SCT
``<bold-or-mean>_seg.nii.gz`` or BIDS ``_label-SC_mask``/``_label-SC_dseg`` in
``derivatives/*/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ._io import SpineprintError, bids_entities

__all__ = ["CordResult", "csf_around", "dice", "epi_cord_masks", "find_cord", "find_epi_cord_seg",
           "load_reference_annotation"]

#: candidate-centre filter radii (mm)
RING_RADII_MM = (2.5, 2.5, 10.0)  # central disc radius, ray start, ray end
#: plausible cord cross-sectional area (mm^2) of one slice
AREA_RANGE_MM2 = (25.0, 250.0)


@dataclass
class CordResult:
    """Cord found on a mean EPI image.

    Attributes
    ----------
    cord, csf : ndarray (X, Y, Z) bool
    centerline : ndarray (Z, 2) float
        In-plane voxel coordinates (i, j) of the cord centre (centroid of the mask) per slice.
    score : ndarray (Z,)
        Ring score at the chosen centre (normalised intensity units; > ``min_score`` = found).
    area_mm2 : ndarray (Z,)
    failed_slices : list of int
        Slices where no cord was found (their mask is empty).
    method : str
    """

    cord: np.ndarray
    csf: np.ndarray
    centerline: np.ndarray
    score: np.ndarray
    area_mm2: np.ndarray
    failed_slices: list = field(default_factory=list)
    method: str = "ring score + Viterbi centerline + ray casting (spineprint_utils.cord)"


def dice(a, b) -> float:
    """Dice coefficient 2|A and B| / (|A| + |B|) (Dice 1945); 1.0 for two empty masks."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def _disc_kernel(r_lo, r_hi, vs):
    rx, ry = int(np.ceil(r_hi / vs[0])), int(np.ceil(r_hi / vs[1]))
    x = np.arange(-rx, rx + 1) * vs[0]
    y = np.arange(-ry, ry + 1) * vs[1]
    r = np.hypot(x[:, None], y[None, :])
    k = ((r >= r_lo) & (r <= r_hi)).astype(np.float64)
    return k / k.sum()


def _normalise(mean):
    lo = np.percentile(mean, 2, axis=(0, 1), keepdims=True)
    hi = np.percentile(mean, 99.5, axis=(0, 1), keepdims=True)
    return np.clip((mean - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.5)


def _ray_footprints(vs, r_lo, r_hi, n_dir=16):
    """One-sided line footprints (2D, odd-sized, centred) from *r_lo* to *r_hi* mm in *n_dir* directions."""
    R = int(np.ceil(r_hi / min(vs)))
    out = []
    for th in np.linspace(0, 2 * np.pi, n_dir, endpoint=False):
        fp = np.zeros((2 * R + 1, 2 * R + 1), bool)
        r = np.arange(r_lo, r_hi + 1e-9, 0.25 * min(vs))
        i = np.rint(R + np.cos(th) * r / vs[0]).astype(int)
        j = np.rint(R + np.sin(th) * r / vs[1]).astype(int)
        fp[i, j] = True
        out.append(fp)
    return out


def _ring_scores(norm, vs):
    """Ring score maps (X, Y, Z).

    For every voxel: the brightest intensity along each of 16 rays from 2.5 to 10 mm (the CSF
    ring around the cord: cervical cord semi-axes 3-7 mm, CSF 1-3 mm thick), the median of
    these 16 maxima (at least half of the directions meet bright CSF; the ring may be missing
    where the cord touches the canal), then ``min(ring - inner, inner)`` with ``inner`` the mean
    of a 2.5 mm central disc: the cord is darker than the CSF ring *and* brighter than the
    background (0 after normalisation), which rules out dark tissue beside the ring. Voxels
    whose disc is below 15 % of the slice's range (air, bone) or above 95 % (CSF, fat) get -1.
    """
    r_in, r_a, r_b = RING_RADII_MM
    inner = ndimage.correlate(norm, _disc_kernel(0.0, r_in, vs)[:, :, None], mode="nearest")
    fps = _ray_footprints(vs, r_a, r_b, n_dir=16)
    norm32 = np.asarray(norm, dtype=np.float32)
    cand = (inner >= 0.15) & (inner <= 0.95)
    maxima = np.empty((int(cand.sum()), len(fps)), np.float32)
    for k, fp in enumerate(fps):
        maxima[:, k] = ndimage.maximum_filter(norm32, footprint=fp[:, :, None], mode="constant", cval=0.0)[cand]
    ring = np.median(maxima, axis=1)
    # the cord is darker than the ring and brighter than the background (0 after normalisation)
    score = np.full(norm.shape, -1.0)
    score[cand] = np.minimum(ring - inner[cand], inner[cand])
    return score


def _viterbi(score, vs, dz, max_step_mm):
    """Best centre path through (X, Y, Z) score maps with |step| <= max_step_mm between slices.

    Dynamic programming over slices; the transition cost is quadratic in the in-plane step
    (mm), 0.005 score units per mm^2 (a 3 mm step between 5 mm slices costs 0.045, a tenth of a
    clear ring score), and steps beyond *max_step_mm* are forbidden.
    Returns (Z, 2) integer voxel coordinates."""
    X, Y, Z = score.shape
    # candidates: the 40 best local maxima of each slice (keeps the DP small and vectorised)
    cands = []
    for z in range(Z):
        s = score[:, :, z]
        peaks = (s == ndimage.maximum_filter(s, size=3)) & (s > -0.5)
        ij = np.argwhere(peaks)
        if len(ij) == 0:
            ij = np.array([[X // 2, Y // 2]])
        order = np.argsort(-s[ij[:, 0], ij[:, 1]])[:40]
        cands.append(ij[order])
    acc = score[cands[0][:, 0], cands[0][:, 1], 0].astype(float)
    back = []
    for z in range(1, Z):
        prev, cur = cands[z - 1], cands[z]
        d = (cur[:, None, :] - prev[None, :, :]) * np.asarray(vs, float)
        d2 = (d ** 2).sum(-1)
        cost = 0.005 * d2 / max(dz / 5.0, 1.0)
        cost[d2 > max_step_mm ** 2] = np.inf
        tot = acc[None, :] - cost
        b = np.argmax(tot, axis=1)
        acc = tot[np.arange(len(cur)), b] + score[cur[:, 0], cur[:, 1], z]
        if not np.isfinite(acc).any():  # no admissible step: restart the path at this slice
            acc = score[cur[:, 0], cur[:, 1], z].astype(float)
            b = np.full(len(cur), -1)
        back.append(b)
    path = np.zeros((Z, 2), int)
    k = int(np.argmax(acc))
    for z in range(Z - 1, -1, -1):
        path[z] = cands[z][k]
        if z > 0:
            kb = back[z - 1][k]
            k = int(kb) if kb >= 0 else int(np.argmax(score[cands[z - 1][:, 0], cands[z - 1][:, 1], z - 1]))
    return path


def _ray_mask(sl, centre, vs, n_rays=36, r_max_mm=11.0, step_mm=0.25):
    """Star-shaped cord mask around *centre* in a normalised slice; returns (mask, levels)."""
    X, Y = sl.shape
    ang = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    r = np.arange(0.0, r_max_mm + step_mm, step_mm)
    px = centre[0] + np.cos(ang)[:, None] * r[None, :] / vs[0]
    py = centre[1] + np.sin(ang)[:, None] * r[None, :] / vs[1]
    prof = ndimage.map_coordinates(sl, [px, py], order=1, mode="nearest")
    # local levels: cord = median within 2.5 mm of the centre, CSF = 90th percentile of the rays
    # between 3 and r_max, dark = 5th percentile of the same
    cord_lvl = float(np.median(prof[:, r <= 2.5]))
    outer = prof[:, r >= 3.0]
    csf_lvl = float(np.percentile(outer, 90))
    dark_lvl = float(np.percentile(outer, 5))
    hi = 0.5 * (cord_lvl + csf_lvl)
    lo = 0.5 * (cord_lvl + dark_lvl)
    outside = (prof > hi) | (prof < lo)
    outside[:, r < 1.0] = False
    outside[:, -1] = True
    radius = r[np.argmax(outside, axis=1)]
    # smooth around the circle: circular median over 5 rays (50 degrees)
    pad = np.concatenate([radius[-2:], radius, radius[:2]])
    radius = np.median(np.lib.stride_tricks.sliding_window_view(pad, 5), axis=1)
    # polygon fill: a voxel is inside if its distance to the centre is below the ray length at its angle
    gx, gy = np.meshgrid((np.arange(X) - centre[0]) * vs[0], (np.arange(Y) - centre[1]) * vs[1], indexing="ij")
    a = np.mod(np.arctan2(gy, gx), 2 * np.pi)
    rad = np.interp(a, np.concatenate([ang, [2 * np.pi]]), np.concatenate([radius, radius[:1]]))
    mask = np.hypot(gx, gy) <= rad
    return mask, (dark_lvl, cord_lvl, csf_lvl, hi)


def find_cord(mean_img, voxel_size=None, *, max_step_mm=None, min_score: float = 0.05,
              csf_margin_mm: float = 4.0) -> CordResult:
    """Find the spinal cord (and the CSF around it) on a mean T2*-weighted EPI image.

    Parameters
    ----------
    mean_img : ndarray (X, Y, Z) or nibabel image
        Temporal mean of the run, axial slices along the third axis.
    voxel_size : (dx, dy, dz) mm, optional
        Taken from the image header when *mean_img* is an image.
    max_step_mm : float, optional
        Largest in-plane move of the centerline between neighbouring slices
        (default ``3 + 0.35 * dz``: the cervical cord is inclined by up to ~20 degrees to the
        slice normal).
    min_score : float
        Smallest ring score (annulus minus disc, in units of the slice's 2-99.5 percentile
        range) accepted as a cord.
    csf_margin_mm : float
        Width of the band around the cord searched for bright CSF.

    Returns
    -------
    CordResult

    Raises
    ------
    SpineprintError
        When the cord is not found in more than a third of the slices.
    """
    if hasattr(mean_img, "affine"):
        if voxel_size is None:
            voxel_size = mean_img.header.get_zooms()[:3]
        mean_img = np.asarray(mean_img.dataobj, dtype=np.float64)
    mean = np.asarray(mean_img, dtype=np.float64)
    if mean.ndim != 3:
        raise SpineprintError(f"find_cord needs a 3D mean image, got shape {mean.shape}")
    vs = tuple(float(v) for v in (voxel_size if voxel_size is not None else (1.0, 1.0, 1.0)))
    if len(vs) == 2:
        vs = (*vs, 1.0)
    Z = mean.shape[2]
    norm = _normalise(mean)
    score = _ring_scores(norm, vs[:2])
    step = max_step_mm if max_step_mm is not None else 3.0 + 0.35 * vs[2]
    path = _viterbi(score, vs[:2], vs[2], step)
    cord = np.zeros(mean.shape, bool)
    csf = np.zeros(mean.shape, bool)
    centre = np.full((Z, 2), np.nan)
    sc = score[path[:, 0], path[:, 1], np.arange(Z)]
    area = np.zeros(Z)
    failed = []
    px_area = vs[0] * vs[1]
    for z in range(Z):
        if sc[z] < min_score:
            failed.append(z)
            continue
        c = path[z].astype(float)
        m, lv = _ray_mask(norm[:, :, z], c, vs[:2])
        # one refinement: recentre on the mask's centroid
        if m.any():
            c2 = np.array(ndimage.center_of_mass(m))
            m, lv = _ray_mask(norm[:, :, z], c2, vs[:2])
        m = ndimage.binary_opening(m, iterations=1) if m.sum() > 9 else m
        lab, n = ndimage.label(m)
        if n > 1:
            m = lab == (1 + int(np.argmax(ndimage.sum(m, lab, range(1, n + 1)))))
        area[z] = m.sum() * px_area
        if not (AREA_RANGE_MM2[0] <= area[z] <= AREA_RANGE_MM2[1]):
            failed.append(z)
            continue
        cord[:, :, z] = m
        centre[z] = ndimage.center_of_mass(m)
        it = max(1, int(round(csf_margin_mm / min(vs[:2]))))
        band = ndimage.binary_dilation(m, iterations=it) & ~m
        csf[:, :, z] = band & (norm[:, :, z] > lv[3])
    if len(failed) > Z / 3:
        raise SpineprintError(f"spinal cord not found on the mean EPI in {len(failed)} of {Z} slices "
                              f"({failed}): no dark cord inside a bright CSF ring (ring score < {min_score} or "
                              f"cord area outside {AREA_RANGE_MM2[0]:g}-{AREA_RANGE_MM2[1]:g} mm^2); give an EPI "
                              "cord segmentation (derivatives/<pipeline>/.../<run>_label-SC_mask.nii.gz)")
    return CordResult(cord=cord, csf=csf, centerline=centre, score=sc, area_mm2=area, failed_slices=sorted(failed))


def find_epi_cord_seg(bold_path):
    """A user-provided cord segmentation of a BOLD run in ``derivatives/*/``, or None.

    Accepted names (first match wins), for a run ``<prefix>_bold.nii.gz``, anywhere under
    ``<bids>/derivatives/<pipeline>/sub-<s>/`` (not ``derivatives/spineprint``):
    BIDS ``<prefix>_label-SC_mask.nii.gz`` / ``<prefix>_label-SC_dseg.nii.gz`` /
    ``<prefix>_desc-*_label-SC_mask.nii.gz`` and the Spinal Cord Toolbox's
    ``sct_deepseg``/``sct_propseg`` output names ``<prefix>_bold_seg.nii.gz``,
    ``<prefix>_bold_mean_seg.nii.gz``, ``<prefix>_mean_seg.nii.gz``.
    """
    bold_path = Path(bold_path)
    name = bold_path.name
    if not name.endswith("_bold.nii.gz") and not name.endswith("_bold.nii"):
        return None
    prefix = name.split("_bold.nii")[0]
    from .layout import bids_root, derivative_files  # the dataset index (hidden files, .bidsignore skipped)

    root = bids_root(bold_path) or bold_path.parent.parent.parent
    sub = bids_entities(prefix).get("sub")
    patterns = [f"{prefix}_label-SC_mask.nii*", f"{prefix}_label-SC_dseg.nii*", f"{prefix}_desc-*_label-SC_mask.nii*",
                f"{prefix}_space-bold_label-SC_mask.nii*", f"{prefix}_bold_seg.nii*", f"{prefix}_bold_mean_seg.nii*",
                f"{prefix}_mean_seg.nii*", f"{prefix}_bold_moco_mean_seg.nii*"]
    hits = derivative_files(root, sub, patterns)
    return hits[0] if hits else None


def load_reference_annotation(path, shape) -> np.ndarray:
    """A text file of ``i j k`` voxel indices (``#`` comments) as a boolean mask of *shape*."""
    ijk = np.loadtxt(path, dtype=int, comments="#", ndmin=2)
    m = np.zeros(shape, bool)
    m[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
    return m


def csf_around(mean_img, cord, voxel_size, margin_mm: float = 4.0) -> np.ndarray:
    """CSF around a given cord mask: voxels within *margin_mm* of the cord (in-plane), outside
    it, brighter than the mid-point between the cord's median and the band's 90th percentile
    (CSF is the brightest tissue of the spinal canal on T2*-weighted EPI)."""
    mean = np.asarray(mean_img, dtype=np.float64)
    cord = np.asarray(cord, bool)
    csf = np.zeros(cord.shape, bool)
    it = max(1, int(round(margin_mm / min(float(voxel_size[0]), float(voxel_size[1])))))
    st = np.zeros((3, 3, 3), bool)
    st[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    band = ndimage.binary_dilation(cord, structure=st, iterations=it) & ~cord
    for z in range(cord.shape[2]):
        c, b = cord[:, :, z], band[:, :, z]
        if c.any() and b.any():
            thr = 0.5 * (np.median(mean[:, :, z][c]) + np.percentile(mean[:, :, z][b], 90))
            csf[:, :, z] = b & (mean[:, :, z] > thr)
    return csf


def epi_cord_masks(bold_path, img, mean_img, *, fallback: bool = False):
    """Cord and CSF masks of a run without anatomy: the user's EPI cord segmentation
    (:func:`find_epi_cord_seg`), else the cord found on the mean image (:func:`find_cord`).

    When the cord is not found, raise - or, with ``fallback=True`` (``anatomy="disk"`` in
    :func:`spineprint_utils.preprocess.preprocess_run`), return the 10 mm disc of
    :func:`spineprint_utils.motion.auto_cord_mask`, whose source string says it is a guess.

    Returns
    -------
    cord, csf : ndarray (X, Y, Z) bool
    source : str
        ``"given EPI segmentation <file>"``, ``"mean image (cord found on the EPI ...)"`` or
        ``"mean image (10 mm disc GUESS ...)"``.
    """
    import nibabel as nib

    from . import motion

    vs = tuple(float(v) for v in img.header.get_zooms()[:3])
    mean = np.asarray(mean_img, dtype=np.float64)
    seg = find_epi_cord_seg(bold_path)
    if seg is not None:
        from ._io import verify_nifti

        verify_nifti(seg)  # gzip CRC: a damaged file is an error, never wrong values
        simg = nib.load(seg)
        m = np.asarray(simg.dataobj)
        if m.ndim == 4 and m.shape[3] == 1:
            m = m[..., 0]
        if m.shape != mean.shape:
            raise SpineprintError(f"{seg}: EPI cord segmentation shape {m.shape} does not match the run {mean.shape}")
        if not np.allclose(simg.affine, img.affine, atol=1e-3):
            raise SpineprintError(f"{seg}: EPI cord segmentation affine differs from the run's; resample it to the run")
        cord = m > 0.5
        if not cord.any():
            raise SpineprintError(f"{seg}: EPI cord segmentation is empty")
        return cord, csf_around(mean, cord, vs), f"given EPI segmentation {seg.name}"
    try:
        res = find_cord(mean, vs)
    except SpineprintError as exc:
        if not fallback:
            raise SpineprintError(f"{bold_path}: {exc}") from None
        disk = motion.auto_cord_mask(mean, vs[:2])
        csf = disk & (mean >= np.percentile(mean[disk], 75))
        return disk, csf, ("mean image (10 mm disc GUESS, not the cord: anatomy='disk' fallback after: "
                           f"{exc})")
    src = "mean image (cord found on the EPI: spineprint_utils.cord.find_cord"
    if res.failed_slices:
        src += f"; not found in slice(s) {res.failed_slices}, empty there"
    return res.cord, res.csf, src + ")"


#: smallest fraction of the region voxels of a run that must lie in its cord mask before its
#: time series are extracted (the horn regions are grey matter: all inside the cord when the
#: anatomy holds; measured 100 % on the real SCT run and the simulated studies, 0 % before issue 14)
REGIONS_IN_CORD_MIN = 0.5


def regions_in_cord(labels, cord) -> float:
    """Fraction of the labelled (> 0) voxels of *labels* that lie in *cord* (NaN without labels)."""
    lab = np.asarray(labels) > 0
    if lab.shape != np.asarray(cord).shape:
        raise SpineprintError(f"regions_in_cord: labels {lab.shape} and cord mask {np.asarray(cord).shape} differ")
    return float((lab & np.asarray(cord, bool)).sum() / lab.sum()) if lab.any() else float("nan")


def check_regions_in_cord(runs, minimum: float = REGIONS_IN_CORD_MIN):
    """Refuse runs whose regions are not in their cord.

    Parameters
    ----------
    runs : iterable of (name, labels array, cord mask array or None)
        Runs without a cord mask (None) are not checked.
    minimum : float

    Returns
    -------
    dict name -> fraction (checked runs)

    Raises
    ------
    SpineprintError
        Naming every run with less than *minimum* of its region voxels in its cord mask.
    """
    fracs, bad = {}, []
    for name, labels, cord_mask in runs:
        if cord_mask is None:
            continue
        f = regions_in_cord(labels, cord_mask)
        fracs[name] = f
        if not f >= minimum:
            bad.append(f"{name} ({100 * f:.0f} %)")
    if bad:
        raise SpineprintError(f"regions outside the cord: less than {100 * minimum:.0f} % of the region voxels lie in "
                              f"the run's cord mask (desc-cord_mask) for {', '.join(bad)}; the regions do not match "
                              "the anatomy (unregistered native-space run? wrong registration?): register the run "
                              "(anat/ T2w + cord segmentation) or give a label image on its grid")
    return fracs

"""Region time series and functional connectivity (FC) of spinal cord fMRI runs.

Chapter 3 of the book. Preprocessed runs in PAM50 space are reduced to the mean time
series of gray-matter horn x spinal segment regions (:mod:`spineprint_utils.atlas`),
then to FC matrices:

- ``"correlation"`` (default): Pearson correlation of the region time series, as in
  the spinal cord resting-state literature (Barry et al. 2014; Kinany et al. 2020;
  Kowalczyk et al. 2024);
- ``"partial correlation"``: ``-P_ij / sqrt(P_ii P_jj)`` with ``P`` the inverse of the
  empirical covariance (e.g. Smith et al. 2011, NeuroImage 54:875);
- ``"tangent"``: the tangent-space projection of each covariance around the group
  mean (Varoquaux et al. 2010, MICCAI; nilearn ``ConnectivityMeasure``), which needs
  a group of runs.

The Fisher z transform ``z = arctanh(r)`` (Fisher 1915) is optional. For each run the
full-run FC and the FC of the first and of the second half of its volumes are
computed (the within-session test-retest design of the spine-print study), saved as
TSV derivatives per run and as one compact ``.npz`` array file per dataset.

References
----------
Barry RL, Smith SA, Dula AN, Gore JC (2014). Resting state functional connectivity in
the human spinal cord. eLife 3:e02812. doi:10.7554/eLife.02812

Kinany N, Pirondini E, Micera S, Van De Ville D (2020). Dynamic functional
connectivity of resting-state spinal cord fMRI reveals fine-grained intrinsic
architecture. Neuron 108:424-435. doi:10.1016/j.neuron.2020.07.024

Kowalczyk OS, Medina S, Tsivaka D, et al. (2024). Spinal fMRI demonstrates segmental
organisation of functionally connected networks in the cervical spinal cord: a
test-retest reliability study. Human Brain Mapping 45:e26600. doi:10.1002/hbm.26600

Smith SM, Miller KL, Salimi-Khorshidi G, et al. (2011). Network modelling methods for
FMRI. NeuroImage 54:875-891. doi:10.1016/j.neuroimage.2010.08.063

Fisher RA (1915). Frequency distribution of the values of the correlation coefficient
in samples from an indefinitely large population. Biometrika 10:507-521.

Varoquaux G, Baronnet F, Kleinschmidt A, Fillard P, Thirion B (2010). Detection of
brain functional-connectivity difference in post-stroke patients using group-level
covariance modeling. MICCAI 2010, LNCS 6361:200-208.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import atlas as _atlas
from . import derivatives as _derivatives
from . import layout as _layout
from ._io import (
    SpineprintError,
    atomic_save_nifti,
    atomic_save_npz,
    atomic_write_json,
    atomic_write_text,
    check_label,
    load_nifti,
    verify_nifti,
)
from ._outputs import guarded_output
from .fingerprint import split_half  # first/second half of a run: the within-session design

__all__ = [
    "KINDS",
    "ATLAS_NAME",
    "region_timeseries",
    "connectivity_matrix",
    "connectivity_matrices",
    "split_half_connectivity",
    "fisher_z",
    "connectivity_dataset",
    "load_connectomes",
    "coupling_summary",
    "region_image",
    "region_background",
    "register_cli",
]

KINDS = ("correlation", "partial correlation", "tangent")
_KIND_ALIASES = {"correlation": "correlation", "pearson": "correlation",
                 "partial correlation": "partial correlation", "partial": "partial correlation",
                 "partial_correlation": "partial correlation", "partial-correlation": "partial correlation",
                 "tangent": "tangent"}
#: ``meas-`` entity used in file names for kinds other than the default correlation
ATLAS_NAME = _derivatives.ATLAS_NAME
HALVES = ("full", "half1", "half2")
_DEFAULT_PATTERN = None  # the dataset index (any layout) instead of a glob


def _check_kind(kind: str) -> str:
    key = str(kind).strip().lower()
    if key not in _KIND_ALIASES:
        raise SpineprintError(f"unknown connectivity kind {kind!r}; expected one of {list(KINDS)}")
    return _KIND_ALIASES[key]


# ------------------------------------------------------------------ time series
def _as_image(img, what):
    import nibabel as nib

    if isinstance(img, (str, Path)):
        path = Path(img)
        if not path.is_file():
            raise SpineprintError(f"{path}: {what} not found")
        verify_nifti(path)  # the gzip CRC: a damaged file is an error, never wrong values
        try:
            return nib.load(str(path)), str(path)
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types
            raise SpineprintError(f"{path}: cannot read {what} ({exc})") from None
    if not hasattr(img, "affine") or not hasattr(img, "dataobj"):
        raise SpineprintError(f"{what} must be a NIfTI image or a path, got {type(img).__name__}")
    fname = img.get_filename() if hasattr(img, "get_filename") else None
    return img, (fname or what)


def region_timeseries(bold_img, labels_img, mask=None) -> np.ndarray:
    """Mean BOLD time series of each labelled region.

    Parameters
    ----------
    bold_img : nibabel image or path-like
        4D run (X, Y, Z, T) on the same grid as *labels_img*.
    labels_img : nibabel image or path-like
        3D integer labels, 0 = background, regions ``1..R`` (every label must be
        present, as produced by :func:`spineprint_utils.atlas.region_labels`).
    mask : nibabel image, path-like or ndarray, optional
        3D boolean mask restricting the voxels averaged (e.g. a cord mask).

    Returns
    -------
    ndarray, shape (T, R)
        Column ``r - 1`` is the unweighted mean over the voxels of label ``r``.

    Raises
    ------
    SpineprintError
        Grid mismatch, missing/empty labels, non-finite values in region voxels.
    """
    bold, bold_name = _as_image(bold_img, "BOLD image")
    labels, labels_name = _as_image(labels_img, "label image")
    if len(bold.shape) != 4:
        raise SpineprintError(f"{bold_name}: expected a 4D BOLD run, found shape {bold.shape}")
    lab = np.asarray(labels.dataobj)
    if lab.ndim == 4 and lab.shape[3] == 1:
        lab = lab[..., 0]
    if lab.shape != tuple(bold.shape[:3]) or not np.allclose(labels.affine, bold.affine, atol=1e-3):
        raise SpineprintError(
            f"{bold_name}: grid {tuple(bold.shape[:3])} differs from the label image {labels_name} grid {lab.shape} "
            "(shape or affine); resample the labels to the run"
        )
    if np.any(lab != np.round(lab)) or np.any(lab < 0):
        raise SpineprintError(f"{labels_name}: labels must be non-negative integers")
    lab = lab.astype(np.int64)
    if mask is not None:
        m = np.asarray(mask.dataobj) if hasattr(mask, "dataobj") else (
            np.asarray(load_nifti(mask)[1]) if isinstance(mask, (str, Path)) else np.asarray(mask))
        if m.shape != lab.shape:
            raise SpineprintError(f"mask shape {m.shape} differs from the label grid {lab.shape}")
        lab = np.where(m > 0, lab, 0)
    n_regions = int(lab.max())
    if n_regions < 1:
        raise SpineprintError(f"{labels_name}: no region voxels (inside the mask)")
    counts = np.bincount(lab.ravel(), minlength=n_regions + 1)[1:]
    if np.any(counts == 0):
        missing = (np.nonzero(counts == 0)[0] + 1).tolist()
        raise SpineprintError(f"{labels_name}: label(s) {missing} have no voxels (inside the mask)")
    sel = np.nonzero(lab.ravel(order="F") > 0)[0]
    # read only the region voxels: (V_sel, T) through a Fortran-order flattening
    data = np.asarray(bold.dataobj, dtype=np.float64)
    vox = data.reshape(-1, data.shape[3], order="F")[sel]
    if not np.all(np.isfinite(vox)):
        raise SpineprintError(f"{bold_name}: NaN or infinite values inside the regions")
    which = lab.ravel(order="F")[sel] - 1
    sums = np.zeros((n_regions, vox.shape[1]))
    np.add.at(sums, which, vox)
    return (sums / counts[:, None]).T


# ------------------------------------------------------------------ FC
def fisher_z(r) -> np.ndarray:
    """Fisher (1915) z transform ``arctanh(r)``; the diagonal of square matrices is set to 0.

    Values with ``|r| >= 1`` off the diagonal are clipped to ``1 - 1e-15`` first
    so that the result is finite.
    """
    r = np.asarray(r, dtype=np.float64)
    z = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
    if z.ndim >= 2 and z.shape[-1] == z.shape[-2]:
        idx = np.arange(z.shape[-1])
        z[..., idx, idx] = 0.0
    return z


def _check_ts(timeseries, name="time series"):
    ts = np.asarray(timeseries, dtype=np.float64)
    if ts.ndim != 2:
        raise SpineprintError(f"{name}: expected a (T, R) array, found shape {ts.shape}")
    if ts.shape[0] < 3 or ts.shape[1] < 2:
        raise SpineprintError(f"{name}: need at least 3 time points and 2 regions, found shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise SpineprintError(f"{name}: NaN or infinite values")
    sd = ts.std(axis=0)
    flat = np.nonzero(sd <= 1e-12 * np.maximum(1.0, np.abs(ts).max(axis=0)))[0]
    if flat.size:
        raise SpineprintError(f"{name}: region column(s) {flat.tolist()} are constant (zero variance)")
    return ts


def _correlation(ts):
    x = ts - ts.mean(axis=0)
    x /= np.sqrt((x**2).sum(axis=0))
    r = x.T @ x
    r = (r + r.T) / 2
    np.fill_diagonal(r, 1.0)
    return np.clip(r, -1.0, 1.0)


def _partial_correlation(ts, name):
    t, n = ts.shape
    if t <= n + 1:
        raise SpineprintError(
            f"{name}: partial correlation needs more time points ({t}) than regions + 1 ({n + 1}); "
            "use fewer regions or the correlation kind"
        )
    cov = np.cov(ts, rowvar=False)
    if np.linalg.cond(cov) > 1e12:
        raise SpineprintError(f"{name}: covariance is singular (collinear regions); partial correlation undefined")
    prec = np.linalg.inv(cov)
    d = np.sqrt(np.diag(prec))
    pc = -prec / np.outer(d, d)
    pc = (pc + pc.T) / 2
    np.fill_diagonal(pc, 1.0)
    return pc


def connectivity_matrix(timeseries, kind: str = "correlation", fisher_z: bool = False) -> np.ndarray:
    """FC matrix of one run.

    Parameters
    ----------
    timeseries : array-like, shape (T, R)
    kind : {"correlation", "partial correlation"}
        Pearson correlation ``r_ij = cov_ij / (sd_i sd_j)``, or partial correlation
        ``-P_ij / sqrt(P_ii P_jj)`` with ``P`` the inverse empirical covariance
        (needs T > R + 1). ``"tangent"`` needs a group: see
        :func:`connectivity_matrices`.
    fisher_z : bool
        Return ``arctanh`` of the matrix (diagonal set to 0).

    Returns
    -------
    ndarray, shape (R, R)
        Symmetric, float64, unit diagonal (zero if *fisher_z*).
    """
    kind = _check_kind(kind)
    if kind == "tangent":
        raise SpineprintError("the tangent kind needs a group of runs: use connectivity_matrices(list_of_timeseries)")
    ts = _check_ts(timeseries)
    fc = _correlation(ts) if kind == "correlation" else _partial_correlation(ts, "time series")
    return globals()["fisher_z"](fc) if fisher_z else fc


def _tangent(list_ts, transform=None):
    from nilearn.connectome import ConnectivityMeasure

    measure = ConnectivityMeasure(kind="tangent", standardize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        measure.fit(list_ts)
        out = [np.asarray(measure.transform(group)) for group in ([list_ts] if transform is None else transform)]
    return out


def connectivity_matrices(list_of_timeseries, kind: str = "correlation", fisher_z: bool = False) -> np.ndarray:
    """FC matrices of several runs, shape (n, R, R).

    For ``kind="tangent"`` the covariances (Ledoit-Wolf shrinkage, nilearn's default
    estimator) are projected on the tangent space at their geometric (log-Euclidean
    initialised Riemannian) mean (Varoquaux et al. 2010); the result depends on the
    whole group passed. Other kinds are computed run by run as in
    :func:`connectivity_matrix`.
    """
    kind = _check_kind(kind)
    series = [_check_ts(ts, f"time series {i}") for i, ts in enumerate(list_of_timeseries)]
    if not series:
        raise SpineprintError("no time series given")
    widths = {ts.shape[1] for ts in series}
    if len(widths) != 1:
        raise SpineprintError(f"time series have different numbers of regions: {sorted(widths)}")
    if kind == "tangent":
        if fisher_z:
            raise SpineprintError("fisher_z applies to correlations, not to tangent-space matrices")
        if len(series) < 2:
            raise SpineprintError("the tangent kind needs at least 2 runs")
        return _tangent(series)[0]
    return np.stack([connectivity_matrix(ts, kind, fisher_z) for ts in series])


def split_half_connectivity(timeseries, kind: str = "correlation", fisher_z: bool = False):
    """Full-run FC and the FCs of the first and second halves of the volumes.

    Parameters
    ----------
    timeseries : array-like, shape (T, R)
    kind, fisher_z :
        As in :func:`connectivity_matrix`.

    Returns
    -------
    full, half1, half2 : ndarray, shape (R, R)
        ``half1`` uses volumes ``0 .. T//2 - 1``, ``half2`` volumes ``T - T//2 .. T - 1``
        (for odd T the middle volume is in neither half, so both halves have the same
        length).
    """
    ts = _check_ts(timeseries)
    if ts.shape[0] < 6:
        raise SpineprintError(f"time series: {ts.shape[0]} volumes are too few to split in halves")
    h1, h2 = split_half(ts, axis=0)
    return tuple(connectivity_matrix(x, kind, fisher_z) for x in (ts, h1, h2))


# ------------------------------------------------------------------ dataset level
def _entities(path: Path) -> dict:
    """Every run-identifying entity of a derivative file (:data:`spineprint_utils.layout.RUN_ENTITIES`,
    ``""`` when absent)."""
    ents = _layout.parse_name(path.name)[0]
    if "sub" not in ents:
        raise SpineprintError(f"{path}: file name has no sub-<label> entity")
    return {k: ents.get(k, "") for k in _layout.RUN_ENTITIES}



def _write_matrix_tsv(path, mat, regions):
    df = pd.DataFrame(mat, index=pd.Index(regions, name="region"), columns=regions)
    atomic_write_text(path, df.to_csv(sep="\t", float_format="%.10g", lineterminator="\n"))


def _read_matrix_tsv(path, regions):
    try:
        df = pd.read_csv(path, sep="\t", index_col=0)
    except Exception as exc:  # noqa: BLE001
        raise SpineprintError(f"{path}: cannot read connectivity TSV ({exc})") from None
    if list(df.columns) != list(regions) or list(df.index.astype(str)) != list(regions):
        raise SpineprintError(f"{path}: region names differ from the current atlas")
    return df.to_numpy(dtype=np.float64)


def _read_ts_tsv(path, regions):
    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as exc:  # noqa: BLE001
        raise SpineprintError(f"{path}: cannot read time series TSV ({exc})") from None
    if list(df.columns) != list(regions):
        raise SpineprintError(f"{path}: region columns differ from the current atlas")
    return df.to_numpy(dtype=np.float64)


def _sidecar_matches(path: Path, params: dict) -> bool:
    side = path.with_suffix(".json")
    if not (path.is_file() and side.is_file()):
        return False
    try:
        return json.loads(side.read_text()).get("Parameters") == json.loads(json.dumps(params, sort_keys=True))
    except (OSError, json.JSONDecodeError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find_runs(deriv_dir: Path, pattern, participants):
    """The preprocessed runs: from the dataset index (:func:`spineprint_utils.preprocess.find_preprocessed_runs`:
    any layout, sessions optional, every entity kept, hidden files skipped), or from a glob *pattern*."""
    if participants is not None and isinstance(participants, str):
        participants = [participants]
    if pattern is None:
        from .preprocess import find_preprocessed_runs

        what = "preprocessed runs (*_desc-preproc_bold.nii[.gz] under sub-*/)"
        try:
            runs = [r.path for r in find_preprocessed_runs(deriv_dir, participants) if not r.problem]
        except SpineprintError as exc:
            if "participant" in str(exc):
                raise SpineprintError(f"{deriv_dir}: no {what} for {str(exc).split(': ', 1)[1]}") from None
            raise
    else:
        what = f"runs matching {pattern!r}"
        runs = sorted(deriv_dir.glob(pattern))
        runs = [p for p in runs if p.is_file() and not p.name.startswith(".")]
        if participants is not None:
            wanted = {check_label(p, "sub") for p in participants}
            runs = [p for p in runs if _entities(p)["sub"] in wanted]
            found = {_entities(p)["sub"] for p in runs}
            missing = sorted(wanted - found)
            if missing:
                raise SpineprintError(f"{deriv_dir}: no {what} for participant(s) {missing}")
    if not runs:
        raise SpineprintError(f"{deriv_dir}: no {what} (run preprocessing first?)")
    return runs


def _refuse_raw(folder: Path) -> None:
    """Raw BIDS data are only read: refuse to write next to them."""
    desc = folder / "dataset_description.json"
    if desc.is_file():
        try:
            kind = json.loads(desc.read_text(encoding="utf-8-sig")).get("DatasetType", "raw")
        except (OSError, json.JSONDecodeError, AttributeError):
            return
        if kind == "raw":
            raise SpineprintError(
                f"{folder}: is a raw BIDS dataset (DatasetType raw); pass output_dir to write the connectivity "
                "derivatives elsewhere (or run preprocessing first and give its derivatives folder)"
            )


def _relabel(img, tab, names):
    """Label image with regions *names* renumbered ``1..R`` in that order (others set to 0)."""
    import nibabel as nib

    data = np.asarray(img.dataobj).astype(np.int64)
    lut = np.zeros(int(data.max()) + 1, dtype=np.int16)
    old = dict(zip(tab["name"].astype(str), tab["label"].astype(int)))
    for k, name in enumerate(names, start=1):
        lut[old[name]] = k
    out = nib.Nifti1Image(lut[data], img.affine)
    out.set_data_dtype(np.int16)
    return out


def _common_regions(table, labels_by_grid, run_labels, segs, hs):
    """Regions present in every run (native-space runs with their own label images and the
    PAM50-space runs), in segment-major order; the others are dropped with a warning so that
    the group file has the same regions for every run."""
    wanted = [f"{s}_{h}" for s in segs for h in hs]
    sets = [set(tab["name"].astype(str)) for _, tab, _ in run_labels.values()]
    if table is not None:
        sets.append(set(table["name"].astype(str)))
    common = [n for n in wanted if all(n in st for st in sets)]
    dropped = [n for n in wanted if n not in common and any(n in st for st in sets)]
    if not common:
        raise SpineprintError("no horn x segment region is present in every run (native-space label images "
                              f"{', '.join(str(p.name) for p in run_labels)}); check the registrations")
    if dropped:
        warnings.warn(f"regions {', '.join(dropped)} are missing in some runs and were dropped from every run "
                      "(the group file needs the same regions everywhere)", stacklevel=3)
    new_table = pd.DataFrame({"label": np.arange(1, len(common) + 1), "name": common,
                              "segment": [n.split("_")[0] for n in common], "horn": [n.split("_")[1] for n in common]})
    new_runs = {p: (_relabel(img, tab, common), tab, sha) for p, (img, tab, sha) in run_labels.items()}
    new_grids = {key: _relabel(img, table, common) for key, img in labels_by_grid.items()}
    return new_table, new_grids, new_runs


def _check_regions_in_cord(grids, run_labels, labels_by_grid):
    """:func:`spineprint_utils.cord.check_regions_in_cord` on every run with a preprocessing
    cord mask (``<prefix>_desc-cord_mask.nii.gz`` beside the run) on the run's grid."""
    import nibabel as nib

    from . import cord as cord_mod

    checks = []
    for key, members in grids.items():
        for p, img in members:
            cm_path = p.parent / f"{_derivatives._preproc_prefix(p)}_desc-cord_mask.nii.gz"
            if not cm_path.is_file():
                continue
            verify_nifti(cm_path)
            cm_img = nib.load(str(cm_path))
            if cm_img.shape[:3] != img.shape[:3] or not np.allclose(cm_img.affine, img.affine, atol=1e-3):
                continue
            lab = run_labels[p][0] if p in run_labels else labels_by_grid[key]
            checks.append((p.name, np.asarray(lab.dataobj), np.asarray(cm_img.dataobj) > 0))
    return cord_mod.check_regions_in_cord(checks)


def _grid_key(img):
    return (tuple(int(s) for s in img.shape[:3]), tuple(np.round(np.asarray(img.affine), 4).ravel().tolist()))


@guarded_output(lambda a: a["output_dir"] if a["output_dir"] is not None else a["deriv_dir"],
                option="the connectivity output folder (--output-dir, default DERIV_DIR)")
def connectivity_dataset(
    deriv_dir,
    kind: str = "correlation",
    segments=_atlas.DEFAULT_SEGMENTS,
    horns=_atlas.HORNS,
    percentile: float = 50.0,
    min_voxels: int = 3,
    source: str = "auto",
    overwrite: bool = False,
    participants=None,
    pattern: str = _DEFAULT_PATTERN,
    labels_img=None,
    names_tsv=None,
    fisher_z: bool = False,
    output_dir=None,
) -> Path:
    """Region time series and full/half-run FC for every run of a dataset.

    Parameters
    ----------
    deriv_dir : path-like
        Derivatives folder holding the preprocessed runs
        (``sub-*/ses-*/func/*_desc-preproc_bold.nii.gz``, in PAM50 space).
    kind : {"correlation", "partial correlation", "tangent"}
        FC measure (see the module docstring). File names carry ``meas-partial`` /
        ``meas-tangent`` for the non-default kinds.
    segments, horns, percentile, min_voxels, source :
        Atlas parameters, see :func:`spineprint_utils.atlas.region_labels`.
    overwrite : bool
        Recompute per-run outputs even when present with the same parameters.
    participants : str or list of str, optional
        Restrict to these participant labels.
    pattern : str, optional
        Glob (relative to *deriv_dir*) selecting the runs, e.g.
        ``"sub-*/ses-*/func/*_bold.nii.gz"`` for a raw BIDS folder; default: the
        preprocessed runs found by the dataset index
        (:func:`spineprint_utils.preprocess.find_preprocessed_runs`), with or without sessions.
    labels_img, names_tsv : path-like, optional
        A user's own label image (on the runs' grid) and its names TSV
        (:func:`spineprint_utils.atlas.load_label_image`) instead of the PAM50 regions.
        Without them, a run whose folder holds ``<prefix>_atlas-PAM50horns_dseg.nii.gz``
        (+ ``.tsv``; written by :func:`spineprint_utils.preprocess.preprocess_run` for
        native-space runs registered to PAM50) uses those regions; the group file keeps
        the regions present in every run (the others are dropped with a warning).
    fisher_z : bool
        Store ``arctanh`` of correlations instead of correlations.
    output_dir : path-like, optional
        Where the outputs go (mirroring the runs' sub-folders); default *deriv_dir*.
        Required when *deriv_dir* is a raw BIDS dataset (raw data are only read).

    Returns
    -------
    Path
        ``<output_dir>/group/atlas-PAM50horns[_meas-<kind>]_connectomes.npz`` (read it
        with :func:`load_connectomes`). Per run, in the run's sub-folder:
        ``<prefix>_atlas-PAM50horns_timeseries.tsv`` and
        ``<prefix>_atlas-PAM50horns_meas-<measure>_desc-{full,half1,half2}_relmat.tsv``
        with JSON sidecars; the region image and table (``index``, ``name``, ...) go to
        ``group/`` (``atlas-PAM50horns_dseg.nii.gz``/``.tsv``); every name comes from
        :mod:`spineprint_utils.derivatives`. Per-run files that exist with the
        same parameters are reused unless *overwrite*.
    """
    kind = _check_kind(kind)
    if fisher_z and kind == "tangent":
        raise SpineprintError("fisher_z applies to correlations, not to tangent-space matrices")
    deriv_dir = Path(deriv_dir)
    if not deriv_dir.is_dir():
        raise SpineprintError(f"{deriv_dir}: derivatives folder not found")
    out_dir = Path(output_dir) if output_dir is not None else deriv_dir
    if output_dir is None:
        _refuse_raw(deriv_dir)
    runs = _find_runs(deriv_dir, pattern, participants)
    group_names = _derivatives.connectivity_group_outputs(out_dir, kind)

    # ---- regions: one label image per distinct grid, same region names everywhere
    import nibabel as nib

    grids = {}
    run_labels = {}  # run path -> (labels image, regions table, sha256) for runs with native-space regions
    for p in runs:
        verify_nifti(p)  # the gzip CRC: a damaged run is an error naming it, never wrong values
        try:
            hdr_img = nib.load(str(p))
        except Exception as exc:  # noqa: BLE001
            raise SpineprintError(f"{p}: cannot read BOLD image ({exc})") from None
        if len(hdr_img.shape) != 4:
            raise SpineprintError(f"{p}: expected a 4D BOLD run, found shape {hdr_img.shape}")
        grids.setdefault(_grid_key(hdr_img), []).append((p, hdr_img))
    if labels_img is not None:
        user_labels, table = _atlas.load_label_image(labels_img, names_tsv)
        atlas_params = {"labels_img": str(Path(labels_img).resolve()), "names_tsv": str(names_tsv)}
        labels_by_grid = {}
        for key, members in grids.items():
            if _grid_key(user_labels) != key:
                raise SpineprintError(f"{labels_img}: label image grid differs from the run {members[0][0]}")
            labels_by_grid[key] = user_labels
    else:
        segs = tuple(s.upper() for s in segments)
        hs = tuple(h.upper() for h in horns)
        resolved, _ = _atlas.pam50_source(source)
        atlas_params = {"atlas": ATLAS_NAME, "segments": list(segs), "horns": list(hs), "percentile": float(percentile),
                        "min_voxels": int(min_voxels), "source": resolved}
        labels_by_grid, table = {}, None
        # native-space runs carry their own regions (written by preprocessing after registration to PAM50)
        for members in grids.values():
            for p, _ in members:
                dseg, tsv = _derivatives.run_dseg(p)
                if dseg.is_file():
                    lab_img, tab = _atlas.load_label_image(dseg, tsv if tsv.is_file() else None)
                    run_labels[p] = (lab_img, tab, _sha256(dseg))
        for key, members in grids.items():
            if all(p in run_labels for p, _ in members):
                continue
            lab, tab = _atlas.region_labels(members[0][1], segs, hs, percentile, resolved, min_voxels)
            if table is not None and list(tab["name"]) != list(table["name"]):
                raise SpineprintError(
                    f"{members[0][0]}: its grid gives regions {list(tab['name'])}, other runs {list(table['name'])}; "
                    "resample all runs to one grid"
                )
            labels_by_grid[key], table = lab, tab
    if run_labels:
        table, labels_by_grid, run_labels = _common_regions(table, labels_by_grid, run_labels, segs, hs)
        atlas_params["run_labels"] = True
    regions = [str(n) for n in table["name"]]
    if len(grids) == 1 and labels_by_grid:
        atomic_save_nifti(next(iter(labels_by_grid.values())), group_names["dseg"])
    atomic_write_text(group_names["dseg_tsv"], table.rename(columns={"label": "index"}).to_csv(
        sep="\t", index=False, lineterminator="\n"))

    # ---- the regions must lie in each run's cord (issue 14): refuse runs whose do not, naming them
    _check_regions_in_cord(grids, run_labels, labels_by_grid)

    # ---- per-run time series (kind independent)
    ts_params = {**atlas_params, "regions": regions}
    fc_params = {**ts_params, "kind": kind, "fisher_z": bool(fisher_z)}
    records = []
    for key, members in grids.items():
        for p, img in members:
            ent = _entities(p)
            names = _derivatives.connectivity_run_outputs(p, deriv_dir, out_dir, kind)
            ts_path = names["timeseries"]
            source_uri = _derivatives.bids_uri(p, deriv_dir, name="" if out_dir == deriv_dir else "preprocessed")
            run_ts_params = {**ts_params, "source_sha256": _sha256(p)}  # stale if the run was re-preprocessed
            if p in run_labels:
                run_ts_params["labels_sha256"] = run_labels[p][2]
            try:
                if not overwrite and _sidecar_matches(ts_path, run_ts_params):
                    ts = _read_ts_tsv(ts_path, regions)
                else:
                    ts = region_timeseries(img, run_labels[p][0] if p in run_labels else labels_by_grid[key])
                    _check_ts(ts, str(ts_path))  # before writing: a bad run leaves nothing behind
                    df = pd.DataFrame(ts, columns=regions)
                    atomic_write_text(ts_path, df.to_csv(sep="\t", index=False, float_format="%.10g",
                                                         lineterminator="\n"))
                    atomic_write_json(ts_path.with_suffix(".json"), {"Sources": [source_uri], "Parameters": run_ts_params,
                                                                     "Description": "mean BOLD of each region"})
                _check_ts(ts, str(ts_path))
                if ts.shape[0] < 6:
                    raise SpineprintError(f"{ts.shape[0]} volumes are too few to split in halves")
            except SpineprintError as exc:  # refused with the reason, naming the run (nothing is left behind)
                msg = str(exc)
                raise SpineprintError(msg if str(p) in msg else f"{p}: {msg}") from None
            fc_paths = names["relmat"]
            records.append({"path": p, "ent": ent, "ts": ts, "fc_paths": fc_paths, "uri": source_uri,
                            "fc_params": {**fc_params, "source_sha256": run_ts_params["source_sha256"]}})

    records.sort(key=lambda r: str(r["path"]))  # dataset order: by file name, whatever the grids
    # ---- FC: full, half1, half2
    n = len(records)
    fc = np.zeros((n, 3, len(regions), len(regions)))
    if kind == "tangent":
        fulls = [r["ts"] for r in records]
        halves = [split_half(r["ts"], axis=0) for r in records]
        out = _tangent(fulls, transform=[fulls, [h[0] for h in halves], [h[1] for h in halves]])
        for j in range(3):
            fc[:, j] = out[j]
    for i, rec in enumerate(records):
        paths = rec["fc_paths"]
        if kind != "tangent" and not overwrite and all(_sidecar_matches(paths[h], rec["fc_params"]) for h in HALVES):
            fc[i] = np.stack([_read_matrix_tsv(paths[h], regions) for h in HALVES])
            continue
        if kind != "tangent":
            try:
                fc[i] = np.stack(split_half_connectivity(rec["ts"], kind, fisher_z))
            except SpineprintError as exc:
                raise SpineprintError(f"{rec['path']}: {exc}") from None
        for j, h in enumerate(HALVES):
            _write_matrix_tsv(paths[h], fc[i, j], regions)
            atomic_write_json(paths[h].with_suffix(".json"), {
                "Sources": [rec["uri"]], "Parameters": rec["fc_params"], "Part": h,
                "Measure": kind + (" (Fisher z)" if fisher_z else ""), "RowNames": "first column (region)",
                "NumberOfVolumes": int(rec["ts"].shape[0] if h == "full" else rec["ts"].shape[0] // 2),
            })

    if not (out_dir / "dataset_description.json").is_file():
        from . import __version__

        atomic_write_json(out_dir / "dataset_description.json", {
            "Name": "spineprint connectivity", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "spineprint", "Version": __version__,
                             "Description": "PAM50 horn x segment time series and functional connectivity",
                             "Parameters": fc_params}],
        })
    group_path = group_names["connectomes"]
    atomic_save_npz(
        group_path,
        fc=fc,
        subjects=np.array([r["ent"]["sub"] for r in records], dtype=str),
        sessions=np.array([r["ent"]["ses"] for r in records], dtype=str),
        runs=np.array([r["ent"]["run"] for r in records], dtype=str),
        entity_names=np.array(_layout.RUN_ENTITIES, dtype=str),
        entities=np.array([[r["ent"][k] for k in _layout.RUN_ENTITIES] for r in records], dtype=str).reshape(
            len(records), len(_layout.RUN_ENTITIES)),
        regions=np.array(regions, dtype=str),
        parts=np.array(HALVES, dtype=str),
        n_volumes=np.array([r["ts"].shape[0] for r in records], dtype=np.int64),
        kind=np.array(kind),
        fisher_z=np.array(bool(fisher_z)),
        parameters=np.array(json.dumps(fc_params, sort_keys=True)),
        files=np.array([str(r["path"].relative_to(deriv_dir)) for r in records], dtype=str),
    )
    return group_path


def load_connectomes(path) -> dict:
    """Read a dataset's connectome file written by :func:`connectivity_dataset`.

    Returns
    -------
    dict
        ``fc`` (n_runs, 3, R, R) float64 for [full, half1, half2]; ``subjects``,
        ``sessions``, ``runs`` (1D arrays of str labels, ``""`` when absent);
        ``entities`` (DataFrame, one row per run, a column per
        :data:`spineprint_utils.layout.RUN_ENTITIES`: sub, ses, task, acq, ce, rec, dir, run,
        echo, part; ``""`` when absent);
        ``regions`` (list of str); ``kind`` (str); also ``n_volumes``, ``fisher_z``,
        ``parameters`` (dict) and ``files``.
    """
    path = Path(path)
    if not path.is_file():
        raise SpineprintError(f"{path}: connectome file not found (run `spineprint connectivity` first)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - zip/format errors
        raise SpineprintError(f"{path}: corrupt or unreadable connectome file ({exc})") from None
    required = ("fc", "subjects", "sessions", "runs", "regions", "kind")
    missing = [k for k in required if k not in data]
    if missing:
        raise SpineprintError(f"{path}: missing array(s) {missing}")
    fc = np.asarray(data["fc"], dtype=np.float64)
    n_regions = len(data["regions"])
    if fc.ndim != 4 or fc.shape[1] != 3 or fc.shape[2:] != (n_regions, n_regions) or fc.shape[0] != len(data["subjects"]):
        raise SpineprintError(f"{path}: fc has shape {fc.shape}, inconsistent with {n_regions} regions")
    out = {
        "fc": fc,
        "subjects": data["subjects"].astype(str),
        "sessions": data["sessions"].astype(str),
        "runs": data["runs"].astype(str),
        "regions": [str(r) for r in data["regions"]],
        "kind": str(data["kind"]),
    }
    if "n_volumes" in data:
        out["n_volumes"] = data["n_volumes"]
    if "fisher_z" in data:
        out["fisher_z"] = bool(data["fisher_z"])
    if "parameters" in data:
        out["parameters"] = json.loads(str(data["parameters"]))
    if "files" in data:
        out["files"] = data["files"].astype(str)
    if "entities" in data and "entity_names" in data:
        names = [str(n) for n in data["entity_names"]]
        vals = np.asarray(data["entities"]).astype(str).reshape(len(out["subjects"]), len(names))
        ent = pd.DataFrame(vals, columns=names)
    else:  # files written before every entity was kept
        ent = pd.DataFrame({"sub": out["subjects"], "ses": out["sessions"], "run": out["runs"]})
    for k in _layout.RUN_ENTITIES:
        if k not in ent.columns:
            ent[k] = ""
    out["entities"] = ent[list(_layout.RUN_ENTITIES)]
    return out


def region_image(connectomes_path) -> tuple[Path, Path]:
    """The region label image (and its table) to show for a connectome file.

    The group image ``group/atlas-PAM50horns_dseg.nii.gz`` when every run shares one grid
    (runs in PAM50 space); else (native-space runs, each with its own regions written by
    preprocessing) the first run's ``<prefix>_atlas-PAM50horns_dseg.nii.gz``.

    Returns
    -------
    labels, table : Path
        The image and the TSV naming its labels (the run's own table for a run's image).
    """
    path = Path(connectomes_path)
    names = _derivatives.connectivity_group_outputs(path.parent.parent)
    table, image = names["dseg_tsv"], names["dseg"]
    if image.is_file():
        return image, table
    data = load_connectomes(path)
    for rel in data.get("files", []):
        run = path.parent.parent / rel
        own, own_table = _derivatives.run_dseg(run)
        if own.is_file():
            return own, own_table if own_table.is_file() else table
    raise SpineprintError(f"{path}: no region image (neither {image.name} nor a run's own regions)")


def region_background(connectomes_path, labels_path, source: str = "auto") -> dict:
    """What to draw under the regions of :func:`region_image`, on the regions' own grid.

    PAM50-space runs (the group region image): the PAM50 gray-matter and cord fractions of
    each voxel (:func:`spineprint_utils.atlas.tissue_maps`). Native-space runs (a run's own
    region image): that run's own data, never template coordinates - the temporal mean of
    its preprocessed (motion-corrected) image and the cord mask preprocessing used.

    Parameters
    ----------
    connectomes_path : path-like
        The group connectome file (:func:`connectivity_dataset`).
    labels_path : path-like
        The region image returned by :func:`region_image`.
    source : str
        Anatomy source of :func:`~spineprint_utils.atlas.tissue_maps` (PAM50 runs).

    Returns
    -------
    dict
        ``image`` (X, Y, Z) float, ``cord`` (X, Y, Z) bool, ``space`` (``"PAM50"`` or
        ``"native"``), ``what`` (str: what ``image`` shows), ``anatomy`` (str: where the
        anatomy comes from), ``vmin``, ``vmax`` (display range).
    """
    import nibabel as nib

    labels_path = Path(labels_path)
    img = nib.load(str(labels_path))
    group = _derivatives.connectivity_group_outputs(Path(connectomes_path).parent.parent)["dseg"]
    if labels_path == group:
        tissues = _atlas.tissue_maps(img.affine, img.shape, source=source)
        return {"image": np.asarray(tissues["gm"], float), "cord": np.asarray(tissues["cord"]) >= 0.5,
                "space": "PAM50", "what": "PAM50 gray matter", "anatomy": str(tissues["source"]),
                "vmin": 0.0, "vmax": 1.0}
    prefix = labels_path.name.split(f"_atlas-{ATLAS_NAME}_dseg")[0]
    preproc = labels_path.parent / f"{prefix}_desc-preproc_bold.nii.gz"
    cord_path = labels_path.parent / f"{prefix}_desc-cord_mask.nii.gz"
    _, data = load_nifti(preproc, ndim=4)
    mean = data.mean(axis=-1, dtype=np.float64)
    cord = np.asarray(nib.load(str(cord_path)).dataobj) > 0 if cord_path.is_file() else np.zeros(mean.shape, bool)
    lo, hi = np.percentile(mean, [1, 99.5])
    return {"image": mean, "cord": cord, "space": "native", "what": "run's mean image",
            "anatomy": f"PAM50 regions registered to run {prefix} (T2w to PAM50, mean functional image to T2w)",
            "vmin": float(lo), "vmax": float(hi)}


# ------------------------------------------------------------------ summaries
def _pair_classes(regions):
    """Per region: (segment, horn); raises if names are not <segment>_<horn>."""
    segs, horns = [], []
    for name in regions:
        seg, _, horn = str(name).partition("_")
        if horn.upper() not in _atlas.HORN_ATLAS_IDS:
            raise SpineprintError(f"region name {name!r} is not <segment>_<horn> with horn in LV, RV, LD, RD")
        segs.append(seg.upper())
        horns.append(horn.upper())
    return np.array(segs), np.array(horns)


COUPLINGS = ("ventral-ventral", "dorsal-dorsal", "dorsal-ventral")
SCOPES = ("within segment", "between segments")


def coupling_summary(fc, regions, split_sides: bool = False) -> pd.DataFrame:
    """Mean coupling between horn types within and between spinal segments.

    Pairs of distinct regions are classified by horn type (ventral-ventral,
    dorsal-dorsal, dorsal-ventral: one of each) and by whether both lie in the same
    segment. Left-right ventral-ventral and dorsal-dorsal coupling is the resting-state
    organisation reported by Barry et al. (2014); Kowalczyk et al. (2024) found
    connectivity largely confined within segments, strongest between the dorsal and
    ventral horns of the same side; see also Kinany et al. (2020).

    Parameters
    ----------
    fc : array-like, shape (..., R, R)
        One matrix or a stack (e.g. ``(n_runs, R, R)``); leading dimensions are
        flattened and treated as independent matrices. Average Fisher-z values if you
        prefer z-averaging.
    regions : list of str
        Region names ``<segment>_<horn>``.
    split_sides : bool
        Split dorsal-ventral pairs into ``dorsal-ventral same side`` (ipsilateral) and
        ``dorsal-ventral opposite sides``.

    Returns
    -------
    pandas.DataFrame
        One row per (coupling, scope) with columns ``coupling, scope, n_pairs, mean``
        (over pairs and matrices), ``sd`` (across matrices of the per-matrix means; NaN
        for a single matrix) and ``n_matrices``. Combinations without pairs are omitted.
    """
    mats = np.asarray(fc, dtype=np.float64)
    n_regions = len(regions)
    if mats.ndim < 2 or mats.shape[-2:] != (n_regions, n_regions):
        raise SpineprintError(f"fc has shape {mats.shape}, expected (..., {n_regions}, {n_regions})")
    mats = mats.reshape(-1, n_regions, n_regions)
    segs, horns = _pair_classes(regions)
    iu, ju = np.triu_indices(n_regions, 1)
    ventral = np.array([h.endswith("V") for h in horns])
    left = np.array([h.startswith("L") for h in horns])
    same_seg = segs[iu] == segs[ju]
    same_side = left[iu] == left[ju]
    n_v = ventral[iu].astype(int) + ventral[ju].astype(int)
    classes = [("ventral-ventral", n_v == 2), ("dorsal-dorsal", n_v == 0)]
    if split_sides:
        classes += [("dorsal-ventral same side", (n_v == 1) & same_side),
                    ("dorsal-ventral opposite sides", (n_v == 1) & ~same_side)]
    else:
        classes += [("dorsal-ventral", n_v == 1)]
    rows = []
    for cname, in_class in classes:
        for scope, in_scope in zip(SCOPES, (same_seg, ~same_seg)):
            sel = in_class & in_scope
            if not sel.any():
                continue
            vals = mats[:, iu[sel], ju[sel]]  # (n_mat, n_pairs)
            per = vals.mean(axis=1)
            rows.append({
                "coupling": cname,
                "scope": scope,
                "n_pairs": int(sel.sum()),
                "mean": float(vals.mean()),
                "sd": float(per.std(ddof=1)) if per.size > 1 else float("nan"),
                "n_matrices": int(per.size),
            })
    return pd.DataFrame(rows, columns=["coupling", "scope", "n_pairs", "mean", "sd", "n_matrices"])


# ------------------------------------------------------------------ CLI
def _run_cli(args) -> int:
    path = connectivity_dataset(
        args.deriv_dir,
        kind=args.kind,
        segments=args.segments,
        percentile=args.percentile,
        min_voxels=args.min_voxels,
        source=args.source,
        overwrite=args.overwrite,
        participants=args.participant_label,
        pattern=args.pattern,
        fisher_z=args.fisher_z,
        output_dir=args.output_dir,
    )
    print(path)
    return 0


def register_cli(subparsers) -> None:
    """Add ``spineprint connectivity DERIV_DIR [--kind ...]``."""
    p = subparsers.add_parser(
        "connectivity",
        help="region time series and full/half-run FC of preprocessed runs",
        description="Extract gray-matter horn x segment time series (PAM50) and compute FC for every run.",
    )
    p.add_argument("deriv_dir", metavar="DERIV_DIR", help="derivatives folder with *_desc-preproc_bold.nii.gz runs")
    p.add_argument("--kind", default="correlation", choices=["correlation", "partial", "tangent"],
                   help="FC measure (default: correlation)")
    p.add_argument("--segments", nargs="+", default=list(_atlas.DEFAULT_SEGMENTS), help="spinal segments (C3 .. C8)")
    p.add_argument("--percentile", type=float, default=50.0, help="per-slice horn threshold percentile")
    p.add_argument("--min-voxels", type=int, default=3, help="drop regions with fewer voxels")
    p.add_argument("--source", default="auto", choices=["auto", "pam50", "phantom"], help="anatomy source")
    p.add_argument("--participant-label", nargs="+", default=None, help="only these participants")
    p.add_argument("--pattern", default=None,
                   help="glob of the runs relative to DERIV_DIR (default: the preprocessed runs, any layout)")
    p.add_argument("--fisher-z", action="store_true", help="store arctanh(r)")
    p.add_argument("--output-dir", default=None, help="write outputs here instead of DERIV_DIR")
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    p.set_defaults(func=_run_cli)

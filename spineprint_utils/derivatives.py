"""Names of every derivative file: the one place where output paths are built.

Every stage (preprocessing, connectivity, the QC report) and every consumer (notebooks,
tests, docs) gets its paths from here, so a name changes in one place only.

Conventions (BIDS 1.11 derivatives, and where BIDS has no name yet the BIDS extension
proposals that fMRIPrep, xcp_d and nilearn already read):

- preprocessed series ``<prefix>_desc-preproc_bold.nii.gz`` (BIDS, ``func_volumetric``);
- masks ``<prefix>_desc-cord_mask`` / ``desc-csf_mask`` with ``Type`` in the sidecar (BIDS);
- regions ``<prefix>_atlas-PAM50horns_dseg.nii.gz`` + ``.tsv`` with ``index``/``name`` (BIDS);
- estimated field ``fmap/<sub>_<ses>[_acq][_run]_desc-<task>_fieldmap.nii.gz`` (Hz) with its
  ``_magnitude`` (BIDS ``fmap_fieldmaps_volumetric``; fieldmaps carry no ``task`` entity,
  so the task label goes to ``desc``);
- confounds ``<prefix>_desc-confounds_timeseries.tsv`` and slice-wise motion
  ``<prefix>_desc-motion_timeseries.tsv`` (BEP012 / fMRIPrep, read by
  ``nilearn.interfaces.fmriprep.load_confounds``);
- tSNR maps ``<prefix>_stat-tsnr_desc-{raw,clean}_boldmap.nii.gz`` (BEP012 ``boldmap``);
- transforms ``..._from-<X>_to-<Y>_mode-image_xfm.<ext>`` (BEP014 / fMRIPrep);
- region time series ``<prefix>_atlas-PAM50horns_timeseries.tsv`` and FC
  ``<prefix>_atlas-PAM50horns_meas-<kind>_desc-<part>_relmat.tsv`` (BEP012 / BEP017, as xcp_d);
- figures ``sub-<s>/figures/*.png`` and reports ``sub-<s>.html``, ``group.html`` (fMRIPrep); beside
  the figures, ``<prefix>_desc-qcinputs_arrays.npz``: the inputs of the run's QC figures that the
  other derivatives do not hold, so that the figures can be drawn later without recomputing the run.

The names that BIDS 1.11 does not define (the BEP names, figures, reports, the QC tables and
the group connectome file) are listed in the dataset's ``.bidsignore`` (:data:`BIDSIGNORE`),
and only those, so that ``bids-validator-deno`` reports no error on the derivatives.
"""

from __future__ import annotations

from pathlib import Path

from ._io import SpineprintError, bids_entities
from .layout import bids_root  # the dataset index owns it; re-exported here

__all__ = [
    "ATLAS_NAME",
    "BIDSIGNORE",
    "run_prefix",
    "bids_root",
    "run_outputs",
    "anat_outputs",
    "connectivity_run_outputs",
    "connectivity_group_outputs",
    "run_dseg",
    "participant_report",
    "dataset_outputs",
    "bids_uri",
    "write_bidsignore",
]

#: name of the horn x segment atlas in file names (``atlas-PAM50horns``)
ATLAS_NAME = "PAM50horns"

#: what BIDS 1.11 has no name for (one gitignore-style pattern per line)
BIDSIGNORE = """\
# spineprint: files the BIDS 1.11 schema has no name for (BEP012 timeseries/boldmap, BEP014
# transforms, BEP017 relmat as read by fMRIPrep/xcp_d/nilearn), QC figures, reports and tables
*_timeseries.tsv
*_timeseries.json
*_boldmap.nii.gz
*_boldmap.json
*_xfm.*
*_relmat.tsv
*_relmat.json
*_desc-qc_metrics.json
*_desc-registration_qc.json
**/figures
group
*.html
qc.tsv
"""

_BOLD_SUFFIXES = ("_bold.nii.gz", "_bold.nii", ".nii.gz", ".nii")
#: entities a BIDS fieldmap may carry (``fmap_fieldmaps_volumetric``), in file-name order
_FMAP_ENTITIES = ("sub", "ses", "acq", "run")


def run_prefix(bold_path) -> str:
    """BIDS prefix of a BOLD file: its name without ``_bold.nii[.gz]``."""
    name = Path(bold_path).name
    for suf in _BOLD_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    raise SpineprintError(f"{bold_path}: not a NIfTI BOLD file name")


def _subject_folder(output_dir: Path, ents: dict) -> Path:
    return output_dir / f"sub-{ents['sub']}" if "sub" in ents else output_dir


def run_outputs(bold_path, output_dir) -> dict:
    """Output paths of one preprocessed run.

    Parameters
    ----------
    bold_path : path-like
        The raw ``..._bold.nii.gz``.
    output_dir : path-like
        The derivatives folder (``derivatives/spineprint``).

    Returns
    -------
    dict
        name -> Path (see the module docstring); figures under ``sub-<s>/figures/``.
    """
    bold_path = Path(bold_path)
    output_dir = Path(output_dir)
    root = bids_root(bold_path)
    folder = output_dir / bold_path.parent.relative_to(root) if root is not None else output_dir
    p = run_prefix(bold_path)
    ents = bids_entities(p)
    fig = _subject_folder(output_dir, ents) / "figures"
    fmap_dir = folder.parent / "fmap" if folder.name == "func" else folder
    fmap_stem = "_".join(f"{k}-{ents[k]}" for k in _FMAP_ENTITIES if k in ents)
    fmap_stem = (fmap_stem + "_" if fmap_stem else "") + f"desc-{ents.get('task', 'bold')}"
    return {
        "preproc": folder / f"{p}_desc-preproc_bold.nii.gz",
        "preproc_json": folder / f"{p}_desc-preproc_bold.json",
        "confounds": folder / f"{p}_desc-confounds_timeseries.tsv",
        "confounds_json": folder / f"{p}_desc-confounds_timeseries.json",
        "motion": folder / f"{p}_desc-motion_timeseries.tsv",
        "motion_json": folder / f"{p}_desc-motion_timeseries.json",
        "tsnr_pre": folder / f"{p}_stat-tsnr_desc-raw_boldmap.nii.gz",
        "tsnr_post": folder / f"{p}_stat-tsnr_desc-clean_boldmap.nii.gz",
        "tsnr_json": folder / f"{p}_stat-tsnr_boldmap.json",
        "cord_mask": folder / f"{p}_desc-cord_mask.nii.gz",
        "cord_mask_json": folder / f"{p}_desc-cord_mask.json",
        "csf_mask": folder / f"{p}_desc-csf_mask.nii.gz",
        "csf_mask_json": folder / f"{p}_desc-csf_mask.json",
        "fig_motion": fig / f"{p}_desc-motion_qc.png",
        "fig_tsnr": fig / f"{p}_desc-tsnr_qc.png",
        "fig_physio": fig / f"{p}_desc-physio_qc.png",
        "fig_native": fig / f"{p}_desc-native_qc.png",
        "fig_masks": fig / f"{p}_desc-masks_qc.png",
        "fig_carpet": fig / f"{p}_desc-carpet_qc.png",
        "fig_confcorr": fig / f"{p}_desc-confcorr_qc.png",
        # the inputs of the QC figures that the other derivatives do not hold (drawn later from them)
        "qcinputs": fig / f"{p}_desc-qcinputs_arrays.npz",
        "fieldmap": fmap_dir / f"{fmap_stem}_fieldmap.nii.gz",
        "fieldmap_json": fmap_dir / f"{fmap_stem}_fieldmap.json",
        "magnitude": fmap_dir / f"{fmap_stem}_magnitude.nii.gz",
        "magnitude_json": fmap_dir / f"{fmap_stem}_magnitude.json",
        "dseg": folder / f"{p}_atlas-{ATLAS_NAME}_dseg.nii.gz",
        "dseg_tsv": folder / f"{p}_atlas-{ATLAS_NAME}_dseg.tsv",
        "dseg_json": folder / f"{p}_atlas-{ATLAS_NAME}_dseg.json",
        "xfm": folder / f"{p}_from-PAM50_to-bold_xfm.npz",
        "xfm_itk": folder / f"{p}_from-PAM50_to-bold_mode-image_xfm.nii.gz",
        "xfm_f2a_itk": folder / f"{p}_from-T2w_to-bold_mode-image_xfm.nii.gz",
        "fig_funcanat": fig / f"{p}_desc-funcanat_qc.png",
        "qc": folder / f"{p}_desc-qc_metrics.json",
    }


def anat_outputs(t2w_path, output_dir) -> dict:
    """Paths of the per-T2w registration outputs (reused by the participant's runs).

    ``<T2w>_from-T2w_to-PAM50_mode-image_xfm.nii.gz`` and the inverse
    ``<T2w>_from-PAM50_to-T2w_mode-image_xfm.nii.gz`` (ITK/ANTs displacement fields,
    :mod:`spineprint_utils.xfm`), the package's own chain files ``<T2w>_from-*_to-*_xfm.npz``,
    the registration record ``<T2w>_desc-registration_qc.json`` and the levels figure
    ``sub-<s>/figures/<T2w>_desc-levels_qc.png`` (``<T2w>`` = the T2w file name without
    extension).
    """
    t2w_path = Path(t2w_path)
    output_dir = Path(output_dir)
    root = bids_root(t2w_path)
    folder = output_dir / t2w_path.parent.relative_to(root) if root is not None else output_dir
    stem = t2w_path.name.split(".nii")[0]
    ents = bids_entities(stem)
    return {
        "to_template": folder / f"{stem}_from-T2w_to-PAM50_xfm.npz",
        "to_native": folder / f"{stem}_from-PAM50_to-T2w_xfm.npz",
        "to_template_itk": folder / f"{stem}_from-T2w_to-PAM50_mode-image_xfm.nii.gz",
        "to_native_itk": folder / f"{stem}_from-PAM50_to-T2w_mode-image_xfm.nii.gz",
        "info": folder / f"{stem}_desc-registration_qc.json",
        "fig_levels": _subject_folder(output_dir, ents) / "figures" / f"{stem}_desc-levels_qc.png",
    }


_KIND_MEAS = {"correlation": "pearsoncorrelation", "partial correlation": "partialcorrelation",
              "tangent": "tangent"}


def connectivity_run_outputs(preproc_path, deriv_dir, output_dir=None, kind: str = "correlation") -> dict:
    """Per-run connectivity outputs of a preprocessed run.

    ``timeseries`` (T x R region means, TSV + JSON) and ``relmat`` ``{"full", "half1",
    "half2"}`` (R x R matrices, TSV + JSON), in the run's folder under *output_dir*.
    """
    preproc_path = Path(preproc_path)
    deriv_dir = Path(deriv_dir)
    out = Path(output_dir) if output_dir is not None else deriv_dir
    folder = out / preproc_path.parent.relative_to(deriv_dir)
    prefix = _preproc_prefix(preproc_path)
    meas = _KIND_MEAS[kind]
    return {
        "timeseries": folder / f"{prefix}_atlas-{ATLAS_NAME}_timeseries.tsv",
        "relmat": {h: folder / f"{prefix}_atlas-{ATLAS_NAME}_meas-{meas}_desc-{h}_relmat.tsv"
                   for h in ("full", "half1", "half2")},
    }


def run_dseg(preproc_path) -> tuple[Path, Path]:
    """The run's own regions (image, table) next to a preprocessed run, as written by
    preprocessing for native-space runs (``run_outputs(...)["dseg"]``/``["dseg_tsv"]``)."""
    preproc_path = Path(preproc_path)
    prefix = _preproc_prefix(preproc_path)
    return (preproc_path.parent / f"{prefix}_atlas-{ATLAS_NAME}_dseg.nii.gz",
            preproc_path.parent / f"{prefix}_atlas-{ATLAS_NAME}_dseg.tsv")


def _preproc_prefix(preproc_path: Path) -> str:
    import re

    name = preproc_path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return re.sub(r"(_desc-[A-Za-z0-9]+)?_bold$", "", name)


def connectivity_group_outputs(output_dir, kind: str = "correlation") -> dict:
    """Dataset-level connectivity outputs: the connectome array file and the group regions.

    ``connectomes`` ``group/atlas-PAM50horns[_meas-<kind>]_connectomes.npz`` (all runs,
    read with :func:`spineprint_utils.connectivity.load_connectomes`; no BIDS name),
    ``dseg``/``dseg_tsv`` ``group/atlas-PAM50horns_dseg.nii.gz``/``.tsv``.
    """
    group = Path(output_dir) / "group"
    short = {"correlation": "", "partial correlation": "partial", "tangent": "tangent"}[kind]
    stem = f"atlas-{ATLAS_NAME}" + (f"_meas-{short}" if short else "")
    return {
        "dir": group,
        "connectomes": group / f"{stem}_connectomes.npz",
        "dseg": group / f"atlas-{ATLAS_NAME}_dseg.nii.gz",
        "dseg_tsv": group / f"atlas-{ATLAS_NAME}_dseg.tsv",
    }


def dataset_outputs(output_dir) -> dict:
    """Dataset-level files of the derivatives folder."""
    output_dir = Path(output_dir)
    return {
        "description": output_dir / "dataset_description.json",
        "bidsignore": output_dir / ".bidsignore",
        "qc_table": output_dir / "qc.tsv",
        "group_report": output_dir / "group.html",
    }


def participant_report(output_dir, subject: str) -> Path:
    """``sub-<s>.html`` at the top of the derivatives folder (as fMRIPrep)."""
    return Path(output_dir) / f"sub-{subject}.html"


def bids_uri(path, dataset_root, name: str = "raw") -> str:
    """BIDS URI of *path* in the dataset *dataset_root*: ``bids:<name>:<relative path>``.

    With ``name=""`` the URI points into the current (derivative) dataset (``bids::...``).
    The dataset's ``DatasetLinks`` maps *name* to its location.
    """
    path = Path(path)
    try:
        rel = path.resolve().relative_to(Path(dataset_root).resolve())
    except ValueError:
        return f"bids:{name}:{path.name}"
    return f"bids:{name}:{rel.as_posix()}"


def write_bidsignore(output_dir) -> Path:
    """Write :data:`BIDSIGNORE` to ``<output_dir>/.bidsignore`` (atomically)."""
    from ._io import atomic_write_text

    return atomic_write_text(dataset_outputs(output_dir)["bidsignore"], BIDSIGNORE)

"""The Spinal Cord Toolbox's real test images as a small BIDS dataset.

``sct_testing_data`` (github.com/spinalcordtoolbox/sct_testing_data, MIT) holds the only
real spinal cord images the project has offline: a cervical BOLD run (``fmri/fmri.nii.gz``,
68 x 68 x 6 x 30), a T2w image with its manual cord segmentation and the two vertebral
labels SCT used to register it to PAM50 (``t2/labels.nii.gz``: C3 and C5 body centres).
:func:`sct_bids` lays them out as a BIDS dataset the pipeline reads like any other::

    <out>/dataset_description.json
    <out>/sub-sct/func/sub-sct_task-rest_bold.nii.gz (+ .json: RepetitionTime)
    <out>/sub-sct/anat/sub-sct_T2w.nii.gz
    <out>/derivatives/manual/sub-sct/anat/sub-sct_T2w_label-SC_seg.nii.gz
    <out>/derivatives/labels/sub-sct/anat/sub-sct_T2w_labels.nii.gz      (labels=True)

The run's header says TR = 1.13 s, which is doubtful (the file was cropped and subsampled
upstream and SCT's tests do not use its timing); the sidecar gets *repetition_time*
(default 2.0 s, a typical cervical cord fMRI TR, e.g. ds004386 2.312 s, CoSpine 2.68 s) and
says so in its ``RepetitionTimeNote``. The images are copied unchanged from
``$SPINEPRINT_DATA_DIR/sct_testing_data`` (never written there).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ._io import SpineprintError

__all__ = ["sct_bids", "sct_data_dir"]

_FILES = {
    "bold": "fmri/fmri.nii.gz",
    "t2w": "t2/t2.nii.gz",
    "seg": "t2/t2_seg-manual.nii.gz",
    "labels": "t2/labels.nii.gz",
}


def sct_data_dir(data_dir=None) -> Path:
    """``<data_dir or $SPINEPRINT_DATA_DIR>/sct_testing_data``; a clear error when absent."""
    base = Path(data_dir) if data_dir is not None else (
        Path(os.environ["SPINEPRINT_DATA_DIR"]) if os.environ.get("SPINEPRINT_DATA_DIR") else None)
    if base is None:
        raise SpineprintError("sct_testing_data: set SPINEPRINT_DATA_DIR to the folder holding sct_testing_data/ "
                              "(github.com/spinalcordtoolbox/sct_testing_data)")
    root = base / "sct_testing_data" if (base / "sct_testing_data").is_dir() else base
    missing = [rel for rel in _FILES.values() if not (root / rel).is_file()]
    if missing:
        raise SpineprintError(f"{root}: sct_testing_data files missing: {', '.join(missing)}")
    return root


def sct_bids(out_dir, *, data_dir=None, repetition_time: float = 2.0, labels: bool = True,
             anat: bool = True) -> Path:
    """Write the SCT test images as a BIDS dataset in *out_dir* (must not exist or be empty).

    Parameters
    ----------
    out_dir : path-like
        Must not exist or be empty, or hold a dataset made before with the same options
        (then it is reused as is).
    data_dir : path-like, optional
        Folder holding ``sct_testing_data/`` (default ``$SPINEPRINT_DATA_DIR``).
    repetition_time : float
        Sidecar ``RepetitionTime`` (s); the header's 1.13 s is doubtful (see the module docstring).
    labels : bool
        Also write the vertebral labels (``derivatives/labels/.../sub-sct_T2w_labels.nii.gz``).
    anat : bool
        Write the T2w and its segmentation (False: the run alone, no anatomy).

    Returns
    -------
    Path
    """
    src = sct_data_dir(data_dir)
    final = Path(out_dir)
    key = {"repetition_time": float(repetition_time), "labels": bool(labels), "anat": bool(anat)}
    marker = final / "derivatives" / ".sctdata.json"
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return final  # made before with the same options: reuse
    if final.exists() and any(final.iterdir()):
        raise SpineprintError(f"{final}: exists and is not empty; give a new folder")
    # built next to the destination and renamed at the end: never a half-written dataset
    out = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if out.exists():
        shutil.rmtree(out)
    func = out / "sub-sct" / "func"
    func.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "SCT testing data (spinalcordtoolbox/sct_testing_data, MIT)", "BIDSVersion": "1.9.0",
         "DatasetType": "raw", "License": "MIT"}, indent=1))
    shutil.copyfile(src / _FILES["bold"], func / "sub-sct_task-rest_bold.nii.gz")
    (func / "sub-sct_task-rest_bold.json").write_text(json.dumps(
        {"RepetitionTime": float(repetition_time), "TaskName": "rest",
         "RepetitionTimeNote": "set by spineprint_utils.sctdata: the NIfTI header's 1.13 s is doubtful "
                               "(cropped/subsampled upstream)"}, indent=1))
    if anat:
        a = out / "sub-sct" / "anat"
        a.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / _FILES["t2w"], a / "sub-sct_T2w.nii.gz")
        d = out / "derivatives" / "manual" / "sub-sct" / "anat"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / _FILES["seg"], d / "sub-sct_T2w_label-SC_seg.nii.gz")
        if labels:
            d = out / "derivatives" / "labels" / "sub-sct" / "anat"
            d.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / _FILES["labels"], d / "sub-sct_T2w_labels.nii.gz")
    (out / "derivatives").mkdir(exist_ok=True)
    (out / "derivatives" / ".sctdata.json").write_text(json.dumps(key))
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        final.rmdir()  # empty (checked above)
    out.rename(final)
    return final

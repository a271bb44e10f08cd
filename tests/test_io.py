"""Shared I/O helpers: atomic writes leave nothing half-written, labels are safe."""

import gzip
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from spineprint_utils import _io
from spineprint_utils._io import SpineprintError


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with _io.atomic_write(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left
    _io.atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_atomic_outputs_have_normal_permissions(tmp_path):
    path = _io.atomic_write_text(tmp_path / "a.txt", "x")
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_nifti_gzip_is_byte_reproducible(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    a = _io.atomic_save_nifti(img, tmp_path / "a.nii.gz").read_bytes()
    b = _io.atomic_save_nifti(img, tmp_path / "b.nii.gz").read_bytes()
    assert a == b
    assert np.array_equal(nib.load(tmp_path / "a.nii.gz").get_fdata(), img.get_fdata())


def test_load_nifti_errors_name_the_file(tmp_path):
    good = tmp_path / "x.nii.gz"
    data = np.zeros((4, 4, 3, 5), np.float32)
    _io.atomic_save_nifti(nib.Nifti1Image(data, np.eye(4)), good)
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(SpineprintError, match="trunc.nii.gz.*corrupt"):
        _io.load_nifti(truncated)
    with pytest.raises(SpineprintError, match="expected a 3D image"):
        _io.load_nifti(good, ndim=3)
    data[0, 0, 0, 0] = np.nan
    nan = tmp_path / "nan.nii.gz"
    _io.atomic_save_nifti(nib.Nifti1Image(data, np.eye(4)), nan)
    with pytest.raises(SpineprintError, match="nan.nii.gz: 1 NaN"):
        _io.load_nifti(nan, finite=True)
    with pytest.raises(SpineprintError, match="not found"):
        _io.load_nifti(tmp_path / "missing.nii.gz")


def test_read_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpineprintError, match="bad.json: not valid JSON"):
        _io.read_json(bad)
    ok = tmp_path / "ok.json"
    ok.write_text('{"RepetitionTime": 2}')
    with pytest.raises(SpineprintError, match="missing required field.*SliceTiming"):
        _io.read_json(ok, required=("RepetitionTime", "SliceTiming"))


@pytest.mark.parametrize("label", ["../x", "a/b", "sub-../../etc", "", "a b"])
def test_path_like_labels_rejected(label):
    with pytest.raises(SpineprintError, match="invalid sub label"):
        _io.check_label(label)


def test_labels_accepted():
    assert _io.check_label("sub-01") == "01"
    assert _io.check_label("ZS001") == "ZS001"


def test_tsv_gz_reproducible(tmp_path):
    a = _io.atomic_write_tsv_gz(tmp_path / "a.tsv.gz", "1\t2\n").read_bytes()
    b = _io.atomic_write_tsv_gz(tmp_path / "b.tsv.gz", "1\t2\n").read_bytes()
    assert a == b and gzip.decompress(a) == b"1\t2\n"


def test_bids_entities():
    assert _io.bids_entities("sub-01_ses-02_task-rest_run-1_desc-preproc_bold.nii.gz") == {
        "sub": "01", "ses": "02", "task": "rest", "run": "1", "desc": "preproc"}
    assert _io.bids_entities("/data/sub-ZS001/func/sub-ZS001_task-rest_bold.json") == {"sub": "ZS001", "task": "rest"}
    assert _io.bids_entities("README") == {}

"""The cord on the mean EPI (issue 14): the real SCT run against a reference annotation drawn
by eye (tests/data/sct_fmri_cord_annotation.txt), simulated runs against their planted cord,
user segmentations, and a clear error (never a silent disc) when there is no cord."""

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spineprint_utils import cord, preprocess, simulate
from spineprint_utils._io import SpineprintError

ANNOTATION = Path(__file__).parent / "data" / "sct_fmri_cord_annotation.txt"


@pytest.fixture(scope="module")
def real_run(shared_data):
    src = shared_data / "sct_testing_data" / "fmri" / "fmri.nii.gz"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    img = nib.load(src)
    mean = np.asarray(img.dataobj, dtype=np.float64).mean(axis=3)
    return img, mean, cord.load_reference_annotation(ANNOTATION, mean.shape)


def test_dice_against_an_independent_count():
    a = np.zeros((4, 4, 1), bool)
    b = np.zeros((4, 4, 1), bool)
    a[:2] = True  # 8 voxels
    b[1:3] = True  # 8 voxels, 4 shared
    assert cord.dice(a, b) == pytest.approx(2 * 4 / 16)
    assert cord.dice(a, a) == 1.0 and cord.dice(a, ~a) == 0.0


def test_real_epi_cord_matches_the_reference_annotation(real_run):
    """Measured: Dice 0.86 overall (0.81-0.92 per slice) against the annotation drawn by eye."""
    img, mean, ref = real_run
    assert ref.sum() > 500 and all(ref[:, :, z].any() for z in range(mean.shape[2]))
    res = cord.find_cord(mean, img.header.get_zooms()[:3])
    d = cord.dice(res.cord, ref)
    per_slice = [cord.dice(res.cord[:, :, z], ref[:, :, z]) for z in range(mean.shape[2])]
    print(f"real EPI cord Dice {d:.3f}; per slice {np.round(per_slice, 3)}")
    assert not res.failed_slices
    assert d >= 0.75 and min(per_slice) >= 0.6
    # cervical cord cross-section 60-90 mm^2 (Fradet et al. 2014, Spine 39:E262) up to the resolution of 1 mm EPI voxels
    assert np.all((res.area_mm2 > 50) & (res.area_mm2 < 150))
    # centerline inside the annotation, CSF outside the cord and brighter than it
    for z, (i, j) in enumerate(np.rint(res.centerline).astype(int)):
        assert ref[i, j, z]
    assert not (res.csf & res.cord).any() and res.csf.sum() > 0.5 * res.cord.sum()
    assert np.median(mean[res.csf]) > 1.3 * np.median(mean[res.cord])
    # the old 10 mm disc covers the cord and much more: Dice far below
    from spineprint_utils import motion

    disk = motion.auto_cord_mask(mean, img.header.get_zooms()[:2])
    assert cord.dice(disk, ref) < d - 0.2


def test_simulated_native_cord_against_the_planted_one(tmp_path):
    """Measured (seed 3): Dice 0.89 with the planted native cord."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = simulate.simulate_dataset(tmp_path / "bids", n_subjects=1, n_sessions=1, n_volumes=12,
                                         segments=("C3", "C4", "C5", "C6"), space="native", distortion=False, seed=3)
    gt = simulate.load_ground_truth(root)
    bold = sorted(root.glob("sub-01/**/func/*_bold.nii.gz"))[0]
    img = nib.load(bold)
    truth = np.asarray(nib.load(gt["native_cord"]["sub-01"]).dataobj) > 0
    res = cord.find_cord(img.slicer[..., :].get_fdata().mean(axis=3), img.header.get_zooms()[:3])
    print(f"simulated cord Dice {cord.dice(res.cord, truth):.3f}")
    assert cord.dice(res.cord, truth) > 0.85


def test_no_cord_is_an_error_not_a_disc():
    rng = np.random.default_rng(0)
    noise = rng.normal(100.0, 10.0, (48, 48, 6))
    with pytest.raises(SpineprintError, match="spinal cord not found"):
        cord.find_cord(noise, (1.0, 1.0, 5.0))


def _bids_run(root, mean_like, affine, n_vol=12, tr=2.0):
    func = root / "sub-x" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    rng = np.random.default_rng(1)
    data = mean_like[..., None] * (1 + 0.01 * rng.standard_normal(mean_like.shape + (n_vol,)))
    bold = func / "sub-x_task-rest_bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), bold)
    (func / "sub-x_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": tr}))
    return bold


def test_run_masks_error_disk_optin_and_user_segmentation(tmp_path, real_run):
    img, mean, ref = real_run
    # a run with no cord: preprocessing stops with a clear message naming the file
    noise = np.random.default_rng(0).normal(100.0, 10.0, (40, 40, 4))
    bold = _bids_run(tmp_path / "noise", noise, np.diag([1.0, 1.0, 5.0, 1.0]))
    with pytest.raises(SpineprintError, match=r"sub-x_task-rest_bold.nii.gz: spinal cord not found"):
        preprocess.run_masks(bold)
    # explicit opt-in: the disc, labelled as a guess
    c, _, src = preprocess.run_masks(bold, anatomy="disk")
    assert c.any() and "GUESS" in src
    # the real run: the cord found on the EPI
    real = _bids_run(tmp_path / "real", mean, img.affine)
    c, csf, src = preprocess.run_masks(real)
    assert src.startswith("mean image (cord found on the EPI") and cord.dice(c, ref) > 0.75
    # a user's segmentation in derivatives/ (SCT name) wins; the CSF is found around it
    seg_dir = tmp_path / "real" / "derivatives" / "sct" / "sub-x" / "func"
    seg_dir.mkdir(parents=True)
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), img.affine), seg_dir / "sub-x_task-rest_bold_seg.nii.gz")
    assert cord.find_epi_cord_seg(real) == seg_dir / "sub-x_task-rest_bold_seg.nii.gz"
    c, csf, src = preprocess.run_masks(real)
    assert src == "given EPI segmentation sub-x_task-rest_bold_seg.nii.gz" and np.array_equal(c, ref)
    assert csf.any() and not (csf & c).any()
    # BIDS label-SC name is found too; a wrong grid is a clear error
    (seg_dir / "sub-x_task-rest_bold_seg.nii.gz").unlink()
    nib.save(nib.Nifti1Image(ref[:-1].astype(np.uint8), img.affine), seg_dir / "sub-x_task-rest_label-SC_mask.nii.gz")
    with pytest.raises(SpineprintError, match="label-SC_mask.nii.gz: EPI cord segmentation shape"):
        preprocess.run_masks(real)
    shutil.rmtree(tmp_path / "noise")

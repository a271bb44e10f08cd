"""ITK/ANTs transform files (issue 14): written by spineprint, read back by an independent reader
(nitransforms, NiPreps) and by spineprint, giving the same point maps; SCT-style warps read in."""

import numpy as np
import pytest

from spineprint_utils import registration, xfm
from spineprint_utils._io import SpineprintError

nitransforms = pytest.importorskip("nitransforms")


def _affine():
    a = np.deg2rad(7.0)
    m = np.eye(4)
    m[:3, :3] = [[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.05]]
    m[:3, 3] = [3.0, -2.0, 12.5]
    return m


def _points(n=50, seed=0):
    return np.random.default_rng(seed).uniform(-8, 8, (n, 3)) + np.array([0.0, -40.0, -120.0])


@pytest.mark.parametrize("ext", [".txt", ".mat"])
def test_affine_round_trip_through_nitransforms(tmp_path, ext):
    from nitransforms.io.itk import ITKLinearTransform

    t = registration.AffineTransform(_affine())
    path = xfm.save_itk([t], tmp_path / xfm.xfm_name("sub-01_T2w", "T2w", "PAM50", ext))
    assert path.name == f"sub-01_T2w_from-T2w_to-PAM50_mode-image_xfm{ext}"
    ras = ITKLinearTransform.from_filename(str(path)).to_ras()  # independent reader, RAS 4x4
    np.testing.assert_allclose(ras, _affine(), atol=1e-9)
    back = xfm.load_itk(path)[0]
    np.testing.assert_allclose(back.map_points(_points()), t.map_points(_points()), atol=1e-9)


def test_itk_centre_parameters_are_honoured(tmp_path):
    # an ITK file with a centre (as ANTs writes): T(x) = A (x - c) + t + c in LPS
    A = np.array([[1.0, 0.1, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 1.0]])
    c, t = np.array([5.0, -3.0, 2.0]), np.array([1.0, 2.0, 3.0])
    path = tmp_path / "x.txt"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
                    f"Parameters: {' '.join(map(str, [*A.ravel(), *t]))}\nFixedParameters: {' '.join(map(str, c))}\n")
    from nitransforms.io.itk import ITKLinearTransform

    ours = xfm.load_itk(path)[0]
    np.testing.assert_allclose(ours.matrix, ITKLinearTransform.from_filename(str(path)).to_ras(), atol=1e-9)
    p_lps = np.array([[1.0, 2.0, 3.0]])
    expect_lps = (A @ (p_lps[0] - c) + t + c)
    flip = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(ours.map_points(p_lps * flip)[0], expect_lps * flip, atol=1e-9)


def test_displacement_field_chain_round_trip_through_nitransforms(tmp_path):
    """An affine + warp chain composed into one ITK field on a grid: nitransforms maps the grid
    points where the chain does."""
    import nibabel as nib
    from nitransforms.io.itk import ITKDisplacementsField

    shape = (12, 10, 8)
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    aff[:3, 3] = [-8.0, -47.0, -128.0]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    pts = ijk @ aff[:3, :3].T + aff[:3, 3]
    warp = np.stack([0.8 * np.sin(pts[..., 2] / 7.0), 0.5 * np.cos(pts[..., 0] / 5.0), 0.3 * pts[..., 1] / 10.0], -1)
    chain = [registration.AffineTransform(_affine()), registration.DisplacementField(warp.astype(np.float32), aff)]
    path = xfm.save_itk(chain, tmp_path / xfm.xfm_name("sub-01_T2w", "PAM50", "T2w"), reference=(shape, aff))
    img = nib.load(path)
    assert img.shape == shape + (1, 3) and img.header.get_intent()[0] == "vector"
    grid_pts = pts.reshape(-1, 3)
    expected = grid_pts.copy()
    for t in chain:
        expected = t.map_points(expected)
    # independent: nitransforms reads the ITK field (LPS -> RAS) as deltas on the grid
    deltas = np.asarray(ITKDisplacementsField.from_filename(str(path)).dataobj).reshape(-1, 3)
    np.testing.assert_allclose(grid_pts + deltas, expected, atol=1e-4)
    back = xfm.load_itk(path)
    np.testing.assert_allclose(back[0].map_points(grid_pts), expected, atol=1e-4)
    # an image resampled through the written field equals the one through the original chain
    src = nib.Nifti1Image(np.random.default_rng(1).random((30, 30, 40)).astype(np.float32),
                          np.diag([1.0, 1.0, 1.0, 1.0]) @ np.array([[1, 0, 0, -15], [0, 1, 0, -60], [0, 0, 1, -140],
                                                                    [0, 0, 0, 1.0]]))
    a = np.asarray(registration.apply_transforms(src, (shape, aff), chain).dataobj)
    b = np.asarray(registration.apply_transforms(src, (shape, aff), back).dataobj)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_bad_transform_files(tmp_path):
    with pytest.raises(SpineprintError, match="not found"):
        xfm.load_itk(tmp_path / "none.nii.gz")
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "scalar.nii.gz")
    with pytest.raises(SpineprintError, match="not an ITK displacement field"):
        xfm.load_itk(tmp_path / "scalar.nii.gz")
    with pytest.raises(SpineprintError, match="one affine"):
        xfm.save_itk([registration.AffineTransform(np.eye(4))] * 2, tmp_path / "two.txt")

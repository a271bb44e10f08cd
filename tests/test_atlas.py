"""Tests for spineprint_utils.atlas: grids, partial-volume maps, horn x segment regions."""

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from spineprint_utils import atlas
from spineprint_utils._io import SpineprintError


def _raw(shared_data, rel):
    img = nib.load(str(shared_data / "pam50" / rel))
    return img, np.asarray(img.dataobj)


def _centroids(labels_img):
    data = np.asarray(labels_img.dataobj)
    out = {}
    for lab in np.unique(data[data > 0]):
        idx = np.argwhere(data == lab)
        out[int(lab)] = nib.affines.apply_affine(labels_img.affine, idx).mean(axis=0)
    return out


# ------------------------------------------------------------------ atlas ids
def test_horn_ids_match_pam50_info_label(shared_data):
    """ids 30/31/34/35 are the left/right ventral/dorsal horns in the upstream table."""
    text = (shared_data / "pam50" / "atlas" / "info_label.txt").read_text()
    table = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit() and parts[2].endswith(".nii.gz"):
            table[int(parts[0])] = (parts[1], parts[2])
    for horn, atlas_id in atlas.HORN_ATLAS_IDS.items():
        name, fname = table[atlas_id]
        assert name == atlas.HORN_NAMES[horn]
        assert fname == f"PAM50_atlas_{atlas_id}.nii.gz"
        side = {"L": "left", "R": "right"}[horn[0]]
        part = {"V": "ventral", "D": "dorsal"}[horn[1]]
        assert f"{side} {part} horn" in name


def test_segment_level_numbering():
    assert atlas.segment_level("C1") == 1
    assert atlas.segment_level("c8") == 8
    assert atlas.segment_level("T1") == 9
    assert atlas.segment_level("S5") == 30
    with pytest.raises(SpineprintError, match="unknown spinal segment"):
        atlas.segment_level("C9")


# ------------------------------------------------------------------ grid
def test_epi_grid_covers_segments_pam50(shared_data):
    img, lv = _raw(shared_data, "template/PAM50_spinal_levels.nii.gz")
    # independent world z range of C4..C6 voxel centres
    idx = np.argwhere((lv >= 4) & (lv <= 6))
    w = nib.affines.apply_affine(img.affine, idx)
    affine, shape = atlas.pam50_epi_grid(("C4", "C5", "C6"), voxel_size=(1.0, 1.0, 4.0), fov_mm=(30, 20), source="pam50")
    assert shape[:2] == (30, 20)
    assert np.allclose(np.diag(affine)[:3], [1.0, 1.0, 4.0])
    z_centres = affine[2, 3] + 4.0 * np.arange(shape[2])
    z_lo, z_hi = z_centres[0] - 2.0, z_centres[-1] + 2.0
    assert z_lo <= w[:, 2].min() - 0.25 + 1e-6 and z_hi >= w[:, 2].max() + 0.25 - 1e-6
    assert (z_hi - z_lo) - (w[:, 2].max() - w[:, 2].min() + 0.5) < 4.0  # no more than one extra slice
    # in-plane centre = cord centre (centroid of cord voxels in that range)
    cx = affine[0, 3] + (shape[0] - 1) / 2
    cy = affine[1, 3] + (shape[1] - 1) / 2
    assert abs(cx - w[:, 0].mean()) < 0.5 and abs(cy - w[:, 1].mean()) < 0.5


def test_epi_grid_phantom_and_errors():
    affine, shape = atlas.pam50_epi_grid(("C3", "C4"), source="phantom")
    # phantom segments are 12 mm bands: C3..C4 = 24 mm -> 5 slices of 5 mm
    assert shape == (40, 40, 5)
    with pytest.raises(SpineprintError, match="unknown spinal segment"):
        atlas.pam50_epi_grid(("C3", "X1"))
    with pytest.raises(SpineprintError, match="voxel_size"):
        atlas.pam50_epi_grid(voxel_size=(1, 0, 5), source="phantom")
    with pytest.raises(SpineprintError, match="source"):
        atlas.pam50_epi_grid(source="mni")


# ------------------------------------------------------------------ tissue maps
def test_tissue_maps_block_average_pam50(shared_data):
    """On a grid whose voxels tile 2x2x2 PAM50 voxels, maps equal the block means."""
    img, gm = _raw(shared_data, "template/PAM50_gm.nii.gz")
    _, horn = _raw(shared_data, "atlas/PAM50_atlas_34.nii.gz")
    _, cord = _raw(shared_data, "template/PAM50_cord.nii.gz")
    _, lv = _raw(shared_data, "template/PAM50_spinal_levels.nii.gz")
    start = np.array([50, 62, 850])
    n = (20, 16, 6)
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = start + 0.5  # EPI voxel centre = corner shared by 2x2x2 PAM50 voxels
    affine = img.affine @ scale
    maps = atlas.tissue_maps(affine, n, source="pam50")
    assert maps["source"] == "pam50"

    def block(a):
        sub = a[start[0] : start[0] + 2 * n[0], start[1] : start[1] + 2 * n[1], start[2] : start[2] + 2 * n[2]]
        return sub.astype(np.float64).reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5))

    np.testing.assert_allclose(maps["gm"], block(gm), atol=1e-5)
    np.testing.assert_allclose(maps["LD"], block(horn), atol=1e-5)
    np.testing.assert_allclose(maps["cord"], block(cord), atol=1e-5)
    assert maps["gm"].dtype == np.float32 and maps["spinal_level"].dtype == np.int16
    # majority level, brute force
    sub = lv[start[0] : start[0] + 2 * n[0], start[1] : start[1] + 2 * n[1], start[2] : start[2] + 2 * n[2]]
    blocks = sub.reshape(n[0], 2, n[1], 2, n[2], 2).transpose(0, 2, 4, 1, 3, 5).reshape(*n, 8)
    expected = np.zeros(n, dtype=int)
    for ijk in np.ndindex(*n):
        vals = blocks[ijk][blocks[ijk] > 0]
        if vals.size:
            expected[ijk] = np.bincount(vals).argmax()
    np.testing.assert_array_equal(maps["spinal_level"], expected)


def test_tissue_maps_separable_equals_pointwise(shared_data):
    """The fast separable path equals direct sub-voxel sampling; a non-diagonal (axis-swapped)
    grid goes through the pointwise path and gives the transposed maps."""
    affine, shape = atlas.pam50_epi_grid(("C5",), voxel_size=(0.8, 1.1, 3.3), fov_mm=(16, 14), source="pam50")
    affine[:3, 3] += [0.13, -0.07, 0.41]  # arbitrary sub-voxel shift
    fast = atlas.tissue_maps(affine, shape, source="pam50")
    slow = atlas.tissue_maps(affine, shape, source="pam50", _method="pointwise")
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    swapped = atlas.tissue_maps(affine @ swap, (shape[1], shape[0], shape[2]), source="pam50")
    for key in ("cord", "gm", "wm", "csf", "LV", "RV", "LD", "RD", "spinal_level"):
        np.testing.assert_allclose(fast[key], slow[key], atol=1e-5, err_msg=key)
        np.testing.assert_allclose(swapped[key], fast[key].transpose(1, 0, 2), atol=1e-5, err_msg=key)
    assert fast["gm"].max() > 0.5 and set(np.unique(fast["spinal_level"])) >= {5}


def test_tissue_maps_phantom_closed_form():
    """Phantom cord/CSF areas per slice match the ellipse areas (pi a b)."""
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [-12.25, -46.0 - 12.25, -124.0]
    shape = (50, 50, 3)
    maps = atlas.tissue_maps(affine, shape, source="phantom")
    assert maps["source"] == "phantom"
    voxel_area = 0.25
    cord_area = maps["cord"].sum(axis=(0, 1)) * voxel_area
    csf_area = maps["csf"].sum(axis=(0, 1)) * voxel_area
    np.testing.assert_allclose(cord_area, np.pi * 6.5 * 4.0, rtol=0.03)
    np.testing.assert_allclose(csf_area, np.pi * (8.5 * 6.0 - 6.5 * 4.0), rtol=0.05)
    np.testing.assert_allclose(maps["gm"] + maps["wm"], maps["cord"], atol=1e-6)
    for key in ("cord", "gm", "wm", "csf", "LV", "RV", "LD", "RD"):
        assert maps[key].min() >= 0 and maps[key].max() <= 1
    # slices span z = -125..-119 mm: inside the 5th 12 mm band below -70 mm (C5)
    assert set(np.unique(maps["spinal_level"])) == {0, 5}
    assert (maps["spinal_level"] > 0).sum() == (maps["cord"] > 0).sum()


# ------------------------------------------------------------------ regions
@pytest.fixture(scope="module")
def pam50_regions():
    affine, shape = atlas.pam50_epi_grid(source="pam50")
    ref = nib.Nifti1Image(np.zeros(shape + (4,), np.float32), affine)  # 4D is accepted
    labels, table = atlas.region_labels(ref, source="pam50")
    return ref, labels, table


def test_region_table_pam50(pam50_regions):
    ref, labels, table = pam50_regions
    assert list(table.columns[:5]) == ["label", "name", "segment", "horn", "n_voxels"]
    expected = [f"{s}_{h}" for s in atlas.DEFAULT_SEGMENTS for h in ("LV", "RV", "LD", "RD")]
    assert list(table["name"]) == expected
    assert list(table["label"]) == list(range(1, 25))
    assert list(table["atlas_id"][:4]) == [30, 31, 34, 35]
    data = np.asarray(labels.dataobj)
    assert labels.shape == ref.shape[:3] and np.allclose(labels.affine, ref.affine)
    assert np.issubdtype(data.dtype, np.integer)
    np.testing.assert_array_equal(np.bincount(data.ravel())[1:], table["n_voxels"].to_numpy())
    assert (table["n_voxels"] >= 3).all()


def test_region_sides_and_segments_pam50(pam50_regions, shared_data):
    """Left horns at x < 0 (RAS), ventral anterior to dorsal, segments in rostro-caudal order."""
    _, labels, table = pam50_regions
    cen = _centroids(labels)
    img, lv = _raw(shared_data, "template/PAM50_spinal_levels.nii.gz")
    cx = nib.affines.apply_affine(img.affine, np.argwhere(lv == 5)).mean(axis=0)[0]
    for seg in atlas.DEFAULT_SEGMENTS:
        rows = table[table.segment == seg].set_index("horn")["label"]
        c = {h: cen[int(rows[h])] for h in rows.index}
        assert c["LV"][0] < cx < c["RV"][0]
        assert c["LD"][0] < cx < c["RD"][0]
        assert c["LV"][1] > c["LD"][1] and c["RV"][1] > c["RD"][1]
        # the segment's regions sit inside that level's z extent in the raw template
        zz = nib.affines.apply_affine(img.affine, np.argwhere(lv == atlas.segment_level(seg)))[:, 2]
        for h in c:
            assert zz.min() - 2.5 <= c[h][2] <= zz.max() + 2.5
    z_by_seg = [np.mean([cen[int(l)][2] for l in table[table.segment == s]["label"]]) for s in atlas.DEFAULT_SEGMENTS]
    assert np.all(np.diff(z_by_seg) < 0)  # C3 is rostral (higher z) to C8


def test_region_threshold_is_per_slice_percentile():
    """Brute-force check: each kept voxel is its horn's argmax and >= that slice's percentile."""
    affine, shape = atlas.pam50_epi_grid(("C4", "C5"), source="phantom")
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    maps = atlas.tissue_maps(affine, shape, source="phantom")
    sizes = []
    for pct in (0.0, 40.0, 80.0):
        labels, table = atlas.region_labels(ref, segments=("C4", "C5"), percentile=pct, source="phantom", min_voxels=1)
        data = np.asarray(labels.dataobj)
        sizes.append(int((data > 0).sum()))
        for _, row in table.iterrows():
            prob = maps[row["horn"]]
            for z in range(shape[2]):
                sl = prob[:, :, z]
                vox = data[:, :, z] == row["label"]
                if not vox.any():
                    continue
                thr = np.percentile(sl[sl > 0], pct)
                assert np.all(sl[vox] >= thr - 1e-7)
                others = np.stack([maps[h][:, :, z][vox] for h in atlas.HORNS])
                assert np.all(sl[vox] >= others.max(axis=0) - 1e-7)
                assert np.all(maps["spinal_level"][:, :, z][vox] == atlas.segment_level(row["segment"]))
    assert sizes[0] > sizes[1] > sizes[2] > 0


def test_dropped_regions_warn_and_are_not_kept(tmp_path):
    """A field of view covering only C3..C5 drops the C6..C8 regions with a warning."""
    affine, shape = atlas.pam50_epi_grid(("C3", "C4", "C5"), source="phantom")
    path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), str(path))
    with pytest.warns(UserWarning, match="C6_LV.*outside the field of view") as rec:
        labels, table = atlas.region_labels(path, source="phantom")
    msg = str(rec[0].message)
    for h in atlas.HORNS:
        for s in ("C6", "C7", "C8"):
            assert f"{s}_{h}" in msg
    assert str(path) in msg
    assert set(table["segment"]) == {"C3", "C4", "C5"}
    assert len(table) == 12
    data = np.asarray(labels.dataobj)
    assert set(np.unique(data)) == set(range(13))  # no empty label
    # min_voxels also drops (and names) small regions
    with pytest.warns(UserWarning, match="fewer than 100000 voxels"):
        with pytest.raises(SpineprintError, match="no gray-matter horn region"):
            atlas.region_labels(path, source="phantom", min_voxels=100000)


def test_region_labels_no_overlap_errors():
    far = np.eye(4)
    far[:3, 3] = [100.0, 100.0, 100.0]
    ref = nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), far)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SpineprintError, match="no gray-matter horn region"):
            atlas.region_labels(ref, source="phantom")
    ok_aff, ok_shape = atlas.pam50_epi_grid(("C5",), source="phantom")
    ok = nib.Nifti1Image(np.zeros(ok_shape, np.float32), ok_aff)
    with pytest.raises(SpineprintError, match="percentile"):
        atlas.region_labels(ok, segments=("C5",), percentile=100, source="phantom")
    with pytest.raises(SpineprintError, match="unknown horn"):
        atlas.region_labels(ok, segments=("C5",), horns=("LV", "XX"), source="phantom")
    with pytest.raises(SpineprintError, match="not found"):
        atlas.region_labels("/nonexistent/ref.nii.gz", source="phantom")


def test_horn_subset_and_order():
    affine, shape = atlas.pam50_epi_grid(("C5", "C6"), source="phantom")
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    _, table = atlas.region_labels(ref, segments=("C6", "C5"), horns=("RD", "LV"), source="phantom")
    assert list(table["name"]) == ["C6_RD", "C6_LV", "C5_RD", "C5_LV"]


def test_load_label_image(tmp_path):
    data = np.zeros((4, 4, 3), np.int16)
    data[0, 0, 0] = 1
    data[1:3, 1, 1] = 2
    img = nib.Nifti1Image(data, np.eye(4))
    path = tmp_path / "labels.nii.gz"
    nib.save(img, str(path))
    tsv = tmp_path / "names.tsv"
    pd.DataFrame({"label": [1, 2], "name": ["C5_LV", "myregion"]}).to_csv(tsv, sep="\t", index=False)
    labels, table = atlas.load_label_image(path, tsv)
    assert list(table["name"]) == ["C5_LV", "myregion"]
    assert list(table["segment"]) == ["C5", ""] and list(table["horn"]) == ["LV", ""]
    assert list(table["n_voxels"]) == [1, 2]
    np.testing.assert_array_equal(np.asarray(labels.dataobj), data)
    _, plain = atlas.load_label_image(path)
    assert list(plain["name"]) == ["region1", "region2"]
    pd.DataFrame({"label": [1], "name": ["a"]}).to_csv(tsv, sep="\t", index=False)
    with pytest.raises(SpineprintError, match="no name for label"):
        atlas.load_label_image(path, tsv)
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), str(bad))
    with pytest.raises(SpineprintError, match="non-negative integers"):
        atlas.load_label_image(bad)


def test_pam50_disk_cache_roundtrip(shared_data):
    affine, shape = atlas.pam50_epi_grid(("C6",), source="pam50")
    first = atlas.tissue_maps(affine, shape, source="pam50")
    cache_file = atlas._pam50_cache_file()
    assert cache_file is not None and cache_file.is_file()
    atlas._pam50_arrays.cache_clear()  # next call reads the .npz cache, not the NIfTI files
    again = atlas.tissue_maps(affine, shape, source="pam50")
    assert atlas.pam50_epi_grid(("C6",), source="pam50")[1] == shape
    for key in ("cord", "gm", "LV", "RD", "spinal_level"):
        np.testing.assert_array_equal(first[key], again[key])
    cache_file.write_bytes(b"corrupt")  # a corrupt cache is rebuilt from the files
    atlas._pam50_arrays.cache_clear()
    np.testing.assert_array_equal(atlas.tissue_maps(affine, shape, source="pam50")["gm"], first["gm"])

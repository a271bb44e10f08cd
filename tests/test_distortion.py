"""Tests for spineprint_utils.distortion (reverse phase-encoding distortion correction)."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from spineprint_utils import distortion as D
from spineprint_utils._io import SpineprintError

TRT = 0.04


def _phantom(shape=(32, 40, 8), seed=0):
    """Smooth cord-like phantom: bright CSF ring, darker cord, textured background."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x, y, _ = np.indices(shape)
    r2 = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2
    img = 40 * np.exp(-r2 / 150) + 60 * ((r2 > 12) & (r2 < 40)) + 30 * gaussian_filter(rng.random(shape), 1.5)
    # the neck lies inside the field of view: air (no signal) at both ends of each PE line
    body = np.clip((np.minimum(y, shape[1] - 1 - y) - 2) / 3, 0, 1)
    cord = r2 <= 12
    return gaussian_filter(img * body, (0.7, 0.7, 0)), cord


# ---------------------------------------------------------------- units and signs
def test_parse_pe_direction():
    assert D.parse_pe_direction("j") == (1, 1)
    assert D.parse_pe_direction("j-") == (1, -1)
    assert D.parse_pe_direction("i-") == (0, -1)
    for bad in ("y", "j+", "", None, "-j"):
        with pytest.raises(SpineprintError, match="PhaseEncodingDirection"):
            D.parse_pe_direction(bad, "x.json")


def test_field_displacement_units():
    # BIDS: displacement (voxels) = field (Hz) x TotalReadoutTime (s); sign by PE direction
    assert D.displacement_from_field(30.0, 0.04, 1) == pytest.approx(1.2)
    assert D.displacement_from_field(30.0, 0.04, -1) == pytest.approx(-1.2)
    assert D.field_from_displacement(1.2, 0.04) == pytest.approx(30.0)
    with pytest.raises(SpineprintError):
        D.field_from_displacement(1.0, 0.0)


# ---------------------------------------------------------------- forward model
def test_distort_matches_closed_form_linear_displacement():
    """e(x) = a x + b: Is(u) = I0((u - b) / (1 + a)) / (1 + a) (change of variables)."""
    n = 64
    x = np.arange(n, dtype=float)
    a, b = 0.15, 1.3
    g = lambda t: np.exp(-((t - 28.0) ** 2) / (2 * 4.0**2))  # noqa: E731
    img = np.broadcast_to(g(x)[None, :, None], (3, n, 2)).copy()
    e = np.broadcast_to((a * x + b)[None, :, None], img.shape)
    out = D.distort(img, e / TRT, pe_axis=1, total_readout_time=TRT, direction="j")
    expected = g((x - b) / (1 + a)) / (1 + a)
    np.testing.assert_allclose(out[1, :, 0], expected, atol=2e-3)
    # signal is conserved along the line (Jacobian modulation)
    assert out[1, :, 0].sum() == pytest.approx(img[1, :, 0].sum(), rel=1e-3)
    # opposite PE direction moves the profile the other way
    out_m = D.distort(img, e / TRT, pe_axis=1, total_readout_time=TRT, direction="j-")
    assert np.argmax(out_m[1, :, 0]) < np.argmax(img[1, :, 0]) < np.argmax(out[1, :, 0])


def test_distort_refuses_folding():
    img = np.ones((4, 20, 2))
    e = np.zeros(img.shape)
    e[:, 10:, :] = -3.0  # a step: folding
    with pytest.raises(SpineprintError, match="folds"):
        D.distort(img, e / TRT, 1, TRT)


def test_apply_displacement_undoes_distort():
    img, cord = _phantom()
    field = D.simulate_b0_field(img.shape, np.diag([1.0, 1.0, 3.0, 1.0]), cord, seed=2)
    dist = D.distort(img, field, 1, TRT, "j")
    back = D.apply_displacement(dist, field * TRT, 1, "j")
    inner = np.s_[:, 4:-4, :]
    assert np.abs(back - img)[inner].max() < 0.03 * img.max()
    assert np.abs(dist - img)[inner].max() > 0.1 * img.max()  # the distortion was not negligible


def test_apply_displacement_4d_and_nifti():
    img, _ = _phantom(shape=(16, 20, 4))
    vol = nib.Nifti1Image(np.stack([img, 2 * img], axis=-1).astype(np.float32), np.eye(4))
    disp = np.full(img.shape, 0.5)
    out = D.apply_displacement(vol, disp, 1, 1)
    assert isinstance(out, nib.Nifti1Image) and out.shape == vol.shape
    data = np.asarray(out.dataobj)
    np.testing.assert_allclose(data[..., 1], 2 * data[..., 0], rtol=1e-5, atol=1e-4)
    # a constant displacement is a pure shift (no Jacobian change): compare with scipy.ndimage.shift
    # (cubic B-spline; the two differ slightly within ~5 voxels of the line ends, where scipy pads
    # the input before computing the spline coefficients)
    from scipy.ndimage import shift

    for k, s in ((0, 1.0), (1, 2.0)):
        np.testing.assert_allclose(data[:, 5:-5, :, k], s * shift(img, (0, -0.5, 0), order=3, mode="nearest")[:, 5:-5, :],
                                   rtol=1e-5, atol=1e-4)
    lin = np.asarray(D.apply_displacement(vol, disp, 1, 1, order=1).dataobj)[..., 0]
    np.testing.assert_allclose(lin[:, :-1], 0.5 * (img[:, :-1] + img[:, 1:]), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- estimation
def test_chang_fitzpatrick_constant_shift_closed_form():
    """Analytic images g(x - d0) and g(x + d0): the estimate is d0 where there is signal."""
    n, d0 = 64, 1.7
    x = np.arange(n, dtype=float)
    g = lambda t: np.exp(-((t - 30.0) ** 2) / (2 * 5.0**2)) + 0.5 * np.exp(-((t - 40.0) ** 2) / 8.0)  # noqa: E731
    up = np.broadcast_to(g(x - d0)[None, :, None], (2, n, 2))
    down = np.broadcast_to(g(x + d0)[None, :, None], (2, n, 2))
    est = D.estimate_displacement(up, down, pe_axis=1, sigma=0)
    signal = g(x) > 0.1
    np.testing.assert_allclose(est[0, signal, 0], d0, atol=0.05)


def test_planted_field_recovered_to_a_fraction_of_a_voxel():
    img, cord = _phantom(seed=1)
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    field = D.simulate_b0_field(img.shape, aff, cord, peak_hz=30, seed=5)
    true_disp = field * TRT
    rng = np.random.default_rng(3)
    up = D.distort(img, field, 1, TRT, "j") + rng.normal(0, 1.0, img.shape)
    down = D.distort(img, field, 1, TRT, "j-") + rng.normal(0, 1.0, img.shape)
    est = D.estimate_displacement(up, down, 1, sigma=1.0)
    signal = img > 0.3 * img.max()
    err = np.abs(est - true_disp)
    assert np.abs(true_disp[signal]).mean() > 0.4  # a distortion worth correcting
    # measured: 0.02 voxel mean error for 0.73 voxel mean displacement
    assert err[signal].mean() < 0.1  # a small fraction of a voxel
    assert err[cord].mean() < 0.1
    assert np.median(err[signal]) < 0.1 * np.median(np.abs(true_disp[signal]))
    corrected = D.apply_displacement(up, est, 1, "j")
    r = lambda a: np.corrcoef(a[signal], img[signal])[0, 1]  # noqa: E731
    assert r(corrected) > r(up) + 0.05  # measured 0.914 -> 0.999
    assert 1 - r(corrected) < 0.1 * (1 - r(up))
    # field in Hz (what the BOLD runs use): error well below the field's spread
    f_est = D.field_from_displacement(est, TRT)
    assert np.abs(f_est - field)[signal].mean() < 0.1 * field[signal].std()


def test_estimate_displacement_rejects_bad_input():
    a = np.ones((4, 5, 6))
    with pytest.raises(SpineprintError, match="shapes"):
        D.estimate_displacement(a, np.ones((4, 5, 7)), 1)
    with pytest.raises(SpineprintError, match="pe_axis"):
        D.estimate_displacement(a, a, 3)
    b = a.copy()
    b[0, 0, 0] = np.nan
    with pytest.raises(SpineprintError, match="NaN"):
        D.estimate_displacement(a, b, 1)


# ---------------------------------------------------------------- BIDS metadata
def _write(path, data=None, meta=None, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is not None:
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4) if affine is None else affine),
                 str(path) + ".nii.gz")
    if meta is not None:
        (path.parent / (path.name + ".json")).write_text(json.dumps(meta))


@pytest.fixture()
def bids(tmp_path):
    """Tiny BIDS dataset: one subject with a j/j- pair for its BOLD run, one without fieldmaps."""
    img, cord = _phantom(shape=(20, 24, 4))
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    field = D.simulate_b0_field(img.shape, aff, cord, peak_hz=25, seed=1)
    fmap = tmp_path / "sub-01" / "fmap"
    _write(fmap / "sub-01_dir-PA_epi", D.distort(img, field, 1, TRT, "j"),
           {"PhaseEncodingDirection": "j", "TotalReadoutTime": TRT,
            "IntendedFor": ["func/sub-01_task-rest_bold.nii.gz"]}, aff)
    _write(fmap / "sub-01_dir-AP_epi", D.distort(img, field, 1, TRT, "j-"),
           {"PhaseEncodingDirection": "j-", "TotalReadoutTime": TRT,
            "IntendedFor": ["func/sub-01_task-rest_bold.nii.gz"]}, aff)
    bold = np.stack([D.distort(img * s, field, 1, TRT, "j-") for s in (1.0, 1.01, 0.99)], axis=-1)
    _write(tmp_path / "sub-01" / "func" / "sub-01_task-rest_bold", bold,
           {"PhaseEncodingDirection": "j-", "TotalReadoutTime": TRT, "RepetitionTime": 2.0}, aff)
    _write(tmp_path / "sub-02" / "func" / "sub-02_task-rest_bold", bold, {"RepetitionTime": 2.0}, aff)
    return tmp_path, img, field


def _edit(path, **changes):
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def test_read_fieldmap_pair_valid(bids):
    root, _, _ = bids
    pair = D.read_fieldmap_pair(root / "sub-01" / "fmap", bold=root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    assert pair.up.name == "sub-01_dir-PA_epi.nii.gz" and pair.down.name == "sub-01_dir-AP_epi.nii.gz"
    assert pair.pe_axis == 1 and pair.total_readout_time == TRT and pair.matched_by == "IntendedFor"
    # given as two sidecars (either order)
    pair2 = D.read_fieldmap_pair([root / "sub-01/fmap/sub-01_dir-AP_epi.json", root / "sub-01/fmap/sub-01_dir-PA_epi.json"])
    assert pair2.up == pair.up and pair2.matched_by == "unchecked"


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"TotalReadoutTime": None}, "missing TotalReadoutTime"),
        ({"PhaseEncodingDirection": "j"}, "identical PhaseEncodingDirection"),
        ({"PhaseEncodingDirection": "i-"}, "axes differ"),
        ({"TotalReadoutTime": 0.05}, "TotalReadoutTime differs"),
        ({"TotalReadoutTime": "40ms"}, "not a duration"),
        ({"IntendedFor": ["func/sub-01_task-other_bold.nii.gz"]}, "missing file"),
    ],
)
def test_bad_fieldmap_metadata_names_the_file(bids, changes, match):
    root, _, _ = bids
    sidecar = root / "sub-01/fmap/sub-01_dir-AP_epi.json"
    _edit(sidecar, **changes)
    with pytest.raises(SpineprintError, match=match) as info:
        D.read_fieldmap_pair(root / "sub-01" / "fmap")
    assert "sub-01_dir-" in str(info.value)


def test_intended_for_must_list_the_bold(bids):
    root, _, _ = bids
    other = root / "sub-01/func/sub-01_task-other_bold"
    _write(other, np.ones((20, 24, 4, 2)), {"PhaseEncodingDirection": "j-"})
    with pytest.raises(SpineprintError, match="IntendedFor does not list sub-01_task-other_bold"):
        D.read_fieldmap_pair(root / "sub-01" / "fmap", bold=str(other) + ".nii.gz")
    # a BOLD on another PE axis cannot be corrected with this pair
    _edit(root / "sub-01/func/sub-01_task-rest_bold.json", PhaseEncodingDirection="i")
    with pytest.raises(SpineprintError, match="axis"):
        D.read_fieldmap_pair(root / "sub-01" / "fmap", bold=root / "sub-01/func/sub-01_task-rest_bold.nii.gz")


def test_fieldmap_plan_records_skips(bids):
    root, _, _ = bids
    plan = D.fieldmap_plan(root)
    assert list(plan["status"]) == ["ok", "skip"]
    assert plan.loc[0, "matched_by"] == "IntendedFor"
    assert "no reverse phase-encoding fieldmap" in plan.loc[1, "reason"]
    _edit(root / "sub-01/fmap/sub-01_dir-PA_epi.json", TotalReadoutTime=None)
    plan = D.fieldmap_plan(root)
    assert plan.loc[0, "status"] == "skip" and "missing TotalReadoutTime" in plan.loc[0, "reason"]


def test_cospine_sidecars_pair_by_acq_label(shared_data, tmp_path):
    """Real CoSpine (ds005884) fieldmap sidecars: j/j- pairs without IntendedFor, acq-<task>."""
    src = shared_data / "openneuro" / "ds005884" / "sub-01"
    sub = tmp_path / "sub-01"
    (sub / "fmap").mkdir(parents=True)
    (sub / "func").mkdir()
    for js in (src / "fmap").glob("*_epi.json"):
        shutil.copy(js, sub / "fmap" / js.name)
        _write(sub / "fmap" / js.name[:-5], np.ones((4, 4, 2)))
    shutil.copy(src / "func" / "sub-01_task-motorL_bold.json", sub / "func")
    _write(sub / "func" / "sub-01_task-motorL_bold", np.ones((4, 4, 2, 2)))
    with pytest.raises(SpineprintError, match="several fieldmap pairs"):
        D.read_fieldmap_pair(sub / "fmap")
    pair = D.read_fieldmap_pair(sub / "fmap", bold=sub / "func" / "sub-01_task-motorL_bold.nii.gz")
    assert pair.matched_by == "acq-task" and "acq-motorL" in pair.up.name
    assert pair.up.name.endswith("dir-PA_epi.nii.gz")  # PA is "j" in these sidecars
    assert pair.total_readout_time == pytest.approx(0.0406401)


def test_correct_run_end_to_end(bids):
    root, img, field = bids
    pair = D.read_fieldmap_pair(root / "sub-01" / "fmap", bold=root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    bold = nib.load(str(root / "sub-01/func/sub-01_task-rest_bold.nii.gz"))
    corrected, f_est = D.correct_run(bold, pair, bold_direction="j-")
    signal = img > 0.3 * img.max()
    assert np.abs(f_est - field)[signal].mean() < 1.0  # Hz; the field spans about +-25 Hz
    raw = np.asarray(bold.dataobj)[..., 0]
    cor = np.asarray(corrected.dataobj)[..., 0]
    r = lambda a: np.corrcoef(a[signal], img[signal])[0, 1]  # noqa: E731
    assert r(cor) > r(raw)


def test_write_fieldmap_pair_round_trip(tmp_path):
    img, cord = _phantom(shape=(16, 24, 3))
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    field = D.simulate_b0_field(img.shape, aff, cord, seed=4)
    pair = D.write_fieldmap_pair(tmp_path / "sub-01" / "fmap", "sub-01", nib.Nifti1Image(img, aff), field, TRT,
                                 intended_for=["func/sub-01_task-rest_bold.nii.gz"])
    assert pair.up.name == "sub-01_dir-PA_epi.nii.gz" and pair.pe_axis == 1
    _write(tmp_path / "sub-01/func/sub-01_task-rest_bold", np.ones((16, 24, 3, 2)), {"PhaseEncodingDirection": "j"})
    back = D.read_fieldmap_pair(tmp_path / "sub-01" / "fmap", bold=tmp_path / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    assert back.matched_by == "IntendedFor" and back.up == pair.up and back.intended_for == pair.intended_for
    meta = json.loads((tmp_path / "sub-01/fmap/sub-01_dir-AP_epi.json").read_text())
    assert meta == {"IntendedFor": ["func/sub-01_task-rest_bold.nii.gz"], "PhaseEncodingDirection": "j-",
                    "TotalReadoutTime": TRT}
    up = np.asarray(nib.load(str(pair.up)).dataobj)
    np.testing.assert_allclose(up, D.distort(img, field, 1, TRT, "j"), rtol=1e-5, atol=1e-4)
    with pytest.raises(SpineprintError, match="invalid"):
        D.write_fieldmap_pair(tmp_path, "sub-../x", nib.Nifti1Image(img, aff), field, TRT)

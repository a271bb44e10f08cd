"""Bad inputs through the public entry points: a clear error naming the file and the
problem (or a recorded, visible warning when processing can go on), no partial output,
raw data never modified.

Every case starts from a copy of one tiny simulated study (2 subjects x 1 session x
40 volumes, generated once per session). The raw files of the copy are read-only
(``chmod 0444``), so a writer that touched raw data would fail; on top of that the raw
tree is checksummed before and after every case. Cases that break a run break
``sub-01`` and process only that participant, so each case fails in well under a
second, before any heavy computation.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spineprint_utils import acquisition, build, cli, connectivity, preprocess, simulate
from spineprint_utils._io import SpineprintError

ROOT = Path(__file__).resolve().parents[1]
FUNC = Path("sub-01") / "ses-01" / "func"
PREFIX = "sub-01_ses-01_task-rest_run-1"
BOLD = FUNC / f"{PREFIX}_bold.nii.gz"
SIDECAR = FUNC / f"{PREFIX}_bold.json"
PHYSIO = FUNC / f"{PREFIX}_physio.tsv.gz"
PHYSIO_JSON = FUNC / f"{PREFIX}_physio.json"


# ----------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad_inputs") / "study"
    simulate.simulate_dataset(path, n_subjects=2, n_sessions=1, n_volumes=60)  # 40 leave no dof for the default cleaning
    return path


def _read_only(tree: Path) -> None:
    for p in tree.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


@pytest.fixture
def study(tiny_study, tmp_path) -> Path:
    """A copy of the tiny study whose raw files are read-only."""
    path = tmp_path / "bids"
    shutil.copytree(tiny_study, path, ignore=shutil.ignore_patterns("derivatives"))
    _read_only(path)
    return path


def _replace(path: Path, data: bytes) -> None:
    """Plant a defect in a (read-only) raw file, keeping it read-only."""
    path.chmod(0o644)
    path.write_bytes(data)
    path.chmod(0o444)


def _replace_nifti(path: Path, data, affine=None, dtype=np.float32) -> None:
    img = nib.load(str(path))
    new = nib.Nifti1Image(np.asarray(data, dtype=dtype), img.affine if affine is None else affine)
    path.chmod(0o644)
    path.unlink()
    nib.save(new, str(path))
    path.chmod(0o444)


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    _replace(path, json.dumps(obj).encode())


def _checksums(tree: Path) -> dict:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file() and "derivatives" not in p.parts}


def _files(tree: Path) -> set:
    return {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()} if tree.exists() else set()


def _assert_no_partial_output(out: Path, allowed=("dataset_description.json",)) -> None:
    """Nothing but complete dataset-level metadata; no temporary files."""
    left = _files(out)
    temporary = [f for f in left if f.endswith(".tmp") or Path(f).name.startswith(".")]
    assert not temporary, f"temporary files left behind: {temporary}"
    assert left <= set(allowed), f"partial output left behind: {sorted(left - set(allowed))}"
    if "dataset_description.json" in left:
        json.loads((out / "dataset_description.json").read_text())  # complete, valid JSON


def _cli_preprocess(study, out, capsys, *extra, participants=("01",)) -> tuple[int, str]:
    argv = ["preprocess", str(study), "--out", str(out), *extra]
    if participants:
        argv += ["--participant-label", *participants]
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def _expect_cli_error(study, tmp_path, capsys, names: str, problem: str, *extra, participants=("01",)) -> str:
    """Run ``spineprint preprocess`` and check: exit 1, message names the file and the
    problem, no partial output, raw tree unchanged."""
    before = _checksums(study)
    out = tmp_path / "out"
    rc, err = _cli_preprocess(study, out, capsys, *extra, participants=participants)
    assert rc == 1, err
    assert "error:" in err
    assert names in err, err
    assert problem.lower() in err.lower(), err
    _assert_no_partial_output(out)
    assert _checksums(study) == before
    return err


# ----------------------------------------------------------------- BOLD images
def test_truncated_nifti(study, tmp_path, capsys):
    raw = (study / BOLD).read_bytes()
    _replace(study / BOLD, raw[: len(raw) // 2])
    _expect_cli_error(study, tmp_path, capsys, BOLD.name, "corrupt or truncated")


def test_corrupt_nifti_not_an_image(study, tmp_path, capsys):
    _replace(study / BOLD, gzip.compress(b"this is not a NIfTI header" * 20))
    _expect_cli_error(study, tmp_path, capsys, BOLD.name, "corrupt or truncated")


def test_corrupt_gzip_stream(study, tmp_path, capsys):
    raw = bytearray((study / BOLD).read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64  # damage the deflate stream mid-file
    _replace(study / BOLD, bytes(raw))
    _expect_cli_error(study, tmp_path, capsys, BOLD.name, "corrupt or truncated")


def test_3d_image_where_4d_expected(study, tmp_path, capsys):
    data = np.asarray(nib.load(str(study / BOLD)).dataobj)
    _replace_nifti(study / BOLD, data.mean(axis=3))
    _expect_cli_error(study, tmp_path, capsys, BOLD.name, "expected a 4D image")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(study, tmp_path, capsys, bad):
    data = np.asarray(nib.load(str(study / BOLD)).dataobj, dtype=np.float32)
    data[3, 4, 1, 7] = bad
    data[5, 5, 2, 30] = bad
    _replace_nifti(study / BOLD, data)
    err = _expect_cli_error(study, tmp_path, capsys, BOLD.name, "NaN or infinite")
    assert "2 NaN or infinite" in err  # the count is exact


def test_too_few_volumes(study, tmp_path, capsys):
    data = np.asarray(nib.load(str(study / BOLD)).dataobj)
    _replace_nifti(study / BOLD, data[..., :6], dtype=np.int16)
    _expect_cli_error(study, tmp_path, capsys, BOLD.name, "only 6 volumes")


# ----------------------------------------------------------------- sidecars
def test_missing_sidecar(study, tmp_path, capsys):
    (study / SIDECAR).unlink()
    _expect_cli_error(study, tmp_path, capsys, SIDECAR.name, "RepetitionTime missing (sidecar not found)")


def test_sidecar_not_json(study, tmp_path, capsys):
    _replace(study / SIDECAR, b'{"RepetitionTime": 2.0,,')
    _expect_cli_error(study, tmp_path, capsys, SIDECAR.name, "not valid JSON")


def test_sidecar_not_an_object(study, tmp_path, capsys):
    _replace(study / SIDECAR, b"[2.0, 3.0]")
    _expect_cli_error(study, tmp_path, capsys, SIDECAR.name, "expected a JSON object")


def test_missing_repetition_time(study, tmp_path, capsys):
    _edit_json(study / SIDECAR, lambda m: m.pop("RepetitionTime"))
    _expect_cli_error(study, tmp_path, capsys, SIDECAR.name, "RepetitionTime missing (sidecar found)")


@pytest.mark.parametrize("value, problem", [("two", "is not a number"), (-2.0, "must be positive"),
                                            (0, "must be positive")])
def test_bad_repetition_time(study, tmp_path, capsys, value, problem):
    _edit_json(study / SIDECAR, lambda m: m.update(RepetitionTime=value))
    _expect_cli_error(study, tmp_path, capsys, SIDECAR.name, problem)


def test_slice_timing_wrong_length(study, tmp_path, capsys):
    n_slices = nib.load(str(study / BOLD)).shape[2]
    _edit_json(study / SIDECAR, lambda m: m.update(SliceTiming=m["SliceTiming"][:-1]))
    _expect_cli_error(study, tmp_path, capsys, SIDECAR.name,
                      f"SliceTiming has {n_slices - 1} entries but the image has {n_slices} slices")


@pytest.mark.parametrize("where", ["negative", "equal_tr", "beyond_tr"])
def test_slice_timing_outside_0_tr(study, tmp_path, capsys, where):
    def edit(meta):
        st = list(meta["SliceTiming"])
        st[1] = {"negative": -0.1, "equal_tr": meta["RepetitionTime"], "beyond_tr": 3 * meta["RepetitionTime"]}[where]
        meta["SliceTiming"] = st
    _edit_json(study / SIDECAR, edit)
    _expect_cli_error(study, tmp_path, capsys, SIDECAR.name, "must lie in [0, TR")


def test_missing_slice_timing_is_a_recorded_visible_warning(study, tmp_path, capsys):
    """Processing can go on (volume onsets for every slice): a warning on screen and in
    the run's confounds sidecar, and complete outputs."""
    _edit_json(study / SIDECAR, lambda m: m.pop("SliceTiming"))
    before = _checksums(study)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="SliceTiming missing"):
        rc, _ = _cli_preprocess(study, out, capsys)
    assert rc == 0
    conf = json.loads((out / FUNC / f"{PREFIX}_desc-confounds_timeseries.json").read_text())
    assert any("SliceTiming missing" in note and SIDECAR.name in note for note in conf["Notes"])
    assert (out / FUNC / f"{PREFIX}_desc-qc_metrics.json").is_file()
    assert "SliceTiming" not in json.loads((out / FUNC / f"{PREFIX}_desc-preproc_bold.json").read_text())
    assert _checksums(study) == before


# ----------------------------------------------------------------- physiological recordings
def _physio_rows(study) -> list[str]:
    return gzip.decompress((study / PHYSIO).read_bytes()).decode().splitlines()


def test_physio_shorter_than_run(study, tmp_path, capsys):
    rows = _physio_rows(study)
    _replace(study / PHYSIO, gzip.compress(("\n".join(rows[: len(rows) // 2]) + "\n").encode(), mtime=0))
    _expect_cli_error(study, tmp_path, capsys, PHYSIO.name, "physio recording does not cover the run")


def test_physio_missing_column(study, tmp_path, capsys):
    rows = ["\t".join(r.split("\t")[:2]) for r in _physio_rows(study)]  # drop the trigger column
    _replace(study / PHYSIO, gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0))
    _expect_cli_error(study, tmp_path, capsys, PHYSIO.name, "2 column(s) but the sidecar")


def test_physio_non_numeric_value(study, tmp_path, capsys):
    rows = _physio_rows(study)
    rows[10] = "oops\t0.1\t0"
    _replace(study / PHYSIO, gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0))
    _expect_cli_error(study, tmp_path, capsys, PHYSIO.name, "non-numeric value 'oops'")


def test_physio_corrupt_gzip(study, tmp_path, capsys):
    raw = (study / PHYSIO).read_bytes()
    _replace(study / PHYSIO, raw[: len(raw) // 3])
    _expect_cli_error(study, tmp_path, capsys, PHYSIO.name, "corrupt or truncated gzip")


def test_physio_sidecar_without_sampling_frequency(study, tmp_path, capsys):
    _edit_json(study / PHYSIO_JSON, lambda m: m.pop("SamplingFrequency"))
    _expect_cli_error(study, tmp_path, capsys, PHYSIO_JSON.name, "SamplingFrequency")


# ----------------------------------------------------------------- participants and folders
def test_unknown_participant_label(study, tmp_path, capsys):
    err = _expect_cli_error(study, tmp_path, capsys, str(study), "participant(s) 99 not found", participants=("99",))
    assert "99" in err


@pytest.mark.parametrize("label", ["../x", "../../etc", "sub-01/../../x", "01/..", "/tmp/x"])
def test_path_like_participant_label(study, tmp_path, capsys, label):
    out = tmp_path / "deep" / "out"
    before = _files(tmp_path)
    rc, err = _cli_preprocess(study, out, capsys, participants=(label,))
    assert rc == 1 and "invalid sub label" in err and "alphanumeric" in err
    _assert_no_partial_output(out)
    # nothing written anywhere near the output folder (e.g. at out/../x)
    assert _files(tmp_path) == before


def test_folder_that_is_not_bids(tmp_path, capsys):
    folder = tmp_path / "not_bids"
    (folder / "scans").mkdir(parents=True)
    (folder / "scans" / "notes.txt").write_text("a folder of something else\n")
    out = tmp_path / "out"
    rc = cli.main(["preprocess", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and str(folder) in err and "no BOLD runs" in err
    _assert_no_partial_output(out)
    with pytest.raises(SpineprintError, match=r"not_bids: not a BIDS dataset \(no dataset_description.json\)"):
        acquisition.read_bids_metadata(folder)
    with pytest.raises(SpineprintError, match="BIDS folder not found"):
        acquisition.read_bids_metadata(tmp_path / "does_not_exist")
    rc = cli.main(["preprocess", str(tmp_path / "does_not_exist"), "--out", str(out)])
    assert rc == 1 and "BIDS folder not found" in capsys.readouterr().err


def test_bids_metadata_bad_slice_timing_named(study):
    _edit_json(study / SIDECAR, lambda m: m.update(SliceTiming=[x + 5.0 for x in m["SliceTiming"]]))
    with pytest.raises(SpineprintError) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acquisition.read_bids_metadata(study)
    assert SIDECAR.name in str(info.value) and "SliceTiming" in str(info.value)


# ----------------------------------------------------------------- masks, atlas, grids
def test_mask_on_another_grid(study, tmp_path, capsys):
    img = nib.load(str(study / BOLD))
    mask = tmp_path / "cord_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(img.shape[:2] + (img.shape[2] + 1,), np.uint8), img.affine), str(mask))
    out = tmp_path / "out"
    with pytest.raises(SpineprintError, match=r"cord_mask.nii.gz: cord mask shape .* does not match the BOLD grid"):
        preprocess.preprocess_dataset(study, out, participants=["01"], mask_img=mask, progress=False)
    _assert_no_partial_output(out)


def test_mask_with_mismatched_affine(study, tmp_path):
    img = nib.load(str(study / BOLD))
    affine = img.affine.copy()
    affine[:3, 3] += [4.0, 0.0, 10.0]  # same shape, shifted 4 mm x 10 mm
    mask = tmp_path / "cord_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(img.shape[:3], np.uint8), affine), str(mask))
    out = tmp_path / "out"
    with pytest.raises(SpineprintError, match=r"cord_mask.nii.gz: .*affine"):
        preprocess.preprocess_dataset(study, out, participants=["01"], mask_img=mask, progress=False)
    _assert_no_partial_output(out)


def _labels_on_run_grid(study, tmp_path, affine_shift=None, empty_label=False):
    img = nib.load(str(study / BOLD))
    lab = np.zeros(img.shape[:3], np.int16)
    cx, cy = img.shape[0] // 2, img.shape[1] // 2
    lab[cx - 2:cx, cy - 1:cy + 1, :] = 1
    lab[cx:cx + 2, cy - 1:cy + 1, :] = 2
    if not empty_label:
        lab[cx - 1:cx + 1, cy + 1:cy + 3, :] = 3
    affine = img.affine.copy()
    if affine_shift is not None:
        affine[:3, 3] += affine_shift
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(lab, affine), str(path))
    names = tmp_path / "labels.tsv"
    names.write_text("label\tname\n1\tC5_LV\n2\tC5_RV\n3\tC5_LD\n")
    return path, names


def test_connectivity_labels_with_mismatched_affine(study, tmp_path):
    labels, names = _labels_on_run_grid(study, tmp_path, affine_shift=[0.0, 0.0, 5.0])
    out = tmp_path / "fc"
    with pytest.raises(SpineprintError, match=r"labels.nii.gz: label image grid differs from the run .*_bold.nii.gz"):
        connectivity.connectivity_dataset(study, pattern="sub-*/ses-*/func/*_bold.nii.gz", labels_img=labels,
                                          names_tsv=names, output_dir=out)
    _assert_no_partial_output(out)


def test_connectivity_empty_atlas_region_is_a_visible_recorded_warning(study, tmp_path):
    """PAM50 regions with no voxel on the runs' grid (segment C1 is outside the field of
    view): processing goes on with the other regions; a warning names the dropped regions
    and why, and the outputs record which regions were used."""
    out = tmp_path / "fc"
    before = _checksums(study)
    with pytest.warns(UserWarning, match=r"dropped 4 region\(s\).*C1_LV \(outside the field of view\)"):
        group = connectivity.connectivity_dataset(study, pattern="sub-*/ses-*/func/*_bold.nii.gz",
                                                  segments=("C1", "C5"), output_dir=out)
    data = connectivity.load_connectomes(group)
    assert list(data["regions"]) == ["C5_LV", "C5_RV", "C5_LD", "C5_RD"]
    table = (out / "group" / "atlas-PAM50horns_dseg.tsv").read_text()
    assert "C1_" not in table and "C5_LV" in table
    assert not [f for f in _files(out) if f.endswith(".tmp")]
    assert _checksums(study) == before


def test_connectivity_all_regions_empty(study, tmp_path):
    out = tmp_path / "fc"
    with pytest.raises(SpineprintError) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            connectivity.connectivity_dataset(study, pattern="sub-*/ses-*/func/*_bold.nii.gz",
                                              segments=("C1", "C2"), output_dir=out)
    assert "C1" in str(info.value) or "region" in str(info.value)
    _assert_no_partial_output(out)


def test_connectivity_refuses_to_write_into_raw(study):
    before = _files(study)
    with pytest.raises(SpineprintError, match="raw"):
        connectivity.connectivity_dataset(study, pattern="sub-*/ses-*/func/*_bold.nii.gz")
    assert _files(study) == before


# ----------------------------------------------------------------- notebook parameters (papermill)
@pytest.mark.parametrize("params, problem", [
    ({"n_permutations": "many"}, "parameter 'n_permutations' expects int"),
    ({"n_permutations": 2.5}, "parameter 'n_permutations' expects int"),
    ({"n_permutations": True}, "parameter 'n_permutations' expects int"),
    ({"study_params": [4, 2]}, "parameter 'study_params' expects dict"),
    ({"no_such_parameter": 1}, "unknown parameter 'no_such_parameter'"),
])
def test_wrong_notebook_parameters_rejected_before_running(tmp_path, params, problem):
    nb = ROOT / "notebooks" / "04_fingerprinting.ipynb"
    with pytest.raises(SpineprintError) as info:
        build.check_params(nb, params)
    assert "04_fingerprinting.ipynb" in str(info.value) and problem in str(info.value)
    # through the build: rejected before anything is staged or executed
    pfile = tmp_path / "params.yml"
    import yaml

    pfile.write_text(yaml.safe_dump({"04_fingerprinting": params}))
    out = tmp_path / "build"
    with pytest.raises(SpineprintError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        build.build_book(ROOT, output=out, params_file=pfile, html=False, progress=False)
    assert not out.exists()


def test_parameters_file_not_yaml(tmp_path, capsys):
    pfile = tmp_path / "params.yml"
    pfile.write_text("all: [unclosed\n")
    out = tmp_path / "build"
    rc = cli.main(["build", "--root", str(ROOT), "--output", str(out), "--params", str(pfile), "--no-html", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "params.yml" in err and "not valid YAML" in err
    assert not out.exists()


def test_raw_files_really_are_read_only(study):
    """The fixture's protection is real: writing a raw file fails (unless running as root,
    where the checksums are the proof)."""
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions; raw checksums are compared in every case instead")
    with pytest.raises(PermissionError):
        (study / BOLD).write_bytes(b"")

"""Reproducible, provenance-carrying derivatives; raw data opened read-only.

Two runs of ``preprocess_dataset`` + ``connectivity_dataset`` from scratch into two
folders give byte-identical derivatives (NIfTI gzip with mtime 0, sorted JSON, TSV,
PNG figures, the group ``.npz``). Excluded, and only these: the wall time of each run,
``runtime_s`` in ``*_desc-qc_metrics.json`` and in ``qc.tsv``. (The book's HTML is not
covered: Sphinx writes build timestamps and random ids.)
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from spineprint_utils import __version__, connectivity, preprocess, simulate

#: derivative fields that legitimately differ between two runs
VOLATILE = ("runtime_s",)

# ---------------------------------------------------------------- audit: raw opened read-only
_AUDIT = {"root": None, "writes": []}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _audit(event, args):
    root = _AUDIT["root"]
    if root is None:
        return
    if event == "open":
        path, mode, flags = args
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and os.path.abspath(os.fsdecode(path)).startswith(root):
            _AUDIT["writes"].append((event, os.fsdecode(path), mode, flags))
    elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "os.chmod", "os.truncate", "os.mkdir",
                   "shutil.rmtree", "os.rmdir", "os.utime"):
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        if any(os.path.abspath(os.fsdecode(p)).startswith(root) for p in paths):
            _AUDIT["writes"].append((event, *map(str, paths)))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it is inert while root is None


def _files(tree: Path) -> dict:
    return {str(p.relative_to(tree)): p for p in sorted(tree.rglob("*")) if p.is_file()}


def _normalised(path: Path) -> bytes:
    if path.name.endswith("_desc-qc_metrics.json"):
        obj = json.loads(path.read_text())
        for key in VOLATILE:
            obj.pop(key)
        return json.dumps(obj, sort_keys=True).encode()
    if path.name == "qc.tsv":
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        drop = [rows[0].index(k) for k in VOLATILE]
        return "\n".join("\t".join(v for i, v in enumerate(r) if i not in drop) for r in rows).encode()
    return path.read_bytes()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("repro") / "bids"
    simulate.simulate_dataset(path, n_subjects=2, n_sessions=1, n_volumes=60)  # 40 leaves no dof for FC
    return path


def _pipeline(study: Path, out: Path) -> Path:
    """The dataset-level stages, auditing every write under the raw folder."""
    raw_root = str(study.resolve()) + os.sep
    _AUDIT.update(root=raw_root, writes=[])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            deriv = preprocess.preprocess_dataset(study, out / "spineprint", progress=False)
            connectivity.connectivity_dataset(deriv)
            connectivity.connectivity_dataset(deriv, output_dir=out / "fc")  # a separate derivative folder
    finally:
        _AUDIT["root"] = None
    assert not _AUDIT["writes"], f"raw data opened for writing: {_AUDIT['writes'][:5]}"
    return out


@pytest.fixture(scope="module")
def two_builds(study, tmp_path_factory):
    a = _pipeline(study, tmp_path_factory.mktemp("build_a"))
    b = _pipeline(study, tmp_path_factory.mktemp("build_b"))
    return a, b


def test_two_builds_are_byte_identical(two_builds):
    a, b = two_builds
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    kinds = {Path(n).suffix for n in fa}
    assert {".gz", ".json", ".tsv", ".png", ".npz"} <= kinds  # every kind of derivative is covered
    strict = [n for n in fa if fa[n].read_bytes() != fb[n].read_bytes()]
    # only the run wall times may differ ...
    assert all(n.endswith("_desc-qc_metrics.json") or n.endswith("qc.tsv") for n in strict), strict
    # ... and once they are removed, everything is identical
    assert not [n for n in fa if _normalised(fa[n]) != _normalised(fb[n])]


def test_npz_is_byte_reproducible_and_loads(tmp_path):
    from spineprint_utils._io import atomic_save_npz

    arrays = {"fc": np.arange(12.0).reshape(3, 4), "names": np.array(["a", "bb"]), "flag": np.array(True)}
    atomic_save_npz(tmp_path / "x.npz", **arrays)
    os.utime(tmp_path / "x.npz", (0, 0))
    import time

    time.sleep(1.1)  # zip member dates have a 2 s resolution: make sure the clock moved
    time.sleep(1.0)
    atomic_save_npz(tmp_path / "y.npz", **arrays)
    assert (tmp_path / "x.npz").read_bytes() == (tmp_path / "y.npz").read_bytes()
    with np.load(tmp_path / "y.npz") as data:
        for key, value in arrays.items():
            np.testing.assert_array_equal(data[key], value)


def test_derivative_folders_carry_generated_by(two_builds):
    a, _ = two_builds
    desc = json.loads((a / "spineprint" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "spineprint" and gen["Version"] == __version__
    for key, value in preprocess.RUN_DEFAULTS.items():
        expected = list(value) if isinstance(value, tuple) else value
        assert gen["Parameters"][key] == expected, key
    fc_desc = json.loads((a / "fc" / "dataset_description.json").read_text())
    fc_gen = fc_desc["GeneratedBy"][0]
    assert fc_gen["Version"] == __version__
    assert fc_gen["Parameters"]["kind"] == "correlation" and fc_gen["Parameters"]["regions"][0] == "C3_LV"
    # every per-run derivative sidecar records the version and parameters too
    for sidecar in (a / "spineprint").rglob("*_desc-preproc_bold.json"):
        meta = json.loads(sidecar.read_text())
        assert meta["SpineprintVersion"] == __version__ and meta["Parameters"]["motion"] is True


def test_atomic_writes_leave_no_temporary_names(two_builds):
    for tree in two_builds:
        # temporary names start with "."; .bidsignore is the BIDS ignore file, not a temporary
        assert not [n for n in _files(tree) if (Path(n).name.startswith(".") and Path(n).name != ".bidsignore")
                    or n.endswith(".tmp")]


def test_audit_hook_catches_a_write_into_raw(study):
    """The read-only audit is not vacuous: a write into the raw folder is recorded."""
    _AUDIT.update(root=str(study.resolve()) + os.sep, writes=[])
    try:
        probe = study / ".audit_probe"
        with open(probe, "w") as fh:
            fh.write("x")
        os.unlink(probe)
    finally:
        _AUDIT["root"] = None
    events = [w[0] for w in _AUDIT["writes"]]
    assert "open" in events and "os.remove" in events

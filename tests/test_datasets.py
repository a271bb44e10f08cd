"""Tests for the real data loaders (never touch the network)."""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from spineprint_utils import datasets
from spineprint_utils._io import SpineprintError


def _readme_registry(shared_data: Path) -> dict[str, str]:
    """The PAM50 checksums as published in the shared data README (independent source)."""
    text = (shared_data / "README.md").read_text()
    pairs = re.findall(r"^([0-9a-f]{64})  (\S+)$", text, flags=re.M)
    # the README also lists non-PAM50 files (e.g. sct_testing_data/t2/labels.nii.gz)
    return {rel: sha for sha, rel in pairs if rel.startswith(("template/", "atlas/"))}


def _copy_pam50(shared_data: Path, dest: Path) -> Path:
    for sub in ("template", "atlas"):
        shutil.copytree(shared_data / "pam50" / sub, dest / sub)
    return dest


@pytest.fixture
def no_network(monkeypatch):
    """Make every pooch download fail, as it would offline."""
    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise ConnectionError(f"no network for {url}")

    monkeypatch.setattr(datasets.pooch, "retrieve", fail)
    return calls


# ------------------------------------------------------------------ PAM50
def test_pam50_registry_matches_published_checksums(shared_data):
    published = _readme_registry(shared_data)
    assert len(published) == 15
    assert datasets.PAM50_REGISTRY == published


def test_fetch_pam50_env_override(shared_data, no_network):
    root = datasets.fetch_pam50()
    assert root == (shared_data / "pam50").resolve()
    assert (root / "template").is_dir() and (root / "atlas").is_dir()
    # independent check of the verification: hash with hashlib directly
    for rel, expected in datasets.PAM50_REGISTRY.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == expected
    assert no_network == []  # a local copy never triggers a download


def test_fetch_pam50_data_dir_argument_root_or_pam50(shared_data, no_network):
    assert datasets.fetch_pam50(shared_data) == (shared_data / "pam50").resolve()
    assert datasets.fetch_pam50(shared_data / "pam50") == (shared_data / "pam50").resolve()


def test_fetch_pam50_corrupt_file_is_named(shared_data, tmp_path, no_network):
    copy = _copy_pam50(shared_data, tmp_path / "pam50")
    bad = copy / "atlas" / "PAM50_atlas_34.nii.gz"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(SpineprintError, match=r"PAM50_atlas_34\.nii\.gz") as info:
        datasets.fetch_pam50(copy)
    assert "checksum mismatch" in str(info.value)
    assert "PAM50_atlas_30" not in str(info.value)  # only the bad file is named
    # the same through the environment variable
    datasets._HASH_MEMO.clear()
    (copy / "atlas" / "PAM50_atlas_30.nii.gz").unlink()
    with pytest.raises(SpineprintError, match=r"missing file\(s\): .*PAM50_atlas_30\.nii\.gz"):
        datasets.fetch_pam50(tmp_path)


def test_fetch_pam50_env_var_corrupt(shared_data, tmp_path, monkeypatch, no_network):
    copy = _copy_pam50(shared_data, tmp_path / "pam50")
    (copy / "template" / "PAM50_cord.nii.gz").write_bytes(b"not a nifti")
    monkeypatch.setenv("SPINEPRINT_DATA_DIR", str(tmp_path))
    with pytest.raises(SpineprintError, match=r"template/PAM50_cord\.nii\.gz"):
        datasets.fetch_pam50()


def test_fetch_pam50_override_without_copy(tmp_path, no_network):
    with pytest.raises(SpineprintError, match="no PAM50 copy"):
        datasets.fetch_pam50(tmp_path / "nowhere")


def test_fetch_pam50_offline_without_copy_says_how(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SpineprintError, match="SPINEPRINT_DATA_DIR") as info:
        datasets.fetch_pam50()
    assert "download failed" in str(info.value)
    assert no_network == list(datasets.PAM50_URLS)  # both mirrors tried, in order


def test_fetch_pam50_download_path(shared_data, tmp_path, monkeypatch):
    """Simulated release download: pooch gets a zip, the Unzip processor extracts it."""
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_retrieve(url, known_hash, fname, path, processor, progressbar):
        calls.append(url)
        archive = Path(path) / fname
        with zipfile.ZipFile(archive, "w") as zf:
            for rel in datasets.PAM50_REGISTRY:
                zf.write(shared_data / "pam50" / rel, f"PAM50/{rel}")
        return processor(str(archive), "download", None)

    monkeypatch.setattr(datasets.pooch, "retrieve", fake_retrieve)
    root = datasets.fetch_pam50()
    assert calls == [datasets.PAM50_URLS[0]]
    assert root.name == "PAM50" and (root / "atlas" / "PAM50_atlas_35.nii.gz").is_file()
    # second call: served from the verified cache, no download
    assert datasets.fetch_pam50() == root
    assert len(calls) == 1


def test_fetch_pam50_corrupt_download_rejected(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))

    def fake_retrieve(url, known_hash, fname, path, processor, progressbar):
        archive = Path(path) / fname
        with zipfile.ZipFile(archive, "w") as zf:
            for rel in datasets.PAM50_REGISTRY:
                data = (shared_data / "pam50" / rel).read_bytes()
                zf.writestr(rel, data + b"x" if rel.endswith("_gm.nii.gz") else data)
        return processor(str(archive), "download", None)

    monkeypatch.setattr(datasets.pooch, "retrieve", fake_retrieve)
    with pytest.raises(SpineprintError, match=r"PAM50_gm\.nii\.gz") as info:
        datasets.fetch_pam50()
    assert "SPINEPRINT_DATA_DIR" in str(info.value)
    # nothing unverified is left behind in the cache
    assert not (tmp_path / "cache" / "pam50" / "release-r20250730").exists()


# ------------------------------------------------------------------ OpenNeuro
def _hash_tree(folder: Path) -> dict[str, str]:
    """Independent checksum of every file of a folder (hashlib, os.walk-free).

    ``annexed_files.tsv`` at the top is not a dataset file: the shared copy's listing of the
    annexed (image/physio) files, from which the package's image registry was built.
    """
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "annexed_files.tsv"  # the annex listing beside a local copy
    }


def test_known_openneuro_versions(shared_data):
    known = datasets.known_openneuro()
    assert known == {"ds004386": "1.1.2", "ds005883": "1.1.0", "ds005884": "1.1.0"}
    # the pinned versions are the ones the datasets declare about themselves
    for ds, version in known.items():
        desc = (shared_data / "openneuro" / ds / "dataset_description.json").read_text()
        assert f"openneuro.{ds}.v{version}" in desc


@pytest.mark.parametrize("ds", ["ds005884", "ds005883", "ds004386"])
def test_openneuro_registry_covers_local_copy(shared_data, ds):
    version, registry = datasets.openneuro_registry(ds)
    assert registry == _hash_tree(shared_data / "openneuro" / ds)
    assert "dataset_description.json" in registry and "participants.tsv" in registry


def test_fetch_openneuro_env_override(shared_data, no_network):
    root = datasets.fetch_openneuro("ds005884")
    assert root == (shared_data / "openneuro" / "ds005884").resolve()
    assert datasets.fetch_openneuro("ds004386", version="v1.1.2", data_dir=shared_data) == (
        shared_data / "openneuro" / "ds004386"
    ).resolve()
    assert no_network == []


def test_fetch_openneuro_unknown_dataset_lists_known():
    with pytest.raises(SpineprintError, match=r"ds999999.*ds004386.*ds005883.*ds005884"):
        datasets.fetch_openneuro("ds999999")


def test_fetch_openneuro_unpinned_version():
    with pytest.raises(SpineprintError, match=r"only snapshot 1\.1\.0 is pinned"):
        datasets.fetch_openneuro("ds005884", version="1.0.0")


def test_fetch_openneuro_modified_sidecar_is_named(shared_data, tmp_path, no_network):
    copy = tmp_path / "ds005883"
    shutil.copytree(shared_data / "openneuro" / "ds005883", copy)
    side = copy / "sub-03" / "func" / "sub-03_task-pain_bold.json"
    side.write_text(side.read_text().replace('"RepetitionTime": 2.68', '"RepetitionTime": 2.5'))
    with pytest.raises(SpineprintError, match=r"sub-03_task-pain_bold\.json") as info:
        datasets.fetch_openneuro("ds005883", data_dir=copy)
    assert "checksum mismatch" in str(info.value)


def test_fetch_openneuro_offline_without_copy(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SpineprintError, match="SPINEPRINT_DATA_DIR") as info:
        datasets.fetch_openneuro("ds004386")
    assert "s3.amazonaws.com/openneuro.org/ds004386/" in str(info.value)
    assert len(no_network) == 1  # gives up at the first failure, no 150 retries


def test_fetch_openneuro_download_path(shared_data, tmp_path, monkeypatch):
    """Simulated download: files served from the shared copy, checksum enforced as pooch does."""
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))
    src = shared_data / "openneuro" / "ds004386"
    prefix = "https://s3.amazonaws.com/openneuro.org/ds004386/"
    calls = []

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        assert url.startswith(prefix)
        calls.append(url)
        data = (src / url[len(prefix):]).read_bytes()
        if url.endswith("participants.tsv"):
            data += b"tampered\n"
        if hashlib.sha256(data).hexdigest() != known_hash.split(":")[1]:
            raise ValueError("SHA256 hash of downloaded file does not match")
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / fname).write_bytes(data)
        return str(Path(path) / fname)

    monkeypatch.setattr(datasets.pooch, "retrieve", fake_retrieve)
    with pytest.raises(SpineprintError, match=r"participants\.tsv.*pinned checksum"):
        datasets.fetch_openneuro("ds004386")
    n_first = len(calls)

    def honest_retrieve(url, known_hash, fname, path, progressbar):
        calls.append(url)
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / fname).write_bytes((src / url[len(prefix):]).read_bytes())

    monkeypatch.setattr(datasets.pooch, "retrieve", honest_retrieve)
    root = datasets.fetch_openneuro("ds004386")
    assert _hash_tree(root) == _hash_tree(src)
    # resumable: files verified in the first attempt were not fetched again
    assert len(calls) - n_first == 152 - (n_first - 1)
    assert datasets.fetch_openneuro("ds004386") == root  # all cached now
    assert len(calls) - n_first == 152 - (n_first - 1)


# ------------------------------------------------------------------ command line
def _run_cli(argv):
    import argparse

    parser = argparse.ArgumentParser()
    datasets.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_fetch_prints_verified_folders(shared_data, capsys, no_network):
    assert _run_cli(["fetch", "pam50"]) == 0
    assert _run_cli(["fetch", "ds005884", "--data-dir", str(shared_data)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str((shared_data / "pam50").resolve()), str((shared_data / "openneuro" / "ds005884").resolve())]
    with pytest.raises(SpineprintError, match="unknown OpenNeuro dataset"):
        _run_cli(["fetch", "ds1"])


def test_make_openneuro_registry_roundtrip(shared_data, tmp_path):
    text = datasets.make_openneuro_registry(shared_data / "openneuro" / "ds004386", "ds004386", "1.1.2",
                                            out=tmp_path / "reg.txt")
    version, registry = datasets._parse_registry(tmp_path / "reg.txt")
    assert version == "1.1.2"
    assert (tmp_path / "reg.txt").read_text() == text
    # identical to the committed registry: the pin is reproducible from the local copy
    assert text == (Path(datasets.__file__).parent / "data" / "openneuro_ds004386.txt").read_text()
    (tmp_path / "bad.txt").write_text("# OpenNeuro dsX snapshot 1\nabc  file\n")
    with pytest.raises(SpineprintError, match=r"bad\.txt:2: malformed"):
        datasets._parse_registry(tmp_path / "bad.txt")

"""OpenNeuro images and physio by parameters: registry, selection, resumable verified downloads.

Downloads are tested against a local HTTP server on 127.0.0.1 (never the real network) that
serves the real ds004386 text files from ../shared/data and small stand-in "images" whose
sizes and checksums a test registry lists. The server honours HTTP Range requests and can
be told to drop the connection part-way or to serve corrupted bytes.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spineprint_utils import build, datasets
from spineprint_utils._io import SpineprintError

ROOT = Path(__file__).resolve().parents[1]
DS = "ds004386"


# ------------------------------------------------------------------ package registry
@pytest.mark.parametrize("ds,version", [("ds004386", "1.1.2"), ("ds005883", "1.1.0"), ("ds005884", "1.1.0")])
def test_annex_registry_is_the_shared_listing(shared_data, ds, version):
    """The committed registry equals the rows of annexed_files.tsv it was built from."""
    raw = (shared_data / "openneuro" / ds / "annexed_files.tsv").read_text().splitlines()[1:]
    expected = {}
    for line in raw:
        path, backend, size, digest = line.split("\t")
        if path.startswith("sub-") and (path.endswith((".nii.gz", ".nii")) or path.endswith("_physio.tsv.gz")):
            expected[path] = (int(size), digest)
    tab = datasets.openneuro_annex(ds)
    assert dict(zip(tab["path"], zip(tab["size"].astype(int), tab["sha256"]))) == expected
    assert tab["participant"].notna().all() and tab["suffix"].notna().all()
    text = datasets.make_openneuro_annex(shared_data / "openneuro" / ds / "annexed_files.tsv", ds, version)
    assert text == (Path(datasets.__file__).parent / "data" / f"openneuro_{ds}_annex.tsv").read_text()


def test_selection_and_sizes():
    sel = datasets.select_openneuro_files(DS, participants=["sub-ZS001", "ZS002"], suffixes=["bold"])
    assert list(sel["path"]) == [
        "sub-ZS001/func/sub-ZS001_task-rest_acq-autozshim_bold.nii.gz",
        "sub-ZS001/func/sub-ZS001_task-rest_acq-manualzshim_bold.nii.gz",
        "sub-ZS002/func/sub-ZS002_task-rest_acq-autozshim_bold.nii.gz",
        "sub-ZS002/func/sub-ZS002_task-rest_acq-manualzshim_bold.nii.gz",
    ]
    with pytest.raises(SpineprintError, match="ZS999"):
        datasets.select_openneuro_files(DS, participants=["ZS999"])
    with pytest.raises(SpineprintError, match="suffix.*T1w.*known: T2w, bold"):
        datasets.select_openneuro_files(DS, suffixes=["T1w"])
    sizes = datasets.download_sizes(DS)
    assert sizes.loc["bold", "files"] == 96 and sizes.loc["T2w", "files"] == 48
    assert sizes.loc["bold", "bytes"] == sel["size"].sum() + sum(  # independent sum over the tsv rows
        int(s) for p, s in zip(datasets.openneuro_annex(DS)["path"], datasets.openneuro_annex(DS)["size"])
        if p.endswith("_bold.nii.gz") and not p.startswith(("sub-ZS001/", "sub-ZS002/")))


def test_readme_download_sizes_match_registry():
    """The download sizes documented in README.md are computed from the registries."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (ds\d{6}) \| ([A-Za-z0-9]+) \| (\d+) \| ([\d.]+) \|", text, flags=re.M)
    assert len(rows) >= 9
    for ds, suffix, files, gb in rows:
        sizes = datasets.download_sizes(ds)
        assert int(files) == sizes.loc[suffix, "files"], (ds, suffix)
        assert float(gb) == pytest.approx(sizes.loc[suffix, "bytes"] / 1e9, abs=0.006), (ds, suffix)


# ------------------------------------------------------------------ local HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path = Path(".")
    cut_after: dict = {}      # path -> bytes to send before dropping the connection (once)
    corrupt: set = set()      # paths served with one byte flipped
    no_range: set = set()     # paths for which Range is ignored (200 + whole file)
    log: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        rel = self.path.lstrip("/")
        path = self.root / rel
        self.log.append((rel, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = bytearray(path.read_bytes())
        if rel in self.corrupt:
            data[len(data) // 2] ^= 0xFF
        start = 0
        rng = self.headers.get("Range")
        if rng and rel not in self.no_range:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = bytes(data[start:])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.cut_after.pop(rel, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def server(shared_data, tmp_path, monkeypatch):
    root = tmp_path / "served"
    shutil.copytree(shared_data / "openneuro" / DS, root / DS, ignore=shutil.ignore_patterns("annexed_files.tsv"))
    rng = np.random.default_rng(0)
    rows = []
    for rel in ("sub-ZS001/func/sub-ZS001_task-rest_acq-autozshim_bold.nii.gz",
                "sub-ZS001/anat/sub-ZS001_T2w.nii.gz",
                "sub-ZS002/func/sub-ZS002_task-rest_acq-autozshim_bold.nii.gz"):
        data = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
        (root / DS / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / DS / rel).write_bytes(data)
        rows.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    annex = pd.DataFrame(rows)
    annex["participant"] = annex["path"].str.extract(r"^sub-([A-Za-z0-9]+)/", expand=False)
    annex["suffix"] = annex["path"].str.extract(r"_([A-Za-z0-9]+)\.nii\.gz$", expand=False)

    handler = type("H", (_Handler,), {"root": root, "cut_after": {}, "corrupt": set(), "no_range": set(),
                                      "log": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(datasets, "OPENNEURO_URL", f"http://127.0.0.1:{httpd.server_address[1]}/{{dataset}}/{{path}}")
    monkeypatch.delenv("SPINEPRINT_DATA_DIR", raising=False)
    monkeypatch.setenv("SPINEPRINT_CACHE_DIR", str(tmp_path / "cache"))
    yield handler, annex, root / DS
    httpd.shutdown()


def _fetch(annex, **kw):
    return datasets.fetch_openneuro_files(DS, annex=annex, progress=False, **kw)


def test_download_selected_files_verified(server):
    handler, annex, src = server
    root = _fetch(annex, participants=["ZS001"], suffixes=["bold", "T2w"])
    for rel in annex["path"][:2]:
        assert (root / rel).read_bytes() == (src / rel).read_bytes()
    assert not (root / annex["path"][2]).exists()  # ZS002 was not selected
    assert (root / "dataset_description.json").is_file()  # the metadata came first
    n = len(handler.log)
    assert _fetch(annex, participants=["ZS001"], suffixes=["bold", "T2w"]) == root
    assert len(handler.log) == n  # everything verified in the cache: no request


def test_interrupted_download_resumes_with_range(server):
    handler, annex, src = server
    rel = annex["path"][0]
    handler.cut_after[f"{DS}/{rel}"] = 100_000
    with pytest.raises(SpineprintError, match=r"(interrupted|incomplete).*rerun to resume"):
        _fetch(annex, participants=["ZS001"], suffixes=["bold"])
    root = datasets.cache_dir("openneuro", DS, "1.1.2")
    part = root / (rel + ".part")
    assert part.is_file() and 0 < part.stat().st_size < 300_000 and not (root / rel).exists()
    have = part.stat().st_size
    _fetch(annex, participants=["ZS001"], suffixes=["bold"])
    assert (root / rel).read_bytes() == (src / rel).read_bytes()
    assert not part.exists()
    assert handler.log[-1] == (f"{DS}/{rel}", f"bytes={have}-")  # resumed, not restarted


def test_corrupted_download_refused(server):
    handler, annex, src = server
    rel = annex["path"][1]
    handler.corrupt.add(f"{DS}/{rel}")
    with pytest.raises(SpineprintError, match=r"sub-ZS001_T2w\.nii\.gz.*SHA-256.*corrupt download refused"):
        _fetch(annex, participants=["ZS001"], suffixes=["T2w"])
    root = datasets.cache_dir("openneuro", DS, "1.1.2")
    assert not (root / rel).exists() and not (root / (rel + ".part")).exists()
    handler.corrupt.clear()
    _fetch(annex, participants=["ZS001"], suffixes=["T2w"])
    assert (root / rel).read_bytes() == (src / rel).read_bytes()


def test_corrupted_resume_refused_and_server_without_range(server):
    """A stale partial file that does not belong to the file is caught by the checksum."""
    handler, annex, src = server
    rel = annex["path"][2]
    root = datasets.cache_dir("openneuro", DS, "1.1.2")
    part = root / (rel + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"\0" * 1000)  # wrong bytes: resuming them gives a wrong file
    with pytest.raises(SpineprintError, match="corrupt download refused"):
        _fetch(annex, participants=["ZS002"], suffixes=["bold"])
    assert not part.exists()
    part.write_bytes(b"\0" * 1000)
    handler.no_range.add(f"{DS}/{rel}")  # server ignores Range: whole file again, accepted
    _fetch(annex, participants=["ZS002"], suffixes=["bold"])
    assert (root / rel).read_bytes() == (src / rel).read_bytes()


def test_local_copy_verified_never_downloaded(shared_data, tmp_path, monkeypatch):
    copy = tmp_path / DS
    shutil.copytree(shared_data / "openneuro" / DS, copy)
    rel = "sub-ZS001/anat/sub-ZS001_T2w.nii.gz"
    data = b"stand-in"
    (copy / rel).chmod(0o644) if (copy / rel).exists() else None
    (copy / rel).write_bytes(data)
    annex = pd.DataFrame([{"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                           "participant": "ZS001", "suffix": "T2w"}])
    monkeypatch.setattr(datasets, "download_file", lambda *a, **k: pytest.fail("downloaded"))
    assert datasets.fetch_openneuro_files(DS, ["ZS001"], ["T2w"], data_dir=copy, annex=annex,
                                          progress=False) == copy.resolve()
    (copy / rel).write_bytes(b"stand-iN")
    with pytest.raises(SpineprintError, match=r"sub-ZS001_T2w\.nii\.gz \(size or SHA-256"):
        datasets.fetch_openneuro_files(DS, ["ZS001"], ["T2w"], data_dir=copy, annex=annex, progress=False)
    # the real shared copy holds no images: the error names the missing file
    with pytest.raises(SpineprintError, match=r"missing .*sub-ZS001_T2w\.nii\.gz"):
        datasets.fetch_openneuro_files(DS, ["ZS001"], ["T2w"], progress=False)


# ------------------------------------------------------------------ parameter files
@pytest.mark.parametrize("name", ["ds004386", "cospine-pain"])
def test_params_files_are_valid(name):
    params = build.load_params(ROOT / "params" / f"{name}.yml")
    dataset = params["dataset"]
    sel = datasets.select_openneuro_files(dataset["openneuro"], dataset.get("participants"),
                                          dataset.get("suffixes"))
    assert len(sel) > 0
    nbs = {nb.stem for nb in build.toc_notebooks(ROOT)}
    assert set(params) - {"dataset", "all"} <= nbs


def test_params_files_document_their_download_size():
    for name in ("ds004386", "cospine-pain"):
        text = (ROOT / "params" / f"{name}.yml").read_text()
        spec = yaml.safe_load(text)["dataset"]
        sel = datasets.select_openneuro_files(spec["openneuro"], spec.get("participants"), spec.get("suffixes"))
        full = datasets.select_openneuro_files(spec["openneuro"], None, spec.get("suffixes"))
        assert f"({sel['size'].sum() / 1e9:.2f} GB)" in text or f"\n# {sel['size'].sum() / 1e9:.2f} GB" in text
        assert f"= {full['size'].sum() / 1e9:.2f} GB" in text


def test_build_fetches_the_dataset_section(tmp_path, monkeypatch):
    """`dataset:` in a parameters file: fetched first, its folder becomes bids_dir."""
    import nbformat

    root = tmp_path / "book"
    (root / "book").mkdir(parents=True)
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "_config.yml").write_text("title: tiny\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a\n"
                                   "  - file: notebooks/b\n")
    for name in ("a", "b"):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        cell = nbformat.v4.new_code_cell("bids_dir = None")
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell("open('seen.txt', 'a').write(f'{bids_dir}\\n')")]
        (root / "notebooks").mkdir(exist_ok=True)
        nbformat.write(nb, str(root / "notebooks" / f"{name}.ipynb"))
    calls = []

    def fake(ds, participants, suffixes, **kw):
        calls.append((ds, participants, suffixes))
        (tmp_path / "fetched").mkdir(exist_ok=True)
        return tmp_path / "fetched"

    monkeypatch.setattr(datasets, "fetch_openneuro_files", fake)
    params = tmp_path / "p.yml"
    params.write_text("dataset:\n  openneuro: ds004386\n  participants: [ZS001]\n  suffixes: [bold]\n"
                      "b:\n  bids_dir: null\n")
    out = tmp_path / "out"
    build.build_book(root, output=out, params_file=params, html=False, progress=False)
    assert calls == [("ds004386", ["ZS001"], ["bold"])]
    assert (out / "source" / "notebooks" / "seen.txt").read_text().splitlines() == [str(tmp_path / "fetched"), "None"]
    params.write_text("dataset:\n  openneuro: ds004386\n  subjects: [ZS001]\n")
    with pytest.raises(SpineprintError, match=r"unknown key\(s\) \['subjects'\]"):
        build.build_book(root, output=out, params_file=params, html=False, progress=False)

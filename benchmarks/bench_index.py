"""Benchmark of the dataset index (spineprint_utils.layout) against pybids' BIDSLayout.

A 100-subject x 2-run dataset without sessions (the ds004386 layout: ``acq-autozshim`` /
``acq-manualzshim`` runs, a top-level ``task-rest_bold.json``, the real sidecar of
sub-ZS001 copied to every run, a T2w per subject, empty image files: indexing only reads
names and JSON) is written to a temporary folder. Measured, each in a fresh subprocess:

- ``spineprint``: ``layout.DatasetIndex(root).bold_runs()`` + the inherited metadata of
  every run (``Run.metadata()``), i.e. what a preprocessing command needs;
- ``spineprint-per-run``: ``layout.metadata`` + ``layout.physio_files`` of one run alone
  (what each worker does per run), and ``preprocess.find_anat`` (a native-space run's T2w and
  segmentation, found through the index), and their share of a 5.1 s preprocessing run;
- ``pybids``: ``bids.BIDSLayout(root, validate=False)`` + ``get(suffix="bold",
  extension=[".nii", ".nii.gz"])`` + ``get_metadata`` of every run; and the same with
  ``validate=True`` (the default), and the cached start-up from a ``database_path``.

pybids is not a dependency of spineprint: install it into a separate folder to compare,
e.g. ``pip install --target /tmp/pybids 'pybids>=0.22,<0.23'`` and pass ``--pybids /tmp/pybids``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_index.py [--subjects 100] [--pybids /tmp/pybids]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, n_subjects: int, data_dir: Path) -> None:
    src = data_dir / "openneuro" / "ds004386"
    root.mkdir(parents=True)
    for name in ("dataset_description.json", "task-rest_bold.json", "participants.tsv", ".bidsignore"):
        shutil.copyfile(src / name, root / name)
    for k in range(1, n_subjects + 1):
        sub = f"ZS{k:03d}"
        func = root / f"sub-{sub}" / "func"
        anat = root / f"sub-{sub}" / "anat"
        func.mkdir(parents=True)
        anat.mkdir(parents=True)
        for acq in ("autozshim", "manualzshim"):
            real = src / "sub-ZS001" / "func" / f"sub-ZS001_task-rest_acq-{acq}_bold.json"
            shutil.copyfile(real, func / f"sub-{sub}_task-rest_acq-{acq}_bold.json")
            (func / f"sub-{sub}_task-rest_acq-{acq}_bold.nii.gz").write_bytes(b"")
        shutil.copyfile(src / "sub-ZS001" / "anat" / "sub-ZS001_T2w.json", anat / f"sub-{sub}_T2w.json")
        (anat / f"sub-{sub}_T2w.nii.gz").write_bytes(b"")
        seg = root / "derivatives" / "sct" / f"sub-{sub}" / "anat"  # a native-space run's anatomy
        seg.mkdir(parents=True)
        (seg / f"sub-{sub}_T2w_label-SC_seg.nii.gz").write_bytes(b"")


CASES = {
    "spineprint": """
import time
t = time.perf_counter()
from spineprint_utils import layout
t_import = time.perf_counter() - t
t = time.perf_counter()
runs = layout.DatasetIndex(ROOT).bold_runs()
metas = [r.metadata()[0] for r in runs]
dt = time.perf_counter() - t
assert all(m["RepetitionTime"] == 2.312 and m["TaskName"] == "rest" for m in metas)
print(json.dumps({"n_runs": len(runs), "seconds": dt, "import_s": t_import}))
""",
    "spineprint-per-run": """
import time
from spineprint_utils import layout, preprocess
bold = sorted(Path(ROOT).glob("sub-ZS050/func/*_bold.nii.gz"))[0]
t = time.perf_counter()
for _ in range(20):
    layout._listing.cache_clear()
    meta, _ = layout.metadata(bold)
    files = layout.physio_files(bold)
dt = (time.perf_counter() - t) / 20
t = time.perf_counter()
for _ in range(20):
    layout._listing.cache_clear()
    t2w, seg, reason = preprocess.find_anat(bold)  # native space: T2w + segmentation by the index
dt_anat = (time.perf_counter() - t) / 20
assert seg is not None, reason
print(json.dumps({"seconds": dt, "find_anat_s": dt_anat}))
""",
    "pybids": """
import time
t = time.perf_counter()
import bids
t_import = time.perf_counter() - t
t = time.perf_counter()
lay = bids.BIDSLayout(ROOT, validate=VALIDATE, database_path=DB)
files = lay.get(suffix="bold", extension=[".nii", ".nii.gz"])
metas = [lay.get_metadata(f.path) for f in files]
dt = time.perf_counter() - t
assert all(m.get("RepetitionTime") == 2.312 for m in metas), metas[:1]
print(json.dumps({"n_runs": len(files), "seconds": dt, "import_s": t_import, "version": bids.__version__}))
""",
}


def run_case(name: str, root: Path, pybids: str | None, validate=False, db=None) -> dict:
    code = CASES[name.split(":")[0]]
    prelude = (f"import json, sys\nfrom pathlib import Path\nROOT = {str(root)!r}\nVALIDATE = {validate!r}\n"
               f"DB = {db!r}\n")
    if pybids:
        prelude += f"sys.path.append({pybids!r})\n"  # after the venv: the venv's numpy/pandas win
    out = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100)
    ap.add_argument("--pybids", default=None, help="folder holding pybids (pip install --target)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="SPINEPRINT_DATA_DIR")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        make_dataset(root, args.subjects, Path(args.data))
        res = {"spineprint": run_case("spineprint", root, None),
               "spineprint (again)": run_case("spineprint", root, None),
               "spineprint per run": run_case("spineprint-per-run", root, None)}
        if args.pybids:
            res["pybids validate=False"] = run_case("pybids", root, args.pybids, False)
            res["pybids validate=True"] = run_case("pybids", root, args.pybids, True)
            db = str(Path(tmp) / "pybids.sqlite")
            res["pybids database (first)"] = run_case("pybids", root, args.pybids, False, db)
            res["pybids database (cached)"] = run_case("pybids", root, args.pybids, False, db)
    print(f"{args.subjects} subjects x 2 runs, ds004386 layout:")
    for k, v in res.items():
        print(f"  {k:28s} {json.dumps(v)}")
    per_run = res["spineprint per run"].get("seconds")
    if per_run is not None:
        print(f"  index per run: {per_run * 1000:.2f} ms = {per_run / 5.1 * 100:.3f} % of a 5.1 s preprocessing run")
        anat = res["spineprint per run"]["find_anat_s"]
        print(f"  + find_anat (native space): {anat * 1000:.2f} ms = {(per_run + anat) / 5.1 * 100:.3f} % of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())

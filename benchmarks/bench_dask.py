"""Speed-up of the preprocessing stage on a Dask cluster: 1 worker vs 2 workers.

A simulated study of ``--subjects x --sessions`` runs (default 4 x 2 = 8 runs of
``--volumes`` volumes) is preprocessed three times from scratch: serially in this
process (no Dask), on a ``LocalCluster`` with 1 worker process and on one with 2
worker processes (1 thread each; BLAS threads pinned to 1 so that workers do not
oversubscribe the cores). The derivatives of the three runs are checked identical
(except the recorded wall time, ``runtime_s``). Prints wall times and the speed-up.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_dask.py
    .venv/bin/python benchmarks/bench_dask.py --subjects 2 --sessions 2 --volumes 60   # quick

On a real cluster, the same call takes the scheduler's address::

    spineprint preprocess BIDS --scheduler tcp://scheduler:8786
    DASK_SCHEDULER_ADDRESS=tcp://scheduler:8786 spineprint preprocess BIDS
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SPINEPRINT_DATA_DIR", str((ROOT / ".." / "shared" / "data").resolve()))


def _normalised(path: Path) -> bytes:
    if path.name.endswith("_desc-qc_metrics.json"):
        obj = json.loads(path.read_text())
        obj.pop("runtime_s", None)
        return json.dumps(obj, sort_keys=True).encode()
    if path.name == "qc.tsv":
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        col = rows[0].index("runtime_s")
        return "\n".join("\t".join(r[:col] + r[col + 1:]) for r in rows).encode()
    return path.read_bytes()


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): _normalised(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--volumes", type=int, default=150)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    from dask.distributed import LocalCluster

    from spineprint_utils import preprocess, simulate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dask_"))
    os.environ.setdefault("SPINEPRINT_CACHE_DIR", str(work / "cache"))
    t0 = time.perf_counter()
    bids = simulate.simulate_dataset(work / "bids", n_subjects=args.subjects, n_sessions=args.sessions,
                                     n_volumes=args.volumes)
    n_runs = len(preprocess.find_bold_runs(bids))
    print(f"study: {n_runs} runs of {args.volumes} volumes ({time.perf_counter() - t0:.0f} s to simulate); "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    warnings.simplefilter("ignore")

    timings, trees = {}, {}
    t0 = time.perf_counter()
    out = preprocess.preprocess_dataset(bids, work / "serial", progress=False)
    timings["serial (no Dask)"] = time.perf_counter() - t0
    trees["serial (no Dask)"] = _tree(out)
    print(f"serial (no Dask): {timings['serial (no Dask)']:.1f} s", flush=True)
    for n_workers in (1, 2):
        label = f"Dask, {n_workers} worker{'s' if n_workers > 1 else ''}"
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=40) as cluster:
            t0 = time.perf_counter()
            out = preprocess.preprocess_dataset(bids, work / f"dask{n_workers}", scheduler=cluster.scheduler_address,
                                                progress=False)
            timings[label] = time.perf_counter() - t0
        trees[label] = _tree(out)
        print(f"{label}: {timings[label]:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)

    reference = trees["serial (no Dask)"]
    same = all(t == reference for t in trees.values())
    one, two = timings["Dask, 1 worker"], timings["Dask, 2 workers"]
    print(f"\n| backend | wall time ({n_runs} runs) | speed-up vs 1 worker |")
    print("| --- | --- | --- |")
    for label, seconds in timings.items():
        print(f"| {label} | {seconds:.1f} s | x{one / seconds:.2f} |")
    print(f"\n2 workers vs 1: x{one / two:.2f}; derivatives identical across backends: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

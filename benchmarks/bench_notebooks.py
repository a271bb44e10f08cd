"""Peak memory (RSS) and wall time of every book notebook at its default parameters.

Binder gives a notebook server about 2 GB; the book's budget is 1.5 GB per notebook.
Each notebook listed in ``_toc.yml`` is executed with papermill in a subprocess
(``python -m papermill NB OUT -k python3``) and the resident set size of the whole
process tree (papermill + the Jupyter kernel + any worker it starts) is polled with
psutil every 0.2 s. Two totals are reported: the sum of RSS (counts pages shared
between processes, e.g. forked workers, once per process: an upper bound) and the sum
of PSS (proportional set size: each shared page split between its users, which is
what a container's memory limit such as Binder's sees); plus the largest single
process (the kernel). The budget applies to the PSS total. Notebooks run in book order in one generated-data cache, so a notebook that
needs an upstream stage reuses what the previous notebooks produced, as in a book
build (``--fresh-each`` gives every notebook its own empty cache instead: each then
also pays for the upstream stages it calls).

``--one-core`` pins papermill, the kernel and every worker to one CPU (``sched_setaffinity``,
inherited by child processes) and sets the BLAS/OpenMP thread counts to 1: a Binder-like
student machine. Besides wall time the CPU time of the whole process tree is recorded
(``getrusage(RUSAGE_CHILDREN)``: papermill, the kernel and its workers): on a shared,
loaded machine the wall time of a pinned run is inflated by the other jobs on that core,
while the CPU time is what the notebook itself needs (on an idle single core, wall time
is about CPU time plus I/O waits). ``--json PATH`` writes the results (seconds and peak PSS per notebook, the
date, the load average) for the book: each chapter's box shows its row
(``spineprint_utils.course.default_rerun`` reads ``benchmarks/notebook_times.json``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_notebooks.py --one-core --json benchmarks/notebook_times.json
    .venv/bin/python benchmarks/bench_notebooks.py                 # empty temporary cache
    .venv/bin/python benchmarks/bench_notebooks.py --cache ~/.cache/spineprint
    .venv/bin/python benchmarks/bench_notebooks.py --only 00 04 --budget-mb 1500

Exit status 1 when a notebook fails or exceeds the budget.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tree_memory(proc: psutil.Process) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, largest RSS) over *proc* and its descendants, bytes."""
    rss_total, pss_total, largest = 0, 0, 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss_total += info.rss
        pss_total += getattr(info, "pss", info.rss)
        largest = max(largest, info.rss)
    return rss_total, pss_total, largest


def run_notebook(nb: Path, out: Path, env: dict, interval: float = 0.2, cpus=None) -> dict:
    cmd = [sys.executable, "-m", "papermill", str(nb), str(out), "-k", "python3", "--cwd", str(out.parent)]
    start = time.perf_counter()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pin)
    ps = psutil.Process(proc.pid)
    peak_rss = peak_pss = peak_proc = 0
    while proc.poll() is None:
        rss, pss, largest = tree_memory(ps)
        peak_rss, peak_pss, peak_proc = max(peak_rss, rss), max(peak_pss, pss), max(peak_proc, largest)
        time.sleep(interval)
    stderr = proc.stderr.read()
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # papermill, the kernel and its workers, once reaped
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {"notebook": nb.stem, "seconds": time.perf_counter() - start, "cpu_seconds": cpu, "peak_rss_mb": peak_rss / 1e6, "peak_pss_mb": peak_pss / 1e6,
            "peak_process_mb": peak_proc / 1e6, "returncode": proc.returncode,
            "error": stderr.strip().splitlines()[-1] if proc.returncode and stderr.strip() else ""}


def main(argv=None) -> int:
    from spineprint_utils.build import toc_notebooks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=None, help="SPINEPRINT_CACHE_DIR to use (default: a new empty one)")
    ap.add_argument("--fresh-each", action="store_true", help="an empty cache for every notebook")
    ap.add_argument("--only", nargs="*", default=None, help="notebook stems starting with these")
    ap.add_argument("--budget-mb", type=float, default=1500.0)
    ap.add_argument("--one-core", action="store_true", help="pin everything to one CPU, one BLAS thread")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)

    notebooks = [ROOT / nb for nb in toc_notebooks(ROOT)]
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in args.only)]
    work = Path(tempfile.mkdtemp(prefix="bench_notebooks_"))
    env = dict(os.environ)
    env.setdefault("SPINEPRINT_DATA_DIR", str((ROOT / ".." / "shared" / "data").resolve()))
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cpus = None
    if args.one_core:
        cpus = {sorted(os.sched_getaffinity(0))[0]}
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            env[var] = "1"
    cache = Path(args.cache).expanduser() if args.cache else work / "cache"
    load = round(os.getloadavg()[0], 1)
    print(f"cache: {cache}{' (fresh per notebook)' if args.fresh_each else ''}; load average "
          f"{load} on {os.cpu_count()} cores{'; pinned to one core' if cpus else ''}", flush=True)
    rows = []
    for i, nb in enumerate(notebooks):
        env["SPINEPRINT_CACHE_DIR"] = str(cache / nb.stem if args.fresh_each else cache)
        out = work / "executed" / nb.name
        out.parent.mkdir(parents=True, exist_ok=True)
        row = run_notebook(nb, out, env, cpus=cpus)
        rows.append(row)
        print(f"{row['notebook']}: {row['seconds']:.0f} s wall, {row['cpu_seconds']:.0f} s CPU, peak PSS tree {row['peak_pss_mb']:.0f} MB, "
              f"RSS tree {row['peak_rss_mb']:.0f} MB "
              f"(largest process {row['peak_process_mb']:.0f} MB), exit {row['returncode']} {row['error']}",
              flush=True)
    print("\n| notebook | wall time | CPU time | peak PSS (process tree) | peak RSS sum (process tree) | "
          "peak RSS (largest process) | under budget |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    for row in rows:
        under = row["returncode"] == 0 and row["peak_pss_mb"] < args.budget_mb
        ok &= under
        print(f"| {row['notebook']} | {row['seconds']:.0f} s | {row['cpu_seconds']:.0f} s | {row['peak_pss_mb']:.0f} MB | "
              f"{row['peak_rss_mb']:.0f} MB | {row['peak_process_mb']:.0f} MB | {'yes' if under else 'NO'} |")
    total = sum(r["seconds"] for r in rows)
    print(f"\ntotal {total:.0f} s; budget {args.budget_mb:.0f} MB: {'all notebooks under' if ok else 'EXCEEDED or failed'}")
    if args.json:
        import datetime
        import json

        result = {"date": datetime.date.today().isoformat(), "one_core": bool(args.one_core),
                  "cpus": os.cpu_count(), "load_average_start": load, "total_seconds": round(total, 1),
                  "total_cpu_seconds": round(sum(r["cpu_seconds"] for r in rows), 1),
                  "notebooks": {r["notebook"]: {"seconds": round(r["seconds"], 1),
                                                "cpu_seconds": round(r["cpu_seconds"], 1),
                                                "peak_pss_mb": round(r["peak_pss_mb"], 1),
                                                "returncode": r["returncode"]} for r in rows}}
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory (RSS) and wall time of every book notebook at its default parameters.

Binder gives a notebook server about 2 GB; the book's budget is 1.5 GB per notebook.
Each notebook listed in ``_toc.yml`` is executed with papermill in a subprocess
(``python -m papermill NB OUT -k python3``) and the resident set size of the whole
process tree (papermill + the Jupyter kernel + any worker it starts) is polled with
psutil every 0.1 s; the table reports the peak of the tree total and of the kernel
alone. Notebooks run in book order in one generated-data cache, so a notebook that
needs an upstream stage reuses what the previous notebooks produced, as in a book
build (``--fresh-each`` gives every notebook its own empty cache instead: each then
also pays for the upstream stages it calls).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_notebooks.py                 # empty temporary cache
    .venv/bin/python benchmarks/bench_notebooks.py --cache ~/.cache/spineprint
    .venv/bin/python benchmarks/bench_notebooks.py --only 00 04 --budget-mb 1500

Exit status 1 when a notebook fails or exceeds the budget.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of *proc* and all its descendants, largest single-process RSS), bytes."""
    total, largest = 0, 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def run_notebook(nb: Path, out: Path, env: dict, interval: float = 0.1) -> dict:
    cmd = [sys.executable, "-m", "papermill", str(nb), str(out), "-k", "python3", "--cwd", str(out.parent)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak_tree = peak_proc = 0
    while proc.poll() is None:
        total, largest = tree_rss(ps)
        peak_tree, peak_proc = max(peak_tree, total), max(peak_proc, largest)
        time.sleep(interval)
    stderr = proc.stderr.read()
    return {"notebook": nb.stem, "seconds": time.perf_counter() - start, "peak_tree_mb": peak_tree / 1e6,
            "peak_process_mb": peak_proc / 1e6, "returncode": proc.returncode,
            "error": stderr.strip().splitlines()[-1] if proc.returncode and stderr.strip() else ""}


def main(argv=None) -> int:
    from spineprint_utils.build import toc_notebooks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=None, help="SPINEPRINT_CACHE_DIR to use (default: a new empty one)")
    ap.add_argument("--fresh-each", action="store_true", help="an empty cache for every notebook")
    ap.add_argument("--only", nargs="*", default=None, help="notebook stems starting with these")
    ap.add_argument("--budget-mb", type=float, default=1500.0)
    args = ap.parse_args(argv)

    notebooks = [ROOT / nb for nb in toc_notebooks(ROOT)]
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in args.only)]
    work = Path(tempfile.mkdtemp(prefix="bench_notebooks_"))
    env = dict(os.environ)
    env.setdefault("SPINEPRINT_DATA_DIR", str((ROOT / ".." / "shared" / "data").resolve()))
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cache = Path(args.cache).expanduser() if args.cache else work / "cache"
    print(f"cache: {cache}{' (fresh per notebook)' if args.fresh_each else ''}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = []
    for i, nb in enumerate(notebooks):
        env["SPINEPRINT_CACHE_DIR"] = str(cache / nb.stem if args.fresh_each else cache)
        out = work / "executed" / nb.name
        out.parent.mkdir(parents=True, exist_ok=True)
        row = run_notebook(nb, out, env)
        rows.append(row)
        print(f"{row['notebook']}: {row['seconds']:.0f} s, peak RSS tree {row['peak_tree_mb']:.0f} MB "
              f"(largest process {row['peak_process_mb']:.0f} MB), exit {row['returncode']} {row['error']}",
              flush=True)
    print("\n| notebook | wall time | peak RSS (process tree) | peak RSS (kernel) | under budget |")
    print("| --- | --- | --- | --- | --- |")
    ok = True
    for row in rows:
        under = row["returncode"] == 0 and row["peak_tree_mb"] < args.budget_mb
        ok &= under
        print(f"| {row['notebook']} | {row['seconds']:.0f} s | {row['peak_tree_mb']:.0f} MB | "
              f"{row['peak_process_mb']:.0f} MB | {'yes' if under else 'NO'} |")
    print(f"\nbudget {args.budget_mb:.0f} MB: {'all notebooks under' if ok else 'EXCEEDED or failed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

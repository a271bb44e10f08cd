"""Where a notebook's rerun time goes: CPU time per code cell, optionally a cProfile.

The code cells of a book notebook run in one in-process IPython shell (no kernel, no
papermill, inline figures not rendered), each timed by the CPU time (user + system) of
this process and its reaped children, so the numbers are robust to other jobs on the
machine. ``--profile`` writes a cProfile of all cells (CPU-time clock) for ``pstats``.
Used for issue 17 (rerun cost); the times a reader sees come from
``bench_notebooks.py --one-core``, which also counts the kernel and figure rendering.

Usage (from the repository root, in an empty or scratch cache)::

    SPINEPRINT_CACHE_DIR=/tmp/scratch taskset -c 0 .venv/bin/python \
        benchmarks/profile_notebook.py notebooks/00_simulated_study.ipynb --profile /tmp/00.prof
    .venv/bin/python benchmarks/profile_notebook.py notebooks/05_drivers.ipynb --set "n_repeats = 1"
    .venv/bin/python -c "import pstats; pstats.Stats('/tmp/00.prof').sort_stats('cumulative').print_stats(30)"
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebook")
    ap.add_argument("--set", nargs="*", default=[], help='parameter overrides, e.g. "n_jobs = 1"')
    ap.add_argument("--profile", default=None, help="write a cProfile (CPU clock) of all cells here")
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    nb = nbformat.read(args.notebook, as_version=4)
    prof = cProfile.Profile(time.process_time) if args.profile else None
    cpu0, wall0 = _cpu(), time.perf_counter()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src = cell.source.replace("%matplotlib inline", "")  # no GUI in a bare shell
        if "parameters" in cell.metadata.get("tags", []):
            src += "\n" + "\n".join(args.set)
        c, w = _cpu(), time.perf_counter()
        if prof:
            prof.enable()
        result = shell.run_cell(src, silent=True)
        if prof:
            prof.disable()
        print(f"{cell.get('id', '?'):20s} CPU {_cpu() - c:7.2f} s  wall {time.perf_counter() - w:7.2f} s", flush=True)
        if not result.success:
            print("cell failed:", result.error_in_exec or result.error_before_exec)
            return 1
    print(f"total CPU {_cpu() - cpu0:.1f} s, wall {time.perf_counter() - wall0:.1f} s")
    if prof:
        prof.dump_stats(args.profile)
        print(f"wrote {args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

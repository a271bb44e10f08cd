"""Benchmark: generate the default simulated study from scratch and report time, memory, size.

Run from the repository root (a fresh, throw-away cache each time)::

    SPINEPRINT_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_simulate.py
    SPINEPRINT_DATA_DIR=../shared/data /usr/bin/time -v .venv/bin/python benchmarks/bench_simulate.py

Reports wall and CPU time of ``simulate.default_dataset()`` (split into anatomy set-up
and the per-run generation/writing), peak resident memory of the process, the size of
the dataset on disk, and the measured cord tSNR of every run against the target.
Options: ``--phantom`` (analytic anatomy), ``--n-subjects N``, ``--n-volumes T``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantom", action="store_true", help="use the analytic phantom instead of PAM50")
    ap.add_argument("--n-subjects", type=int, default=None)
    ap.add_argument("--n-volumes", type=int, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        os.environ["SPINEPRINT_CACHE_DIR"] = tmp
        t0, c0 = time.perf_counter(), time.process_time()
        from spineprint_utils import atlas, simulate

        overrides = {}
        if args.phantom:
            overrides["anatomy"] = "phantom"
        if args.n_subjects:
            overrides["n_subjects"] = args.n_subjects
        if args.n_volumes:
            overrides["n_volumes"] = args.n_volumes
        p = simulate._validate(overrides)
        source = simulate._resolve_anatomy(p["anatomy"])
        ta, ca = time.perf_counter(), time.process_time()
        affine, shape = atlas.pam50_epi_grid(segments=p["segments"], voxel_size=p["voxel_size"], fov_mm=p["fov_mm"],
                                             source=source)
        atlas.tissue_maps(affine, shape, source=source)  # loads (and caches in-process) the template
        t_anat, c_anat = time.perf_counter() - ta, time.process_time() - ca
        tg, cg = time.perf_counter(), time.process_time()
        root = simulate.default_dataset(**overrides)
        t_gen, c_gen = time.perf_counter() - tg, time.process_time() - cg
        t_all, c_all = time.perf_counter() - t0, time.process_time() - c0
        files = [f for f in Path(root).rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        raw = sum(f.stat().st_size for f in files if "derivatives" not in f.parts)
        gt = simulate.load_ground_truth(root)
        runs = gt["runs"]
        t1 = time.perf_counter()
        simulate.default_dataset(**overrides)
        t_cached = time.perf_counter() - t1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
        print(f"anatomy: {source}, grid {tuple(shape)}, {len(gt['regions'])} regions")
        print(f"design: {p['n_subjects']} x {p['n_sessions']} x {p['n_runs']} runs, {p['n_volumes']} volumes, TR {p['tr']} s")
        print(f"anatomy set-up (template load + resampling): wall {t_anat:.1f} s, CPU {c_anat:.1f} s")
        print(f"default_dataset() generation + writing:      wall {t_gen:.1f} s, CPU {c_gen:.1f} s")
        print(f"total incl. imports:                          wall {t_all:.1f} s, CPU {c_all:.1f} s")
        print(f"second call (cached):                         {t_cached * 1000:.1f} ms")
        print(f"peak RSS: {peak:.0f} MB")
        print(f"on disk: {size / 1e6:.1f} MB in {len(files)} files (raw BIDS {raw / 1e6:.1f} MB, ground truth "
              f"{(size - raw) / 1e6:.1f} MB)")
        print(f"cord tSNR measured/target: min {runs['tsnr_measured'].min():.2f}, max {runs['tsnr_measured'].max():.2f}"
              f" / {p['tsnr']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

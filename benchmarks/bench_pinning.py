"""Cost of pinning the numerical thread pools to one thread (parallel.pinned_threads).

Every item of ``parallel_map`` runs with BLAS/LAPACK/OpenMP pinned to one thread so that
serial, ``--n-jobs`` and Dask runs give the same bytes (issue 13). This times one
default-size simulated run (150 volumes) preprocessed with the process's default thread
count and pinned, alternately.

    .venv/bin/python benchmarks/bench_pinning.py
"""

import tempfile
import time
import warnings
from pathlib import Path

from spineprint_utils import preprocess, simulate
from spineprint_utils.parallel import pinned_threads


def main(repeats: int = 2) -> None:
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        bids = simulate.simulate_dataset(Path(tmp) / "bids", n_subjects=1, n_sessions=1, n_volumes=150)
        bold = sorted(bids.glob("sub-01/**/func/*_bold.nii.gz"))[0]
        out = Path(tmp) / "out"
        preprocess.preprocess_run(bold, out, overwrite=True, figures=False)  # warm-up (imports, atlas)
        for rep in range(repeats):
            for mode in ("default threads", "pinned (1 thread)"):
                t = time.perf_counter()
                if mode.startswith("pinned"):
                    with pinned_threads():
                        preprocess.preprocess_run(bold, out, overwrite=True, figures=False)
                else:
                    preprocess.preprocess_run(bold, out, overwrite=True, figures=False)
                print(f"repeat {rep}: {mode}: {time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()

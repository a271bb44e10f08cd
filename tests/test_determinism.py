"""Same derivatives, byte for byte, whichever backend ran them, with however many threads,
on a busy or a quiet machine (issue 13).

Two causes of differences are tested here, each by a test that fails without its fix:

- multi-threaded OpenBLAS sums dot products, ``syrk``, ``eigh``, ``lstsq`` in an order that
  depends on its thread count, and a Dask worker runs with ``OMP_NUM_THREADS=1`` while the
  caller has a thread per core: :func:`spineprint_utils.parallel.parallel_map` pins the
  numerical thread pools of every item to one thread;
- the physiological model's warnings become the run's notes (written into its JSON
  sidecars); ``warnings.catch_warnings(record=True)`` also recorded the warnings of *other*
  threads of the process (a Dask worker's or a scheduler's event loop, whose warnings
  depend on load), so a run's sidecars depended on what else the process did:
  :func:`spineprint_utils._io.recorded_warnings` records only the run's own thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from spineprint_utils import preprocess, simulate
from spineprint_utils._io import recorded_warnings
from spineprint_utils.parallel import parallel_map

distributed = pytest.importorskip("dask.distributed")


#: RETROICOR 2/2 without interactions (drivers.SWEEP_PREPROCESS): 15 regressors per slice
LIGHT = dict(cardiac_order=2, respiratory_order=2, interaction_order=(0, 0))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("determinism") / "bids"
    # 40 volumes with the sweeps' lighter physio model (LIGHT): the default cleaning (39 regressors per
    # slice) needs more than 51 volumes (preprocess.MIN_DOF) and is refused on shorter runs
    simulate.simulate_dataset(path, n_subjects=2, n_sessions=1, n_volumes=40)
    return path


@pytest.fixture(scope="module")
def cluster():
    """Workers with 2 threads each (and OMP_NUM_THREADS=1 set by Dask's nanny)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None,
                                      silence_logs=40) as cluster:
            yield cluster


def _blas_threads(_):
    """Module-level task: the thread counts of the BLAS libraries where it runs."""
    return sorted({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})


def _blas_reductions(seed):
    """Module-level task: results of BLAS reductions whose last bits depend on the thread count."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(200_000), rng.standard_normal(200_000)  # OpenBLAS splits ddot above 10,000
    return (a @ b).tobytes()


def test_items_run_with_pinned_numerical_threads(cluster):
    with threadpool_limits(limits=2):
        assert parallel_map(_blas_threads, range(2), progress=False) == [[1], [1]]
        assert parallel_map(_blas_threads, range(3), n_jobs=2, progress=False) == [[1]] * 3
        assert parallel_map(_blas_threads, range(3), scheduler=cluster.scheduler_address, progress=False) == [[1]] * 3
        assert {n for info in threadpool_info() if info["user_api"] == "blas" for n in [info["num_threads"]]} == {2}


def test_blas_results_identical_on_every_backend(cluster):
    """Without pinning, the serial result (2 BLAS threads here) differs from the Dask one (1 thread)."""
    with threadpool_limits(limits=2):
        serial = parallel_map(_blas_reductions, range(4), progress=False)
        jobs = parallel_map(_blas_reductions, range(4), n_jobs=2, progress=False)
        dask = parallel_map(_blas_reductions, range(4), scheduler=cluster.scheduler_address, progress=False)
    assert serial == jobs == dask


@pytest.mark.filterwarnings("ignore:another thread")
@pytest.mark.filterwarnings("ignore:theirs")
def test_run_notes_ignore_other_threads_warnings(study, tmp_path):
    stop = threading.Event()

    def noisy():  # e.g. a Dask worker's event loop complaining that it was unresponsive
        while not stop.is_set():
            warnings.warn("another thread: event loop was unresponsive", UserWarning)
            time.sleep(0.0005)

    thread = threading.Thread(target=noisy, daemon=True)
    bold = sorted(study.glob("sub-01/**/func/*_bold.nii.gz"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = preprocess.preprocess_run(bold, tmp_path / "quiet", figures=False, **LIGHT)
        thread.start()
        try:
            busy = preprocess.preprocess_run(bold, tmp_path / "busy", figures=False, **LIGHT)
        finally:
            stop.set()
            thread.join()
    for key in ("confounds_json", "preproc_json"):
        text = busy[key].read_text()
        assert "another thread" not in text
        assert text == quiet[key].read_text()
    # the recorder itself: this thread's warnings, every repeat, nothing from elsewhere
    with recorded_warnings() as caught:
        for _ in range(2):
            warnings.warn("mine", UserWarning)
        other = threading.Thread(target=lambda: warnings.warn("theirs", UserWarning))
        other.start()
        other.join()
    assert [str(w.message) for w in caught] == ["mine", "mine"]


def _normalised(tree: Path) -> dict:
    """File -> bytes, without the wall time ``runtime_s`` (the only field allowed to differ)."""
    out = {}
    for path in sorted(tree.rglob("*")):
        if not path.is_file():
            continue
        if path.name.endswith("_desc-qc_metrics.json"):
            obj = json.loads(path.read_text())
            obj.pop("runtime_s", None)
            data = json.dumps(obj, sort_keys=True).encode()
        elif path.name == "qc.tsv":
            rows = [line.split("\t") for line in path.read_text().splitlines()]
            col = rows[0].index("runtime_s")
            data = "\n".join("\t".join(r[:col] + r[col + 1:]) for r in rows).encode()
        else:
            data = path.read_bytes()
        out[str(path.relative_to(tree))] = data
    return out


_BURN = """
import multiprocessing as mp, os, sys, time
def burn(deadline, parent):
    x = 0
    while time.monotonic() < deadline and os.getppid() == parent:  # stops with its parent
        x += 1
if __name__ == "__main__":
    deadline = time.monotonic() + float(sys.argv[1])
    procs = [mp.Process(target=burn, args=(deadline, os.getpid()), daemon=True) for _ in range(int(sys.argv[2]))]
    [p.start() for p in procs]
    [p.join() for p in procs]
"""


@pytest.fixture
def cpu_load(tmp_path):
    """Another process keeps every core busy (one busy loop per core), for at most 5 minutes
    and never longer than the test: it is stopped when the test ends."""
    script = tmp_path / "burn.py"
    script.write_text(_BURN)
    proc = subprocess.Popen([sys.executable, str(script), "300", str(os.cpu_count() or 2)])
    time.sleep(1.0)
    assert proc.poll() is None, "the load generator did not start"
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()


def test_serial_jobs_and_dask_identical_under_cpu_load(study, cluster, tmp_path, cpu_load):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with threadpool_limits(limits=2):  # the caller's BLAS has 2 threads, the workers' 1
            serial = preprocess.preprocess_dataset(study, tmp_path / "serial", progress=False, **LIGHT)
        jobs = preprocess.preprocess_dataset(study, tmp_path / "jobs", n_jobs=2, progress=False, **LIGHT)
        dask = preprocess.preprocess_dataset(study, tmp_path / "dask", scheduler=cluster.scheduler_address,
                                             progress=False, **LIGHT)
    assert cpu_load.poll() is None, "the load generator stopped before the runs ended"
    ref = _normalised(serial)
    assert len(ref) > 20
    for name, tree in (("--n-jobs 2", jobs), ("Dask", dask)):
        got = _normalised(tree)
        assert sorted(got) == sorted(ref), name
        differ = [f for f in ref if got[f] != ref[f]]
        assert not differ, f"{name} derivatives differ from the serial run under load: {differ}"


"""One parallel map for every dataset-level stage.

``parallel_map(func, items)`` runs serially with a progress bar by default, on
local processes with ``n_jobs > 1``, or on a Dask cluster when a scheduler
address is given (argument or ``$DASK_SCHEDULER_ADDRESS``). Results always come
back in input order, so a stage gives the same output whichever backend ran it.

Same bytes on every backend: each item runs with the numerical thread pools (BLAS,
LAPACK, OpenMP) pinned to :data:`NUMERIC_THREADS` thread(s) with ``threadpoolctl``,
in the calling process as in the workers. Multi-threaded OpenBLAS splits dot
products, matrix-vector products, ``syrk``, ``eigh`` and ``lstsq`` between its
threads and sums the parts in another order, so the same run gives different last
bits with 1 or 2 threads - and a Dask worker starts with ``OMP_NUM_THREADS=1``
while the caller has one thread per core. Pinning makes the result independent of
the backend, the machine's core count and its load.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import as_completed as _as_completed

__all__ = ["parallel_map", "available_cpus", "NUMERIC_THREADS", "pinned_threads"]

#: threads of the numerical libraries (BLAS/LAPACK/OpenMP) while an item runs, on every backend
NUMERIC_THREADS = 1


_PIN_LOCK = threading.Lock()
_PIN = {"depth": 0, "limiter": None}


@contextlib.contextmanager
def pinned_threads(n: int = NUMERIC_THREADS):
    """Pin the BLAS/LAPACK/OpenMP thread pools to *n* threads inside the block
    (``threadpoolctl.threadpool_limits``), restoring them when the last of the blocks
    running at the same time (threads of one Dask worker) ends: the limits are
    process-wide, so one thread's exit must not lift them under another's feet."""
    from threadpoolctl import threadpool_limits

    with _PIN_LOCK:
        if _PIN["depth"] == 0:
            _PIN["limiter"] = threadpool_limits(limits=int(n))
        _PIN["depth"] += 1
    try:
        yield
    finally:
        with _PIN_LOCK:
            _PIN["depth"] -= 1
            if _PIN["depth"] == 0:
                _PIN["limiter"].restore_original_limits()
                _PIN["limiter"] = None


def _pinned_call(func, item):
    """``func(item)`` with the numerical thread pools pinned (module level: picklable for Dask)."""
    with pinned_threads():
        return func(item)


def _progress(iterable, total, desc, disable):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False)


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity (``taskset``, Binder's pinning) capped by
    the cgroup v2 CPU quota (``cpu.max``, how containers such as Binder's limit CPU while
    :func:`os.cpu_count` still reports every core of the host). At least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max" and float(period) > 0:
            n = min(n, max(1, int(float(quota) // float(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def parallel_map(func, items, n_jobs: int = 1, scheduler: str | None = None, desc: str | None = None,
                 progress: bool = True) -> list:
    """Apply *func* to every item and return the results in input order.

    Parameters
    ----------
    func : callable
        Function of one argument. Must be picklable (a module-level function or
        a :func:`functools.partial` of one) for ``n_jobs > 1`` or Dask.
    items : iterable
        Inputs.
    n_jobs : int
        Number of local worker processes, at most the CPUs this process may use
        (:func:`available_cpus`); 1 (default) runs in this process; a negative value uses
        every available CPU.
    scheduler : str, optional
        Address of a running Dask scheduler (e.g. ``"tcp://127.0.0.1:8786"``).
        Defaults to ``$DASK_SCHEDULER_ADDRESS`` when that is set. Takes precedence
        over ``n_jobs``.
    desc : str, optional
        Label of the progress bar.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    list
        ``[func(item) for item in items]``, in input order. The first exception
        raised by *func* propagates (local processes: the other items are then
        cancelled and the running ones interrupted, see :func:`_stop_pool`).
    """
    items = list(items)
    if not items:
        return []
    scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    disable = not progress
    if scheduler:
        from dask.distributed import as_completed

        with _connect(scheduler) as client:
            import uuid

            from dask.utils import funcname

            # task keys named after the stage's function (not the pinning wrapper), as without it
            keys = [f"{funcname(func)}-{uuid.uuid4().hex}" for _ in items]
            futures = client.map(functools.partial(_pinned_call, func), items, key=keys, pure=False)
            for _ in _progress(as_completed(futures), len(futures), desc, disable):
                pass
            return client.gather(futures)
    n_jobs = int(n_jobs or 1)
    if n_jobs < 0 or n_jobs > 1:
        # never more local workers than CPUs: on one CPU (Binder, taskset) extra workers only add
        # their start-up, imports and copies of the data
        n_jobs = available_cpus() if n_jobs < 0 else min(n_jobs, available_cpus())
    if n_jobs == 1 or len(items) == 1:
        with pinned_threads():
            return [func(item) for item in _progress(items, len(items), desc, disable)]
    pool = ProcessPoolExecutor(max_workers=min(n_jobs, len(items)), initializer=_worker_init)
    futures = []
    try:
        futures = [pool.submit(_run_task, func, item) for item in items]
        for f in _progress(_as_completed(futures), len(futures), desc, disable):
            f.result()  # the first error is raised as soon as it happens
        results = [f.result() for f in futures]  # input order
    except BaseException:
        _stop_pool(pool, futures)
        raise
    pool.shutdown(wait=True)
    return results


#: seconds to wait for a Dask scheduler before giving up (``$SPINEPRINT_SCHEDULER_TIMEOUT``)
SCHEDULER_TIMEOUT = 10.0


def _connect(address: str):
    """A :class:`dask.distributed.Client` for *address*, or one clear error naming it."""
    from dask.distributed import Client

    from ._io import SpineprintError

    timeout = float(os.environ.get("SPINEPRINT_SCHEDULER_TIMEOUT", SCHEDULER_TIMEOUT))
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise SpineprintError(
            f"Dask scheduler {address}: cannot connect within {timeout:g} s ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no reply'}); check the address (--scheduler / "
            "$DASK_SCHEDULER_ADDRESS) and that the scheduler is running") from None


_BUSY = False
_STOPPING = False


def _on_sigint(signum, frame):
    """Worker SIGINT/SIGTERM: interrupt the running item once (its writers then remove
    what it wrote; further signals do not interrupt that clean-up), skip any item
    still queued; an idle worker just exits, without a traceback."""
    global _STOPPING
    if not _BUSY:
        os._exit(130)
    if not _STOPPING:
        _STOPPING = True
        raise KeyboardInterrupt


def _worker_init() -> None:
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigint)


def _run_task(func, item):
    global _BUSY
    _BUSY = True
    try:
        if _STOPPING:
            raise KeyboardInterrupt
        return _pinned_call(func, item)
    finally:
        _BUSY = False


def _stop_pool(pool: ProcessPoolExecutor, futures, grace: float = 60.0) -> None:
    """Stop a pool after an error or an interruption (Ctrl-C, SIGTERM) of the caller.

    Without this, leaving a ``with ProcessPoolExecutor`` block waits for *every*
    submitted item to finish. Here pending items are cancelled and the workers get
    SIGINT (repeated until they exit, at most *grace* seconds, then they are
    terminated), so a running item raises ``KeyboardInterrupt`` inside its worker and
    its atomic writers remove their temporary files; completed items are kept.
    """
    import time

    for f in futures:
        f.cancel()
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        for proc in procs:
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.kill(proc.pid, signal.SIGINT)
        for proc in procs:
            proc.join(timeout=0.2)
    for proc in procs:
        if proc.is_alive():  # pragma: no cover - a worker ignoring SIGINT
            proc.terminate()
            proc.join()

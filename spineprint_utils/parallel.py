"""One parallel map for every dataset-level stage.

``parallel_map(func, items)`` runs serially with a progress bar by default, on
local processes with ``n_jobs > 1``, or on a Dask cluster when a scheduler
address is given (argument or ``$DASK_SCHEDULER_ADDRESS``). Results always come
back in input order, so a stage gives the same output whichever backend ran it.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

__all__ = ["parallel_map"]


def _progress(iterable, total, desc, disable):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False)


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
        Number of local worker processes; 1 (default) runs in this process.
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
        raised by *func* propagates.
    """
    items = list(items)
    if not items:
        return []
    scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    disable = not progress
    if scheduler:
        from dask.distributed import Client, as_completed

        with Client(scheduler) as client:
            futures = client.map(func, items, pure=False)
            for _ in _progress(as_completed(futures), len(futures), desc, disable):
                pass
            return client.gather(futures)
    n_jobs = int(n_jobs or 1)
    if n_jobs < 0:
        n_jobs = os.cpu_count() or 1
    if n_jobs == 1 or len(items) == 1:
        return [func(item) for item in _progress(items, len(items), desc, disable)]
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(items))) as pool:
        # Executor.map yields in input order.
        return list(_progress(pool.map(func, items), len(items), desc, disable))

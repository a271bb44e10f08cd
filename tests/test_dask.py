"""Scale-out: the pipeline on a Dask cluster gives the serial result; fingerprinting of
chunked (dask / on-disk) edge matrices equals the in-memory computation without ever
loading the whole matrix."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from spineprint_utils import fingerprint, preprocess, simulate
from spineprint_utils._io import SpineprintError
from spineprint_utils.parallel import parallel_map

distributed = pytest.importorskip("dask.distributed")
da = pytest.importorskip("dask.array")


# ----------------------------------------------------------------- cluster
@pytest.fixture(scope="module")
def cluster():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=40) as cluster:
            yield cluster


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dask") / "bids"
    simulate.simulate_dataset(path, n_subjects=2, n_sessions=1, n_volumes=60)  # 40 leave no dof for the default cleaning
    return path


def _where_am_i(x):
    """Module-level (picklable) task: which process and Dask worker ran it."""
    try:
        worker = distributed.get_worker().address
    except ValueError:
        worker = None
    return x * x, os.getpid(), worker


def _files(tree: Path) -> dict:
    return {str(p.relative_to(tree)): p for p in sorted(tree.rglob("*")) if p.is_file()}


def _normalised(path: Path) -> bytes:
    """Derivative bytes without the wall time (``runtime_s``), the only field that may differ."""
    if path.name.endswith("_desc-qc_metrics.json"):
        obj = json.loads(path.read_text())
        obj.pop("runtime_s", None)
        return json.dumps(obj, sort_keys=True).encode()
    if path.name == "qc.tsv":
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        col = rows[0].index("runtime_s")
        return "\n".join("\t".join(r[:col] + r[col + 1:]) for r in rows).encode()
    return path.read_bytes()


def test_parallel_map_runs_on_the_cluster_workers(cluster):
    serial = parallel_map(_where_am_i, range(8), progress=False)
    assert [r[0] for r in serial] == [i * i for i in range(8)]
    assert {r[1] for r in serial} == {os.getpid()} and {r[2] for r in serial} == {None}
    out = parallel_map(_where_am_i, range(8), scheduler=cluster.scheduler_address, progress=False)
    assert [r[0] for r in out] == [i * i for i in range(8)]  # input order kept
    workers = set(cluster.scheduler.workers)  # worker addresses known to the scheduler
    assert {r[2] for r in out} <= workers and None not in {r[2] for r in out}
    assert os.getpid() not in {r[1] for r in out}


def test_dask_scheduler_address_environment_variable_is_honoured(cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    out = parallel_map(_where_am_i, range(4), progress=False)
    assert [r[0] for r in out] == [0, 1, 4, 9]
    assert None not in {r[2] for r in out} and os.getpid() not in {r[1] for r in out}


def test_preprocess_on_cluster_equals_serial(study, cluster, tmp_path, monkeypatch):
    before = set(cluster.scheduler.task_prefixes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = preprocess.preprocess_dataset(study, tmp_path / "serial", progress=False)
        dist = preprocess.preprocess_dataset(study, tmp_path / "dask", scheduler=cluster.scheduler_address,
                                             progress=False)
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        env = preprocess.preprocess_dataset(study, tmp_path / "env", participants=["01"], progress=False)
    fs, fd, fe = _files(serial), _files(dist), _files(env)
    assert len(fs) > 20 and sorted(fs) == sorted(fd)
    differ = [n for n in fs if _normalised(fs[n]) != _normalised(fd[n])]
    assert not differ, f"derivatives differ between serial and Dask runs: {differ}"
    # through $DASK_SCHEDULER_ADDRESS (one participant): same files as the serial run's
    sub01 = [n for n in fe if "sub-01" in n]
    assert sub01 and all(_normalised(fe[n]) == _normalised(fs[n]) for n in sub01)
    # the cluster really did the work: the scheduler timed the runs' tasks (prefix = function name)
    new = {name: tp for name, tp in cluster.scheduler.task_prefixes.items() if name not in before}
    assert new and all(tp.all_durations.get("compute", 0) > 0 for tp in new.values()), list(new)


def test_preprocess_error_on_a_worker_is_isolated_and_recorded(study, cluster, tmp_path):
    """A SpineprintError raised on a worker fails that run only: the others finish, the
    run is listed in qc.tsv with the clear reason, nothing of it is left behind."""
    bad = tmp_path / "bids"
    import shutil

    import pandas as pd

    shutil.copytree(study, bad, ignore=shutil.ignore_patterns("derivatives"))
    sidecar = bad / "sub-02" / "ses-01" / "func" / "sub-02_ses-01_task-rest_run-1_bold.json"
    sidecar.write_text("{not json")
    with pytest.warns(UserWarning, match=r"1 of 2 run\(s\) failed"):
        out = preprocess.preprocess_dataset(bad, tmp_path / "out", scheduler=cluster.scheduler_address,
                                            progress=False)
    qc = pd.read_csv(out / "qc.tsv", sep="\t", keep_default_na=False).set_index("run")
    assert qc.loc["sub-01_ses-01_task-rest_run-1", "status"] == "ok"
    assert qc.loc["sub-02_ses-01_task-rest_run-1", "status"] == "failed"
    assert "sub-02_ses-01_task-rest_run-1_bold.json: not valid JSON" in qc.loc["sub-02_ses-01_task-rest_run-1", "reason"]
    leftovers = [p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and
                 ((p.name.startswith(".") and p.name != ".bidsignore") or "sub-02" in p.name)]
    assert not leftovers


# ----------------------------------------------------------------- chunked fingerprinting
class BlockOnly:
    """A 2D array that can only be read by column slices (like an on-disk dataset);
    loading it whole raises. Records the widths of the slices read."""

    def __init__(self, data):
        self._data = np.asarray(data)
        self.shape, self.dtype, self.ndim = self._data.shape, self._data.dtype, 2
        self.widths = []

    def __getitem__(self, key):
        rows, cols = key
        assert rows == slice(None)
        out = self._data[:, cols]
        self.widths.append(out.shape[1])
        return out.copy()

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole edge matrix was loaded")


def _cohort(n=30, n_edges=1000, seed=0):
    rng = np.random.default_rng(seed)
    subject = rng.standard_normal((n, n_edges))
    a = 0.3 + subject + 0.8 * rng.standard_normal((n, n_edges))
    b = 0.3 + subject + 0.8 * rng.standard_normal((n, n_edges))
    return a, b


def test_identifiability_chunked_equals_numpy_and_brute_force(monkeypatch, tmp_path):
    monkeypatch.setattr(fingerprint, "_BLOCK", 64)  # many blocks on a small cohort
    a, b = _cohort()
    expected = np.array([[np.corrcoef(a[i], b[j])[0, 1] for j in range(len(b))] for i in range(len(a))])
    in_memory = fingerprint.identifiability_matrix(a, b)
    np.testing.assert_allclose(in_memory, expected, atol=1e-12)
    # dask arrays chunked along subjects and edges
    A_dask = fingerprint.identifiability_matrix(da.from_array(a, chunks=(7, 100)), da.from_array(b, chunks=(30, 33)))
    np.testing.assert_allclose(A_dask, expected, atol=1e-12)
    assert isinstance(A_dask, np.ndarray)
    # on-disk memmap
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    A_mm = fingerprint.identifiability_matrix(np.load(tmp_path / "a.npy", mmap_mode="r"),
                                              np.load(tmp_path / "b.npy", mmap_mode="r"))
    np.testing.assert_allclose(A_mm, expected, atol=1e-12)
    # never loaded whole: only blocks of at most _BLOCK edges were read
    ba, bb = BlockOnly(a), BlockOnly(b)
    A_blocks = fingerprint.identifiability_matrix(ba, bb)
    np.testing.assert_allclose(A_blocks, expected, atol=1e-12)
    assert max(ba.widths) <= 64 and sum(ba.widths) >= 3 * a.shape[1]  # validation + mean + norm + product


def test_edgewise_icc_chunked_equals_numpy(monkeypatch):
    monkeypatch.setattr(fingerprint, "_BLOCK", 50)
    a, b = _cohort(n=12, n_edges=300, seed=1)
    expected = fingerprint.edgewise_icc(a, b, kind="all")
    got = fingerprint.edgewise_icc(da.from_array(a, chunks=(12, 40)), BlockOnly(b), kind="all")
    for kind in expected:
        np.testing.assert_allclose(got[kind], expected[kind], atol=1e-12)
    # against the one-edge ANOVA formula for ICC(1,1) (Shrout & Fleiss 1979), edge 17
    y = np.stack([a[:, 17], b[:, 17]], axis=1)
    n, k = y.shape
    msr = k * np.sum((y.mean(1) - y.mean()) ** 2) / (n - 1)
    msw = np.sum((y - y.mean(1, keepdims=True)) ** 2) / (n * (k - 1))
    assert got["ICC(1,1)"][17] == pytest.approx((msr - msw) / (msr + (k - 1) * msw), abs=1e-12)


def test_chunked_bad_values_named_without_loading():
    a, b = _cohort(n=6, n_edges=200)
    a[4, 150] = np.nan
    with pytest.raises(SpineprintError, match=r"fc_a: NaN or infinite edges in subject index\(es\) \[4\] \(1 values\)"):
        fingerprint.identifiability_matrix(BlockOnly(a), BlockOnly(b))
    with pytest.raises(SpineprintError, match="fc_a has 6 subjects but fc_b has 5"):
        fingerprint.identifiability_matrix(da.from_array(b), da.from_array(b[:5]))

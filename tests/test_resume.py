"""Interrupting ``spineprint preprocess`` / ``spineprint build`` with a real signal
(SIGINT, SIGTERM) and rerunning: no corrupt or temporary file is left, completed work
is reused (same mtime), and the result equals an uninterrupted run.

The commands run as subprocesses (``python -m spineprint_utils.cli ...``); the test
waits for the first run's completion marker (``*_desc-qc_metrics.json``) or the first
notebook's executed copy, then sends the signal while the next item is being processed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from spineprint_utils import simulate

ROOT = Path(__file__).resolve().parents[1]
MARKER = "*_desc-qc_metrics.json"
#: derivative content that legitimately differs between two runs: the wall time
VOLATILE_KEYS = ("runtime_s",)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "bids"
    # 4 runs: with two worker processes there is still work left when the first run's
    # marker appears, so the signal always lands while runs are being processed
    simulate.simulate_dataset(path, n_subjects=4, n_sessions=1, n_volumes=60)  # 40 leave no dof for the default cleaning
    return path


@pytest.fixture(scope="module")
def clean_run(study, tmp_path_factory) -> Path:
    """Reference: one uninterrupted run of the same command."""
    out = tmp_path_factory.mktemp("resume_clean") / "deriv"
    proc = subprocess.run([sys.executable, "-m", "spineprint_utils.cli", "preprocess", str(study), "--out", str(out)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return out


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _wait_for(predicate, proc, timeout=120.0, what="condition"):
    start = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (exit {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() - start > timeout:
            proc.kill()
            pytest.fail(f"timeout waiting for {what}")
        time.sleep(0.05)


def _files(tree: Path) -> dict:
    return {str(p.relative_to(tree)): p for p in sorted(tree.rglob("*")) if p.is_file()}


def _temporary(tree: Path) -> list:
    return [name for name, p in _files(tree).items() if p.name.startswith(".") or p.name.endswith(".tmp")]


def normalised_bytes(path: Path) -> bytes:
    """File content with the volatile fields (wall times) removed."""
    if path.name.endswith("_desc-qc_metrics.json"):
        obj = json.loads(path.read_text())
        for key in VOLATILE_KEYS:
            obj.pop(key, None)
        return json.dumps(obj, sort_keys=True).encode()
    if path.name == "qc.tsv":
        lines = path.read_text().splitlines()
        header = lines[0].split("\t")
        keep = [i for i, h in enumerate(header) if h not in VOLATILE_KEYS]
        return "\n".join("\t".join(line.split("\t")[i] for i in keep) for line in lines).encode()
    return path.read_bytes()


def assert_same_derivatives(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    different = [name for name in fa if normalised_bytes(fa[name]) != normalised_bytes(fb[name])]
    assert not different, f"files differ: {different}"


def _run_outputs_complete_or_absent(out: Path, reference: Path) -> list:
    """Each run: all the files a clean run wrote for it (marker included), or none at all.
    Returns the completed runs' prefixes."""
    done = []
    ref = _files(reference)
    got = _files(out)
    for marker in sorted(reference.glob(f"sub-*/ses-*/func/{MARKER}")):
        prefix = marker.name[: -len("_desc-qc_metrics.json")]
        expected = {n for n in ref if Path(n).name.startswith(prefix)}
        present = {n for n in got if Path(n).name.startswith(prefix)}
        assert present in (expected, set()), f"{prefix}: partial outputs {sorted(present)} vs {sorted(expected)}"
        if present:
            done.append(prefix)
    return done


@pytest.mark.parametrize("sig, extra", [(signal.SIGINT, ()), (signal.SIGTERM, ()),
                                        (signal.SIGTERM, ("--n-jobs", "2"))],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-2-processes"])
def test_preprocess_interrupted_then_resumed(study, clean_run, tmp_path, sig, extra):
    out = tmp_path / "deriv"
    cmd = [sys.executable, "-m", "spineprint_utils.cli", "preprocess", str(study), "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    _wait_for(lambda: any(out.glob(f"sub-*/ses-*/func/{MARKER}")), proc, what="the first run's marker")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    # nothing corrupt: no temporary file, every run complete or absent, not all done
    assert not _temporary(out)
    done = _run_outputs_complete_or_absent(out, clean_run)
    if extra:  # two runs in parallel: the second may have finished too
        assert 1 <= len(done) < 4
    else:
        assert len(done) == 1  # the first run, not the one being processed
    stamps = {name: p.stat().st_mtime_ns for name, p in _files(out).items() if "sub-" in name or "figures" in name}
    # rerun: finishes, reuses the completed runs (files not rewritten), equals a clean run
    proc2 = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    files = _files(out)
    for name, stamp in stamps.items():
        assert files[name].stat().st_mtime_ns == stamp, f"{name} was recomputed"
    assert len(_run_outputs_complete_or_absent(out, clean_run)) == 4
    assert not _temporary(out)
    assert_same_derivatives(out, clean_run)


# ----------------------------------------------------------------- local process pool
def _slow_item(args):
    """Module-level task: records its start, sleeps, records its end; item 1 fails."""
    folder, x = args
    Path(folder, f"started-{x}").touch()
    if x == 1:
        raise ValueError("planted failure in item 1")
    time.sleep(3.0)  # long enough that a slow parent (loaded machine) still stops the pool first
    Path(folder, f"finished-{x}").touch()
    return x


def test_process_pool_stops_at_the_first_error(tmp_path):
    """An error cancels the pending items and interrupts the running ones, instead of
    waiting for the whole list (leaving a ``with ProcessPoolExecutor`` block waits)."""
    from spineprint_utils.parallel import parallel_map

    with pytest.raises(ValueError, match="planted failure in item 1"):
        parallel_map(_slow_item, [(str(tmp_path), x) for x in range(12)], n_jobs=2, progress=False)
    time.sleep(3.5)  # anything still running would finish (or start) now
    started = {int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")}
    finished = {int(p.name.split("-")[1]) for p in tmp_path.glob("finished-*")}
    # items already handed to a worker's queue may start before being interrupted, but
    # most of the list never starts and the running items do not finish
    assert {0, 1} <= started and len(started) <= 8, started
    assert finished <= started and len(finished) <= 2, (started, finished)
    assert parallel_map(abs, [-1, -2, -3], n_jobs=2, progress=False) == [1, 2, 3]  # a new pool works


# ----------------------------------------------------------------- book build
def _notebook(path: Path, code_cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("# A page\n\nSome text."))
    cell = nbformat.v4.new_code_cell("x = 1\n")
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in code_cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def test_build_sigterm_during_second_notebook_then_resumed(tmp_path):
    """SIGTERM while notebook b runs: a's executed copy is kept and reused on rerun, no
    half-written copy of b, and b's kernel does not outlive the build."""
    root = tmp_path / "book"
    (root / "book").mkdir(parents=True)
    (root / "book" / "intro.md").write_text("# Intro\n\nHello.\n")
    (root / "_config.yml").write_text("title: tiny\nexecute:\n  execute_notebooks: 'off'\n")
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a\n  - file: notebooks/b\n")
    hold, kernel_pid = tmp_path / "hold", tmp_path / "kernel.pid"
    _notebook(root / "notebooks" / "a.ipynb", ["print('value', x * 2)"])
    _notebook(root / "notebooks" / "b.ipynb", [
        f"import os, time\nopen({str(kernel_pid)!r}, 'w').write(str(os.getpid()))\n"
        f"while os.path.exists({str(hold)!r}):\n    time.sleep(0.05)\nprint('b done')"])
    hold.write_text("")
    out = tmp_path / "out"
    executed = out / "source" / "notebooks"
    cmd = [sys.executable, "-m", "spineprint_utils.cli", "build", "--root", str(root), "--output", str(out),
           "--no-html", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    _wait_for(lambda: kernel_pid.is_file() and kernel_pid.read_text().strip(), proc, what="notebook b's kernel")
    a_copy = executed / "a.ipynb"
    assert a_copy.is_file()
    stamp = a_copy.stat().st_mtime_ns
    pid = int(kernel_pid.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err[-2000:])
    assert a_copy.is_file() and not (executed / "b.ipynb").exists()
    nbformat.read(str(a_copy), as_version=4)  # a complete notebook
    assert not [p.name for p in executed.iterdir() if p.name.startswith(".")]
    # b's kernel stops with the build
    deadline = time.monotonic() + 15
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            psutil.Process(pid).kill()
            pytest.fail("notebook b's kernel outlived the interrupted build")
        time.sleep(0.1)
    # rerun: a is reused, b executed
    hold.unlink()
    proc2 = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    assert "a.ipynb: up to date (cached)" in proc2.stdout
    assert a_copy.stat().st_mtime_ns == stamp
    b = nbformat.read(str(executed / "b.ipynb"), as_version=4)
    assert "b done" in json.dumps(b.cells[-1].outputs)
    assert not [p.name for p in executed.iterdir() if p.name.startswith(".")]
    shutil.rmtree(out)

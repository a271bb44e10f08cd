"""The papermill + Jupyter Book build (spineprint build) on a tiny book."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from spineprint_utils import build
from spineprint_utils._io import SpineprintError


def _notebook(path: Path, code_cells, params="x = 1\nname = 'a'\n"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("# A page\n\nSome text."))
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in code_cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


@pytest.fixture
def tiny_book(tmp_path):
    root = tmp_path / "book"
    (root / "book").mkdir(parents=True)
    (root / "book" / "intro.md").write_text("# Intro\n\nHello.\n")
    (root / "book" / "references.bib").write_text("")
    (root / "_config.yml").write_text(
        "title: tiny\nexecute:\n  execute_notebooks: 'off'\nonly_build_toc_files: true\n"
    )
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a\n  - file: notebooks/b\n"
    )
    _notebook(root / "notebooks" / "a.ipynb", ["print('value', x * 2)"])
    _notebook(root / "notebooks" / "b.ipynb", ["open('written_here.txt', 'w').write(name)"])
    return root


def test_toc_notebooks_in_book_order(tiny_book):
    assert build.toc_notebooks(tiny_book) == [Path("notebooks/a.ipynb"), Path("notebooks/b.ipynb")]


def test_toc_missing_notebook_is_named(tiny_book):
    (tiny_book / "notebooks" / "b.ipynb").unlink()
    with pytest.raises(SpineprintError, match="b"):
        build.toc_notebooks(tiny_book)


def test_params_unknown_name_and_wrong_type_rejected(tiny_book):
    nb = tiny_book / "notebooks" / "a.ipynb"
    assert build.check_params(nb, {"x": 3}) == {"x": 3}
    assert build.check_params(nb, {"name": "b"}) == {"name": "b"}
    with pytest.raises(SpineprintError, match="unknown parameter 'y'"):
        build.check_params(nb, {"y": 3})
    with pytest.raises(SpineprintError, match="parameter 'x' expects int"):
        build.check_params(nb, {"x": "three"})
    with pytest.raises(SpineprintError, match="expects int"):
        build.check_params(nb, {"x": True})


def test_params_file_for_unknown_notebook_rejected(tiny_book, tmp_path):
    params = tmp_path / "p.yml"
    params.write_text("zz_missing:\n  x: 2\n")
    with pytest.raises(SpineprintError, match="zz_missing"):
        build.build_book(tiny_book, output=tmp_path / "out", params_file=params, html=False)


def test_failing_notebook_names_notebook_cell_and_exception(tiny_book, tmp_path):
    _notebook(tiny_book / "notebooks" / "b.ipynb", ["y = 1", "raise RuntimeError('planted failure')"])
    out = tmp_path / "out"
    with pytest.raises(SpineprintError) as info:
        build.build_book(tiny_book, output=out, html=False, progress=False)
    message = str(info.value)
    assert "notebooks/b.ipynb" in message and "cell 3" in message
    assert "RuntimeError" in message and "planted failure" in message
    # no half-written executed copy of the failing notebook
    assert not (out / "source" / "notebooks" / "b.ipynb").exists()
    assert not list((out / "source" / "notebooks").glob(".*running*"))


def test_cli_exit_code_nonzero_on_failure(tiny_book, tmp_path):
    _notebook(tiny_book / "notebooks" / "a.ipynb", ["1 / 0"])
    proc = subprocess.run(
        [sys.executable, "-m", "spineprint_utils.cli", "build", "--root", str(tiny_book),
         "--output", str(tmp_path / "out"), "--no-html", "--quiet"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert "ZeroDivisionError" in proc.stderr and "notebooks/a.ipynb" in proc.stderr


def test_full_build_keeps_sources_clean_and_caches(tiny_book, tmp_path):
    before = {p: p.read_bytes() for p in tiny_book.rglob("*") if p.is_file()}
    params = tmp_path / "p.yml"
    params.write_text("all:\n  x: 21\nb:\n  name: from-yaml\n")
    out = tmp_path / "out"
    html = build.build_book(tiny_book, output=out, params_file=params, progress=False)
    assert (html / "index.html").is_file() or (html / "book" / "intro.html").is_file()
    assert (html / "notebooks" / "a.html").is_file()
    # sources untouched, nothing written next to them
    after = {p: p.read_bytes() for p in tiny_book.rglob("*") if p.is_file()}
    assert after == before
    executed = json.loads((out / "source" / "notebooks" / "a.ipynb").read_text())
    texts = [o.get("text", "") for c in executed["cells"] for o in c.get("outputs", [])]
    outputs = "".join("".join(t) if isinstance(t, list) else t for t in texts)
    assert "value 42" in outputs  # the 'all' parameter reached the notebook
    assert (out / "source" / "notebooks" / "written_here.txt").read_text() == "from-yaml"  # relative cwd
    # second run: executed copies are reused
    stamp = (out / "source" / "notebooks" / "a.ipynb").stat().st_mtime_ns
    build.build_book(tiny_book, output=out, params_file=params, html=False, progress=False)
    assert (out / "source" / "notebooks" / "a.ipynb").stat().st_mtime_ns == stamp


def test_sphinx_warning_fails_the_build(tiny_book, tmp_path):
    (tiny_book / "book" / "intro.md").write_text("# Intro\n\nA {doc}`link to nowhere <does_not_exist>`.\n")
    with pytest.raises(SpineprintError, match="jupyter-book build failed"):
        build.build_book(tiny_book, output=tmp_path / "out", progress=False)


def _set_needs(path: Path, needs):
    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["spineprint"] = {"needs": needs}
    nbformat.write(nb, str(path))


def test_notebook_needs_default_declared_and_invalid(tiny_book):
    nbs = build.toc_notebooks(tiny_book)
    a, b = nbs
    # nothing declared: each waits for every earlier notebook (the serial order)
    assert build.notebook_needs(tiny_book, nbs) == {a: set(), b: {a}}
    _set_needs(tiny_book / b, [])
    assert build.notebook_needs(tiny_book, nbs) == {a: set(), b: set()}
    _set_needs(tiny_book / a, ["b"])  # a later notebook: refused, named
    with pytest.raises(SpineprintError, match=r"a\.ipynb.*'b'"):
        build.notebook_needs(tiny_book, nbs)
    _set_needs(tiny_book / a, "b")
    with pytest.raises(SpineprintError, match="must be a list"):
        build.notebook_needs(tiny_book, nbs)


def test_independent_notebooks_run_at_the_same_time(tiny_book, tmp_path):
    # each notebook waits for the other to have started: only a concurrent build finishes
    wait = ("import time\nfrom pathlib import Path\nPath('{me}.started').touch()\n"
            "t0 = time.time()\nwhile not Path('{other}.started').exists():\n"
            "    assert time.time() - t0 < 60, 'the other notebook never started'\n    time.sleep(0.1)\n")
    _notebook(tiny_book / "notebooks" / "a.ipynb", [wait.format(me="a", other="b")])
    _notebook(tiny_book / "notebooks" / "b.ipynb", [wait.format(me="b", other="a")])
    for nb in ("a", "b"):
        _set_needs(tiny_book / "notebooks" / f"{nb}.ipynb", [])
    out = tmp_path / "out"
    build.build_book(tiny_book, output=out, html=False, progress=False, n_jobs=2)
    assert {p.name for p in (out / "source" / "notebooks").glob("*.ipynb")} == {"a.ipynb", "b.ipynb"}
    # one at a time, the first one would wait for the second in vain
    with pytest.raises(SpineprintError, match="never started"):
        build.build_book(tiny_book, output=tmp_path / "serial", html=False, progress=False, n_jobs=1)


def test_a_notebook_waits_for_what_it_needs(tiny_book, tmp_path):
    _notebook(tiny_book / "notebooks" / "a.ipynb",
              ["import time\ntime.sleep(2)\nopen('a.done', 'w').write('x')"])
    _notebook(tiny_book / "notebooks" / "b.ipynb",
              ["from pathlib import Path\nassert Path('a.done').is_file(), 'started before a finished'"])
    _set_needs(tiny_book / "notebooks" / "b.ipynb", ["a"])
    out = tmp_path / "out"
    build.build_book(tiny_book, output=out, html=False, progress=False, n_jobs=2)
    assert (out / "source" / "notebooks" / "b.ipynb").is_file()
    # declared independent, b starts beside a and fails: the dependency is what orders them
    _set_needs(tiny_book / "notebooks" / "b.ipynb", [])
    with pytest.raises(SpineprintError, match="started before a finished"):
        build.build_book(tiny_book, output=tmp_path / "out2", html=False, progress=False, n_jobs=2)


def test_a_failure_beside_another_notebook_keeps_the_other_and_names_itself(tiny_book, tmp_path):
    _notebook(tiny_book / "notebooks" / "a.ipynb", ["import time\ntime.sleep(2)\nprint('a finished')"])
    _notebook(tiny_book / "notebooks" / "b.ipynb", ["raise ValueError('planted in b')"])
    _set_needs(tiny_book / "notebooks" / "b.ipynb", [])
    out = tmp_path / "out"
    with pytest.raises(SpineprintError, match=r"notebooks/b\.ipynb.*planted in b"):
        build.build_book(tiny_book, output=out, html=False, progress=False, n_jobs=2)
    assert (out / "source" / "notebooks" / "a.ipynb").is_file()  # the running one finished
    assert not (out / "source" / "notebooks" / "b.ipynb").exists()
    assert not list((out / "source" / "notebooks").glob(".*running*"))


def test_available_cpus_follows_the_affinity_not_the_host():
    # a process pinned to one CPU (taskset, Binder) gets 1, whatever os.cpu_count() says
    code = "from spineprint_utils.parallel import available_cpus; print(available_cpus())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          preexec_fn=lambda: __import__("os").sched_setaffinity(0, {0}))
    assert proc.stdout.strip() == "1"
    from spineprint_utils.parallel import available_cpus

    assert 1 <= available_cpus() <= len(__import__("os").sched_getaffinity(0))


def test_cli_n_jobs_below_one_is_one_clear_line(tiny_book, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "spineprint_utils.cli", "build", "--root", str(tiny_book),
         "--output", str(tmp_path / "out"), "--no-html", "--quiet", "--n-jobs", "0"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert "n_jobs must be at least 1" in proc.stderr and "Traceback" not in proc.stderr


def test_parallel_map_runs_in_process_on_one_cpu():
    # n_jobs=2 on a process pinned to one CPU: no worker processes (same pid for every item)
    code = ("import os\nfrom spineprint_utils.parallel import parallel_map\n"
            "pids = parallel_map(lambda _: os.getpid(), [1, 2, 3], n_jobs=2, progress=False)\n"
            "print(set(pids) == {os.getpid()})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          preexec_fn=lambda: __import__("os").sched_setaffinity(0, {0}))
    assert proc.stdout.strip() == "True"

"""Build the book: papermill executes every notebook, then Jupyter Book renders.

The source tree is never touched: the book sources (``_config.yml``,
``_toc.yml``, ``book/``, ``notebooks/``) are staged under
``<output>/source``, each notebook listed in ``_toc.yml`` is executed there
with papermill (kernel ``python3``, working directory = the notebook's own
folder, so relative paths behave as in Jupyter), and ``jupyter-book build``
runs on the staged copy with ``-W --keep-going`` so that any Sphinx warning
fails the build. The HTML ends up in ``<output>/html``.

Executed notebooks are cached: a notebook is re-run only when its source, its
parameters or the package source changed, so an interrupted build resumes
where it stopped.

Notebooks run side by side on the available CPUs (``--n-jobs``), each once the
notebooks it declares in its metadata (``{"spineprint": {"needs": [...]}}``,
:func:`notebook_needs`) have finished; a notebook that declares nothing waits for
every notebook before it, as in a serial build.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import __version__
from ._io import SpineprintError, atomic_write_text
from ._outputs import BuildOutput

__all__ = [
    "find_book_root",
    "toc_notebooks",
    "load_params",
    "check_params",
    "declared_parameters",
    "plan_params",
    "execute_notebook",
    "notebook_needs",
    "build_book",
]

BOOK_FILES = ("_config.yml", "_toc.yml")
BOOK_DIRS = ("book", "notebooks")
CACHE_KEY = "spineprint_build_key"


# --------------------------------------------------------------------- toc
def find_book_root(start=None) -> Path:
    """The folder holding ``_toc.yml`` and ``_config.yml`` (searching upwards)."""
    path = Path(start or Path.cwd()).resolve()
    for candidate in (path, *path.parents):
        if all((candidate / name).is_file() for name in BOOK_FILES):
            return candidate
    raise SpineprintError(f"{path}: no _toc.yml/_config.yml here or above; run from the book's folder")


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        for key in ("root",):
            if key in node:
                files.append(node[key])
        for key in ("chapters", "sections", "parts"):
            for child in node.get(key, []) or []:
                files.extend(_toc_files(child))
    elif isinstance(node, list):
        for child in node:
            files.extend(_toc_files(child))
    return files


def toc_notebooks(root) -> list[Path]:
    """Notebooks listed in ``_toc.yml``, in book order, relative to *root*."""
    root = Path(root)
    toc_path = root / "_toc.yml"
    try:
        toc = yaml.safe_load(toc_path.read_text())
    except yaml.YAMLError as exc:
        raise SpineprintError(f"{toc_path}: not valid YAML ({exc})") from None
    notebooks = []
    for entry in _toc_files(toc):
        rel = Path(entry)
        candidates = [rel] if rel.suffix in (".ipynb", ".md") else [
            rel.with_suffix(".ipynb"), rel.with_suffix(".md")]
        found = next((c for c in candidates if (root / c).is_file()), None)
        if found is None:
            raise SpineprintError(f"{toc_path}: lists {entry!r} but no such .ipynb or .md file exists")
        if found.suffix == ".ipynb":
            notebooks.append(found)
    return notebooks


# --------------------------------------------------------------- parameters
def load_params(path) -> dict:
    """Read a parameters YAML file.

    Layout: an optional ``all:`` mapping applied to every notebook that
    declares the parameter, one mapping per notebook keyed by its file
    stem (e.g. ``04_fingerprinting:``) or its path, and an optional ``dataset:``
    mapping naming a real dataset to fetch first (:func:`fetch_dataset`; its folder
    becomes ``all: bids_dir``). A notebook that declares ``book_bids_dir`` (a chapter that
    keeps the simulated study on purpose) also gets ``all: bids_dir`` under that name, so it
    can describe the book's dataset and say that it keeps the simulation.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise SpineprintError(f"{path}: parameters file not found")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpineprintError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise SpineprintError(
            f"{path}: expected a mapping of notebook name (or 'all') to a mapping of parameters"
        )
    return params


def declared_parameters(notebook) -> dict:
    """The parameters a notebook declares: ``{name: {"default": value, "source": text,
    "type": type name, "help": comment}}`` from its cell tagged ``parameters``.

    Parsed with :mod:`ast` (one top-level ``name = literal`` per parameter, comments
    free), so every parameter the notebook declares is known - papermill's own line
    parser skips lines whose comments contain ``=``. ``type`` is the type of the
    default (``"float"``, ``"int"``, ``"bool"``, ``"str"``, ``"list"``, ``"dict"``,
    ``"tuple"``) or ``"None"``.
    """
    import nbformat

    notebook = Path(notebook)
    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except Exception as exc:  # noqa: BLE001 - nbformat raises many types
        raise SpineprintError(f"{notebook}: not a readable notebook ({exc})") from None
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return {}
    source = cells[0].source
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise SpineprintError(f"{notebook}: the parameters cell is not valid Python ({exc})") from None
    lines = source.splitlines()
    out = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        text = ast.get_source_segment(source, node.value) or ""
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, SyntaxError, TypeError):
            value = text
        line = lines[node.end_lineno - 1]
        help_text = line.split("#", 1)[1].strip() if "#" in line[node.end_col_offset:] else ""
        out[node.targets[0].id] = {"default": value, "source": text,
                                   "type": "None" if value is None else type(value).__name__, "help": help_text}
    return out


def _declared(notebook: Path) -> dict:
    return declared_parameters(notebook)


def _suggest(name: str, candidates) -> str:
    import difflib

    candidates = sorted(set(candidates))
    key = str(name).replace("-", "_").lower()
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


#: parameters whose value is a mapping of keyword arguments: the keys allowed inside
def _nested_keys(name: str):
    if name in ("study_params", "native_study", "physio_study"):
        from . import simulate

        return tuple(simulate.DEFAULTS)
    if name == "preprocess_params":
        import inspect

        from . import preprocess

        return tuple(p for p in inspect.signature(preprocess.preprocess_run).parameters if p not in
                     ("bold_path", "output_dir"))
    return None


_FLOAT_STRING = ("inf", "+inf", "-inf", "nan")


def _as_float(value):
    """A float from a YAML number or from the strings YAML 1.1 leaves unparsed (``1e-2``)."""
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        if text.lower() in _FLOAT_STRING:
            raise TypeError  # not a usable parameter value
        return float(text)
    raise TypeError


def _check_value(where: str, name: str, value, info: dict):
    """*value* converted to the type of the declared default, or a SpineprintError."""
    kind = info["type"]
    default = info["default"]
    expected = f"expects {kind} (default {info['source']})"
    if value is None:
        if kind != "None":
            raise SpineprintError(f"{where}: parameter {name!r} {expected}, got null; null is only accepted where "
                                  "the default is None")
        return None
    if kind == "None":
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SpineprintError(f"{where}: parameter {name!r} {expected}, got {type(value).__name__} {value!r} "
                                  "(write true or false)")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpineprintError(f"{where}: parameter {name!r} {expected}, got {type(value).__name__} {value!r}")
        return value
    if kind == "float":
        try:
            return _as_float(value)
        except (TypeError, ValueError):
            raise SpineprintError(f"{where}: parameter {name!r} {expected}, got {type(value).__name__} "
                                  f"{value!r}") from None
    if kind == "str":
        if not isinstance(value, str):
            raise SpineprintError(f"{where}: parameter {name!r} {expected}, got {type(value).__name__} {value!r}")
        return value
    if kind in ("list", "tuple"):
        if not isinstance(value, (list, tuple)):
            raise SpineprintError(f"{where}: parameter {name!r} {expected}, got {type(value).__name__} {value!r}")
        kinds = {type(v).__name__ for v in default}
        if len(kinds) == 1 and value:
            item = {"type": kinds.pop(), "default": default[0], "source": repr(default[0])}
            if item["type"] in ("int", "float", "str", "bool"):
                if item["type"] == "int" and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in value) and any(isinstance(v, float) for v in value):
                    item["type"] = "float"  # e.g. [50, 100.5]: numbers where the default has integers
                value = [_check_value(where, f"{name}[{i}]", v, item) for i, v in enumerate(value)]
        return list(value)
    if kind == "dict":
        if not isinstance(value, dict):
            raise SpineprintError(f"{where}: parameter {name!r} {expected}, got {type(value).__name__} {value!r}")
        allowed = _nested_keys(name)
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    raise SpineprintError(f"{where}: parameter {name!r} has an unknown key {key!r}"
                                          f"{_suggest(key, allowed)} (known: {', '.join(allowed)})")
        if name in ("study_params", "native_study", "physio_study"):
            from . import simulate

            try:
                simulate._validate(value)
            except SpineprintError as exc:
                raise SpineprintError(f"{where}: parameter {name!r}: {exc}") from None
        return value
    return value


#: parameters naming a folder / file of the caller's: they must exist and are made absolute
_FOLDER_PARAMS = ("bids_dir", "book_bids_dir")
_FILE_PARAMS = ("connectome_file",)


def _resolve_path(where: str, name: str, value, base: Path):
    if value is None or (name not in _FOLDER_PARAMS and name not in _FILE_PARAMS):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise SpineprintError(f"{where}: parameter {name!r} expects a path, got {type(value).__name__} {value!r}")
    path = Path(os.path.expandvars(os.fspath(value))).expanduser()
    path = (base / path) if not path.is_absolute() else path
    path = Path(os.path.abspath(path))
    if name in _FOLDER_PARAMS and not path.is_dir():
        raise SpineprintError(f"{where}: parameter {name!r}: folder {path} not found"
                              + (f" (relative paths are resolved against {base})" if not Path(value).is_absolute()
                                 else ""))
    if name in _FILE_PARAMS and not path.is_file():
        raise SpineprintError(f"{where}: parameter {name!r}: file {path} not found"
                              + (f" (relative paths are resolved against {base})" if not Path(value).is_absolute()
                                 else ""))
    return str(path)


def check_params(notebook: Path, params: dict, declared: dict | None = None, strict: bool = True,
                 base=None, where=None) -> dict:
    """Validate parameters against the notebook's ``parameters`` cell.

    Unknown names are rejected with a did-you-mean suggestion (``strict``; otherwise
    skipped). Values follow the type of the declared default: an ``int`` or a number
    written in any YAML spelling (``1e-2``) where a ``float`` is declared, ``null``
    only where the default is ``None``; lists element by element when the default's
    elements share one type; mappings of simulation (``study_params``...) or
    preprocessing (``preprocess_params``) settings key by key. Path parameters
    (``bids_dir``, ``connectome_file``) must exist and are resolved against *base*
    (default: the current working folder). Returns the accepted, converted parameters.
    """
    declared = _declared(notebook) if declared is None else declared
    base = Path(base) if base is not None else Path.cwd()
    where = where or str(notebook)
    accepted = {}
    for name, value in params.items():
        if name not in declared:
            if strict:
                known = ", ".join(sorted(declared)) or "none"
                raise SpineprintError(f"{where}: unknown parameter {name!r}{_suggest(name, declared)} "
                                      f"(declared: {known})")
            continue
        value = _check_value(where, name, value, declared[name])
        accepted[name] = _resolve_path(where, name, value, base)
    return accepted


def _params_for(notebook: Path, all_params: dict, declared: dict | None = None, base=None,
                label: str | None = None) -> dict:
    declared = _declared(notebook) if declared is None else declared
    label = label or str(notebook)
    merged = check_params(notebook, all_params.get("all", {}), declared, strict=False, base=base,
                          where=f"{label} (from 'all:')")
    for key in (notebook.stem, str(notebook), notebook.name):
        if key in all_params:
            merged.update(check_params(notebook, all_params[key], declared, strict=True, base=base,
                                       where=f"{label} (section '{key}:')"))
    # chapters that keep the simulated study on purpose declare book_bids_dir: they get the
    # book's dataset ('all: bids_dir') to describe it and say that they keep the simulation
    book_dir = all_params.get("all", {}).get("bids_dir")
    if "book_bids_dir" in declared and "book_bids_dir" not in merged and book_dir is not None:
        merged["book_bids_dir"] = _resolve_path(f"{label} (from 'all:')", "bids_dir", book_dir,
                                                Path(base) if base is not None else Path.cwd())
    return merged


def plan_params(root: Path, notebooks, all_params: dict, params_file=None, base=None) -> list:
    """Check a whole parameters file against the book before anything runs.

    Every section must name a notebook of ``_toc.yml`` (or be ``all``); every key of
    ``all:`` must be declared by at least one notebook; every notebook's keys and values
    are checked by :func:`check_params`. Errors name the file, the section, the key
    and suggest the closest known name. Returns ``[(notebook, params), ...]``.
    """
    where = params_file or "parameters"
    names = {nb.stem for nb in notebooks} | {str(nb) for nb in notebooks} | {nb.name for nb in notebooks}
    for section in all_params:
        if section not in ("all", "dataset") and section not in names:
            raise SpineprintError(f"{where}: no notebook in _toc.yml called {section!r}"
                                  f"{_suggest(section, {nb.stem for nb in notebooks} | {'all', 'dataset'})} "
                                  f"(notebooks: {', '.join(nb.stem for nb in notebooks)})")
    declared = {nb: _declared(root / nb) for nb in notebooks}
    everywhere = set().union(*declared.values()) if declared else set()
    for name in all_params.get("all", {}):
        if name not in everywhere:
            raise SpineprintError(f"{where}: section 'all:': no notebook declares a parameter {name!r}"
                                  f"{_suggest(name, everywhere)}")
    return [(nb, _params_for(root / nb, all_params, declared[nb], base=base, label=f"{where}: {nb}"))
            for nb in notebooks]


# --------------------------------------------------------------- execution
def _package_hash() -> str:
    digest = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    for path in sorted(pkg.rglob("*.py")):
        digest.update(path.relative_to(pkg).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache_key(notebook: Path, params: dict, package_hash: str) -> str:
    digest = hashlib.sha256()
    digest.update(notebook.read_bytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(package_hash.encode())
    digest.update(__version__.encode())
    return digest.hexdigest()


def _cached(output: Path, key: str) -> bool:
    if not output.is_file():
        return False
    try:
        meta = json.loads(output.read_text()).get("metadata", {})
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return meta.get(CACHE_KEY) == key


def execute_notebook(source: Path, output: Path, params: dict, cache_key: str | None = None,
                     progress: bool = True, failed_dir: Path | None = None) -> float:
    """Execute *source* with papermill into *output* (atomically); returns seconds.

    Raises
    ------
    SpineprintError
        Naming the notebook, the failing cell and the exception.
    """
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.running.ipynb")
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(source),
            str(tmp),
            parameters=params,
            kernel_name="python3",
            cwd=str(output.parent),
            progress_bar=progress,
            log_output=False,
            request_save_on_cell_execute=False,
        )
    except PapermillExecutionError as exc:
        # keep the failed execution for inspection, away from the book's sources
        failed = failed_dir / output.name if failed_dir else None
        if failed is not None and tmp.exists():
            failed.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, failed)
        tmp.unlink(missing_ok=True)
        where = f"; executed copy kept at {failed}" if failed is not None else ""
        raise SpineprintError(
            f"notebook {source} failed in cell {exc.cell_index} (execution count {exc.exec_count}): "
            f"{exc.ename}: {exc.evalue}{where}"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    nb = nbformat.read(str(tmp), as_version=4)
    if cache_key is not None:
        nb.metadata[CACHE_KEY] = cache_key
    nbformat.write(nb, str(tmp))
    os.replace(tmp, output)
    return time.perf_counter() - start


def _stage(root: Path, staging: Path) -> None:
    """Copy the book sources (not notebooks' executed outputs) into *staging*."""
    staging.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, staging / name)
    for name in BOOK_DIRS:
        src = root / name
        if not src.is_dir():
            continue
        for path in src.rglob("*"):
            if path.is_dir() or ".ipynb_checkpoints" in path.parts or "__pycache__" in path.parts:
                continue
            dest = staging / path.relative_to(root)
            if path.suffix == ".ipynb":
                continue  # executed copies are written by execute_notebook
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)


def fetch_dataset(spec: dict, source="parameters file") -> Path:
    """The BIDS folder of the ``dataset:`` section of a parameters file, fetched if needed.

    ``dataset: {openneuro: <accession>, participants: [...], suffixes: [...]}`` downloads the
    pinned snapshot's metadata and the selected images/physio files
    (:func:`spineprint_utils.datasets.fetch_openneuro_files`; sizes in README.md), or verifies
    them in ``$SPINEPRINT_DATA_DIR``.
    """
    from . import datasets

    if not isinstance(spec, dict) or "openneuro" not in spec:
        raise SpineprintError(f"{source}: 'dataset' must be a mapping with an 'openneuro' accession, got {spec!r}")
    unknown = sorted(set(spec) - {"openneuro", "participants", "suffixes"})
    if unknown:
        raise SpineprintError(f"{source}: unknown key(s) {unknown} in 'dataset' (openneuro, participants, suffixes)")
    return datasets.fetch_openneuro_files(str(spec["openneuro"]), spec.get("participants"), spec.get("suffixes"))


# --------------------------------------------------------------- scheduling
NEEDS_KEY = "needs"


def notebook_needs(root: Path, notebooks) -> dict:
    """What each notebook of the book waits for before it runs.

    A notebook declares the chapters whose outputs it reads in its metadata,
    ``{"spineprint": {"needs": ["00_simulated_study"]}}`` (notebook stems; ``[]``: it reads
    nothing another notebook writes, e.g. only real data or a study of its own). Without
    that entry it waits for every notebook before it in ``_toc.yml``, the order of a serial
    build. Only earlier notebooks may be named, so the order has no cycle.

    Returns
    -------
    dict
        ``{notebook: set of notebooks}`` (paths as in ``_toc.yml``).

    Raises
    ------
    SpineprintError
        An entry that is not a list of notebook stems of the book, or names a later one.
    """
    notebooks = list(notebooks)
    needs = {}
    for i, nb in enumerate(notebooks):
        try:
            meta = json.loads((root / nb).read_text(encoding="utf-8")).get("metadata", {})
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpineprintError(f"{root / nb}: not a readable notebook ({exc})") from None
        declared = (meta.get("spineprint") or {}).get(NEEDS_KEY) if isinstance(meta, dict) else None
        if declared is None:
            needs[nb] = set(notebooks[:i])
            continue
        if not isinstance(declared, list) or not all(isinstance(d, str) for d in declared):
            raise SpineprintError(f"{root / nb}: metadata spineprint.needs must be a list of notebook names, "
                                  f"got {declared!r}")
        earlier = {p.stem: p for p in notebooks[:i]}
        wrong = [d for d in declared if d not in earlier]
        if wrong:
            raise SpineprintError(f"{root / nb}: metadata spineprint.needs names {', '.join(map(repr, wrong))}, "
                                  f"not a notebook before it in _toc.yml ({', '.join(earlier) or 'none'})")
        needs[nb] = {earlier[d] for d in declared}
    return needs


def _run_scheduled(todo, needs: dict, run_one, jobs: int) -> None:
    """Run ``run_one(nb)`` for every notebook of *todo* (book order), at most *jobs* at a
    time, each once the notebooks it needs (among *todo*) have finished. After a failure
    nothing new starts; the running ones finish; the first error is raised."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    if jobs <= 1:  # one after the other, in this thread (an interrupt reaches papermill directly)
        for nb in todo:
            run_one(nb)
        return
    pending, running, done, error = list(todo), {}, set(), None
    todo_set = set(todo)
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        while pending or running:
            if error is None:
                for nb in list(pending):
                    if len(running) >= jobs:
                        break
                    if (needs.get(nb, set()) & todo_set) <= done:
                        pending.remove(nb)
                        running[pool.submit(run_one, nb)] = nb
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                nb = running.pop(future)
                if future.exception() is not None:
                    error = error or future.exception()
                else:
                    done.add(nb)
    except BaseException:
        # Ctrl-C / SIGTERM reach this (main) thread only: stop the kernels of the notebooks the
        # other threads run, so that their papermill calls fail now (removing their partial
        # copies) instead of running to the end
        _stop_kernels()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if error is not None:
        raise error


def _stop_kernels() -> None:
    """Kill the Jupyter kernels started by this process (its child processes running
    ``ipykernel``), found through ``/proc`` (Linux; elsewhere nothing is done)."""
    import signal

    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != me:  # field 4 of /proc/<pid>/stat: the parent's pid
                continue
            cmdline = (stat.parent / "cmdline").read_bytes()
            if b"ipykernel" in cmdline:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue


def build_book(root=None, output=None, params_file=None, only=None, execute=True,
               html=True, progress=True, n_jobs=None) -> Path:
    """Execute the notebooks and build the HTML book.

    Parameters
    ----------
    root : path-like, optional
        Book folder (holding ``_toc.yml``); default: found from the current folder.
    output : path-like, optional
        Output folder, default ``<root>/_build``. Executed notebooks go to
        ``<output>/source/notebooks``, the HTML to ``<output>/html``.
    params_file : path-like, optional
        YAML parameters (see :func:`load_params`).
    only : list of str, optional
        Execute only notebooks whose stem starts with one of these.
    execute, html : bool
        Run the papermill and/or the Jupyter Book step.
    n_jobs : int, optional
        Notebooks executed at the same time (default: the CPUs this process may use,
        :func:`spineprint_utils.parallel.available_cpus`). A notebook starts once the
        notebooks it needs have finished (:func:`notebook_needs`); ``1`` runs them one
        after the other in book order.

    Returns
    -------
    pathlib.Path
        The HTML folder (or the staging folder when ``html=False``).
    """
    root = find_book_root(root)
    default_output = not output
    output = Path(output).resolve() if output else root / "_build"
    all_params = load_params(params_file)
    dataset = all_params.pop("dataset", None)
    notebooks = toc_notebooks(root)
    # validate every notebook's parameters before anything runs (or is fetched); paths relative to the caller's folder
    plan = plan_params(root, notebooks, all_params, params_file, base=Path.cwd())
    if dataset is not None and execute:
        # a real dataset by parameters alone: fetch (resumable, verified), then every notebook
        # that declares bids_dir gets it unless its own section says otherwise
        all_params.setdefault("all", {})["bids_dir"] = str(fetch_dataset(dataset, params_file))
        plan = plan_params(root, notebooks, all_params, params_file, base=Path.cwd())

    # the build replaces only what it wrote: entries of --output it did not create are kept
    owned = BuildOutput(output, default=default_output or output == (root / "_build").resolve())
    staging = owned.claim("source")
    _stage(root, staging)
    package_hash = _package_hash()
    timings = {}
    if execute:
        from .parallel import available_cpus

        jobs = available_cpus() if n_jobs is None else int(n_jobs)
        if jobs < 1:
            raise SpineprintError(f"n_jobs must be at least 1, got {n_jobs}")
        needs = notebook_needs(root, notebooks)
        index = {nb: i for i, (nb, _) in enumerate(plan, 1)}
        todo, keys = [], {}
        for i, (nb, params) in enumerate(plan, 1):
            if only and not any(nb.stem.startswith(o) for o in only):
                continue
            keys[nb] = _cache_key(root / nb, params, package_hash)
            if _cached(staging / nb, keys[nb]):
                print(f"[{i}/{len(plan)}] {nb}: up to date (cached)", flush=True)
                continue
            todo.append(nb)
        params_of = dict(plan)
        failed_dir = owned.claim("failed") if todo else None
        # per-cell progress bars only when one notebook runs at a time (bars of two would mix)
        bars = progress and (jobs == 1 or len(todo) == 1)

        def run_one(nb):
            i, params = index[nb], params_of[nb]
            print(f"[{i}/{len(plan)}] executing {nb} {params or ''}", flush=True)
            timings[str(nb)] = execute_notebook(root / nb, staging / nb, params, keys[nb], progress=bars,
                                                failed_dir=failed_dir)
            print(f"[{i}/{len(plan)}] {nb}: {timings[str(nb)]:.1f} s", flush=True)

        _run_scheduled(todo, needs, run_one, jobs)
    missing = [nb for nb, _ in plan if not (staging / nb).is_file()]
    if html and missing:
        raise SpineprintError(
            "cannot build the HTML: not executed yet: " + ", ".join(map(str, missing))
        )
    atomic_write_text(owned.claim("timings.json"), json.dumps(timings, indent=2, sort_keys=True) + "\n")
    if not html:
        return staging
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [
        str(jb) if jb.exists() else "jupyter-book", "build", str(staging),
        "--path-output", str(owned.claim("jb")), "-W", "--keep-going",
        "--all",  # re-render every page: Sphinx misses some changes (e.g. to references.bib)
    ]
    print("building HTML:", " ".join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, cwd=str(staging))
    if result.returncode != 0:
        raise SpineprintError(f"jupyter-book build failed (exit {result.returncode}); see the warnings above")
    built = output / "jb" / "_build" / "html"
    final = owned.replace_tree(built, "html")
    report = _export_reports(plan, final / "reports")
    if report is not None:
        print(f"QC reports of the preprocessed study: {report}", flush=True)
    print(f"book built: {final / 'index.html'}", flush=True)
    return final


def _export_reports(plan, dest: Path) -> Path | None:
    """Copy the QC reports (``group.html``, ``sub-*.html`` and their figures) of the study the
    preprocessing notebook processed into the built book (``<html>/reports/``), where the
    own-data page links to them. Returns the group page, or None when there is none."""
    from . import report, simulate
    from ._io import cache_dir

    for nb, params in plan:
        if not nb.stem.startswith("02_"):
            continue
        bids_dir = params.get("bids_dir")
        if bids_dir is None:
            bids_dir = cache_dir("datasets") / f"sim-{simulate.params_hash(params.get('study_params') or {})}"
        return report.export(Path(bids_dir) / "derivatives" / "spineprint", dest)
    return None


# --------------------------------------------------------------------- CLI
def _cli(args) -> int:
    start = time.perf_counter()
    build_book(
        root=args.root,
        output=args.output,
        params_file=args.params,
        only=args.only,
        execute=not args.no_execute,
        html=not args.no_html,
        progress=not args.quiet,
        n_jobs=args.n_jobs,
    )
    print(f"total build time: {time.perf_counter() - start:.0f} s")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "build",
        help="execute the notebooks with papermill and build the HTML book",
        description="Execute every notebook in _toc.yml with papermill on a staged copy, then run "
        "jupyter-book build -W --keep-going. The source notebooks are never modified.",
    )
    p.add_argument("--root", default=None, help="book folder (default: found from the current folder)")
    p.add_argument("--output", default=None, help="output folder (default: <root>/_build)")
    p.add_argument("--params", default=None, help="YAML file of notebook parameters ('all:' or per notebook stem)")
    p.add_argument("--only", nargs="*", default=None, help="execute only notebooks whose name starts with these")
    p.add_argument("--no-execute", action="store_true", help="skip papermill (use executed copies)")
    p.add_argument("--no-html", action="store_true", help="execute only, no Jupyter Book step")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--n-jobs", type=int, default=None,
                   help="notebooks executed at the same time, each once the notebooks it needs are done "
                        "(default: the CPUs available; 1: one after the other)")
    p.set_defaults(func=_cli)

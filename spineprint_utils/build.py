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

__all__ = [
    "find_book_root",
    "toc_notebooks",
    "load_params",
    "check_params",
    "execute_notebook",
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
    becomes ``all: bids_dir``).
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


_TYPE_NAMES = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list, tuple),
    "dict": (dict,),
    "tuple": (list, tuple),
}


def _declared(notebook: Path) -> dict:
    import papermill as pm

    return {name: dict(info) for name, info in pm.inspect_notebook(str(notebook)).items()}


def _type_of_default(info) -> str:
    name = info.get("inferred_type_name") or "None"
    if name == "None":
        try:
            value = ast.literal_eval(info.get("default", "None"))
        except (ValueError, SyntaxError):
            return "None"
        name = type(value).__name__ if value is not None else "None"
    return name


def check_params(notebook: Path, params: dict, declared: dict | None = None, strict: bool = True) -> dict:
    """Validate parameters against the notebook's ``parameters`` cell.

    Unknown names and values whose type does not match the default's type are
    rejected (``None`` defaults accept anything; an ``int`` is accepted where
    a ``float`` is declared). Returns the accepted parameters.
    """
    declared = _declared(notebook) if declared is None else declared
    accepted = {}
    for name, value in params.items():
        if name not in declared:
            if strict:
                known = ", ".join(sorted(declared)) or "none"
                raise SpineprintError(f"{notebook}: unknown parameter {name!r} (declared: {known})")
            continue
        type_name = _type_of_default(declared[name])
        allowed = _TYPE_NAMES.get(type_name)
        if value is not None and allowed is not None:
            bad_bool = isinstance(value, bool) and type_name in ("int", "float")
            if bad_bool or not isinstance(value, allowed):
                raise SpineprintError(
                    f"{notebook}: parameter {name!r} expects {type_name} "
                    f"(default {declared[name].get('default')}), got {type(value).__name__} {value!r}"
                )
        accepted[name] = value
    return accepted


def _params_for(notebook: Path, all_params: dict) -> dict:
    declared = _declared(notebook)
    merged = check_params(notebook, all_params.get("all", {}), declared, strict=False)
    for key in (notebook.stem, str(notebook), notebook.name):
        if key in all_params:
            merged.update(check_params(notebook, all_params[key], declared, strict=True))
    return merged


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


def build_book(root=None, output=None, params_file=None, only=None, execute=True,
               html=True, progress=True) -> Path:
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

    Returns
    -------
    pathlib.Path
        The HTML folder (or the staging folder when ``html=False``).
    """
    root = find_book_root(root)
    output = Path(output).resolve() if output else root / "_build"
    staging = output / "source"
    all_params = load_params(params_file)
    dataset = all_params.pop("dataset", None)
    notebooks = toc_notebooks(root)
    known = {nb.stem for nb in notebooks} | {str(nb) for nb in notebooks} | {nb.name for nb in notebooks} | {"all"}
    unknown = sorted(set(all_params) - known)
    if unknown:
        raise SpineprintError(f"{params_file}: no notebook in _toc.yml called {', '.join(unknown)}")
    if dataset is not None and execute:
        # a real dataset by parameters alone: fetch (resumable, verified), then every notebook
        # that declares bids_dir gets it unless its own section says otherwise
        all_params.setdefault("all", {})["bids_dir"] = str(fetch_dataset(dataset, params_file))
    # validate every notebook's parameters before running anything
    plan = [(nb, _params_for(root / nb, all_params)) for nb in notebooks]

    _stage(root, staging)
    package_hash = _package_hash()
    timings = {}
    if execute:
        for i, (nb, params) in enumerate(plan, 1):
            if only and not any(nb.stem.startswith(o) for o in only):
                continue
            out = staging / nb
            key = _cache_key(root / nb, params, package_hash)
            if _cached(out, key):
                print(f"[{i}/{len(plan)}] {nb}: up to date (cached)", flush=True)
                continue
            print(f"[{i}/{len(plan)}] executing {nb} {params or ''}", flush=True)
            timings[str(nb)] = execute_notebook(root / nb, out, params, key, progress=progress,
                                                failed_dir=output / "failed")
            print(f"[{i}/{len(plan)}] {nb}: {timings[str(nb)]:.1f} s", flush=True)
    missing = [nb for nb, _ in plan if not (staging / nb).is_file()]
    if html and missing:
        raise SpineprintError(
            "cannot build the HTML: not executed yet: " + ", ".join(map(str, missing))
        )
    atomic_write_text(output / "timings.json", json.dumps(timings, indent=2, sort_keys=True) + "\n")
    if not html:
        return staging
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [
        str(jb) if jb.exists() else "jupyter-book", "build", str(staging),
        "--path-output", str(output / "jb"), "-W", "--keep-going",
        "--all",  # re-render every page: Sphinx misses some changes (e.g. to references.bib)
    ]
    print("building HTML:", " ".join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, cwd=str(staging))
    if result.returncode != 0:
        raise SpineprintError(f"jupyter-book build failed (exit {result.returncode}); see the warnings above")
    built = output / "jb" / "_build" / "html"
    final = output / "html"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(built, final)
    print(f"book built: {final / 'index.html'}", flush=True)
    return final


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
    p.set_defaults(func=_cli)

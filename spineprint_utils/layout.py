"""One dataset index for every stage: BIDS runs, their entities and their metadata.

Every stage that looks at a dataset (acquisition, preprocessing, connectivity, the
fingerprint designs and the notebooks) asks this module, instead of globbing paths:

- :class:`DatasetIndex` walks a BIDS dataset (raw or derivative) once and lists its
  runs. Only ``sub-*`` folders hold data: ``derivatives/``, ``sourcedata/``, ``code/``
  at the top are never taken as runs (derivative outputs are never raw runs), hidden
  files and folders (``.git``, macOS ``._*``) are skipped, and ``.bidsignore`` is
  honoured. The dataset itself may lie anywhere, also under a folder named
  ``derivatives``.
- A run is identified by **all** its entities (:data:`RUN_ENTITIES`: sub, ses
  optional, task, acq, ce, rec, dir, run, echo, part) so that two runs differing by
  ``acq-``, ``task-``, ``echo-`` or ``part-`` stay two runs, carried through the
  derivatives, the connectome records and the fingerprint designs.
- :func:`metadata` applies the BIDS inheritance principle to any sidecar (BOLD,
  physio, fieldmaps): every ``*_<suffix>.json`` from the dataset root down to the
  file's folder whose entities are a subset of the file's applies, deeper (more
  specific) files overriding higher ones (BIDS specification 1.9, "The Inheritance
  Principle").
- :func:`physio_files` finds a run's physiological recordings: one ``_physio`` file or
  several ``_recording-<label>_physio`` files, shared by every echo (and part) of the run.
- ``.nii`` and ``.nii.gz`` are both images; ``part-phase`` runs are listed but skipped
  as BOLD (:attr:`Run.skip_reason`); a broken symbolic link (a git-annex / DataLad clone
  whose content was not fetched) is reported per run (:attr:`Run.problem`), not fatal.

Why not pybids' ``BIDSLayout`` (what fMRIPrep uses): on a 100-subject x 2-run dataset
with the ds004386 layout it takes 8.2 s to index and read the runs' metadata (1.5 s from
its SQLite cache, plus 2 s to import), against 0.2-0.4 s here without any cache
(``benchmarks/bench_index.py``, ``benchmarks/README.md``); it would add SQLAlchemy and
formulaic to the environment, and it lists ``part-phase`` images and broken annex links as
runs without saying so. Both skip ``._*`` files and find a dataset under ``derivatives/``.
This index applies the same rules (entities, inheritance, ``.bidsignore``) in one module.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ._io import SpineprintError, check_label, read_json

__all__ = [
    "RUN_ENTITIES",
    "ENTITY_NAMES",
    "parse_name",
    "bids_root",
    "Run",
    "DatasetIndex",
    "metadata",
    "physio_files",
    "find_dataset",
    "derivative_files",
    "describe",
]

#: entities that identify a functional run (BIDS entity table order)
RUN_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part")
#: readable names of the run entities (record columns, design titles)
ENTITY_NAMES = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition", "ce": "contrast",
                "rec": "reconstruction", "dir": "direction", "run": "run", "echo": "echo", "part": "part"}
#: BIDS entity order of every entity (for building names)
_ORDER = ("sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir", "run",
          "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split", "recording", "chunk", "seg",
          "res", "den", "label", "desc")
_IMAGE_EXT = (".nii.gz", ".nii")
_ENTITY_PART = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")
#: top-level folders that never hold raw data (BIDS: derivatives, sourcedata, code, stimuli)
_NOT_DATA = ("derivatives", "sourcedata", "code", "stimuli")


def parse_name(name: str) -> tuple[dict, str, str]:
    """Split a BIDS file name into (entities, suffix, extension).

    ``sub-01_task-rest_acq-auto_bold.nii.gz`` -> ``({"sub": "01", "task": "rest", "acq":
    "auto"}, "bold", ".nii.gz")``. Parts that are not ``key-value`` are ignored.
    """
    name = Path(name).name
    stem, dot, ext = name.partition(".")
    parts = stem.split("_")
    ents = {}
    for part in parts[:-1]:
        m = _ENTITY_PART.match(part)
        if m:
            ents[m.group(1)] = m.group(2)
    last = parts[-1]
    suffix = "" if _ENTITY_PART.match(last) else last
    if suffix == "" and _ENTITY_PART.match(last):
        m = _ENTITY_PART.match(last)
        ents[m.group(1)] = m.group(2)
    return ents, suffix, (dot + ext) if dot else ""


def bids_root(path) -> Path | None:
    """The dataset folder of a file: the parent of its nearest ``sub-*`` ancestor."""
    for parent in Path(path).parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return None


def _applies(candidate: dict, target: dict) -> bool:
    return all(target.get(k) == v for k, v in candidate.items())


@lru_cache(maxsize=4096)
def _listing(folder: str, mtime_ns: int) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(folder)))
    except OSError:
        return ()


def _list(folder: Path) -> tuple[str, ...]:
    try:
        st = os.stat(folder)
    except OSError:
        return ()
    return _listing(str(folder), st.st_mtime_ns)


def metadata(path, suffix: str | None = None, root=None) -> tuple[dict, list[Path]]:
    """Sidecar metadata of a data file with the BIDS inheritance principle applied.

    Parameters
    ----------
    path : path-like
        A data file (``*_bold.nii.gz``, ``*_physio.tsv.gz``, ``*_epi.nii.gz`` ...) or its
        own ``.json``; it need not exist (the JSON files around it are what counts).
    suffix : str, optional
        Sidecar suffix to look for (default: the file's own suffix).
    root : path-like, optional
        Dataset folder (default :func:`bids_root`; the file's folder if it is in none).

    Returns
    -------
    meta : dict
        Every applicable ``*_<suffix>.json`` from the root down to the file's folder
        merged, deeper files overriding higher ones, and at one level files with fewer
        entities first (BIDS 1.9, "The Inheritance Principle").
    sources : list of Path
        The JSON files merged, in the order applied (the file's own sidecar last).

    Raises
    ------
    SpineprintError
        A sidecar that is not valid JSON or not an object (named).
    """
    path = Path(path)
    target, own_suffix, _ = parse_name(path.name)
    suffix = suffix or own_suffix
    root = Path(root) if root is not None else (bids_root(path) or path.parent)
    try:
        rel = path.parent.relative_to(root)
        levels = [root] + [root.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts))]
    except ValueError:
        levels = [path.parent]
    merged: dict = {}
    used: list[Path] = []
    for level in levels:
        cands = []
        for name in _list(level):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            ents, suf, ext = parse_name(name)
            if suf == suffix and ext == ".json" and _applies(ents, target):
                cands.append((len(ents), name))
        for _, name in sorted(cands):
            p = level / name
            merged.update(read_json(p))
            used.append(p)
    return merged, used


def _physio_key(ents: dict) -> dict:
    return {k: v for k, v in ents.items() if k not in ("echo", "part", "recording")}


def physio_files(bold_path, extensions=(".tsv.gz", ".tsv")) -> list[Path]:
    """The physiological recordings of a BOLD run (every echo and part of a run shares them).

    A ``*_physio.tsv[.gz]`` in the run's folder belongs to the run when its entities
    (without ``recording``) are a subset of the run's entities without ``echo``/``part``;
    the most specific such files win (a ``task-rest_acq-auto_physio`` over a
    ``task-rest_physio``). Returns the plain ``_physio`` file first, then the
    ``_recording-<label>_physio`` files sorted; hidden files are ignored.
    *extensions* selects the files (``(".json",)`` lists the sidecars of a metadata-only
    dataset).
    """
    bold_path = Path(bold_path)
    target = _physio_key(parse_name(bold_path.name)[0])
    cands = []
    for name in _list(bold_path.parent):
        if name.startswith("."):
            continue
        ents, suf, ext = parse_name(name)
        if suf != "physio" or ext not in extensions:
            continue
        key = _physio_key(ents)
        if _applies(key, target):
            cands.append((len(key), "recording" in ents, name))
    if not cands:
        return []
    best = max(c[0] for c in cands)
    chosen = sorted((rec, name) for n, rec, name in cands if n == best)
    return [bold_path.parent / name for _, name in chosen]


@dataclass(frozen=True)
class Run:
    """One image of a dataset with its entities.

    Attributes
    ----------
    path : Path
        The image (``.nii`` or ``.nii.gz``).
    root : Path
        The dataset folder.
    entities : dict
        Every entity of the file name (``sub``, optional ``ses``, ``task``, ``acq`` ...).
    suffix : str
        ``bold`` for a BOLD run.
    problem : str or None
        Why the file cannot be read (``broken symbolic link ...``), else None.
    skip_reason : str or None
        Why the run is not processed as BOLD (``part-phase``), else None.
    """

    path: Path
    root: Path
    entities: dict = field(hash=False, compare=False)
    suffix: str = "bold"
    problem: str | None = None
    skip_reason: str | None = None

    @property
    def prefix(self) -> str:
        """The file name without ``_<suffix>`` and extension (``sub-01_task-rest_acq-auto``)."""
        name = self.path.name
        for ext in _IMAGE_EXT:
            if name.endswith(ext):
                name = name[: -len(ext)]
                break
        return name[: -len(self.suffix) - 1] if name.endswith("_" + self.suffix) else name

    @property
    def key(self) -> dict:
        """The run-identifying entities (:data:`RUN_ENTITIES`, ``""`` when absent)."""
        return {k: self.entities.get(k, "") for k in RUN_ENTITIES}

    @property
    def subject(self) -> str:
        return self.entities.get("sub", "")

    @property
    def session(self) -> str:
        return self.entities.get("ses", "")

    @property
    def relative(self) -> Path:
        """The path relative to the dataset folder."""
        return self.path.relative_to(self.root)

    def metadata(self) -> tuple[dict, list[Path]]:
        """The run's sidecar metadata, inheritance applied (:func:`metadata`)."""
        return metadata(self.path, self.suffix, self.root)

    def physio_files(self) -> list[Path]:
        """The run's physio recordings (:func:`physio_files`)."""
        return physio_files(self.path)


def _bidsignore_matcher(root: Path):
    path = root / ".bidsignore"
    pats = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                pats.append(line)

    def ignored(rel: str, is_dir: bool) -> bool:
        name = rel.rsplit("/", 1)[-1]
        for pat in pats:
            dir_only = pat.endswith("/")
            p = pat.rstrip("/")
            if dir_only and not is_dir:
                continue
            anchored = "/" in p
            p = p.lstrip("/")
            if "**" in p:
                rx = re.escape(p).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                if re.fullmatch(rx, rel) or re.fullmatch(rx, name):
                    return True
            elif fnmatch.fnmatchcase(rel if anchored else name, p):
                return True
        return False

    return ignored


class DatasetIndex:
    """The files of one BIDS dataset (raw or derivative), walked once.

    Parameters
    ----------
    root : path-like
        The dataset folder (holding ``sub-*`` folders). It may lie anywhere, also
        inside a folder named ``derivatives``.
    subjects : sequence of str, optional
        Walk only these participants' folders (labels with or without ``sub-``), e.g. to
        find one participant's anatomy without walking a large dataset.

    Attributes
    ----------
    root : Path
    files : list of (Path, entities, suffix, extension)
        Every non-hidden, non-ignored file under ``sub-*`` folders.
    problems : list of (Path, str)
        Files that cannot be read (broken symbolic links), with the reason.

    Raises
    ------
    SpineprintError
        The folder does not exist.
    """

    def __init__(self, root, subjects=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SpineprintError(f"{self.root}: BIDS folder not found")
        ignored = _bidsignore_matcher(self.root)
        self.files: list[tuple[Path, dict, str, str]] = []
        self.problems: list[tuple[Path, str]] = []
        top = sorted(os.listdir(self.root))
        if subjects is not None:
            wanted = {"sub-" + str(s).removeprefix("sub-") for s in subjects}
            top = [name for name in top if name in wanted]
        for name in top:
            if not name.startswith("sub-") or name.startswith(".") or ignored(name, True):
                continue
            base = self.root / name
            if not base.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(base):
                rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                     and not ignored(f"{rel_dir}/{d}", True))
                for fn in sorted(filenames):
                    if fn.startswith(".") or ignored(f"{rel_dir}/{fn}", False):
                        continue
                    p = Path(dirpath) / fn
                    ents, suf, ext = parse_name(fn)
                    self.files.append((p, ents, suf, ext))

    # ------------------------------------------------------------ queries
    def subjects(self) -> list[str]:
        """Participant labels (without ``sub-``) that have at least one file."""
        return sorted({e["sub"] for _, e, _, _ in self.files if "sub" in e})

    def runs(self, suffix: str = "bold", participants=None, *, derivative: dict | None = None,
             include_skipped: bool = False) -> list[Run]:
        """Images with *suffix*, sorted by path.

        Parameters
        ----------
        suffix : str
        participants : sequence of str, optional
            Participant labels (with or without ``sub-``); an unknown one raises.
        derivative : dict, optional
            Entities a derivative image must have (e.g. ``{"desc": "preproc"}``).
            Without it, images carrying ``desc-`` are derivative outputs and never
            taken as raw runs.
        include_skipped : bool
            Also return ``part-phase`` images (marked by :attr:`Run.skip_reason`).
        """
        out = {}
        for p, ents, suf, ext in self.files:
            if suf != suffix or ext not in _IMAGE_EXT:
                continue
            if derivative is None:
                if "desc" in ents:
                    continue
            elif not _applies(derivative, ents):
                continue
            skip = None
            if ents.get("part") == "phase":
                skip = "part-phase image (phase data are not BOLD magnitude)"
                if not include_skipped:
                    continue
            problem = None
            if p.is_symlink() and not p.exists():
                problem = ("broken symbolic link (file content not present: a git-annex/DataLad clone without "
                           "the data? run `datalad get` on it)")
            run = Run(p, self.root, dict(ents), suf, problem, skip)
            stem = str(p)[: -len(ext)]
            if stem in out:  # both .nii and .nii.gz: keep the compressed one
                if ext == ".nii":
                    continue
            out[stem] = run
        runs = sorted(out.values(), key=lambda r: str(r.path))
        self.problems = [(r.path, r.problem) for r in runs if r.problem]
        if participants:
            if isinstance(participants, str):
                participants = [participants]
            keep = {check_label(p, "sub") for p in participants}
            missing = sorted(keep - {r.subject for r in runs})
            if missing:
                raise SpineprintError(f"{self.root}: participant(s) {', '.join(missing)} not found")
            runs = [r for r in runs if r.subject in keep]
        return runs

    def bold_runs(self, participants=None, include_skipped: bool = False) -> list[Run]:
        """Raw BOLD runs (``sub-*/[ses-*/]func/*_bold.nii[.gz]``, no ``desc-``), sorted.

        Raises
        ------
        SpineprintError
            No run at all (the message says where it looked), an unknown participant.
        """
        runs = self.runs("bold", participants, include_skipped=include_skipped)
        if not runs:
            hint = ""
            if not (self.root / "dataset_description.json").is_file():
                hint = " (not a BIDS dataset: no dataset_description.json)"
            raise SpineprintError(f"{self.root}: no BOLD runs (sub-*/[ses-*/]func/*_bold.nii[.gz]) found{hint}")
        return runs

    def anat(self, subject: str, suffix: str = "T2w", session: str | None = None) -> list[Path]:
        """Anatomical images of a participant (the given session's first, then the others)."""
        hits = [p for p, e, s, ext in self.files if s == suffix and ext in _IMAGE_EXT and e.get("sub") == subject
                and "desc" not in e]
        return sorted(hits, key=lambda p: (parse_name(p.name)[0].get("ses") != session, str(p)))

    def entity_table(self, runs=None):
        """One row per run: ``path`` and every :data:`RUN_ENTITIES` column (``""`` when absent)."""
        import pandas as pd

        runs = self.bold_runs() if runs is None else runs
        return pd.DataFrame([{"path": str(r.relative), **r.key} for r in runs])


def derivative_files(root, subject: str, patterns, *, datatype: str | None = None,
                     exclude=("spineprint",)) -> list[Path]:
    """Files of a participant in the dataset's other pipelines' derivatives, by name pattern.

    Every ``<root>/derivatives/<pipeline>/`` folder (except *exclude*: the derivatives this
    package writes itself) is read as a dataset with :class:`DatasetIndex` (only
    ``sub-<subject>`` is walked; hidden files and the pipeline's ``.bidsignore`` entries are
    skipped). The first pattern (:mod:`fnmatch`, on the file name) with any match wins; its
    matches are returned sorted by path.

    Parameters
    ----------
    root : path-like
        The raw dataset folder.
    subject : str
        Participant label (with or without ``sub-``).
    patterns : sequence of str
        File-name patterns in order of preference, e.g. ``("sub-01_T2w_label-SC_seg.nii*",)``.
    datatype : str, optional
        Only files whose folder is named so (``anat``, ``func``).
    exclude : sequence of str
        Pipeline folders never searched.

    Returns
    -------
    list of Path
        Empty when nothing matches or the dataset has no ``derivatives/`` folder.
    """
    deriv = Path(root) / "derivatives"
    subject = str(subject).removeprefix("sub-")
    files = []
    for name in _list(deriv):
        if name.startswith(".") or name in exclude or not (deriv / name).is_dir():
            continue
        index = DatasetIndex(deriv / name, subjects=[subject])
        files += [p for p, _, _, _ in index.files if datatype is None or p.parent.name == datatype]
    for pattern in patterns:
        hits = sorted((p for p in files if fnmatch.fnmatchcase(p.name, pattern)), key=str)
        if hits:
            return hits
    return []


def find_dataset(path) -> Path:
    """The dataset folder for *path*: itself when it holds ``sub-*`` folders or a
    ``dataset_description.json``, else the folder above a file inside one."""
    path = Path(path)
    if path.is_dir():
        return path
    root = bids_root(path)
    if root is None:
        raise SpineprintError(f"{path}: not inside a BIDS dataset (no sub-* folder above it)")
    return root


def build_name(entities: dict, suffix: str, ext: str = "") -> str:
    """A BIDS file name from entities in the specification's order."""
    keys = [k for k in _ORDER if k in entities] + [k for k in entities if k not in _ORDER]
    return "_".join([f"{k}-{entities[k]}" for k in keys] + [suffix]) + ext


def to_json(entities: dict) -> str:
    """Entities as a sorted JSON string (for records)."""
    return json.dumps({k: v for k, v in entities.items() if v}, sort_keys=True)


def describe(root) -> dict:
    """What a dataset holds, read through the index: the summary a chapter shows of it.

    Parameters
    ----------
    root : path-like
        A BIDS dataset folder.

    Returns
    -------
    dict
        ``name`` (``Name`` of ``dataset_description.json``, else the folder name);
        ``table`` (DataFrame, one row per BOLD run: ``file`` (file prefix), every varying
        run entity, ``tr_s`` (inherited ``RepetitionTime``), ``n_volumes`` (header),
        ``physio`` (recordings found), ``T2w`` (the participant has one));
        ``n_subjects``, ``n_runs``, ``sessions`` (labels, empty without a session level);
        ``space`` (``"PAM50"`` when ``dataset_description.json`` says ``SpatialReference:
        PAM50`` or every run is ``space-PAM50``, else ``"native"``); ``pairing`` (the
        between-scan pairing chapter 4 would use, from
        :func:`spineprint_utils.fingerprint.choose_pairing`, or ``"none (one scan per
        participant)"``); ``facts`` (these facts in one phrase), ``text`` (``"<name>: <facts>"``).
    """
    import nibabel as nib
    import pandas as pd

    from . import fingerprint

    root = Path(root)
    index = DatasetIndex(root)
    runs = index.bold_runs()
    desc_path = root / "dataset_description.json"
    desc = read_json(desc_path) if desc_path.is_file() else {}
    name = str(desc.get("Name") or root.name)
    rows = []
    for r in runs:
        meta, _ = r.metadata()
        try:
            n_vol = int(nib.load(str(r.path)).shape[3]) if r.problem is None else None
        except Exception:  # noqa: BLE001 - a damaged header is reported by preprocessing, not here
            n_vol = None
        rows.append({"file": r.prefix, **r.key, "tr_s": meta.get("RepetitionTime"), "n_volumes": n_vol,
                     "physio": "yes" if r.physio_files() else "no",
                     "T2w": "yes" if index.anat(r.subject, "T2w", r.session or None) else "no"})
    table = pd.DataFrame(rows)
    keep = ["file", "sub"] + [k for k in RUN_ENTITIES[1:] if (table[k] != "").any()]
    table = table[keep + ["tr_s", "n_volumes", "physio", "T2w"]]
    sessions = sorted(set(table["ses"]) - {""}) if "ses" in table else []
    spaces = {r.entities.get("space") for r in runs}
    space = "PAM50" if str(desc.get("SpatialReference", "")).upper() == "PAM50" or spaces == {"PAM50"} else "native"
    try:
        pairing = fingerprint.choose_pairing({"entities": table.drop(columns=["file"])})["title"]
    except SpineprintError:
        pairing = "none (one scan per participant)"
    n_sub = int(table["sub"].nunique())
    ses_txt = f"{len(sessions)} sessions" if sessions else "no session level"
    facts = (f"{n_sub} participant{'s' if n_sub != 1 else ''}, {len(table)} BOLD run"
             f"{'s' if len(table) != 1 else ''}, {ses_txt}, "
             + ("in PAM50 space" if space == "PAM50" else "in native space")
             + f"; between-scan pairing: {pairing}")
    return {"name": name, "table": table, "n_subjects": n_sub, "n_runs": int(len(table)), "sessions": sessions,
            "space": space, "pairing": pairing, "facts": facts, "text": f"{name}: {facts}"}

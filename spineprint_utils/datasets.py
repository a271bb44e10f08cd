"""Real data loaders: the PAM50 template/atlas, OpenNeuro metadata, real ROI time series, a real EPI run.

Every loader follows the same three-step rule (see ``CONTRIBUTING.md``):

1. an explicit ``data_dir`` argument, else ``$SPINEPRINT_DATA_DIR`` (a local
   copy with the layout ``pam50/{template,atlas}`` and ``openneuro/<ds>/...``):
   read from there, never download;
2. else a previously downloaded copy in :func:`spineprint_utils._io.cache_dir`;
3. else download from the pinned upstream URL with :mod:`pooch`.

Whatever the source, every file the package uses is verified against a pinned
SHA-256 registry; a mismatch is a :class:`~spineprint_utils._io.SpineprintError`
naming the file. Without a network and without a local copy the error says how to
set ``SPINEPRINT_DATA_DIR``.

References
----------
De Leener B, Fonov VS, Collins DL, Callot V, Stikov N, Cohen-Adad J (2018).
PAM50: Unbiased multimodal template of the brainstem and spinal cord aligned with
the ICBM152 space. NeuroImage 165:170-179. doi:10.1016/j.neuroimage.2017.10.041
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pooch

from ._io import SpineprintError, cache_dir
from ._io import data_dir as _env_data_dir

__all__ = [
    "PAM50_URLS",
    "PAM50_REGISTRY",
    "fetch_pam50",
    "sha256",
    "verify_files",
    "OPENNEURO_URL",
    "known_openneuro",
    "openneuro_registry",
    "make_openneuro_registry",
    "fetch_openneuro",
    "make_openneuro_annex",
    "openneuro_annex",
    "select_openneuro_files",
    "download_sizes",
    "download_file",
    "fetch_openneuro_files",
    "SGL_COMMIT",
    "SGL_URL",
    "SGL_REGISTRY",
    "SpinalROIData",
    "fetch_spinal_graph_learning",
    "SCT_TESTING_COMMIT",
    "SCT_TESTING_URL",
    "SCT_TESTING_REGISTRY",
    "fetch_sct_testing_data",
    "register_cli",
]

# --------------------------------------------------------------------- PAM50
#: Official PAM50 release, pinned exactly as the Spinal Cord Toolbox's own
#: downloader pins it (GitHub release first, OSF mirror second).
PAM50_URLS = (
    "https://github.com/spinalcordtoolbox/PAM50/releases/download/r20250730/PAM50-r20250730.zip",
    "https://osf.io/zchkp/?action=download",
)
_PAM50_ZIP = "PAM50-r20250730.zip"

#: SHA-256 of every PAM50 file the package uses, relative to the PAM50 root.
#: Computed from upstream commit 31443641706e (github.com/spinalcordtoolbox/PAM50),
#: the content of release r20250730.
PAM50_REGISTRY = {
    "template/PAM50_centerline.nii.gz": "c06863daa2e3a6bb00f0668e067ee71f10588d090e34c3b5cfb72763f92970ed",
    "template/PAM50_cord.nii.gz": "5934efd3c833b068bf160f80f870f501dd264670fb6adadd63301fa5338b641d",
    "template/PAM50_csf.nii.gz": "078d169ed2d9f6b9c65df02db1ed2365463da056d5e58847f09cc34de93b9945",
    "template/PAM50_gm.nii.gz": "1da7b9584ee9a3bfe2dad32625683e80fc9ca320ab3e32590c77a57efd8bf520",
    "template/PAM50_label_disc.nii.gz": "3555dfe7131c48e8c9e836182fd340387128f41eed24833745c3bab6e4235baa",
    "template/PAM50_levels.nii.gz": "5e5b27aee46837abfdb85bffb01d5eb6c20f41ed7d308f5388fc86fd251942b6",
    "template/PAM50_spinal_levels.nii.gz": "96ce9ee4d3acbb2c289a43b954c8a54c258e3aa7c24e2cd5db95d26bdc8871bc",
    "template/PAM50_wm.nii.gz": "9c4a73de4966022ed31706e3f9f1c074ae0d0645f1913ab11249a6ccd8387a0f",
    "atlas/PAM50_atlas_30.nii.gz": "6856b9d675ed62e081525d5cd5419ee574061c5c754b00c3fa2b19133bcd535b",
    "atlas/PAM50_atlas_31.nii.gz": "023bd78cf1472728686309b67dc556bd922027a671534b5b95b621b430811d5a",
    "atlas/PAM50_atlas_32.nii.gz": "4b551e942db7137890f99bec17efa6f0f4a133ebad8f339674787879c2aecc56",
    "atlas/PAM50_atlas_33.nii.gz": "61e329d7ebe9c3ab6b6a13556d7857b9b99bff64e3553f367a4ad9e6153126c0",
    "atlas/PAM50_atlas_34.nii.gz": "3ef94865ed6b7dc69abaa3c58a43c5e5aff9bd107892debf07355f927fea40a7",
    "atlas/PAM50_atlas_35.nii.gz": "76f708cd715b7ff1e213b79b9349ceb899359513541618aa7dc0cac7d6211ab4",
    "atlas/PAM50_atlas_36.nii.gz": "317e59ce926cb2fc947183c961b1adc29a2c0cd496a52b16f773d5568b6f8377",
}

_HOW_TO_OVERRIDE = (
    "set the environment variable SPINEPRINT_DATA_DIR to a local copy of the data "
    "(layout: $SPINEPRINT_DATA_DIR/pam50/{template,atlas}, "
    "$SPINEPRINT_DATA_DIR/openneuro/<dataset>/...), e.g. "
    "`export SPINEPRINT_DATA_DIR=/path/to/shared/data`, or pass data_dir=..."
)

# (path, size, mtime_ns) -> sha256 hex; avoids re-hashing unchanged files in one process.
_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def sha256(path) -> str:
    """SHA-256 hex digest of a file (memoised on path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _HASH_MEMO.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        _HASH_MEMO[key] = digest
    return digest


def verify_files(root, registry: dict[str, str], what: str = "data") -> Path:
    """Check that every file of *registry* exists under *root* with the pinned SHA-256.

    Parameters
    ----------
    root : path-like
        Folder the registry paths are relative to.
    registry : dict
        ``{relative/path: sha256 hex}``.
    what : str
        Name of the data set, used in error messages.

    Returns
    -------
    Path
        *root*, resolved.

    Raises
    ------
    SpineprintError
        Listing every missing file and every file whose checksum differs (each named
        by its full path).
    """
    root = Path(root).expanduser().resolve()
    missing, corrupt = [], []
    for rel, expected in registry.items():
        path = root / rel
        if not path.is_file():
            missing.append(str(path))
            continue
        got = sha256(path)
        if got != expected.lower():
            corrupt.append(f"{path} (sha256 {got}, expected {expected})")
    problems = []
    if corrupt:
        problems.append("checksum mismatch (corrupt or modified file): " + "; ".join(corrupt))
    if missing:
        problems.append("missing file(s): " + ", ".join(missing))
    if problems:
        raise SpineprintError(f"{root}: {what} copy failed verification: " + " | ".join(problems))
    return root


def _pam50_root_in(folder: Path) -> Path | None:
    """The folder holding ``template/`` and ``atlas/`` at or (once) below *folder*."""
    for cand in (folder, folder / "pam50", folder / "PAM50"):
        if (cand / "template").is_dir() and (cand / "atlas").is_dir():
            return cand
    if folder.is_dir():  # an unzipped release may add one top-level folder
        for cand in sorted(folder.iterdir()):
            if cand.is_dir() and (cand / "template").is_dir() and (cand / "atlas").is_dir():
                return cand
    return None


def fetch_pam50(data_dir=None) -> Path:
    """Locate (or download) the PAM50 template and atlas and verify them.

    The PAM50 is the unbiased spinal cord template of De Leener et al. (2018,
    NeuroImage 165:170, doi:10.1016/j.neuroimage.2017.10.041); ``atlas/`` holds the
    probabilistic gray-matter horn maps (ids 30-36).

    Parameters
    ----------
    data_dir : path-like, optional
        Local copy: either the PAM50 folder itself (holding ``template/`` and
        ``atlas/``) or a data root holding ``pam50/``. If omitted,
        ``$SPINEPRINT_DATA_DIR/pam50`` is used when that variable is set. A local
        copy is never supplemented by a download.

    Returns
    -------
    Path
        Folder with ``template/`` and ``atlas/`` subfolders; the 15 files of
        :data:`PAM50_REGISTRY` have been checked against their SHA-256.

    Raises
    ------
    SpineprintError
        Local copy missing or with a corrupt/missing file (named in the message);
        no local copy and the download failed (the message says how to set
        ``SPINEPRINT_DATA_DIR``).
    """
    override = Path(data_dir).expanduser() if data_dir is not None else None
    source = "data_dir argument"
    if override is None:
        env = _env_data_dir()
        if env is not None:
            override, source = env / "pam50", "$SPINEPRINT_DATA_DIR"
    if override is not None:
        root = _pam50_root_in(override)
        if root is None:
            raise SpineprintError(
                f"{override}: no PAM50 copy here (expected template/ and atlas/ subfolders; "
                f"location from {source})"
            )
        return verify_files(root, PAM50_REGISTRY, "PAM50")

    cache = cache_dir("pam50")
    extract = cache / "release-r20250730"
    root = _pam50_root_in(extract)
    if root is not None:
        try:
            return verify_files(root, PAM50_REGISTRY, "PAM50 (cached download)")
        except SpineprintError:
            shutil.rmtree(extract, ignore_errors=True)  # stale/corrupt cache: fetch again
    return _download_pam50(cache, extract)


def _download_pam50(cache: Path, extract: Path) -> Path:
    errors = []
    for url in PAM50_URLS:
        try:
            # The checksum of the release zip could not be computed when this was
            # written (no network), hence known_hash=None; integrity is instead
            # enforced on every extracted file through PAM50_REGISTRY below.
            pooch.retrieve(
                url,
                known_hash=None,
                fname=_PAM50_ZIP,
                path=cache,
                processor=pooch.Unzip(extract_dir=str(extract)),
                progressbar=False,
            )
        except Exception as exc:  # network errors come in many types (requests, OSError, ...)
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
            with contextlib.suppress(OSError):
                (cache / _PAM50_ZIP).unlink()
            continue
        root = _pam50_root_in(extract)
        if root is None:
            errors.append(f"{url}: archive has no template/ and atlas/ folders")
            shutil.rmtree(extract, ignore_errors=True)
            continue
        try:
            return verify_files(root, PAM50_REGISTRY, f"PAM50 (downloaded from {url})")
        except SpineprintError as exc:
            shutil.rmtree(extract, ignore_errors=True)
            with contextlib.suppress(OSError):
                (cache / _PAM50_ZIP).unlink()
            errors.append(str(exc))
    raise SpineprintError(
        "PAM50 template not available: no local copy and the download failed ("
        + "; ".join(errors)
        + "). Without network access, "
        + _HOW_TO_OVERRIDE
    )


# ------------------------------------------------------------------ OpenNeuro
#: Where OpenNeuro serves the files of a dataset (public S3 bucket).
OPENNEURO_URL = "https://s3.amazonaws.com/openneuro.org/{dataset}/{path}"
_REGISTRY_DIR = Path(__file__).parent / "data"
_REGISTRY_HEADER = "# OpenNeuro {dataset} snapshot {version}"


def _parse_registry(path: Path) -> tuple[str, dict[str, str]]:
    """Read ``openneuro_<ds>.txt``: a header with the snapshot version, then ``sha256  path`` lines."""
    version, registry = None, {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            words = line[1:].split()
            if len(words) >= 4 and words[0] == "OpenNeuro" and words[2] == "snapshot":
                version = words[3].rstrip(":")
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise SpineprintError(f"{path}:{lineno}: malformed registry line {line!r}")
        registry[parts[1].strip()] = parts[0].lower()
    if version is None:
        raise SpineprintError(f"{path}: registry has no '# OpenNeuro <ds> snapshot <version>' header")
    return version, registry


def openneuro_registry(dataset_id: str) -> tuple[str, dict[str, str]]:
    """Pinned snapshot version and ``{path: sha256}`` of the text files of an OpenNeuro dataset.

    Parameters
    ----------
    dataset_id : str
        e.g. ``"ds005884"``; see :func:`known_openneuro`.

    Returns
    -------
    version : str
        Snapshot version the checksums were computed from (e.g. ``"1.1.0"``).
    registry : dict
        Relative path (POSIX) -> SHA-256 hex digest.
    """
    known = known_openneuro()
    if dataset_id not in known:
        raise SpineprintError(
            f"unknown OpenNeuro dataset {dataset_id!r}; known (pinned) datasets: "
            + ", ".join(f"{ds} (v{v})" for ds, v in known.items())
        )
    return _parse_registry(_REGISTRY_DIR / f"openneuro_{dataset_id}.txt")


def known_openneuro() -> dict[str, str]:
    """``{dataset_id: pinned snapshot version}`` for every dataset with a registry file."""
    out = {}
    for path in sorted(_REGISTRY_DIR.glob("openneuro_ds*.txt")):
        out[path.stem.split("_", 1)[1]] = _parse_registry(path)[0]
    return out


#: files a local copy may hold beside the dataset's own files (the annex listing of the
#: images, read from the dataset's git-annex keys): never part of the text-file registry
_NOT_DATASET_FILES = frozenset({"annexed_files.tsv"})


def make_openneuro_registry(local_dir, dataset_id: str, version: str, out=None) -> str:
    """Build the checksum registry of every file in a local copy of a dataset's text files.

    Used once by the maintainers to pin a snapshot (the result is committed as
    ``spineprint_utils/data/openneuro_<ds>.txt``); never called at run time.

    Parameters
    ----------
    local_dir : path-like
        Local copy of the dataset at snapshot *version* (text files only).
    dataset_id, version : str
        Written in the header line.
    out : path-like, optional
        If given, the registry is also written there (atomically).

    Returns
    -------
    str
        Registry text, one ``sha256  relative/path`` line per file, sorted by path.
    """
    from ._io import atomic_write_text

    local_dir = Path(local_dir)
    if not (local_dir / "dataset_description.json").is_file():
        raise SpineprintError(f"{local_dir}: not a BIDS dataset (no dataset_description.json)")
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name not in _NOT_DATASET_FILES)
    lines = [
        _REGISTRY_HEADER.format(dataset=dataset_id, version=version)
        + ": SHA-256 of every text file (paths relative to the dataset root)"
    ]
    lines += [f"{sha256(p)}  {p.relative_to(local_dir).as_posix()}" for p in files]
    text = "\n".join(lines) + "\n"
    if out is not None:
        atomic_write_text(out, text)
    return text


def _openneuro_root_in(folder: Path, dataset_id: str) -> Path | None:
    for cand in (folder, folder / dataset_id, folder / "openneuro" / dataset_id):
        if (cand / "dataset_description.json").is_file():
            return cand
    return None


def fetch_openneuro(dataset_id: str, version: str | None = None, data_dir=None) -> Path:
    """Locate (or download) the text files of a pinned OpenNeuro snapshot and verify them.

    Only the metadata are fetched: JSON sidecars, TSV files, README, CHANGES and
    ``dataset_description.json`` (a few MB), enough for the acquisition chapter.
    The images themselves (tens of GB) are not downloaded.

    Parameters
    ----------
    dataset_id : str
        OpenNeuro accession, one of :func:`known_openneuro` (``ds005884`` CoSpine
        motor, ``ds005883`` CoSpine pain, Wei et al. 2025 Sci Data
        doi:10.1038/s41597-025-05982-x; ``ds004386`` resting state, Kaptan et al.
        2023 NeuroImage doi:10.1016/j.neuroimage.2023.120152).
    version : str, optional
        Snapshot version; must be the pinned one (default) because the checksums
        are pinned per snapshot. A leading ``v`` is accepted.
    data_dir : path-like, optional
        Local copy: the dataset folder itself, or a folder holding ``<ds>/`` or
        ``openneuro/<ds>/``. If omitted, ``$SPINEPRINT_DATA_DIR/openneuro/<ds>`` is used
        when that variable is set. A local copy is never supplemented by downloads.

    Returns
    -------
    Path
        The BIDS dataset folder; every file of the registry exists there with its
        pinned SHA-256.

    Raises
    ------
    SpineprintError
        Unknown dataset (the message lists the known ones) or version; local copy
        missing, incomplete or with a modified file (named); download failed (the
        message says how to set ``SPINEPRINT_DATA_DIR``).
    """
    pinned, registry = openneuro_registry(dataset_id)
    if version is not None and str(version).lstrip("v") != pinned:
        raise SpineprintError(
            f"{dataset_id}: only snapshot {pinned} is pinned (checksums in "
            f"{_REGISTRY_DIR / f'openneuro_{dataset_id}.txt'}); version {version!r} is not"
        )
    what = f"OpenNeuro {dataset_id} v{pinned}"
    override = Path(data_dir).expanduser() if data_dir is not None else None
    source = "data_dir argument"
    if override is None:
        env = _env_data_dir()
        if env is not None:
            override, source = env / "openneuro" / dataset_id, "$SPINEPRINT_DATA_DIR"
    if override is not None:
        root = _openneuro_root_in(override, dataset_id)
        if root is None:
            raise SpineprintError(
                f"{override}: no copy of {dataset_id} here (no dataset_description.json; "
                f"location from {source})"
            )
        return verify_files(root, registry, what)

    root = cache_dir("openneuro", dataset_id, pinned)
    todo = {rel: h for rel, h in registry.items() if not _cached_ok(root / rel, h)}
    logger = pooch.get_logger()
    level = logger.level
    if todo:  # one line instead of pooch's one line per file (hundreds of sidecars)
        logger.info("Fetching %d text files of %s from %s", len(todo), what, OPENNEURO_URL.format(dataset=dataset_id, path=""))
    logger.setLevel("WARNING")
    try:
        _download_openneuro(dataset_id, root, todo, what)
    finally:
        logger.setLevel(level)
    return verify_files(root, registry, what + " (downloaded)")


def _download_openneuro(dataset_id: str, root: Path, todo: dict, what: str) -> None:
    for rel, expected in todo.items():
        url = OPENNEURO_URL.format(dataset=dataset_id, path=rel)
        dest = root / rel
        try:
            pooch.retrieve(
                url,
                known_hash=f"sha256:{expected}",
                fname=dest.name,
                path=dest.parent,
                progressbar=False,
            )
        except ValueError as exc:  # pooch: hash mismatch (upstream changed since the pin)
            raise SpineprintError(
                f"{url}: downloaded file does not match the pinned checksum of {what} ({exc})"
            ) from None
        except Exception as exc:  # network errors come in many types
            raise SpineprintError(
                f"{what} not available: no local copy and the download of {url} failed "
                f"({type(exc).__name__}: {exc}). Without network access, " + _HOW_TO_OVERRIDE
            ) from None


def _cached_ok(path: Path, expected: str) -> bool:
    return path.is_file() and sha256(path) == expected


# --------------------------------------------------- OpenNeuro images and physio (annexed files)
_ANNEX_HEADER = "# OpenNeuro {dataset} snapshot {version}: annexed BIDS images and physio (size in bytes, SHA-256 of git-annex keys)"
_ANNEX_KEEP = (".nii.gz", ".nii", "_physio.tsv.gz")


def make_openneuro_annex(annexed_tsv, dataset_id: str, version: str, out=None) -> str:
    """Registry of a dataset's images and physio files from its git-annex listing.

    Used once by the maintainers (the result is committed as
    ``spineprint_utils/data/openneuro_<ds>_annex.tsv``); never called at run time.
    *annexed_tsv* has the columns ``path, backend, size, digest`` of the ``SHA256E``
    git-annex keys (``SHA256E-s<size>--<sha256>``) of the pinned snapshot; only BIDS
    participant files (``sub-*/``) that are images or physiological recordings are kept
    (no derivatives, DICOMs or ``.DS_Store``).

    Returns
    -------
    str
        Registry text: a header line, then ``path<TAB>size<TAB>sha256`` rows sorted by path.
    """
    import pandas as pd

    from ._io import atomic_write_text

    tab = pd.read_csv(annexed_tsv, sep="\t", dtype=str)
    missing = {"path", "backend", "size", "digest"} - set(tab.columns)
    if missing:
        raise SpineprintError(f"{annexed_tsv}: missing column(s) {sorted(missing)}")
    keep = tab["path"].str.startswith("sub-") & tab["path"].str.endswith(_ANNEX_KEEP)
    tab = tab[keep].sort_values("path")
    bad = tab[(tab["backend"] != "SHA256E") | ~tab["digest"].str.fullmatch(r"[0-9a-f]{64}")]
    if len(bad):
        raise SpineprintError(f"{annexed_tsv}: not SHA-256 git-annex keys: {bad['path'].tolist()[:3]}")
    lines = [_ANNEX_HEADER.format(dataset=dataset_id, version=version), "path\tsize\tsha256"]
    lines += [f"{p}\t{int(n)}\t{d}" for p, n, d in zip(tab["path"], tab["size"], tab["digest"])]
    text = "\n".join(lines) + "\n"
    if out is not None:
        atomic_write_text(out, text)
    return text


def openneuro_annex(dataset_id: str):
    """Images and physio files of a pinned OpenNeuro snapshot, with size and SHA-256.

    Parameters
    ----------
    dataset_id : str
        One of :func:`known_openneuro`.

    Returns
    -------
    pandas.DataFrame
        Columns ``path`` (relative to the dataset root), ``size`` (bytes), ``sha256``,
        ``participant`` (label without ``sub-``) and ``suffix`` (BIDS suffix: ``bold``,
        ``T2w``, ``physio``, ...).
    """
    import pandas as pd

    pinned, _ = openneuro_registry(dataset_id)
    path = _REGISTRY_DIR / f"openneuro_{dataset_id}_annex.tsv"
    if not path.is_file():
        raise SpineprintError(f"{dataset_id}: no image registry in the package ({path.name})")
    tab = pd.read_csv(path, sep="\t", comment="#", dtype={"path": str, "size": "int64", "sha256": str})
    tab["participant"] = tab["path"].str.extract(r"^sub-([A-Za-z0-9]+)/", expand=False)
    tab["suffix"] = tab["path"].str.extract(r"_([A-Za-z0-9]+)\.(?:nii(?:\.gz)?|tsv\.gz)$", expand=False)
    return tab


def select_openneuro_files(dataset_id: str, participants=None, suffixes=None, annex=None):
    """Rows of :func:`openneuro_annex` for some participants and BIDS suffixes.

    Parameters
    ----------
    participants : str or list of str, optional
        Labels with or without ``sub-``; default all.
    suffixes : str or list of str, optional
        E.g. ``["bold", "T2w", "physio"]``; default all.
    annex : pandas.DataFrame, optional
        A registry in the layout of :func:`openneuro_annex` (tests); default the package's.

    Raises
    ------
    SpineprintError
        A participant or suffix that the dataset does not have (the message lists the known ones).
    """
    tab = openneuro_annex(dataset_id) if annex is None else annex
    if isinstance(participants, str):
        participants = [participants]
    if isinstance(suffixes, str):
        suffixes = [suffixes]
    if participants is not None:
        wanted = [str(p).removeprefix("sub-") for p in participants]
        unknown = sorted(set(wanted) - set(tab["participant"]))
        if unknown:
            raise SpineprintError(f"{dataset_id}: participant(s) {', '.join(unknown)} not found; "
                                  f"known: {', '.join(sorted(set(tab['participant'])))}")
        tab = tab[tab["participant"].isin(wanted)]
    if suffixes is not None:
        unknown = sorted(set(suffixes) - set(tab["suffix"]))
        if unknown:
            raise SpineprintError(f"{dataset_id}: suffix(es) {', '.join(unknown)} not found; "
                                  f"known: {', '.join(sorted(set(tab['suffix'].dropna())))}")
        tab = tab[tab["suffix"].isin(list(suffixes))]
    return tab.reset_index(drop=True)


def download_sizes(dataset_id: str, participants=None, suffixes=None):
    """Number of files and bytes per BIDS suffix of a selection (:func:`select_openneuro_files`).

    Returns
    -------
    pandas.DataFrame
        Index ``suffix``; columns ``files``, ``bytes``, ``GB`` (10^9 bytes).
    """
    tab = select_openneuro_files(dataset_id, participants, suffixes)
    out = tab.groupby("suffix").agg(files=("path", "size"), bytes=("size", "sum"))
    out["GB"] = out["bytes"] / 1e9
    return out


def download_file(url: str, dest, size: int, sha256_hex: str, *, progress: bool = True,
                  chunk: int = 1 << 16, timeout: float = 60.0) -> Path:
    """Download one file, resumably, and accept it only with the pinned size and SHA-256.

    Bytes go to ``<dest>.part``; an existing partial file is resumed with an HTTP
    ``Range: bytes=<n>-`` request (RFC 9110, section 14.2); a server answering 200 instead of
    206 sends the whole file again, which then replaces the partial one. A download that
    ends short keeps its ``.part`` for the next attempt. A complete file whose size or
    SHA-256 differs from the pinned ones is deleted and refused; a good one is renamed to
    *dest* (so *dest* only ever holds verified bytes).

    Parameters
    ----------
    url : str
    dest : path-like
    size : int
        Expected size in bytes.
    sha256_hex : str
        Expected SHA-256.
    progress : bool
        Show a tqdm progress bar (bytes).

    Returns
    -------
    Path
        *dest*.

    Raises
    ------
    SpineprintError
        Network error or short download (resumable: rerun), or a corrupt download (refused).
    """
    import requests
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size == size and sha256(dest) == sha256_hex:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > size:
        part.unlink()
        have = 0
    if have < size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 206:
                    mode = "ab"
                elif resp.status_code == 200:
                    mode, have = "wb", 0
                elif resp.status_code == 416 and have:  # nothing left to send
                    mode = None
                else:
                    raise SpineprintError(f"{url}: HTTP {resp.status_code}")
                if mode is not None:
                    with open(part, mode) as fh, tqdm(total=size, initial=have, unit="B", unit_scale=True,
                                                      desc=dest.name, disable=not progress, leave=False) as bar:
                        for block in resp.iter_content(chunk):
                            fh.write(block)
                            bar.update(len(block))
        except SpineprintError:
            raise
        except Exception as exc:  # requests' network errors come in many types
            got = part.stat().st_size if part.is_file() else 0
            raise SpineprintError(
                f"{url}: download interrupted at {got} of {size} bytes ({type(exc).__name__}: {exc}); "
                f"rerun to resume from {part}") from None
    got = part.stat().st_size if part.is_file() else 0
    if got < size:
        raise SpineprintError(f"{url}: incomplete download ({got} of {size} bytes); rerun to resume from {part}")
    if got > size:
        part.unlink()
        raise SpineprintError(f"{url}: downloaded {got} bytes, the pinned size is {size}; corrupt download refused")
    digest = sha256(part)
    if digest != sha256_hex:
        part.unlink()
        raise SpineprintError(f"{url}: SHA-256 {digest} differs from the pinned {sha256_hex}; "
                              "corrupt download refused (deleted)")
    os.replace(part, dest)
    return dest


def fetch_openneuro_files(dataset_id: str, participants=None, suffixes=None, *, data_dir=None,
                          progress: bool = True, annex=None) -> Path:
    """Images and physio files of a pinned OpenNeuro snapshot, selected by participant and suffix.

    The metadata come first (:func:`fetch_openneuro`); then every selected annexed file is
    read from the local copy (``data_dir`` / ``$SPINEPRINT_DATA_DIR/openneuro/<ds>``, verified by
    size and SHA-256, never supplemented by downloads) or downloaded into the cache with
    :func:`download_file` (resumable, verified) from :data:`OPENNEURO_URL`.

    Parameters
    ----------
    dataset_id : str
    participants, suffixes : list of str, optional
        Selection (:func:`select_openneuro_files`); default everything (see
        :func:`download_sizes` first: tens of GB).
    data_dir : path-like, optional
    progress : bool
        One progress bar per file, and a line per file.
    annex : pandas.DataFrame, optional
        Registry override (tests).

    Returns
    -------
    Path
        The BIDS dataset folder holding the metadata and the selected files.
    """
    root = fetch_openneuro(dataset_id, data_dir=data_dir)
    tab = select_openneuro_files(dataset_id, participants, suffixes, annex)
    local = data_dir is not None or _env_data_dir() is not None
    if local:
        problems = []
        for rel, size, digest in zip(tab["path"], tab["size"], tab["sha256"]):
            path = root / rel
            if not path.is_file():
                problems.append(f"missing {path}")
            elif path.stat().st_size != size or sha256(path) != digest:
                problems.append(f"{path} (size or SHA-256 differs from the pinned {size} bytes, {digest})")
        if problems:
            raise SpineprintError(f"{root}: local copy of {dataset_id} lacks selected files: " + "; ".join(problems))
        return root
    total = int(tab["size"].sum())
    if progress and len(tab):
        print(f"{dataset_id}: {len(tab)} file(s), {total / 1e9:.2f} GB", flush=True)
    for rel, size, digest in zip(tab["path"], tab["size"], tab["sha256"]):
        download_file(OPENNEURO_URL.format(dataset=dataset_id, path=rel), root / rel, int(size), digest,
                      progress=progress)
    return root


# ------------------------------------------------- pinned single files (GitHub raw)
def _fetch_pinned(name: str, registry: dict, url: str, subdir: str, version: str, data_dir=None) -> Path:
    """Local copy (verified) or download of pinned files; returns the folder holding them.

    *registry* maps a local relative path to ``(upstream relative path, sha256)``; *url*
    has a ``{path}`` field for the upstream path. The local override is *data_dir* (the
    folder itself, or a data root holding *subdir*), else ``$SPINEPRINT_DATA_DIR/<subdir>``;
    a local copy is never supplemented by a download. Downloads go to
    ``cache_dir(subdir, version)``, each file checked by pooch against its SHA-256.
    """
    hashes = {rel: h for rel, (_, h) in registry.items()}
    override = Path(data_dir).expanduser() if data_dir is not None else None
    source = "data_dir argument"
    if override is None:
        env = _env_data_dir()
        if env is not None:
            override, source = env / subdir, "$SPINEPRINT_DATA_DIR"
    if override is not None:
        first = next(iter(registry))
        for cand in (override, override / subdir):
            if (cand / first).is_file():
                return verify_files(cand, hashes, name)
        raise SpineprintError(f"{override}: no copy of {name} here (no {first}; location from {source})")
    root = cache_dir(subdir, version)
    for rel, (upstream, expected) in registry.items():
        dest = root / rel
        if _cached_ok(dest, expected):
            continue
        full = url.format(path=upstream)
        try:
            pooch.retrieve(full, known_hash=f"sha256:{expected}", fname=dest.name, path=dest.parent,
                           progressbar=False)
        except ValueError as exc:  # pooch: hash mismatch
            raise SpineprintError(f"{full}: downloaded file does not match the pinned checksum of {name} ({exc})") from None
        except Exception as exc:  # network errors come in many types
            raise SpineprintError(
                f"{name} not available: no local copy and the download of {full} failed "
                f"({type(exc).__name__}: {exc}). Without network access, set SPINEPRINT_DATA_DIR to a "
                f"folder holding {subdir}/ (or pass data_dir=...)"
            ) from None
    return verify_files(root, hashes, name + " (downloaded)")


# ------------------------------------------- real spinal ROI time series (15 x 2 sessions)
#: Upstream commit of github.com/louisleger/spinal-graph-learning the data are pinned to.
SGL_COMMIT = "b31e9ecc0e0a98f72ad745d5e078a2a0f7a68286"
SGL_URL = "https://raw.githubusercontent.com/louisleger/spinal-graph-learning/" + SGL_COMMIT + "/{path}"
#: local file name -> (upstream path, SHA-256) (checksums of the upstream files at SGL_COMMIT).
SGL_REGISTRY = {
    "spinal_data.npy": ("data/fmri/spinal_data.npy",
                        "0a21852f982f5c19e0be295c1aac60aaa448aa22ee8ce77b3aabfe81727558e1"),
    "pam50_atlas.csv": ("data/resources/pam50_atlas.csv",
                        "f849fe6aaa39c67c34ae697c092e6859d41166878c23e9cbbc28e4e4827ccd3f"),
    "activity.npy": ("data/resources/activity.npy",
                     "3e184e5b8e3aab2f694e728345a7bb389ae9a31a10d10690f6a2892ec559ebe2"),
    "activity_paradigm_Z3mm.csv": ("data/resources/activity_paradigm_Z3mm.csv",
                                   "e900413c1ee53aefab2f92cc6f345b5ab3e6bf4491137f8ac9afd6a8f6405672"),
}
_SGL_SHAPE = (15, 2, 125, 56)  # participants, sessions, volumes, regions (documented upstream layout)


@dataclass(frozen=True)
class SpinalROIData:
    """Real cervical spinal cord ROI time series (:func:`fetch_spinal_graph_learning`).

    Attributes
    ----------
    timeseries : ndarray, shape (15, 2, 125, 56), float64
        participant x session x volume x region, arbitrary units (denoised, not band-passed).
    regions : list of str
        56 PAM50 region names ``<segment>_<G|W>_<part>_<L|R>`` (segments C6, C7, C8, T1; gray
        matter parts D, I, V = dorsal, intermediate, ventral; white matter tracts CST, FC, FG, SL).
    subjects : list of str
        ``"01" .. "15"``: upstream listing order (the same in both sessions, not named upstream).
    sessions : list of str
        ``["1", "2"]``.
    paradigm : ndarray, shape (125,)
        Motor block paradigm per volume (1 = task block, 0 = rest), shared by every run.
    onsets, durations : ndarray of float, seconds
        Task blocks from ``activity_paradigm_Z3mm.csv``.
    tr : float
        Repetition time in seconds, inferred: median block spacing (s, from onsets) divided
        by the median block spacing in volumes (from ``paradigm``).
    censored : ndarray of bool, shape (15, 2, 125)
        Volumes whose 56 values are all ~0 (RMS below 1e-4 x the run's median volume RMS):
        volumes removed upstream by the denoising (censored), not signal.
    folder : Path
        Where the verified files are.
    """

    timeseries: np.ndarray
    regions: list
    subjects: list
    sessions: list
    paradigm: np.ndarray
    onsets: np.ndarray
    durations: np.ndarray
    tr: float
    censored: np.ndarray
    folder: Path


def fetch_spinal_graph_learning(data_dir=None) -> SpinalROIData:
    """Real cervical cord fMRI ROI time series of 15 participants x 2 sessions, verified.

    Data of the student project github.com/louisleger/spinal-graph-learning (Van De Ville
    lab, EPFL), pinned at commit :data:`SGL_COMMIT`: ``data/fmri/spinal_data.npy`` is a
    ``(3750, 56)`` array = 2 sessions x 15 participants x 125 volumes (all session-1 runs
    first, then session 2, participants in the same listing order in both) of motor-task
    runs, 56 PAM50 regions (``data/resources/pam50_atlas.csv``), and the block paradigm
    (``activity.npy``, ``activity_paradigm_Z3mm.csv``). **The upstream repository has no
    licence**: the files are downloaded from upstream (never redistributed) and must be
    cited (``book/references.bib``: ``leger2024sgl``).

    Parameters
    ----------
    data_dir : path-like, optional
        Local copy holding the four files (or a data root holding ``spinal_graph_learning/``);
        default ``$SPINEPRINT_DATA_DIR/spinal_graph_learning`` when that variable is set,
        else the download cache.

    Returns
    -------
    SpinalROIData

    Raises
    ------
    SpineprintError
        Missing or modified file (named, with its checksum), an array of an unexpected
        shape, or no local copy and no network (the message says how to set
        ``SPINEPRINT_DATA_DIR``).
    """
    import pandas as pd

    folder = _fetch_pinned("spinal-graph-learning ROI time series", SGL_REGISTRY, SGL_URL,
                           "spinal_graph_learning", SGL_COMMIT[:12], data_dir)
    raw = np.load(folder / "spinal_data.npy", allow_pickle=False)
    n_sub, n_ses, n_vol, n_roi = _SGL_SHAPE
    if raw.shape != (n_sub * n_ses * n_vol, n_roi):
        raise SpineprintError(f"{folder / 'spinal_data.npy'}: expected shape {(n_sub * n_ses * n_vol, n_roi)}, "
                              f"found {raw.shape}")
    # rows: session-major, then participant, then volume
    ts = np.ascontiguousarray(raw.reshape(n_ses, n_sub, n_vol, n_roi).transpose(1, 0, 2, 3), dtype=np.float64)
    regions = pd.read_csv(folder / "pam50_atlas.csv", index_col=0)["regions_of_interest"].astype(str).tolist()
    if len(regions) != n_roi:
        raise SpineprintError(f"{folder / 'pam50_atlas.csv'}: {len(regions)} region names for {n_roi} columns")
    paradigm = np.load(folder / "activity.npy", allow_pickle=False).astype(np.float64)
    if paradigm.shape != (n_vol,):
        raise SpineprintError(f"{folder / 'activity.npy'}: expected {n_vol} values, found shape {paradigm.shape}")
    blocks = pd.read_csv(folder / "activity_paradigm_Z3mm.csv", index_col=0)
    onsets = blocks["Times"].to_numpy(float)
    durations = blocks["Durations"].to_numpy(float)
    starts = np.flatnonzero(np.diff(np.r_[0.0, paradigm]) > 0)  # first volume of each block
    tr = float(np.median(np.diff(onsets)) / np.median(np.diff(starts)))
    rms = np.sqrt(np.mean(ts**2, axis=-1))
    censored = rms < 1e-4 * np.median(rms, axis=-1, keepdims=True)
    return SpinalROIData(ts, regions, [f"{i + 1:02d}" for i in range(n_sub)], ["1", "2"], paradigm,
                         onsets, durations, tr, censored, folder)


# ------------------------------------------------ real EPI run (SCT testing data, MIT)
#: Upstream commit of github.com/spinalcordtoolbox/sct_testing_data.
SCT_TESTING_COMMIT = "af4c7e8783c9dcf8bcfc6c53b190af46260bb875"
SCT_TESTING_URL = ("https://raw.githubusercontent.com/spinalcordtoolbox/sct_testing_data/"
                   + SCT_TESTING_COMMIT + "/{path}")
#: local path -> (upstream path, SHA-256).
SCT_TESTING_REGISTRY = {
    "fmri/fmri.nii.gz": ("fmri/fmri.nii.gz", "b5f43b60e3be7c7cee290da0c85d6de938ab833ab4e8420bd99b3e88a1db5ab9"),
    "t2/t2.nii.gz": ("t2/t2.nii.gz", "15cde5cdc5e56ad4f7d5fef698b317864c9bd68c0f72d2b3022c9fae6d11d977"),
    "t2/t2_seg-manual.nii.gz": ("t2/t2_seg-manual.nii.gz",
                                "929a27bb3c3753c158ba98b6f24305e9be535a351232c950c3436a7284b62f67"),
    "LICENSE": ("LICENSE", "44da06f9462ccd4d5d4d173e9c8d8987a98a81bf7018222962ec4e37b5938668"),
}


def fetch_sct_testing_data(data_dir=None) -> Path:
    """Folder with the Spinal Cord Toolbox testing data files the book uses, verified.

    ``fmri/fmri.nii.gz`` is a real cervical cord BOLD run (int16, 68 x 68 x 6 x 30,
    0.956 mm in-plane; its header TR is doubtful), ``t2/`` a real T2w image with its
    manual cord segmentation; github.com/spinalcordtoolbox/sct_testing_data at
    :data:`SCT_TESTING_COMMIT`, MIT licence (``LICENSE``); De Leener et al. 2017,
    NeuroImage 145:24, doi:10.1016/j.neuroimage.2016.10.009.

    Parameters
    ----------
    data_dir : path-like, optional
        Local copy (the folder itself or a data root holding ``sct_testing_data/``);
        default ``$SPINEPRINT_DATA_DIR/sct_testing_data`` when set, else the download cache.

    Returns
    -------
    Path
        Folder holding the files of :data:`SCT_TESTING_REGISTRY`.
    """
    return _fetch_pinned("SCT testing data", SCT_TESTING_REGISTRY, SCT_TESTING_URL, "sct_testing_data",
                         SCT_TESTING_COMMIT[:12], data_dir)


# ------------------------------------------------------------------ command line
def register_cli(subparsers) -> None:
    """``spineprint fetch {pam50,<dataset id>} [--data-dir DIR]``: download/verify, print the folder."""
    p = subparsers.add_parser(
        "fetch",
        help="download (or verify a local copy of) the PAM50 template or an OpenNeuro dataset's metadata",
        description="Download the pinned PAM50 release or the text files of a pinned OpenNeuro snapshot "
        "into the cache (or verify a local copy given by --data-dir / $SPINEPRINT_DATA_DIR) and print its folder.",
    )
    p.add_argument("what", help="'pam50' or an OpenNeuro accession: " + ", ".join(known_openneuro()))
    p.add_argument("--data-dir", default=None, help="local copy to verify instead of downloading")
    p.add_argument("--participant-label", nargs="*", default=None,
                   help="OpenNeuro: also fetch these participants' images/physio (default with --suffix: all)")
    p.add_argument("--suffix", nargs="*", default=None,
                   help="OpenNeuro: also fetch images/physio with these BIDS suffixes (e.g. bold T2w physio)")
    p.add_argument("--sizes", action="store_true", help="OpenNeuro: print the download size of the selection and stop")
    p.set_defaults(func=_cli_fetch)


def _cli_fetch(args) -> int:
    images = getattr(args, "participant_label", None) is not None or getattr(args, "suffix", None) is not None
    if args.what.lower() == "pam50":
        path = fetch_pam50(args.data_dir)
    elif getattr(args, "sizes", False):
        print(download_sizes(args.what, args.participant_label, args.suffix).to_string())
        return 0
    elif images:
        path = fetch_openneuro_files(args.what, args.participant_label, args.suffix, data_dir=args.data_dir)
    else:
        path = fetch_openneuro(args.what, data_dir=args.data_dir)
    print(path)
    return 0

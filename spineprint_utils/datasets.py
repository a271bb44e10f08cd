"""Real data loaders: the PAM50 template/atlas and OpenNeuro metadata.

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
import shutil
from pathlib import Path

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
    p.set_defaults(func=_cli_fetch)


def _cli_fetch(args) -> int:
    if args.what.lower() == "pam50":
        path = fetch_pam50(args.data_dir)
    else:
        path = fetch_openneuro(args.what, data_dir=args.data_dir)
    print(path)
    return 0

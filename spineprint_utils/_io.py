"""Shared I/O helpers: clear errors, atomic writes, caches, safe BIDS labels.

Every writer in the package goes through :func:`atomic_write` (write to a
temporary name in the destination folder, then :func:`os.replace`), so an
interrupted run never leaves a half-written file behind. Every reader raises a
:class:`SpineprintError` that names the file and the problem instead of a
traceback from deep inside a library.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import tempfile
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "SpineprintError",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_nifti",
    "atomic_save_npz",
    "read_json",
    "load_nifti",
    "verify_nifti",
    "check_label",
    "bids_entities",
    "recorded_warnings",
    "cache_dir",
    "data_dir",
]

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_ENTITY_RE = re.compile(r"(?:^|_)([a-zA-Z]+)-([a-zA-Z0-9]+)")
_UMASK = os.umask(0)
os.umask(_UMASK)


class SpineprintError(ValueError):
    """An input problem the user can fix; the message names the file and the problem."""


# ---------------------------------------------------------------- locations
def cache_dir(*parts: str) -> Path:
    """Folder for generated data (simulated datasets, downloads, derivatives).

    ``$SPINEPRINT_CACHE_DIR`` if set, else ``~/.cache/spineprint``. Never inside
    the source tree, so a build leaves ``git status`` clean.
    """
    root = Path(os.environ.get("SPINEPRINT_CACHE_DIR", Path.home() / ".cache" / "spineprint"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path | None:
    """Local override for real data (``$SPINEPRINT_DATA_DIR``), or ``None``.

    Tests and CI set it to ``../shared/data``; the loaders then read from it
    instead of downloading.
    """
    value = os.environ.get("SPINEPRINT_DATA_DIR")
    return Path(value).expanduser().resolve() if value else None


# ---------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to *path*; rename it to *path* on success.

    On any exception (including ``KeyboardInterrupt``) the temporary file is
    removed and *path* is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; outputs get the usual permissions (0666 & ~umask)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.filename is None and exc.errno is not None:  # e.g. disk full: name the file being written
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> Path:
    """Write *text* (UTF-8) to *path* atomically; returns the path."""
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path, obj) -> Path:
    """Write *obj* as indented, key-sorted JSON atomically (byte-reproducible).

    NaN and infinite floats (Python or numpy, also inside arrays) are written as ``null``:
    bare ``NaN``/``Infinity`` are not JSON (RFC 8259) and break other readers (the BIDS
    validator, browsers' ``JSON.parse``). Reading back gives ``None``.
    """
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _finite(obj):
    """A copy of *obj* with NaN/inf floats replaced by ``None`` (recursively)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_tsv_gz(path, text: str) -> Path:
    """Write *text* gzip-compressed with a fixed mtime (byte-reproducible)."""
    with atomic_write(path, "wb") as fh:
        with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            gz.write(text.encode("utf-8"))
    return Path(path)


def atomic_save_nifti(img, path, compresslevel: int = 6) -> Path:
    """Save a nibabel image atomically, streaming it to disk.

    ``.nii.gz`` files are compressed with a fixed gzip mtime so that the same
    image always gives the same bytes. The image is streamed through nibabel's
    file map, so no second in-memory copy of a large 4D image is made.
    """
    import nibabel as nib

    path = Path(path)
    if not isinstance(img, nib.Nifti1Image):
        raise SpineprintError(f"{path}: expected a NIfTI-1 image, got {type(img).__name__}")
    original_file_map = img.file_map  # to_file_map rebinds it; the caller's image stays as it was
    try:
        with atomic_write(path, "wb") as fh:
            if path.name.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0,
                                   compresslevel=compresslevel) as gz:
                    img.to_file_map(img.make_file_map({"image": gz, "header": gz}))
            else:
                img.to_file_map(img.make_file_map({"image": fh, "header": fh}))
    finally:
        img.file_map = original_file_map
    return path


def atomic_save_npz(path, compressed: bool = True, **arrays) -> Path:
    """``numpy.savez_compressed`` through an atomic rename, byte-reproducible.

    ``np.savez_compressed`` stamps every zip member with the current time, so
    the same arrays saved a second later give different bytes. Here each array
    is written as ``<name>.npy`` (``numpy.lib.format``) into a deflated zip
    member dated 1980-01-01 (the zip epoch); ``numpy.load`` reads it as usual.
    ``compressed=False`` stores the members (``numpy.savez``): for arrays that
    barely compress (noise), deflating costs CPU for a few % of bytes.
    """
    import zipfile

    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with atomic_write(path, "wb") as fh:
        with zipfile.ZipFile(fh, mode="w", compression=method, allowZip64=True) as zf:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)
    return Path(path)


# ---------------------------------------------------------------- reading
def read_json(path, required=()) -> dict:
    """Read a JSON sidecar; clear errors for missing file, bad JSON, missing keys."""
    path = Path(path)
    if not path.is_file():
        raise SpineprintError(f"{path}: sidecar file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpineprintError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise SpineprintError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    missing = [key for key in required if key not in obj]
    if missing:
        raise SpineprintError(f"{path}: missing required field(s) {', '.join(missing)}")
    return obj


def _verify_gzip(path, chunk: int = 1 << 22) -> None:
    """Decompress a whole gzip file to check its CRC-32 and length trailer.

    nibabel reads only the bytes the image needs and never reaches the trailer,
    so a corrupted deflate stream can decode into wrong voxel values without any
    error. Raises ``OSError``/``EOFError``/``zlib.error`` on a damaged file.
    """
    with gzip.open(path, "rb") as fh:
        while fh.read(chunk):
            pass


def verify_nifti(path) -> None:
    """Check that a NIfTI file decodes completely (``.nii.gz``: gzip CRC-32 and length).

    For readers that let nibabel load the image lazily (``nib.load(path).dataobj``):
    call this once so that a damaged file is an error naming it, never wrong voxel
    values. Raises :class:`SpineprintError` ``<file>: corrupt or truncated NIfTI file``.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise SpineprintError(f"{path}: NIfTI file not found")
    try:
        if path.name.endswith(".gz"):
            _verify_gzip(path)
        else:
            img = nib.load(str(path))
            expected = int(img.header.get_data_offset()) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
            if path.stat().st_size < expected:
                raise EOFError(f"{path.stat().st_size} bytes, the header describes {expected}")
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise SpineprintError(f"{path}: corrupt or truncated NIfTI file ({exc})") from None


def load_nifti(path, ndim: int | None = None, finite: bool = False, dtype=np.float32):
    """Load a NIfTI image and its data with clear errors.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz`` file.
    ndim : int, optional
        Required number of dimensions (3 or 4).
    finite : bool
        If True, NaN or infinite voxels are an error.
    dtype : numpy dtype
        Data type of the returned array.

    Returns
    -------
    img : nibabel.Nifti1Image
    data : ndarray
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise SpineprintError(f"{path}: NIfTI file not found")
    try:
        img = nib.load(str(path))
        if path.name.endswith(".gz"):
            # one decompression pass that also checks the gzip CRC-32 and length trailer (see
            # _verify_gzip: nibabel alone never reaches it), instead of nibabel's pass plus a
            # verification pass; the voxels are then read from the decompressed bytes the way
            # nibabel reads them (the header's offset, dtype, shape and scaling)
            import io

            raw = gzip.decompress(path.read_bytes())
            prx = img.dataobj
            with io.BytesIO(raw) as fh:
                same = nib.arrayproxy.ArrayProxy(fh, (prx.shape, prx.dtype, prx.offset, prx.slope, prx.inter),
                                                 order=prx.order)
                data = np.asarray(same, dtype=dtype)
            del raw, same
        else:
            data = np.asarray(img.dataobj, dtype=dtype)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise SpineprintError(f"{path}: corrupt or truncated NIfTI file ({exc})") from None
    if ndim is not None and data.ndim != ndim:
        raise SpineprintError(f"{path}: expected a {ndim}D image, found {data.ndim}D with shape {data.shape}")
    if finite and not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise SpineprintError(f"{path}: {n_bad} NaN or infinite voxel values")
    return img, data


def check_label(label: str, entity: str = "sub") -> str:
    """Validate a BIDS label (alphanumeric only), e.g. a participant label.

    Strips a leading ``sub-``/``ses-`` prefix. Rejects path-like labels such as
    ``../x`` that would write outside the output folder.
    """
    label = str(label)
    if label.startswith(f"{entity}-"):
        label = label[len(entity) + 1 :]
    if not _LABEL_RE.match(label):
        raise SpineprintError(f"invalid {entity} label {label!r}: BIDS labels are alphanumeric only")
    return label


def bids_entities(name: str) -> dict:
    """BIDS entities of a file name or prefix, e.g.
    ``sub-01_ses-02_task-rest_run-1_bold.nii.gz`` -> ``{"sub": "01", "ses": "02", "task": "rest", "run": "1"}``."""
    return dict(_ENTITY_RE.findall(Path(name).name))


_WARNINGS_LOCK = threading.RLock()


@contextlib.contextmanager
def recorded_warnings():
    """Record every warning *this thread* raises inside the block; yields the list.

    Unlike ``warnings.catch_warnings(record=True)``, which records the warnings of
    every thread of the process, warnings raised meanwhile by other threads (a Dask
    worker's event loop, a garbage-collected socket's ``ResourceWarning``...) are shown
    as usual but never recorded - recorded warnings end up in derivatives (run notes),
    which must not depend on what else the process was doing. Every warning is
    recorded, also repeats (filter ``"always"``), so the first and the tenth run of a
    process record the same. Blocks of several threads are serialised by a lock, so
    their filter changes do not interleave.
    """
    me = threading.get_ident()
    records: list = []
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("always")
        previous = warnings.showwarning

        def _hook(message, category, filename, lineno, file=None, line=None):
            if threading.get_ident() == me:
                records.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = _hook
        yield records

"""Functional-connectivity fingerprinting: identification, Idiff, PCA, edgewise ICC.

The fingerprinting stage of the book (chapter 4). Every statistic takes a *test*
session ``fc_a`` and a *retest* session ``fc_b`` holding one connectome per
subject, in the same subject order:

- either ``(n_subjects, n_rois, n_rois)`` symmetric matrices, of which the upper
  triangle without the diagonal (``numpy.triu_indices(n_rois, k=1)``, row-major
  order) is used,
- or ``(n_subjects, n_edges)`` edge vectors.

Definitions follow the papers, and the tests check each against an independent
computation:

- identifiability matrix, Iself, Iothers, Idiff and the PCA reconstruction:
  Amico & Goñi 2018, *Sci Rep* 8:8254, doi:10.1038/s41598-018-25089-1;
- identification by maximum correlation, in both directions: Finn et al. 2015,
  *Nat Neurosci* 18:1664, doi:10.1038/nn.4135;
- intraclass correlations: Shrout & Fleiss 1979, *Psychol Bull* 86:420,
  doi:10.1037/0033-2909.86.2.420 (with McGraw & Wong 1996 names);
  categories of Cicchetti & Sparrow 1981, *Am J Ment Defic* 86:127;
- applied to the cervical spinal cord ("spine-prints"): Ricchi et al. 2025,
  doi:10.1101/2025.05.30.656545.

Everything is vectorised with numpy; no ``edges x n x n`` array is ever built and
large inputs are processed in blocks of edges (see ``benchmarks/README.md``).

Cohorts whose ``(n_subjects, n_edges)`` edge matrix does not fit in memory can be
given as a chunked or on-disk array instead of a numpy array: a ``dask.array``, a
``numpy.memmap`` (e.g. ``np.load(path, mmap_mode="r")``), a zarr or h5py dataset -
anything with ``shape``, ``dtype`` and 2D slicing. :func:`identifiability_matrix` and
:func:`edgewise_icc` then read ``(n_subjects, 4096)`` column blocks one at a time
(validation included) and never hold the whole matrix; results equal the in-memory
ones (tested).
Results are small frozen dataclasses whose scalar fields are plain Python floats,
so that a notebook can ``glue`` them directly; ``as_dict()`` gives a plain dict.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ._io import SpineprintError

__all__ = [
    "edges_from_matrices",
    "matrices_from_edges",
    "identifiability_matrix",
    "identification_rate",
    "differential_identifiability",
    "pca_reconstruction",
    "edgewise_icc",
    "ICC_KINDS",
    "cicchetti_category",
    "permutation_test",
    "bootstrap_ci",
    "split_half",
    "pair_sessions",
    "choose_pairing",
    "PAIRING_ENTITIES",
    "pair_runs",
    "IdentificationResult",
    "IdiffResult",
    "PCAResult",
    "PermutationResult",
    "BootstrapResult",
    "Design",
    "designs_from_connectomes",
    "identifiability_summary",
    "FingerprintReport",
    "fingerprint_design",
    "summary_table",
    "IDENTIFICATION_KEYS",
    "ICC_CATEGORIES",
]

#: Number of edges processed at once by the blocked computations (memory bound:
#: ``n_subjects x _BLOCK`` float64 values per session).
_BLOCK = 4096

#: The six Shrout & Fleiss (1979) forms, with the McGraw & Wong (1996) names used by
#: pingouin as aliases: ICC(2,1) = ICC(A,1) (absolute agreement), ICC(3,1) = ICC(C,1)
#: (consistency).
ICC_KINDS = ("ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)")
_ICC_ALIASES = {
    "ICC1": "ICC(1,1)",
    "ICC2": "ICC(2,1)",
    "ICC3": "ICC(3,1)",
    "ICC1K": "ICC(1,k)",
    "ICC2K": "ICC(2,k)",
    "ICC3K": "ICC(3,k)",
    "ICC(A,1)": "ICC(2,1)",
    "ICC(C,1)": "ICC(3,1)",
    "ICC(A,K)": "ICC(2,k)",
    "ICC(C,K)": "ICC(3,k)",
}


class _Result:
    """Mixin: ``as_dict()`` for the result dataclasses."""

    def as_dict(self) -> dict:
        """The fields as a plain ``dict`` (arrays are not copied)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ====================================================================== input
def _where(name: str | None) -> str:
    return f"{name}: " if name else ""


def edges_from_matrices(fc, name: str | None = None, atol: float = 1e-8) -> np.ndarray:
    """Upper-triangle edge vectors of stacked symmetric connectivity matrices.

    Parameters
    ----------
    fc : array_like, shape (n_subjects, n_rois, n_rois) or (n_rois, n_rois)
        Symmetric matrices (e.g. Pearson correlations between regions). The diagonal is
        ignored (it may be infinite, e.g. Fisher-z of 1).
    name : str, optional
        Name of the input (a file or a session label) used in error messages.
    atol : float
        Tolerance of the symmetry check, relative to the largest absolute value.

    Returns
    -------
    edges : ndarray, shape (n_subjects, n_rois * (n_rois - 1) / 2) or (n_edges,)
        ``fc[:, i, j]`` for ``i < j`` in row-major order (``numpy.triu_indices(n_rois, 1)``).
    """
    fc = np.asarray(fc)
    single = fc.ndim == 2
    if single:
        fc = fc[None]
    if fc.ndim != 3 or fc.shape[1] != fc.shape[2]:
        raise SpineprintError(
            f"{_where(name)}expected (n_subjects, n_rois, n_rois) square matrices, found shape {fc.shape}"
        )
    iu = np.triu_indices(fc.shape[1], k=1)
    upper = fc[:, iu[0], iu[1]]
    lower = fc[:, iu[1], iu[0]]
    finite = np.isfinite(upper) & np.isfinite(lower)
    if not finite.all():
        bad = np.unique(np.nonzero(~finite)[0])
        raise SpineprintError(
            f"{_where(name)}NaN or infinite off-diagonal values in subject index(es) {bad[:10].tolist()} "
            f"({int(np.count_nonzero(~finite))} edges)"
        )
    scale = max(float(np.max(np.abs(upper), initial=0.0)), 1.0)
    diff = np.abs(upper - lower)
    bad = diff > atol * scale
    if bad.any():
        subjects = np.unique(np.nonzero(bad)[0])
        raise SpineprintError(
            f"{_where(name)}connectivity matrices are not symmetric (subject index(es) {subjects[:10].tolist()}, "
            f"max |A - A.T| = {float(diff.max()):.3g})"
        )
    return upper[0] if single else upper


def matrices_from_edges(edges, n_rois: int | None = None, diagonal: float = 1.0) -> np.ndarray:
    """Symmetric matrices from upper-triangle edge vectors (inverse of :func:`edges_from_matrices`).

    Parameters
    ----------
    edges : array_like, shape (n_subjects, n_edges) or (n_edges,)
    n_rois : int, optional
        Number of regions; deduced from ``n_edges = n_rois (n_rois - 1) / 2`` if omitted.
    diagonal : float
        Value put on the diagonal (1 for correlation matrices).

    Returns
    -------
    fc : ndarray, shape (n_subjects, n_rois, n_rois) or (n_rois, n_rois)
    """
    edges = np.asarray(edges)
    single = edges.ndim == 1
    edges = np.atleast_2d(edges)
    n_edges = edges.shape[-1]
    if n_rois is None:
        n_rois = int(round((1 + np.sqrt(1 + 8 * n_edges)) / 2))
    if n_rois * (n_rois - 1) // 2 != n_edges:
        raise SpineprintError(f"{n_edges} edges is not n_rois * (n_rois - 1) / 2 for n_rois = {n_rois}")
    out = np.full((edges.shape[0], n_rois, n_rois), diagonal, dtype=np.result_type(edges, float))
    iu = np.triu_indices(n_rois, k=1)
    out[:, iu[0], iu[1]] = edges
    out[:, iu[1], iu[0]] = edges
    return out[0] if single else out


def _is_chunked(x) -> bool:
    """A 2D array read by blocks (dask, memmap, zarr, h5py...) rather than loaded."""
    if isinstance(x, np.memmap):
        return True
    return (not isinstance(x, (np.ndarray, list, tuple)) and hasattr(x, "shape") and hasattr(x, "dtype")
            and hasattr(x, "__getitem__") and len(getattr(x, "shape", ())) == 2)


def _block(x, start: int, stop: int) -> np.ndarray:
    """Columns ``start:stop`` of a 2D array as an in-memory numpy array (computes a
    dask block, reads a memmap/zarr/h5py slice; a view for numpy arrays)."""
    blk = x[:, start:stop]
    if hasattr(blk, "compute") and not isinstance(blk, np.ndarray):
        blk = blk.compute()
    return np.asarray(blk)


def _check_chunked(x, name: str):
    """Validate a chunked (n, E) edge array block by block, without loading it."""
    if np.dtype(x.dtype).kind not in "biuf":
        raise SpineprintError(f"{name}: expected a numeric array, found dtype {x.dtype}")
    n, n_edges = (int(v) for v in x.shape)
    if n < 2:
        raise SpineprintError(f"{name}: fingerprinting needs at least 2 subjects, found {n}")
    if n_edges < 3:
        raise SpineprintError(f"{name}: at least 3 edges are needed to correlate connectomes, found {n_edges}")
    bad_rows = np.zeros(n, dtype=bool)
    n_bad = 0
    for s in range(0, n_edges, _BLOCK):
        finite = np.isfinite(_block(x, s, s + _BLOCK))
        bad_rows |= ~finite.all(axis=1)
        n_bad += int(finite.size - np.count_nonzero(finite))
    if n_bad:
        raise SpineprintError(
            f"{name}: NaN or infinite edges in subject index(es) {np.nonzero(bad_rows)[0][:10].tolist()} "
            f"({n_bad} values)"
        )
    return x, None


def _as_edges(fc, name: str) -> tuple[np.ndarray, int | None]:
    """Validate one session; return (edges (n, E), n_rois or None).

    Chunked 2D inputs (see :func:`_is_chunked`) are validated by blocks and returned
    as they are; everything downstream reads them through :func:`_block`."""
    if _is_chunked(fc):
        return _check_chunked(fc, name)
    if isinstance(fc, (list, tuple)):
        fc = np.asarray(fc)
    if not isinstance(fc, np.ndarray):
        fc = np.asarray(fc)
    if fc.dtype.kind not in "biuf":
        raise SpineprintError(f"{name}: expected a numeric array, found dtype {fc.dtype}")
    if fc.ndim == 3:
        n_rois = fc.shape[1]
        edges = edges_from_matrices(fc, name=name)
    elif fc.ndim == 2:
        n_rois = None
        edges = fc
    else:
        raise SpineprintError(
            f"{name}: expected (n_subjects, n_rois, n_rois) matrices or (n_subjects, n_edges) edge vectors, "
            f"found shape {fc.shape}"
        )
    n, n_edges = edges.shape
    if n < 2:
        raise SpineprintError(f"{name}: fingerprinting needs at least 2 subjects, found {n}")
    if n_edges < 3:
        raise SpineprintError(f"{name}: at least 3 edges are needed to correlate connectomes, found {n_edges}")
    finite = np.isfinite(edges)
    if not finite.all():
        bad = np.nonzero(~finite.all(axis=1))[0]
        raise SpineprintError(
            f"{name}: NaN or infinite edges in subject index(es) {bad[:10].tolist()} "
            f"({int(np.size(edges) - np.count_nonzero(finite))} values)"
        )
    return edges, n_rois


def _check_pair(fc_a, fc_b, names=("fc_a", "fc_b")):
    a, ra = _as_edges(fc_a, names[0])
    b, rb = _as_edges(fc_b, names[1])
    if a.shape[0] != b.shape[0]:
        raise SpineprintError(
            f"{names[0]} has {a.shape[0]} subjects but {names[1]} has {b.shape[0]}: a subject is missing from one "
            "session (align them with pair_sessions)"
        )
    if a.shape[1] != b.shape[1] or ra != rb:
        what = f"{ra} vs {rb} regions" if (ra or rb) else f"{a.shape[1]} vs {b.shape[1]} edges"
        raise SpineprintError(f"{names[0]} and {names[1]} have differently sized connectomes ({what})")
    return a, b, ra


def _row_stats(x: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and root sum of squares of deviations of each row, in float64, by blocks."""
    n, n_edges = x.shape
    mean = np.zeros(n)
    for s in range(0, n_edges, _BLOCK):
        mean += _block(x, s, s + _BLOCK).sum(axis=1, dtype=np.float64)
    mean /= n_edges
    ss = np.zeros(n)
    for s in range(0, n_edges, _BLOCK):
        d = _block(x, s, s + _BLOCK).astype(np.float64) - mean[:, None]
        ss += np.einsum("ij,ij->i", d, d)
    norm = np.sqrt(ss)
    scale = np.maximum(np.abs(mean), 1.0) * np.sqrt(n_edges)
    const = norm <= 1e-12 * scale
    if const.any():
        raise SpineprintError(
            f"{name}: constant connectome (all edges equal) for subject index(es) "
            f"{np.nonzero(const)[0][:10].tolist()}; its correlation with other connectomes is undefined"
        )
    return mean, norm


def _corr_cross(a: np.ndarray, b: np.ndarray, names=("fc_a", "fc_b"), dtype=np.float64) -> np.ndarray:
    """Pearson correlations between the rows of ``a`` (n, E) and of ``b`` (m, E), by edge blocks."""
    ma, na = _row_stats(a, names[0])
    mb, nb = _row_stats(b, names[1])
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    for s in range(0, a.shape[1], _BLOCK):
        za = ((_block(a, s, s + _BLOCK) - ma[:, None]) / na[:, None]).astype(dtype, copy=False)
        zb = ((_block(b, s, s + _BLOCK) - mb[:, None]) / nb[:, None]).astype(dtype, copy=False)
        out += za @ zb.T
    return out


# ============================================================ identifiability
def identifiability_matrix(fc_a, fc_b, *, dtype=np.float64) -> np.ndarray:
    r"""Identifiability matrix: correlations between test and retest connectomes.

    .. math:: A_{ij} = \operatorname{corr}(\mathbf{x}^{a}_i, \mathbf{x}^{b}_j),

    the Pearson correlation over edges between subject *i*'s connectome in the
    test session and subject *j*'s in the retest session (Amico & Goñi 2018,
    "identifiability matrix"; Finn et al. 2015 use the same similarity).

    Parameters
    ----------
    fc_a, fc_b : array_like
        Test and retest sessions, ``(n_subjects, n_rois, n_rois)`` symmetric matrices
        (upper triangle without diagonal used) or ``(n_subjects, n_edges)`` edge
        vectors, subjects in the same order. Edge vectors may be a chunked or on-disk
        array (``dask.array``, ``numpy.memmap``, zarr, h5py): it is read in blocks of
        edges and never loaded whole.
    dtype : numpy dtype
        Precision of the products (``float64`` by default; ``float32`` halves the
        time on very large inputs at ~1e-6 absolute error). Means and norms are
        always computed in float64.

    Returns
    -------
    A : ndarray, shape (n_subjects, n_subjects)
        Rows index the test session, columns the retest session.

    Raises
    ------
    SpineprintError
        Non-finite edges, non-symmetric or differently sized matrices, different
        numbers of subjects, fewer than 2 subjects, or a constant connectome.
    """
    a, b, _ = _check_pair(fc_a, fc_b)
    return _corr_cross(a, b, dtype=dtype)


def _check_A(A) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise SpineprintError(f"identifiability matrix must be square (n_subjects, n_subjects), found shape {A.shape}")
    if A.shape[0] < 2:
        raise SpineprintError(f"identifiability matrix needs at least 2 subjects, found {A.shape[0]}")
    if not np.isfinite(A).all():
        raise SpineprintError("identifiability matrix contains NaN or infinite values")
    return A


def _strict_argmax(A: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the maximum along *axis* and whether that maximum is unique."""
    idx = np.argmax(A, axis=axis)
    best = np.max(A, axis=axis)
    unique = np.count_nonzero(A == np.expand_dims(best, axis), axis=axis) == 1
    return idx, unique


@dataclass(frozen=True)
class IdentificationResult(_Result):
    """Identification success (Finn et al. 2015), in both directions.

    Attributes
    ----------
    rate_ab : float
        Fraction (0-1) of test-session subjects whose best match among the retest
        connectomes is themselves (row maximum of ``A`` on the diagonal).
    rate_ba : float
        Same with the retest session as target (column maximum on the diagonal).
    rate_mean : float
        ``(rate_ab + rate_ba) / 2``.
    identified_ab, identified_ba : ndarray of bool, shape (n,)
        Per-subject success.
    predicted_ab, predicted_ba : ndarray of int, shape (n,)
        Index of the best match of each subject.
    """

    rate_ab: float
    rate_ba: float
    rate_mean: float
    identified_ab: np.ndarray
    identified_ba: np.ndarray
    predicted_ab: np.ndarray
    predicted_ba: np.ndarray


def identification_rate(A) -> IdentificationResult:
    """Identification success rate in each direction (Finn et al. 2015).

    Subject *i* of the test session is identified when the largest correlation
    of its connectome with the retest connectomes is with its own, i.e. when the
    maximum of row *i* of the identifiability matrix is on the diagonal
    (``A[i, i] > A[i, j]`` for all ``j != i``); the other direction uses the
    columns. A tie for the maximum is *not* an identification.

    Parameters
    ----------
    A : array_like, shape (n, n)
        Identifiability matrix from :func:`identifiability_matrix`.

    Returns
    -------
    IdentificationResult
        Rates are fractions between 0 and 1.
    """
    A = _check_A(A)
    n = A.shape[0]
    pr, ur = _strict_argmax(A, axis=1)
    pc, uc = _strict_argmax(A, axis=0)
    ar = np.arange(n)
    id_ab = (pr == ar) & ur
    id_ba = (pc == ar) & uc
    r_ab, r_ba = float(id_ab.mean()), float(id_ba.mean())
    return IdentificationResult(r_ab, r_ba, (r_ab + r_ba) / 2, id_ab, id_ba, pr, pc)


@dataclass(frozen=True)
class IdiffResult(_Result):
    """Differential identifiability (Amico & Goñi 2018).

    Attributes
    ----------
    iself : float
        Mean of the diagonal of ``A`` (self-similarity across sessions).
    iothers : float
        Mean of the off-diagonal elements of ``A`` (similarity between different subjects).
    idiff : float
        ``100 * (iself - iothers)``.
    iself_subject : ndarray, shape (n,)
        ``A[i, i]``.
    iothers_subject : ndarray, shape (n,)
        Mean of the ``2 (n - 1)`` off-diagonal elements of row *i* and column *i*
        (subject *i* against the others, in both directions); its mean over
        subjects equals ``iothers``.
    idiff_subject : ndarray, shape (n,)
        ``100 * (iself_subject - iothers_subject)``; its mean equals ``idiff``.
    """

    iself: float
    iothers: float
    idiff: float
    iself_subject: np.ndarray
    iothers_subject: np.ndarray
    idiff_subject: np.ndarray


def differential_identifiability(A) -> IdiffResult:
    r"""Iself, Iothers and differential identifiability Idiff (Amico & Goñi 2018).

    .. math::

        I_{self} = \frac{1}{n}\sum_i A_{ii},\qquad
        I_{others} = \frac{1}{n(n-1)}\sum_{i\neq j} A_{ij},\qquad
        I_{diff} = 100\,(I_{self} - I_{others}).

    Parameters
    ----------
    A : array_like, shape (n, n)
        Identifiability matrix from :func:`identifiability_matrix`.

    Returns
    -------
    IdiffResult
        Scalars as plain floats, per-subject arrays (see :class:`IdiffResult`).
    """
    A = _check_A(A)
    n = A.shape[0]
    diag = np.diag(A).copy()
    iself = float(diag.mean())
    iothers = float((A.sum() - diag.sum()) / (n * (n - 1)))
    others_subject = (A.sum(axis=1) + A.sum(axis=0) - 2 * diag) / (2 * (n - 1))
    return IdiffResult(
        iself,
        iothers,
        100.0 * (iself - iothers),
        diag,
        others_subject,
        100.0 * (diag - others_subject),
    )


# ============================================================ PCA reconstruction
@dataclass(frozen=True)
class PCAResult(_Result):
    """PCA reconstruction sweep (Amico & Goñi 2018).

    Attributes
    ----------
    m : ndarray of int
        Numbers of principal components tried (2 .. 2n by default).
    idiff, iself, iothers : ndarray of float, same length as ``m``
        Statistics of the identifiability matrix of the reconstructed connectomes.
    m_opt : int
        The number of components ``m*`` maximising Idiff (the smallest if tied).
    idiff_opt : float
        Idiff at ``m*``.
    idiff_orig : float
        Idiff of the original (non-reconstructed) connectomes.
    explained_variance_ratio : ndarray, shape (2n,)
        Fraction of the variance of the column-centred matrix carried by each component.
    A_opt : ndarray, shape (n, n)
        Identifiability matrix of the reconstruction at ``m*``.
    fc_a_opt, fc_b_opt : ndarray
        Reconstructed connectomes at ``m*``, same layout as the input (matrices with
        the input's diagonal, or edge vectors).
    """

    m: np.ndarray
    idiff: np.ndarray
    iself: np.ndarray
    iothers: np.ndarray
    m_opt: int
    idiff_opt: float
    idiff_orig: float
    explained_variance_ratio: np.ndarray
    A_opt: np.ndarray
    fc_a_opt: np.ndarray
    fc_b_opt: np.ndarray


def _components_list(components, n_max: int) -> np.ndarray:
    if components is None:
        ms = np.arange(2, n_max + 1)
    elif np.ndim(components) == 0:
        c = int(components)
        if c < 1 or c > n_max:
            raise SpineprintError(f"components must be between 1 and 2n = {n_max}, got {c}")
        ms = np.arange(min(2, c), c + 1)
    else:
        ms = np.unique(np.asarray(list(components), dtype=int))
        if ms.size == 0 or ms.min() < 1 or ms.max() > n_max:
            raise SpineprintError(f"components must be numbers between 1 and 2n = {n_max}, got {list(components)}")
    return ms


def pca_reconstruction(fc_a, fc_b, components=None, *, method: str = "auto") -> PCAResult:
    r"""Idiff of PCA-reconstructed connectomes for each number of components (Amico & Goñi 2018).

    The ``2n`` connectomes are stacked as the columns of an ``edges x 2n`` matrix
    :math:`Y` (test then retest); each column is centred, :math:`X = Y - \mathbf{1}\mu^T`,
    and decomposed into principal components :math:`X = U S V^T`. The reconstruction
    with *m* components is :math:`\hat Y_m = U_m S_m V_m^T + \mathbf{1}\mu^T` (column means
    added back), and Idiff is computed on its identifiability matrix; ``m*`` maximises it.
    This is what the authors' MATLAB code does with ``pca(orig_matrix)`` (``orig_matrix``
    edges x 2n; MATLAB's ``pca`` centres the columns) and ``recon + mean(orig_matrix)``.

    Fast sweep: since every centred column is orthogonal to :math:`\mathbf{1}`, so is every
    left singular vector with a non-zero singular value, hence each reconstructed column has
    mean :math:`\mu_p` and its centred Gram matrix is the cumulative sum
    :math:`G_m = \sum_{k\le m} s_k^2 v_k v_k^T`. The correlations of the reconstruction are
    :math:`G_m[p, q] / \sqrt{G_m[p, p] G_m[q, q]}`, so the whole sweep works in the
    ``2n``-dimensional component space (cost ``O(n^3)`` after one Gram matrix or SVD) and never
    forms an ``edges x 2n`` reconstruction per *m*. ``tests/test_fingerprint.py`` checks it
    against the direct reconstruction for every *m*.

    Parameters
    ----------
    fc_a, fc_b : array_like
        Test and retest sessions (see :func:`identifiability_matrix`).
    components : None, int or iterable of int
        ``None``: every ``m = 2 .. 2n``; an int ``c``: ``m = 2 .. c``; an iterable: those ``m``.
    method : {"auto", "gram", "svd"}
        ``"svd"``: thin SVD of the centred matrix (most accurate); ``"gram"``: eigen-decomposition
        of the ``2n x 2n`` Gram matrix ``X^T X`` (fast when edges >> 2n); ``"auto"``: ``"gram"``
        when ``edges > 4 * 2n``, else ``"svd"``.

    Returns
    -------
    PCAResult

    Notes
    -----
    Components beyond the rank of the centred matrix (at most ``min(2n, edges - 1)``)
    have zero singular value and leave the reconstruction unchanged. An *m* for which a
    reconstructed connectome is constant gives NaN and is ignored when choosing ``m*``.
    """
    a, b, n_rois = _check_pair(fc_a, fc_b)
    a, b = np.asarray(a), np.asarray(b)  # the reconstruction is in memory; chunked inputs are loaded here
    n, n_edges = a.shape
    two_n = 2 * n
    ms = _components_list(components, two_n)
    if method == "auto":
        method = "gram" if n_edges > 4 * two_n else "svd"
    if method not in ("gram", "svd"):
        raise SpineprintError(f"method must be 'auto', 'gram' or 'svd', got {method!r}")

    # Column means (mean over edges of each connectome) and centred blocks.
    ma, _ = _row_stats(a, "fc_a")
    mb, _ = _row_stats(b, "fc_b")
    mu = np.concatenate([ma, mb])

    if method == "gram":
        G = np.zeros((two_n, two_n))
        for s in range(0, n_edges, _BLOCK):
            blk = np.concatenate([a[:, s : s + _BLOCK], b[:, s : s + _BLOCK]]).astype(np.float64) - mu[:, None]
            G += blk @ blk.T
        evals, V = np.linalg.eigh(G)
        order = np.argsort(evals)[::-1]
        s2 = np.clip(evals[order], 0.0, None)
        V = V[:, order]
    else:
        X = np.concatenate([a, b]).astype(np.float64) - mu[:, None]  # (2n, E) = Y^T
        _, sv, Vt = np.linalg.svd(X.T, full_matrices=False)
        s2 = sv**2
        V = Vt.T
        k = V.shape[1]
        if k < two_n:  # fewer edges than connectomes: pad with zero components
            V = np.concatenate([V, np.zeros((two_n, two_n - k))], axis=1)
            s2 = np.concatenate([s2, np.zeros(two_n - k)])
    total = s2.sum()
    evr = s2 / total if total > 0 else np.zeros_like(s2)

    W = V * np.sqrt(s2)[None, :]  # (2n, 2n): row p = scaled coordinates of connectome p
    Wa, Wb = W[:n], W[n:]
    # Norms of the reconstructed centred columns for every m: D[p, m-1] = G_m[p, p].
    D = np.cumsum(W**2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(D > 1e-12 * D[:, -1:], 1.0 / np.sqrt(D), np.nan)
    cols = ms - 1
    ia, ib = inv[:n][:, cols], inv[n:][:, cols]  # (n, M)
    # Diagonal: A_m[i, i] = sum_{k<=m} Wa[i,k] Wb[i,k] / sqrt(Da Db).
    diag = np.cumsum(Wa * Wb, axis=1)[:, cols] * ia * ib  # (n, M)
    # Sum of A_m = sum_{k<=m} (Wa[:,k] . ia_m) (Wb[:,k] . ib_m).
    Pa = Wa.T @ np.nan_to_num(ia)  # (2n, M)
    Pb = Wb.T @ np.nan_to_num(ib)
    mask = np.arange(two_n)[:, None] < ms[None, :]
    total_sum = np.sum(Pa * Pb * mask, axis=0)
    bad = np.isnan(ia).any(axis=0) | np.isnan(ib).any(axis=0)
    iself = diag.mean(axis=0)
    iothers = (total_sum - diag.sum(axis=0)) / (n * (n - 1))
    iself[bad] = np.nan
    iothers[bad] = np.nan
    idiff = 100.0 * (iself - iothers)
    if np.all(np.isnan(idiff)):
        raise SpineprintError("PCA reconstruction gives constant connectomes for every number of components")
    j = int(np.nanargmax(idiff))
    m_opt = int(ms[j])

    # Reconstruction at m*: Y_hat = X V_m V_m^T + mu, computed by blocks of edges.
    Vm = V[:, :m_opt]
    P = Vm @ Vm.T  # (2n, 2n) projector onto the first m* components
    rec = np.empty((two_n, n_edges))
    for s in range(0, n_edges, _BLOCK):
        blk = np.concatenate([a[:, s : s + _BLOCK], b[:, s : s + _BLOCK]]).astype(np.float64) - mu[:, None]
        rec[:, s : s + _BLOCK] = P @ blk + mu[:, None]
    Gm = Wa[:, :m_opt] @ Wb[:, :m_opt].T
    A_opt = Gm / np.sqrt(np.outer(D[:n, m_opt - 1], D[n:, m_opt - 1]))
    rec_a, rec_b = rec[:n], rec[n:]
    if n_rois is not None:
        da = np.diagonal(np.asarray(fc_a), axis1=1, axis2=2)
        db = np.diagonal(np.asarray(fc_b), axis1=1, axis2=2)
        rec_a = matrices_from_edges(rec_a, n_rois, diagonal=0.0)
        rec_b = matrices_from_edges(rec_b, n_rois, diagonal=0.0)
        idx = np.arange(n_rois)
        rec_a[:, idx, idx] = da
        rec_b[:, idx, idx] = db
    idiff_orig = differential_identifiability(_corr_cross(a, b)).idiff
    return PCAResult(
        m=ms,
        idiff=idiff,
        iself=iself,
        iothers=iothers,
        m_opt=m_opt,
        idiff_opt=float(idiff[j]),
        idiff_orig=float(idiff_orig),
        explained_variance_ratio=evr,
        A_opt=A_opt,
        fc_a_opt=rec_a,
        fc_b_opt=rec_b,
    )


# ================================================================== edgewise ICC
def _icc_kind(kind: str) -> str:
    key = str(kind).strip()
    if key in ICC_KINDS:
        return key
    up = key.upper().replace(" ", "")
    for k in ICC_KINDS:
        if up == k.upper():
            return k
    if up in _ICC_ALIASES:
        return _ICC_ALIASES[up]
    raise SpineprintError(f"unknown ICC kind {kind!r}; use one of {', '.join(ICC_KINDS)} or 'all'")


def _icc_block(Y: np.ndarray) -> dict:
    """Shrout & Fleiss ICCs of ``Y`` (n_targets, k_raters, n_edges) for every edge."""
    n, k, _ = Y.shape
    grand = Y.mean(axis=(0, 1))
    row = Y.mean(axis=1)  # (n, E) subject means
    col = Y.mean(axis=0)  # (k, E) session means
    ss_r = k * np.sum((row - grand) ** 2, axis=0)
    ss_c = n * np.sum((col - grand) ** 2, axis=0)
    resid = Y - row[:, None, :] - col[None, :, :] + grand
    ss_e = np.sum(resid**2, axis=(0, 1))
    msr = ss_r / (n - 1)
    msc = ss_c / (k - 1)
    mse = ss_e / ((n - 1) * (k - 1))
    msw = (ss_c + ss_e) / (n * (k - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "ICC(1,1)": (msr - msw) / (msr + (k - 1) * msw),
            "ICC(2,1)": (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n),
            "ICC(3,1)": (msr - mse) / (msr + (k - 1) * mse),
            "ICC(1,k)": (msr - msw) / msr,
            "ICC(2,k)": (msr - mse) / (msr + (msc - mse) / n),
            "ICC(3,k)": (msr - mse) / msr,
        }


def edgewise_icc(fc_a, fc_b, kind: str = "ICC(1,1)", *, more_sessions=(), as_matrix: bool | None = None):
    r"""Intraclass correlation of every edge across sessions (Shrout & Fleiss 1979).

    For each edge, the ``n_subjects x k`` table of values (targets = subjects,
    raters = sessions, ``k = 2`` for test/retest) gives the two-way ANOVA mean
    squares :math:`MS_R` (between subjects, ``n - 1`` df), :math:`MS_C` (between
    sessions, ``k - 1`` df), :math:`MS_E` (residual, ``(n-1)(k-1)`` df) and
    :math:`MS_W = (SS_C + SS_E) / (n (k - 1))` (within subjects), and

    ============ ==========================================================
    ICC(1,1)     :math:`(MS_R - MS_W) / (MS_R + (k-1) MS_W)`
    ICC(2,1)     :math:`(MS_R - MS_E) / (MS_R + (k-1) MS_E + k (MS_C - MS_E) / n)`
    ICC(3,1)     :math:`(MS_R - MS_E) / (MS_R + (k-1) MS_E)`
    ICC(1,k)     :math:`(MS_R - MS_W) / MS_R`
    ICC(2,k)     :math:`(MS_R - MS_E) / (MS_R + (MS_C - MS_E) / n)`
    ICC(3,k)     :math:`(MS_R - MS_E) / MS_R`
    ============ ==========================================================

    (Shrout & Fleiss 1979, Table 2; McGraw & Wong 1996 call ICC(2,·) ICC(A,·) and
    ICC(3,·) ICC(C,·)). Amico & Goñi 2018 use ICC(1,1) edgewise. Vectorised over
    edges (in blocks), so that thousands of subjects x tens of thousands of edges take
    seconds.

    Parameters
    ----------
    fc_a, fc_b : array_like
        Test and retest sessions (see :func:`identifiability_matrix`).
    kind : str
        One of :data:`ICC_KINDS` (aliases ``"ICC1"``, ``"ICC(A,1)"``, ``"ICC3k"``...) or
        ``"all"`` for a dict of all six.
    more_sessions : sequence of array_like
        Further sessions (raters), for ``k > 2``.
    as_matrix : bool, optional
        Return ``(n_rois, n_rois)`` matrices (NaN diagonal) instead of edge vectors;
        default: True when matrices were given.

    Returns
    -------
    icc : ndarray, shape (n_edges,) or (n_rois, n_rois), or dict of them when ``kind="all"``
        Degenerate edges give the values of the formulas in IEEE arithmetic, as pingouin
        does: NaN for 0/0 (e.g. all values equal), ``-inf`` for a negative numerator over
        ``MS_R = 0`` (no between-subject variance, k-rater forms).
    """
    want = "all" if str(kind).lower() == "all" else _icc_kind(kind)
    names = ["fc_a", "fc_b"] + [f"more_sessions[{i}]" for i in range(len(more_sessions))]
    arrays = [fc_a, fc_b, *more_sessions]
    first, n_rois = _as_edges(arrays[0], names[0])
    edges = [first]
    for arr, nm in zip(arrays[1:], names[1:]):
        e, r = _check_pair(arrays[0], arr, (names[0], nm))[1:]
        edges.append(e)
    n, n_edges = first.shape
    keys = ICC_KINDS if want == "all" else (want,)
    out = {k: np.empty(n_edges) for k in keys}
    for s in range(0, n_edges, _BLOCK):
        Y = np.stack([_block(e, s, s + _BLOCK) for e in edges], axis=1).astype(np.float64)
        res = _icc_block(Y)
        for k in keys:
            out[k][s : s + _BLOCK] = res[k]
    if as_matrix is None:
        as_matrix = n_rois is not None
    if as_matrix:
        if n_rois is None:
            n_rois = int(round((1 + np.sqrt(1 + 8 * n_edges)) / 2))
        out = {k: matrices_from_edges(v, n_rois, diagonal=np.nan) for k, v in out.items()}
    return out if want == "all" else out[want]


_CICCHETTI = ("poor", "fair", "good", "excellent")
_CICCHETTI_BOUNDS = np.array([0.40, 0.60, 0.75])


def cicchetti_category(icc):
    """Cicchetti & Sparrow (1981) category of an ICC value.

    ``poor`` < 0.40 <= ``fair`` < 0.60 <= ``good`` < 0.75 <= ``excellent``; NaN gives
    ``"undefined"``.

    Parameters
    ----------
    icc : float or array_like

    Returns
    -------
    str or ndarray of str (same shape as *icc*)
    """
    x = np.asarray(icc, dtype=float)
    labels = np.array(_CICCHETTI + ("undefined",), dtype=object)
    idx = np.searchsorted(_CICCHETTI_BOUNDS, x, side="right")
    idx = np.where(np.isnan(x), 4, idx)
    if np.ndim(idx) == 0:
        return str(labels[int(idx)])
    return labels[idx].astype(str)


# ============================================================ permutation / bootstrap
@dataclass(frozen=True)
class PermutationResult(_Result):
    """Permutation test of identification and Idiff.

    Attributes
    ----------
    rate_ab, rate_ba, rate_mean, iself, iothers, idiff : float
        Observed statistics.
    p_rate_ab, p_rate_ba, p_rate_mean, p_idiff : float
        One-sided p-values ``(1 + #{null >= observed}) / (1 + n_permutations)``.
    null_rate_ab, null_rate_ba, null_rate_mean, null_idiff : ndarray, shape (n_permutations,)
        Null distributions.
    n_permutations : int
    """

    rate_ab: float
    rate_ba: float
    rate_mean: float
    iself: float
    iothers: float
    idiff: float
    p_rate_ab: float
    p_rate_ba: float
    p_rate_mean: float
    p_idiff: float
    null_rate_ab: np.ndarray
    null_rate_ba: np.ndarray
    null_rate_mean: np.ndarray
    null_idiff: np.ndarray
    n_permutations: int


def _permutations(rng, n: int, n_perm: int) -> np.ndarray:
    return rng.permuted(np.broadcast_to(np.arange(n), (n_perm, n)), axis=1)


def permutation_test(A, n_permutations: int = 1000, seed=0, *, permutations=None) -> PermutationResult:
    r"""Null distributions of identification rate and Idiff by permuting subject labels.

    Under the null hypothesis that connectomes carry no subject identity, the subject
    labels of the retest session are exchangeable. Permuting them (``perm``) permutes the
    columns of the identifiability matrix, :math:`A^\pi_{ij} = A_{i,\pi(j)}`, so ``A`` need
    not be recomputed: subject *i* is identified (row direction) iff :math:`\pi(i)` is the
    unique row maximum of ``A``; (column direction) iff *i* is the unique maximum of column
    :math:`\pi(i)`; and :math:`I_{self}^\pi = \frac1n\sum_i A_{i\pi(i)}` while the total
    sum of ``A`` is unchanged. All permutations are evaluated at once.
    The p-value counts the observed labelling (Phipson & Smyth 2010):
    ``(1 + #{null >= observed}) / (1 + n_permutations)``.

    Parameters
    ----------
    A : array_like, shape (n, n)
        Identifiability matrix.
    n_permutations : int
        Number of random permutations.
    seed : int or numpy.random.Generator
        Seed for ``numpy.random.default_rng``.
    permutations : array_like of int, shape (n_permutations, n), optional
        Explicit permutations (row ``p`` maps retest column ``i`` to subject ``perm[p, i]``);
        overrides *n_permutations* and *seed*.

    Returns
    -------
    PermutationResult
    """
    A = _check_A(A)
    if permutations is not None:
        permutations = np.asarray(permutations, dtype=int)
        if permutations.ndim != 2 or permutations.shape[1] != A.shape[0] or not np.all(
            np.sort(permutations, axis=1) == np.arange(A.shape[0])
        ):
            raise SpineprintError(f"permutations must be rows of permutations of 0..{A.shape[0] - 1}")
        n_permutations = permutations.shape[0]
    n_permutations = int(n_permutations)
    if n_permutations < 1:
        raise SpineprintError(f"n_permutations must be >= 1, got {n_permutations}")
    n = A.shape[0]
    rng = np.random.default_rng(seed)
    ident = identification_rate(A)
    idd = differential_identifiability(A)
    pr, ur = _strict_argmax(A, axis=1)
    pc, uc = _strict_argmax(A, axis=0)
    ar = np.arange(n)
    null_ab = np.empty(n_permutations)
    null_ba = np.empty(n_permutations)
    null_idiff = np.empty(n_permutations)
    total = A.sum()
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n_permutations, chunk):
        size = min(chunk, n_permutations - s)
        if permutations is None:
            perms = _permutations(rng, n, size)  # (P, n): column i -> A[:, perm[i]]
        else:
            perms = permutations[s : s + size]
        null_ab[s : s + len(perms)] = np.mean((perms == pr[None, :]) & ur[None, :], axis=1)
        null_ba[s : s + len(perms)] = np.mean((pc[perms] == ar[None, :]) & uc[perms], axis=1)
        diag_sum = A[ar[None, :], perms].sum(axis=1)
        iself = diag_sum / n
        iothers = (total - diag_sum) / (n * (n - 1))
        null_idiff[s : s + len(perms)] = 100.0 * (iself - iothers)
    null_mean = (null_ab + null_ba) / 2

    def p(null, obs):
        return float((1 + np.count_nonzero(null >= obs - 1e-12)) / (1 + n_permutations))

    return PermutationResult(
        ident.rate_ab,
        ident.rate_ba,
        ident.rate_mean,
        idd.iself,
        idd.iothers,
        idd.idiff,
        p(null_ab, ident.rate_ab),
        p(null_ba, ident.rate_ba),
        p(null_mean, ident.rate_mean),
        p(null_idiff, idd.idiff),
        null_ab,
        null_ba,
        null_mean,
        null_idiff,
        n_permutations,
    )


@dataclass(frozen=True)
class BootstrapResult(_Result):
    """Percentile bootstrap confidence intervals over subjects.

    Attributes
    ----------
    level : float
        Confidence level (e.g. 0.95).
    rate_ab, rate_ba, rate_mean, iself, iothers, idiff : tuple of float
        ``(low, high)`` interval of each statistic.
    samples : dict of str to ndarray, shape (n_bootstrap,)
        Bootstrap distributions.
    n_bootstrap : int
    """

    level: float
    rate_ab: tuple
    rate_ba: tuple
    rate_mean: tuple
    iself: tuple
    iothers: tuple
    idiff: tuple
    samples: dict
    n_bootstrap: int


def bootstrap_ci(A, n_bootstrap: int = 1000, level: float = 0.95, seed=0, *, draws=None) -> BootstrapResult:
    r"""Bootstrap confidence intervals over subjects for identification and Idiff.

    Subjects are resampled with replacement (Efron & Tibshirani 1993, percentile
    intervals). With ``c_i`` the number of times subject *i* is drawn:

    - :math:`I_{self}^* = \sum_i c_i A_{ii} / n`;
    - :math:`I_{others}^*` averages :math:`A_{ij}` over the ordered pairs of drawn subjects
      that are *different people*: :math:`(c^T A c - \sum_i c_i^2 A_{ii}) / (n^2 - \sum_i c_i^2)`
      (a subject drawn twice is not compared with itself as an "other");
    - identification rates average the per-subject successes of
      :func:`identification_rate` (each subject identified against the full database),
      :math:`\sum_i c_i \mathbb{1}[\text{identified}_i] / n`.

    Parameters
    ----------
    A : array_like, shape (n, n)
    n_bootstrap : int
    level : float
        Confidence level in (0, 1).
    seed : int or numpy.random.Generator
    draws : array_like of int, shape (n_bootstrap, n), optional
        Explicit resamples (subject indices); overrides *n_bootstrap* and *seed*.

    Returns
    -------
    BootstrapResult
    """
    A = _check_A(A)
    if draws is not None:
        draws = np.asarray(draws, dtype=int)
        if draws.ndim != 2 or draws.shape[1] != A.shape[0] or draws.min() < 0 or draws.max() >= A.shape[0]:
            raise SpineprintError(f"draws must be an (n_bootstrap, {A.shape[0]}) array of subject indices")
        n_bootstrap = draws.shape[0]
    if not 0 < level < 1:
        raise SpineprintError(f"level must be between 0 and 1, got {level}")
    n_bootstrap = int(n_bootstrap)
    if n_bootstrap < 1:
        raise SpineprintError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    n = A.shape[0]
    rng = np.random.default_rng(seed)
    ident = identification_rate(A)
    d = np.diag(A)
    samples = {k: np.empty(n_bootstrap) for k in ("rate_ab", "rate_ba", "rate_mean", "iself", "iothers", "idiff")}
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - s)
        dr = rng.integers(0, n, size=(b, n)) if draws is None else draws[s : s + b]
        flat = (dr + n * np.arange(b)[:, None]).ravel()
        C = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        sl = slice(s, s + b)
        iself = C @ d / n
        c2 = np.sum(C**2, axis=1)
        cac = np.sum((C @ A) * C, axis=1)
        pairs = n * n - c2
        with np.errstate(invalid="ignore", divide="ignore"):
            iothers = (cac - C**2 @ d) / pairs
        samples["iself"][sl] = iself
        samples["iothers"][sl] = iothers
        samples["idiff"][sl] = 100 * (iself - iothers)
        samples["rate_ab"][sl] = C @ ident.identified_ab / n
        samples["rate_ba"][sl] = C @ ident.identified_ba / n
        samples["rate_mean"][sl] = (samples["rate_ab"][sl] + samples["rate_ba"][sl]) / 2
    q = [(1 - level) / 2, (1 + level) / 2]
    ci = {k: tuple(float(x) for x in np.nanquantile(v, q)) for k, v in samples.items()}
    return BootstrapResult(level=float(level), samples=samples, n_bootstrap=n_bootstrap, **ci)


# ======================================================================= designs
def split_half(timeseries, axis: int = -2):
    """Split time series into first and second halves (within-session design).

    The within-session fingerprinting design compares the connectome of the first
    half of a run with that of its second half (Ricchi et al. 2025). With an odd
    number of volumes the middle volume is dropped, so both halves have the same
    length ``T // 2``.

    Parameters
    ----------
    timeseries : array_like, shape (..., T, n_rois)
        Regional time series; time along *axis* (default the second-to-last).
    axis : int
        Time axis.

    Returns
    -------
    first, second : ndarray
        ``timeseries[..., :T//2, :]`` and ``timeseries[..., T - T//2:, :]``.
    """
    ts = np.asarray(timeseries)
    if ts.ndim < 1:
        raise SpineprintError("split_half: expected time series with a time axis, found a scalar")
    try:
        T = ts.shape[axis]
    except IndexError:
        raise SpineprintError(f"split_half: axis {axis} out of range for shape {ts.shape}") from None
    h = T // 2
    if h < 3:
        raise SpineprintError(f"split_half: {T} volumes is too short to split into two halves of >= 3 volumes")
    first = np.take(ts, np.arange(h), axis=axis)
    second = np.take(ts, np.arange(T - h, T), axis=axis)
    return first, second


def _records_frame(records):
    import pandas as pd

    if isinstance(records, pd.DataFrame):
        df = records.copy()
    elif isinstance(records, Mapping):
        cols = {}
        for key in ("subject", "session", "run"):
            for cand in (key, key + "s"):
                if cand in records:
                    cols[key] = np.asarray(records[cand])
                    break
        df = pd.DataFrame(cols)
    else:
        raise SpineprintError(
            f"records must be a pandas DataFrame or a mapping with subject/session/run columns, got {type(records).__name__}"
        )
    if "subject" not in df.columns:
        raise SpineprintError(f"records: missing 'subject' column (columns: {list(df.columns)})")
    for col in ("subject", "session", "run"):
        if col in df.columns:
            df[col] = df[col].map(lambda v: _strip(v, col))
    return df


def _strip(v, col):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    v = str(v)
    prefix = {"subject": "sub-", "session": "ses-", "run": "run-"}[col]
    if v.startswith(prefix):
        v = v[len(prefix) :]
    if col == "run" and v.isdigit():
        v = str(int(v))
    return v


def _select(df, name, **where):
    mask = np.ones(len(df), dtype=bool)
    for col, val in where.items():
        if val is None:
            continue
        if col not in df.columns:
            raise SpineprintError(f"records: missing {col!r} column needed to select {name}")
        mask &= (df[col] == _strip(val, col)).to_numpy()
    sel = df[mask]
    if sel.empty:
        avail = "; ".join(
            f"{col}s: {', '.join(sorted(map(str, df[col].dropna().unique())))}"
            for col, val in where.items()
            if val is not None and col in df.columns
        )
        raise SpineprintError(f"records: no run matches {name} (available {avail})")
    dup = sel["subject"][sel["subject"].duplicated()].unique()
    if len(dup):
        raise SpineprintError(
            f"records: subject(s) {', '.join(map(str, dup[:10]))} have several runs matching {name} ({where}); "
            "select one run (run=...)"
        )
    return dict(zip(sel["subject"], np.nonzero(mask)[0]))


def _pair(df, sel_a, sel_b, name_a, name_b, on_missing):
    if on_missing not in ("raise", "drop"):
        raise SpineprintError(f"on_missing must be 'raise' or 'drop', got {on_missing!r}")
    only_a = sorted(set(sel_a) - set(sel_b))
    only_b = sorted(set(sel_b) - set(sel_a))
    if only_a or only_b:
        msg = "; ".join(
            f"subject(s) {', '.join(s)} missing from {nm}"
            for s, nm in ((only_a, name_b), (only_b, name_a))
            if s
        )
        if on_missing == "raise":
            raise SpineprintError(f"records: {msg}")
        warnings.warn(f"dropping unpaired subjects: {msg}", stacklevel=3)
    subjects = sorted(set(sel_a) & set(sel_b))
    if len(subjects) < 2:
        raise SpineprintError(f"records: fewer than 2 subjects have both {name_a} and {name_b}")
    idx_a = np.array([sel_a[s] for s in subjects], dtype=int)
    idx_b = np.array([sel_b[s] for s in subjects], dtype=int)
    return idx_a, idx_b, np.array(subjects)


def pair_sessions(records, session_a, session_b, *, run=None, run_b=None, on_missing: str = "raise"):
    """Align runs of two sessions by subject (between-session design).

    Parameters
    ----------
    records : pandas.DataFrame or mapping
        One row per run with columns ``subject``, ``session`` and optionally ``run``
        (BIDS labels, with or without ``sub-``/``ses-``/``run-`` prefixes; a mapping with
        keys ``subjects``/``sessions``/``runs`` as returned by the connectivity loader also works).
    session_a, session_b : str
        Session labels of the test and retest connectomes.
    run, run_b : str or int, optional
        Run to take in session A (and B; default the same as ``run``) when a subject has
        several runs in a session.
    on_missing : {"raise", "drop"}
        A subject present in one session only raises a :class:`SpineprintError` naming it,
        or is dropped with a warning.

    Returns
    -------
    idx_a, idx_b : ndarray of int
        Row positions in *records* of each paired subject's run in session A and B, so
        that ``fc[idx_a]`` and ``fc[idx_b]`` are aligned test and retest sessions.
    subjects : ndarray of str
        The paired subject labels (sorted).
    """
    df = _records_frame(records)
    run_b = run if run_b is None else run_b
    sel_a = _select(df, f"session {session_a}", session=session_a, run=run)
    sel_b = _select(df, f"session {session_b}", session=session_b, run=run_b)
    return _pair(df, sel_a, sel_b, f"session {session_a}", f"session {session_b}", on_missing)


def pair_runs(records, run_a, run_b, *, session=None, on_missing: str = "raise"):
    """Align two runs by subject (e.g. run 1 vs run 2 of the same session).

    Same as :func:`pair_sessions` but selecting by run label (optionally within one session).

    Returns
    -------
    idx_a, idx_b : ndarray of int
    subjects : ndarray of str
    """
    df = _records_frame(records)
    sel_a = _select(df, f"run {run_a}", session=session, run=run_a)
    sel_b = _select(df, f"run {run_b}", session=session, run=run_b)
    return _pair(df, sel_a, sel_b, f"run {run_a}", f"run {run_b}", on_missing)


# ============================================================ chapter workflow
#: Which connectome of a run each design uses: index into the ``fc`` axis 1 of
#: :func:`spineprint_utils.connectivity.load_connectomes` ([full, half1, half2]).
_FULL, _HALF1, _HALF2 = 0, 1, 2

#: Summary keys shown in the identification table of chapter 4 (:func:`summary_table`).
IDENTIFICATION_KEYS = (
    "id_ab", "id_ba", "id_mean", "p_id", "chance", "iself", "iothers", "idiff", "p_idiff",
    "idiff_lo", "idiff_hi", "id_lo", "id_hi",
)

#: Cicchetti & Sparrow (1981) categories, from worst to best.
ICC_CATEGORIES = ("poor", "fair", "good", "excellent")


@dataclass(frozen=True)
class Design:
    """One test-retest fingerprinting design built by :func:`designs_from_connectomes`.

    Attributes
    ----------
    fc_a, fc_b : ndarray, shape (n_subjects, n_rois, n_rois)
        Test and retest connectomes, subjects in the same order.
    subjects : ndarray of str
        Subject labels (sorted), the row order of ``fc_a`` and ``fc_b``.
    title : str
        Human-readable name, e.g. ``"within-session (split half)"``.
    idx_a, idx_b : ndarray of int
        Rows of the run records (``data["fc"]``) used for the test and retest scans.
    part_a, part_b : int
        Which connectome of those runs: 0 full run, 1 first half, 2 second half.
    """

    fc_a: np.ndarray
    fc_b: np.ndarray
    subjects: np.ndarray
    title: str
    idx_a: np.ndarray
    idx_b: np.ndarray
    part_a: int
    part_b: int


#: order in which the between-scan design looks for an entity to pair on
PAIRING_ENTITIES = ("ses", "run", "acq", "task", "dir", "rec", "ce", "echo", "part")
_ENTITY_WORDS = {"ses": "session", "run": "run", "acq": "acquisition", "task": "task", "dir": "direction",
                 "rec": "reconstruction", "ce": "contrast", "echo": "echo", "part": "part"}


def _entity_frame(data: Mapping):
    """Run entities of connectome data: ``data["entities"]`` (a DataFrame with one column per
    entity) or, for older files, the ``subjects``/``sessions``/``runs`` labels."""
    import pandas as pd

    if "entities" in data and isinstance(data["entities"], pd.DataFrame):
        ent = data["entities"].astype(str).reset_index(drop=True).copy()
    else:
        ent = pd.DataFrame({"sub": np.asarray(data["subjects"]).astype(str),
                            "ses": np.asarray(data["sessions"]).astype(str),
                            "run": np.asarray(data["runs"]).astype(str)})
    for k in ("sub",) + PAIRING_ENTITIES:
        if k not in ent.columns:
            ent[k] = ""
    ent["run"] = [_strip(v, "run") or "" for v in ent["run"]]
    return ent


def _select_rows(ent, where: dict, what: str) -> dict:
    mask = np.ones(len(ent), dtype=bool)
    for k, v in where.items():
        mask &= (ent[k] == v).to_numpy()
    sel = ent[mask]
    dup = sel["sub"][sel["sub"].duplicated()].unique()
    if len(dup):
        raise SpineprintError(f"records: subject(s) {', '.join(map(str, dup[:10]))} have several runs matching "
                              f"{what} ({where}); give the pairing explicitly (pair=(entity, a, b))")
    return dict(zip(sel["sub"], np.nonzero(mask)[0]))


def choose_pairing(data: Mapping, pair=None) -> dict:
    """Which two scans of each subject a between-scan design compares.

    Parameters
    ----------
    data : mapping
        Connectome data (:func:`spineprint_utils.connectivity.load_connectomes`).
    pair : None, str or (str, str, str)
        ``None``: the first entity of :data:`PAIRING_ENTITIES` (session, run, acquisition,
        task, direction ...) with at least two values shared by two or more subjects, its
        first two labels in sorted order; ``"acq"``: that entity, first two labels;
        ``("acq", "autozshim", "manualzshim")``: explicit.

    Returns
    -------
    dict
        ``entity``, ``a``, ``b`` (labels), ``fixed`` (the other varying entities, held at
        their first label), ``title`` (e.g. ``"between-acquisition (acq-autozshim vs
        acq-manualzshim)"``).

    Raises
    ------
    SpineprintError
        No entity varies within subjects (one scan per subject), or an explicit pairing
        that the data do not have.
    """
    ent = _entity_frame(data)
    varying = [k for k in PAIRING_ENTITIES if ent[k].nunique() > 1]
    if pair is None:
        cands = []
        for k in varying:
            per_sub = ent.groupby("sub")[k].nunique()
            if (per_sub >= 2).sum() >= 2:
                cands.append(k)
        if not cands:
            found = {k: sorted(ent[k].unique()) for k in ("ses", "run", "acq", "task") if (ent[k] != "").any()}
            raise SpineprintError("connectome data: the between-scan design needs two scans per subject (two sessions "
                                  f"or two runs, acquisitions, tasks ...); found labels {found or 'none'}")
        entity = cands[0]
        a, b = sorted(ent[entity].unique())[:2]
    elif isinstance(pair, str):
        entity = pair
        if entity not in ent.columns:
            raise SpineprintError(f"unknown pairing entity {pair!r}; choose from {list(PAIRING_ENTITIES)}")
        vals = sorted(ent[entity].unique())
        if len(vals) < 2:
            raise SpineprintError(f"connectome data: entity {entity!r} has a single label {vals}; cannot pair on it")
        a, b = vals[:2]
    else:
        try:
            entity, a, b = (str(x) for x in pair)
        except (TypeError, ValueError):
            raise SpineprintError(f"pair must be None, an entity name or (entity, label_a, label_b), got {pair!r}") \
                from None
        if entity not in ent.columns:
            raise SpineprintError(f"unknown pairing entity {entity!r}; choose from {list(PAIRING_ENTITIES)}")
        for lab in (a, b):
            if lab not in set(ent[entity]):
                raise SpineprintError(f"connectome data: no run with {entity}-{lab} (labels "
                                      f"{sorted(ent[entity].unique())})")
    fixed = {k: sorted(ent[k].unique())[0] for k in varying if k != entity}
    word = _ENTITY_WORDS.get(entity, entity)
    return {"entity": entity, "a": a, "b": b, "fixed": fixed,
            "title": f"between-{word} ({entity}-{a} vs {entity}-{b})"}


def designs_from_connectomes(data: Mapping, kind: str = "both", pair=None) -> dict:
    """Within- and between-scan fingerprinting designs from a dataset's connectomes.

    - ``"within"``: first half vs second half of each subject's first scan (split-half
      design of Ricchi et al. 2025); the first scan is the one with the first label of
      every entity that varies (session, run, acquisition, task ...);
    - ``"between"``: full scan vs full scan, paired on the entity chosen by
      :func:`choose_pairing` (sessions if the dataset has them, else runs, acquisitions
      (``acq-autozshim`` vs ``acq-manualzshim``), tasks (``task-motorL`` vs ``task-motorR``)
      ...), the other varying entities held at their first label.

    Labels are taken in sorted order; the design's title says which pairing was used.

    Parameters
    ----------
    data : mapping
        As returned by :func:`spineprint_utils.connectivity.load_connectomes`: ``fc``
        (n_runs, 3, R, R) for [full, half1, half2], and ``subjects``, ``sessions``,
        ``runs`` (one label per run, ``""`` when absent) and, from files that carry every
        entity, ``entities``.
    kind : {"both", "within", "between", "available"}
        Which design(s) to build; ``"available"``: the within design, plus the between
        design when the dataset has two scans per subject (a one-run-per-subject dataset
        gets the within design only).
    pair : None, str or (entity, a, b)
        The between-scan pairing (see :func:`choose_pairing`); default automatic.

    Returns
    -------
    dict of str to Design
        ``{"within": ..., "between": ...}`` (in that order) or the one requested.

    Raises
    ------
    SpineprintError
        Missing keys or inconsistent lengths, an unknown *kind*, a between design with
        no two scans per subject, or subjects missing from one scan.
    """
    if kind not in ("both", "within", "between", "available"):
        raise SpineprintError(f"kind must be 'both', 'within', 'between' or 'available', got {kind!r}")
    if not isinstance(data, Mapping):
        raise SpineprintError(f"connectome data must be a mapping (load_connectomes), got {type(data).__name__}")
    missing = [k for k in ("fc", "subjects", "sessions", "runs") if k not in data]
    if missing:
        raise SpineprintError(f"connectome data: missing key(s) {missing} (expected the output of load_connectomes)")
    fc = np.asarray(data["fc"])
    if fc.ndim != 4 or fc.shape[1] != 3 or fc.shape[2] != fc.shape[3]:
        raise SpineprintError(
            f"connectome data: fc must have shape (n_runs, 3 [full, half1, half2], R, R), found {fc.shape}"
        )
    if kind == "available":  # the within design, and the between design when the dataset allows one
        out = designs_from_connectomes(data, "within")
        try:
            out.update(designs_from_connectomes(data, "between", pair))
        except SpineprintError as exc:
            if "needs two scans per subject" not in str(exc):
                raise
        return out
    lengths = {k: len(data[k]) for k in ("subjects", "sessions", "runs")}
    if any(n != fc.shape[0] for n in lengths.values()):
        raise SpineprintError(f"connectome data: fc has {fc.shape[0]} runs but label lengths are {lengths}")
    ent = _entity_frame(data)
    ent["sub"] = [_strip(v, "subject") for v in ent["sub"]]
    varying = [k for k in PAIRING_ENTITIES if ent[k].nunique() > 1]
    first = {k: sorted(ent[k].unique())[0] for k in varying}

    out = {}
    if kind in ("both", "within"):
        sel = _select_rows(ent, first, "the first scan")
        subjects = sorted(sel)
        if len(subjects) < 2:
            raise SpineprintError("records: fewer than 2 subjects have a first scan to split in halves")
        iw = np.array([sel[s] for s in subjects], dtype=int)
        scan = " ".join(f"{k}-{v}" for k, v in first.items() if v)
        title = "within-session (split half)" + (f" of {scan}" if scan and set(first) - {"ses", "run"} else "")
        out["within"] = Design(fc[iw, _HALF1], fc[iw, _HALF2], np.array(subjects), title, iw, iw.copy(),
                               _HALF1, _HALF2)
    if kind in ("both", "between"):
        choice = choose_pairing(data, pair)
        e = choice["entity"]
        sel_a = _select_rows(ent, {**choice["fixed"], e: choice["a"]}, f"{e}-{choice['a']}")
        sel_b = _select_rows(ent, {**choice["fixed"], e: choice["b"]}, f"{e}-{choice['b']}")
        ia, ib, subj = _pair(ent, sel_a, sel_b, f"{e}-{choice['a']}", f"{e}-{choice['b']}", "raise")
        out["between"] = Design(fc[ia, _FULL], fc[ib, _FULL], subj, choice["title"], ia, ib, _FULL, _FULL)
    return out


def identifiability_summary(fc_a=None, fc_b=None, *, A=None) -> dict:
    """Identification rates and Idiff of one design, as plain floats (no resampling).

    Parameters
    ----------
    fc_a, fc_b : array_like, optional
        Test and retest connectomes (see :func:`identifiability_matrix`).
    A : array_like, shape (n, n), optional
        A precomputed identifiability matrix (instead of *fc_a*, *fc_b*).

    Returns
    -------
    dict
        ``id_ab``, ``id_ba``, ``id_mean`` (identification rates in %, Finn et al. 2015),
        ``chance`` (100 / n %), ``iself``, ``iothers``, ``idiff`` (Amico & Goñi 2018).
    """
    if A is None:
        if fc_a is None or fc_b is None:
            raise SpineprintError("identifiability_summary: give fc_a and fc_b, or A")
        A = identifiability_matrix(fc_a, fc_b)
    A = _check_A(A)
    ident = identification_rate(A)
    idd = differential_identifiability(A)
    return {
        "id_ab": float(100 * ident.rate_ab), "id_ba": float(100 * ident.rate_ba),
        "id_mean": float(100 * ident.rate_mean), "chance": float(100 / len(A)),
        "iself": float(idd.iself), "iothers": float(idd.iothers), "idiff": float(idd.idiff),
    }


@dataclass(frozen=True)
class FingerprintReport(_Result):
    """All fingerprinting results of one design (:func:`fingerprint_design`).

    Attributes
    ----------
    A : ndarray, shape (n, n)
        Identifiability matrix.
    identification : IdentificationResult
    idiff : IdiffResult
    permutation : PermutationResult
    bootstrap : BootstrapResult
    pca : PCAResult
    icc : ndarray, shape (n_rois, n_rois) or (n_edges,)
        Edgewise ICC (matrix when matrices were given).
    icc_kind : str
    """

    A: np.ndarray
    identification: IdentificationResult
    idiff: IdiffResult
    permutation: PermutationResult
    bootstrap: BootstrapResult
    pca: PCAResult
    icc: np.ndarray
    icc_kind: str

    def icc_edges(self) -> np.ndarray:
        """The edgewise ICC as an edge vector (upper triangle without diagonal, row-major)."""
        icc = np.asarray(self.icc)
        if icc.ndim == 2:
            return icc[np.triu_indices(icc.shape[0], k=1)]
        return icc

    def icc_categories(self) -> dict:
        """Percentage of edges in each Cicchetti & Sparrow (1981) category.

        Returns
        -------
        dict of str to float
            ``{"poor": %, "fair": %, "good": %, "excellent": %}`` (NaN ICCs count in none).
        """
        cat = cicchetti_category(self.icc_edges())
        return {c: 100 * float(np.mean(cat == c)) for c in ICC_CATEGORIES}

    def summary(self) -> dict:
        """The numbers chapter 4 reports, as plain Python floats (``m_opt`` an int).

        Returns
        -------
        dict
            ``id_ab``, ``id_ba``, ``id_mean``: identification rates in % (Finn et al. 2015);
            ``p_id``: permutation p-value of ``id_mean``; ``chance``: 100 / n %;
            ``iself``, ``iothers``, ``idiff``, ``p_idiff`` (Amico & Goñi 2018);
            ``idiff_lo``, ``idiff_hi``, ``id_lo``, ``id_hi``: bootstrap intervals of Idiff and
            of ``id_mean`` (in %); ``m_opt``, ``idiff_opt``, ``idiff_orig``: PCA reconstruction;
            ``icc_median``: median edgewise ICC (NaN ignored); ``icc_fair_or_better``: % of
            edges with ICC >= 0.40 (Cicchetti & Sparrow 1981).
        """
        perm, boot, pca = self.permutation, self.bootstrap, self.pca
        out = identifiability_summary(A=self.A)
        out = {
            "id_ab": out["id_ab"], "id_ba": out["id_ba"], "id_mean": out["id_mean"],
            "p_id": float(perm.p_rate_mean), "chance": out["chance"],
            "iself": out["iself"], "iothers": out["iothers"], "idiff": out["idiff"],
            "p_idiff": float(perm.p_idiff),
            "idiff_lo": float(boot.idiff[0]), "idiff_hi": float(boot.idiff[1]),
            "id_lo": float(100 * boot.rate_mean[0]), "id_hi": float(100 * boot.rate_mean[1]),
            "m_opt": int(pca.m_opt), "idiff_opt": float(pca.idiff_opt), "idiff_orig": float(pca.idiff_orig),
        }
        values = self.icc_edges()
        cat = cicchetti_category(values)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN ICC -> NaN median
            out["icc_median"] = float(np.nanmedian(values))
        out["icc_fair_or_better"] = 100 * float(np.mean(np.isin(cat, ICC_CATEGORIES[1:])))
        return out


def fingerprint_design(fc_a, fc_b, *, n_permutations: int = 1000, n_bootstrap: int = 1000, seed=0,
                       icc_kind: str = "ICC(1,1)") -> FingerprintReport:
    """Run every fingerprinting statistic of chapter 4 on one test-retest design.

    Computes the identifiability matrix (:func:`identifiability_matrix`), identification
    rates (:func:`identification_rate`, Finn et al. 2015), Iself/Iothers/Idiff
    (:func:`differential_identifiability`, Amico & Goñi 2018), the permutation test
    (:func:`permutation_test`) and bootstrap intervals (:func:`bootstrap_ci`) with the same
    *seed*, the PCA reconstruction curve (:func:`pca_reconstruction`) and the edgewise ICC
    (:func:`edgewise_icc`, Shrout & Fleiss 1979).

    Parameters
    ----------
    fc_a, fc_b : array_like
        Test and retest connectomes, ``(n, R, R)`` matrices or ``(n, E)`` edges.
    n_permutations, n_bootstrap : int
    seed : int
        Seed of both the permutations and the bootstrap resamples.
    icc_kind : str
        ICC form (see :data:`ICC_KINDS`).

    Returns
    -------
    FingerprintReport
    """
    A = identifiability_matrix(fc_a, fc_b)
    return FingerprintReport(
        A=A,
        identification=identification_rate(A),
        idiff=differential_identifiability(A),
        permutation=permutation_test(A, n_permutations=n_permutations, seed=seed),
        bootstrap=bootstrap_ci(A, n_bootstrap=n_bootstrap, seed=seed),
        pca=pca_reconstruction(fc_a, fc_b),
        icc=edgewise_icc(fc_a, fc_b, kind=icc_kind),
        icc_kind=_icc_kind(icc_kind),
    )


def summary_table(reports: Mapping, titles: Mapping | None = None, columns=None):
    """One row per design with the :meth:`FingerprintReport.summary` values.

    Parameters
    ----------
    reports : mapping of str to FingerprintReport
        E.g. ``{"within": ..., "between": ...}``.
    titles : mapping of str to str (or to Design), optional
        Row labels per design (a :class:`Design`'s ``title`` is used); default the keys.
    columns : sequence of str, optional
        Summary keys to keep, in order; default all.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``design``.
    """
    import pandas as pd

    if not isinstance(reports, Mapping) or not reports:
        raise SpineprintError("summary_table: expected a non-empty mapping of design name to FingerprintReport")
    rows = []
    for name, rep in reports.items():
        if not isinstance(rep, FingerprintReport):
            raise SpineprintError(f"summary_table: {name!r} is a {type(rep).__name__}, not a FingerprintReport")
        values = rep.summary()
        if columns is not None:
            unknown = [c for c in columns if c not in values]
            if unknown:
                raise SpineprintError(f"summary_table: unknown column(s) {unknown}; available {list(values)}")
            values = {c: values[c] for c in columns}
        label = name
        if titles is not None and name in titles:
            label = titles[name].title if isinstance(titles[name], Design) else str(titles[name])
        rows.append({"design": label, **values})
    return pd.DataFrame(rows).set_index("design")

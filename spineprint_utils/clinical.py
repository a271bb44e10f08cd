"""Clinical context: a focal spinal lesion in a simulated fingerprinting study.

Spinal cord fMRI has been used to study spinal cord injury, multiple sclerosis,
cervical spondylotic myelopathy and amyotrophic lateral sclerosis (review: Guo &
Chen 2026, doi:10.12015/issn.1674-8034.2026.04.022; multiple sclerosis lesions and
intrinsic spinal FC: Conrad et al. 2018, *Brain* 141:1650, doi:10.1093/brain/awy083).
This module gives chapter 6 of the book a *toy* model of what a focal lesion could
do to a subject's connectome, and measures how it changes the fingerprinting
statistics of chapter 4 (:mod:`spineprint_utils.fingerprint`):

- :func:`lesion_fc` weakens the coupling of the regions of some spinal segments in a
  correlation matrix while keeping it a valid correlation matrix;
- :func:`simulate_lesion_study` draws test and retest region time series for a small
  cohort (planted group pattern + subject fingerprint, as the default study of
  :mod:`spineprint_utils.simulate`) in which some subjects carry a lesion in both
  sessions, only at retest ("a lesion between sessions"), or not at all;
- :func:`lesion_fingerprint` computes the identifiability matrix, the lesioned
  subjects' Iself / Idiff and identification, and the edgewise ICC inside vs outside
  the edges the lesion touches (Amico & Goñi 2018, doi:10.1038/s41598-018-25089-1;
  Finn et al. 2015, doi:10.1038/nn.4135; Shrout & Fleiss 1979,
  doi:10.1037/0033-2909.86.2.420).

The lesion model is an illustration of a mechanism (loss of shared signal in some
segments), not a model fitted to patient data; the cited studies do not give its
parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import connectivity
from . import fingerprint as fp
from . import simulate
from ._io import SpineprintError

__all__ = [
    "LESION_KINDS",
    "LESION_TIMINGS",
    "parse_regions",
    "lesion_regions",
    "lesion_edge_mask",
    "lesion_fc",
    "LesionStudy",
    "simulate_lesion_study",
    "LesionFingerprint",
    "lesion_fingerprint",
]

#: Lesion models of :func:`lesion_fc`.
LESION_KINDS = ("coupling", "disconnection")
#: When the lesion is present in :func:`simulate_lesion_study`.
LESION_TIMINGS = ("none", "both", "between")

# stream tags for np.random.SeedSequence (never reorder: they fix the numbers)
_T_TS = 1


# ============================================================== regions
def parse_regions(regions) -> tuple[np.ndarray, np.ndarray]:
    """Segment and horn of each region name ``<segment>_<horn>`` (e.g. ``C5_LV``).

    Parameters
    ----------
    regions : sequence of str
        Region names, as written by the connectivity stage.

    Returns
    -------
    segments, horns : ndarray of str, shape (R,)
    """
    regions = [str(r) for r in regions]
    bad = [r for r in regions if r.count("_") != 1 or not all(r.split("_"))]
    if bad:
        raise SpineprintError(f"region names must look like '<segment>_<horn>' (e.g. 'C5_LV'), got {bad[:5]}")
    seg, horn = zip(*(r.split("_") for r in regions)) if regions else ((), ())
    return np.array(seg, dtype=str), np.array(horn, dtype=str)


def lesion_regions(regions, segments, horns=None) -> np.ndarray:
    """Boolean mask of the regions inside the lesion.

    Parameters
    ----------
    regions : sequence of str
        Region names ``<segment>_<horn>``.
    segments : str or sequence of str
        Lesioned segments (e.g. ``["C5", "C6"]``); each must occur in *regions*.
    horns : sequence of str, optional
        Restrict the lesion to these horns (e.g. ``["LV", "RV"]`` for the ventral
        horns); default all horns of the lesioned segments.

    Returns
    -------
    ndarray of bool, shape (R,)
    """
    seg, horn = parse_regions(regions)
    segments = [segments] if isinstance(segments, str) else [str(s) for s in segments]
    if not segments:
        raise SpineprintError("no lesioned segment given")
    missing = sorted(set(segments) - set(seg.tolist()))
    if missing:
        present = list(dict.fromkeys(seg.tolist()))
        raise SpineprintError(f"lesion segment(s) {missing} not among the regions' segments {present}")
    inside = np.isin(seg, segments)
    if horns is not None:
        horns = [horns] if isinstance(horns, str) else [str(h) for h in horns]
        unknown = sorted(set(horns) - set(horn.tolist()))
        if unknown or not horns:
            raise SpineprintError(f"lesion horn(s) {unknown or horns} not among the regions' horns {sorted(set(horn))}")
        inside &= np.isin(horn, horns)
    return inside


def _check_kind(kind: str) -> str:
    if kind not in LESION_KINDS:
        raise SpineprintError(f"unknown lesion kind {kind!r}; use one of {', '.join(LESION_KINDS)}")
    return kind


def lesion_edge_mask(regions, segments, kind: str = "coupling", horns=None) -> np.ndarray:
    """Edges whose value the lesion model of :func:`lesion_fc` changes.

    Parameters
    ----------
    regions, segments, horns
        See :func:`lesion_regions`.
    kind : {"coupling", "disconnection"}
        ``"coupling"``: every edge with at least one end in the lesion;
        ``"disconnection"``: edges with exactly one end in the lesion.

    Returns
    -------
    ndarray of bool, shape (R, R)
        Symmetric, False on the diagonal.
    """
    inside = lesion_regions(regions, segments, horns)
    kind = _check_kind(kind)
    if kind == "coupling":
        mask = inside[:, None] | inside[None, :]
    else:
        mask = inside[:, None] ^ inside[None, :]
    np.fill_diagonal(mask, False)
    return mask


# ============================================================== lesion model
def _check_corr(c: np.ndarray, name: str, atol: float = 1e-8) -> None:
    if not np.isfinite(c).all():
        raise SpineprintError(f"{name}: NaN or infinite values")
    if np.max(np.abs(c - np.swapaxes(c, -1, -2)), initial=0.0) > atol:
        raise SpineprintError(f"{name}: matrix is not symmetric")
    diag = np.diagonal(c, axis1=-2, axis2=-1)
    if np.max(np.abs(diag - 1.0), initial=0.0) > 1e-6:
        raise SpineprintError(f"{name}: diagonal is not 1; the lesion model needs correlation matrices (not Fisher z)")
    lam = np.linalg.eigvalsh(c).min()
    if lam < -1e-6:
        raise SpineprintError(
            f"{name}: not positive semi-definite (smallest eigenvalue {lam:.3g}); the lesion model needs a valid "
            "correlation matrix"
        )


def lesion_fc(fc_or_corr, regions, segments, strength: float, kind: str = "coupling", horns=None,
              name: str = "fc") -> np.ndarray:
    r"""A focal lesion that weakens the coupling of the regions of some segments.

    Two models, both of which map a correlation matrix to a correlation matrix
    (symmetric, unit diagonal, positive semi-definite). Let :math:`L` be the set of
    lesioned regions (the horns of *segments*) and :math:`s` the *strength*.

    ``kind="coupling"`` (loss of shared signal in the lesion): each lesioned region's
    signal keeps a fraction :math:`d = 1 - s` of its original signal and the rest is
    replaced by independent noise, :math:`x'_i = d\,x_i + \sqrt{1 - d^2}\,\varepsilon_i`
    for :math:`i \in L`. With :math:`D = \operatorname{diag}(d_i)`, :math:`d_i = 1 - s`
    in the lesion and 1 elsewhere,

    .. math:: C' = D C D + I - D^2,

    i.e. edges between a lesioned and a healthy region are multiplied by
    :math:`1 - s`, edges between two lesioned regions by :math:`(1 - s)^2`, the rest
    are unchanged. :math:`C'` is a sum of two positive semi-definite matrices.

    ``kind="disconnection"`` (the lesion is cut off from the rest of the cord, its
    internal coupling is kept): with :math:`M_{ij} = 1` when *i* and *j* are on the
    same side of the lesion boundary (both in :math:`L` or both outside),

    .. math:: C' = (1 - s)\,C + s\,(C \circ M),

    so edges crossing the boundary are multiplied by :math:`1 - s`. :math:`C \circ M`
    is block diagonal with principal submatrices of :math:`C`, hence positive
    semi-definite, and :math:`C'` is a convex combination of the two.

    These are illustrative models for the book; they are motivated by reports that
    spinal cord lesions alter intrinsic spinal functional connectivity (Conrad et al.
    2018, *Brain* 141:1650, doi:10.1093/brain/awy083; review: Guo & Chen 2026), but
    their form and strength are not estimated from patients.

    Parameters
    ----------
    fc_or_corr : array_like, shape (..., R, R)
        One or a stack of correlation matrices (e.g. a planted correlation or an FC
        estimate from more time points than regions).
    regions : sequence of str, length R
        Region names ``<segment>_<horn>``.
    segments : str or sequence of str
        Lesioned segments, e.g. ``["C5", "C6"]``.
    strength : float in [0, 1]
        0: no effect; 1: the lesioned regions lose all coupling (``"coupling"``) or
        all coupling with the rest of the cord (``"disconnection"``).
    kind : {"coupling", "disconnection"}
    horns : sequence of str, optional
        Restrict the lesion to some horns (e.g. ``["LV", "RV"]``).
    name : str
        Name of the input in error messages.

    Returns
    -------
    ndarray, same shape as *fc_or_corr*

    Raises
    ------
    SpineprintError
        Not a stack of square correlation matrices matching *regions* (non-finite,
        non-symmetric, diagonal not 1, not positive semi-definite), unknown segment,
        horn or kind, or strength outside [0, 1].
    """
    c = np.asarray(fc_or_corr, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2]:
        raise SpineprintError(f"{name}: expected (..., R, R) square matrices, found shape {c.shape}")
    regions = list(regions)
    if c.shape[-1] != len(regions):
        raise SpineprintError(f"{name}: {c.shape[-1]} regions in the matrix but {len(regions)} region names")
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise SpineprintError(f"lesion strength must be a number in [0, 1], got {strength!r}") from None
    if not 0.0 <= s <= 1.0:
        raise SpineprintError(f"lesion strength must be in [0, 1], got {strength!r}")
    kind = _check_kind(kind)
    _check_corr(c, name)
    inside = lesion_regions(regions, segments, horns)
    if kind == "coupling":
        d = np.where(inside, 1.0 - s, 1.0)
        out = c * np.outer(d, d)
        idx = np.arange(len(regions))
        out[..., idx, idx] = 1.0  # D C D + I - D^2 on the (unit) diagonal
    else:
        cross = inside[:, None] ^ inside[None, :]
        out = np.where(cross, (1.0 - s) * c, c)
    return out


# ============================================================== simulated study
@dataclass(frozen=True)
class LesionStudy:
    """A small simulated test-retest cohort with lesioned subjects.

    Attributes
    ----------
    regions : list of str, length R
    fc_test, fc_retest : ndarray, shape (n_subjects, R, R)
        Pearson FC of the test and retest region time series.
    corr_test, corr_retest : ndarray, shape (n_subjects, R, R)
        The planted correlations the time series were drawn from (after the lesion).
    lesioned : ndarray of int
        Indices of the lesioned subjects.
    lesion_segments : tuple of str
    lesion_strength : float
    kind : str
        Lesion model (see :func:`lesion_fc`).
    timing : str
        ``"none"``, ``"both"`` (lesion in both sessions) or ``"between"`` (retest only).
    edge_mask : ndarray of bool, shape (R, R)
        Edges the lesion changes (:func:`lesion_edge_mask`).
    timeseries_test, timeseries_retest : ndarray, shape (n_subjects, n_volumes, R)
    """

    regions: list
    fc_test: np.ndarray
    fc_retest: np.ndarray
    corr_test: np.ndarray
    corr_retest: np.ndarray
    lesioned: np.ndarray
    lesion_segments: tuple
    lesion_strength: float
    kind: str
    timing: str
    edge_mask: np.ndarray
    timeseries_test: np.ndarray
    timeseries_retest: np.ndarray

    def as_dict(self) -> dict:
        """The fields as a plain ``dict``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def simulate_lesion_study(
    n_subjects: int = 12,
    *,
    segments=("C3", "C4", "C5", "C6", "C7", "C8"),
    horns=simulate.HORNS,
    lesion_segments=("C5", "C6"),
    lesion_strength: float = 0.6,
    lesioned=(0,),
    timing: str = "between",
    kind: str = "coupling",
    lesion_horns=None,
    n_volumes: int = 300,
    tr: float = 2.0,
    fingerprint_strength: float = 0.5,
    session_strength: float = 0.5,
    seed: int = 0,
) -> LesionStudy:
    r"""Test and retest region time series of a cohort in which some subjects carry a lesion.

    Each subject *n* and session *e* has the planted correlation
    :math:`C_{ne} = (G + f W_n + g W_{ne}) / (1 + f + g)` of
    :func:`spineprint_utils.simulate.planted_correlations` (group pattern *G* from
    :func:`spineprint_utils.simulate.group_fc_pattern`, subject fingerprint
    :math:`W_n`, session deviation :math:`W_{ne}`). For a lesioned subject,
    :func:`lesion_fc` is applied to :math:`C_{ne}` in both sessions
    (``timing="both"``), in the retest session only (``timing="between"``: a lesion
    appearing between the sessions) or never (``timing="none"``). Region time series
    are drawn with :func:`spineprint_utils.simulate.neural_timeseries` (Gaussian
    noise coloured by the canonical HRF, mixed by the Cholesky factor of the
    correlation) and their Pearson correlations are the connectomes.

    The random numbers depend only on *seed*, the subject and the session, not on the
    lesion: studies that differ only in ``timing``, ``lesion_strength``,
    ``lesion_segments`` or ``kind`` share the same fingerprints and noise, so their
    difference is the effect of the lesion alone (paired comparison).

    Parameters
    ----------
    n_subjects : int >= 3
    segments : sequence of str
        Spinal segments covered (each with every horn in *horns*), rostral first.
    horns : sequence of str
        Horns per segment among ``LV, RV, LD, RD``.
    lesion_segments : sequence of str
        Lesioned segments (a subset of *segments*).
    lesion_strength : float in [0, 1]
    lesioned : sequence of int
        Indices of the lesioned subjects.
    timing : {"none", "both", "between"}
    kind : {"coupling", "disconnection"}
        Lesion model of :func:`lesion_fc`.
    lesion_horns : sequence of str, optional
        Restrict the lesion to some horns.
    n_volumes : int
        Volumes per session (> number of regions).
    tr : float
        Repetition time in seconds.
    fingerprint_strength, session_strength : float >= 0
        ``f`` and ``g`` above.
    seed : int

    Returns
    -------
    LesionStudy
    """
    if timing not in LESION_TIMINGS:
        raise SpineprintError(f"unknown lesion timing {timing!r}; use one of {', '.join(LESION_TIMINGS)}")
    kind = _check_kind(kind)
    n_subjects = int(n_subjects)
    if n_subjects < 3:
        raise SpineprintError(f"n_subjects must be >= 3, got {n_subjects}")
    segments, horns = tuple(str(s) for s in segments), tuple(str(h) for h in horns)
    if not segments or not horns:
        raise SpineprintError("segments and horns must not be empty")
    regions = [f"{s}_{h}" for s in segments for h in horns]
    if int(n_volumes) <= len(regions) + 1:
        raise SpineprintError(f"n_volumes must exceed the number of regions + 1 ({len(regions) + 1}), got {n_volumes}")
    if float(tr) <= 0:
        raise SpineprintError(f"tr must be > 0 seconds, got {tr}")
    if min(float(fingerprint_strength), float(session_strength)) < 0:
        raise SpineprintError("fingerprint_strength and session_strength must be >= 0")
    lesioned = np.unique(np.asarray(lesioned, dtype=int).ravel())
    if lesioned.size and (lesioned.min() < 0 or lesioned.max() >= n_subjects):
        raise SpineprintError(f"lesioned subject indices must be in 0..{n_subjects - 1}, got {lesioned.tolist()}")
    lesion_segments = (lesion_segments,) if isinstance(lesion_segments, str) else tuple(str(s) for s in lesion_segments)
    edge_mask = lesion_edge_mask(regions, lesion_segments, kind, lesion_horns)  # validates segments/horns

    seg_names = [r.split("_")[0] for r in regions]
    horn_names = [r.split("_")[1] for r in regions]
    group = simulate.group_fc_pattern(seg_names, horn_names)
    corr = simulate.planted_correlations(group, n_subjects, 2, fingerprint_strength, session_strength, seed=seed)
    sessions_with_lesion = {"none": (), "both": (0, 1), "between": (1,)}[timing]
    for e in sessions_with_lesion:
        for n in lesioned:
            corr[n, e] = lesion_fc(corr[n, e], regions, lesion_segments, lesion_strength, kind, lesion_horns,
                                   name=f"planted correlation of subject {n}, session {e}")
    ts = np.empty((n_subjects, 2, int(n_volumes), len(regions)))
    for n in range(n_subjects):
        for e in range(2):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), _T_TS, n, e]))
            ts[n, e] = simulate.neural_timeseries(corr[n, e], int(n_volumes), float(tr), 1, rng)
    fc = connectivity.connectivity_matrices(list(ts.reshape(-1, *ts.shape[2:]))).reshape(n_subjects, 2, *group.shape)
    return LesionStudy(
        regions=regions,
        fc_test=fc[:, 0],
        fc_retest=fc[:, 1],
        corr_test=corr[:, 0],
        corr_retest=corr[:, 1],
        lesioned=lesioned,
        lesion_segments=lesion_segments,
        lesion_strength=float(lesion_strength),
        kind=kind,
        timing=timing,
        edge_mask=edge_mask,
        timeseries_test=ts[:, 0],
        timeseries_retest=ts[:, 1],
    )


# ============================================================== fingerprint of a lesion
@dataclass(frozen=True)
class LesionFingerprint:
    """Fingerprinting statistics of a cohort with lesioned subjects.

    Attributes
    ----------
    A : ndarray, shape (n, n)
        Identifiability matrix (rows test, columns retest).
    idiff : fingerprint.IdiffResult
        Group and per-subject Iself, Iothers, Idiff.
    identification : fingerprint.IdentificationResult
    lesioned : ndarray of int
    iself_lesioned, iself_unlesioned : float
        Mean Iself (diagonal of ``A``) of the lesioned and of the other subjects.
    idiff_lesioned, idiff_unlesioned : float
        Mean per-subject Idiff of the two groups.
    identified_lesioned : float
        Fraction (0-1) of the lesioned subjects' identifications that succeed, both
        directions pooled.
    icc : ndarray, shape (R, R)
        Edgewise ICC (NaN diagonal).
    edge_mask : ndarray of bool, shape (R, R)
        Edges inside the lesion (changed by the lesion model).
    icc_inside, icc_outside : float
        Mean ICC of the edges inside / outside the lesion (upper triangle, NaN ignored).
    """

    A: np.ndarray
    idiff: fp.IdiffResult
    identification: fp.IdentificationResult
    lesioned: np.ndarray
    iself_lesioned: float
    iself_unlesioned: float
    idiff_lesioned: float
    idiff_unlesioned: float
    identified_lesioned: float
    icc: np.ndarray
    edge_mask: np.ndarray
    icc_inside: float
    icc_outside: float

    def as_dict(self) -> dict:
        """The fields as a plain ``dict``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _nanmean(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def lesion_fingerprint(fc_test, fc_retest, regions, lesion_segments, lesioned, kind: str = "coupling",
                       lesion_horns=None, icc_kind: str = "ICC(1,1)") -> LesionFingerprint:
    """Identifiability of lesioned subjects and edgewise reliability inside vs outside the lesion.

    Uses :func:`spineprint_utils.fingerprint.identifiability_matrix`,
    :func:`~spineprint_utils.fingerprint.differential_identifiability` (Iself,
    Iothers, Idiff of Amico & Goñi 2018), :func:`~spineprint_utils.fingerprint.identification_rate`
    (Finn et al. 2015) and :func:`~spineprint_utils.fingerprint.edgewise_icc`
    (Shrout & Fleiss 1979), then averages them over the lesioned subjects vs the
    others and over the edges of :func:`lesion_edge_mask` vs the rest.

    Parameters
    ----------
    fc_test, fc_retest : array_like, shape (n_subjects, R, R)
    regions : sequence of str, length R
    lesion_segments : sequence of str
    lesioned : sequence of int
        Indices of the lesioned subjects (may be empty: then the lesioned averages are NaN).
    kind : {"coupling", "disconnection"}
        Lesion model, which defines the edges inside the lesion.
    lesion_horns : sequence of str, optional
    icc_kind : str
        ICC form (see :data:`spineprint_utils.fingerprint.ICC_KINDS`).

    Returns
    -------
    LesionFingerprint
    """
    fc_test, fc_retest = np.asarray(fc_test, float), np.asarray(fc_retest, float)
    if fc_test.ndim != 3 or fc_test.shape[-1] != len(regions):
        r = len(regions)
        raise SpineprintError(f"fc_test: expected (n_subjects, {r}, {r}) matrices, found shape {fc_test.shape}")
    n = fc_test.shape[0]
    lesioned = np.unique(np.asarray(lesioned, dtype=int).ravel())
    if lesioned.size and (lesioned.min() < 0 or lesioned.max() >= n):
        raise SpineprintError(f"lesioned subject indices must be in 0..{n - 1}, got {lesioned.tolist()}")
    mask = lesion_edge_mask(regions, lesion_segments, kind, lesion_horns)
    A = fp.identifiability_matrix(fc_test, fc_retest)
    idd = fp.differential_identifiability(A)
    ident = fp.identification_rate(A)
    icc = fp.edgewise_icc(fc_test, fc_retest, kind=icc_kind, as_matrix=True)
    others = np.setdiff1d(np.arange(n), lesioned)
    iu = np.triu_indices(len(regions), k=1)
    inside = mask[iu]
    icc_u = icc[iu]

    def sub_mean(values, idx):
        return float(np.mean(values[idx])) if idx.size else float("nan")

    both = np.concatenate([ident.identified_ab[lesioned], ident.identified_ba[lesioned]])
    return LesionFingerprint(
        A=A,
        idiff=idd,
        identification=ident,
        lesioned=lesioned,
        iself_lesioned=sub_mean(idd.iself_subject, lesioned),
        iself_unlesioned=sub_mean(idd.iself_subject, others),
        idiff_lesioned=sub_mean(idd.idiff_subject, lesioned),
        idiff_unlesioned=sub_mean(idd.idiff_subject, others),
        identified_lesioned=float(both.mean()) if both.size else float("nan"),
        icc=icc,
        edge_mask=mask,
        icc_inside=_nanmean(icc_u[inside]),
        icc_outside=_nanmean(icc_u[~inside]),
    )

"""A real spine-print: the fingerprinting stage on real spinal cord ROI time series.

The chapter "A real spine-print" (``notebooks/04b_real_spineprint.ipynb``) runs the
package's fingerprinting (:mod:`spineprint_utils.fingerprint`) on the real cervical cord
ROI time series of :func:`spineprint_utils.datasets.fetch_spinal_graph_learning`
(15 participants x 2 sessions x 125 volumes, 56 PAM50 regions, motor-task runs). This
module turns those arrays into the connectome layout of
:func:`spineprint_utils.connectivity.load_connectomes`, so the same
:func:`~spineprint_utils.fingerprint.designs_from_connectomes` and
:func:`~spineprint_utils.fingerprint.fingerprint_design` as in chapter 4 apply, with
options the real data need:

- **region sets**: gray matter only (dorsal, intermediate, ventral x left/right per
  segment) or gray + white matter (plus four white-matter tracts per side);
- **task regression**: every participant did the same block paradigm, a component of the
  signal shared by all participants; regressing it out (ordinary least squares on a
  finite-impulse-response model of the block-locked response, or on the blocks convolved
  with the SPM canonical haemodynamic response and its derivative, Friston et al. 1998,
  doi:10.1006/nimg.1997.0306) removes task-evoked co-activation from the functional
  connectivity (Cole et al. 2019, NeuroImage 189:1, doi:10.1016/j.neuroimage.2018.12.054);
- **censored volumes**: volumes set to ~0 upstream (see
  :class:`~spineprint_utils.datasets.SpinalROIData`) are left out of every correlation.

References
----------
Finn et al. 2015, Nat Neurosci 18:1664 (identification); Amico & Goñi 2018, Sci Rep
8:8254 (identifiability, Idiff, PCA reconstruction); Ricchi et al. 2025, bioRxiv
doi:10.1101/2025.05.30.656545 (spine-prints: within-session split halves and
between-session designs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from . import fingerprint as fp
from ._io import SpineprintError
from .connectivity import connectivity_matrix

__all__ = [
    "region_table",
    "select_regions",
    "horn_region_names",
    "paradigm_design",
    "regress_paradigm",
    "connectomes",
    "fingerprint_real",
    "conditions_table",
    "session_order_check",
    "compare_with_claim",
    "epi_overview",
    "coupling_pattern",
    "realism_table",
    "realism_measures",
    "realism_distance",
    "realism_agreement",
    "calibration_record",
]

_NAME = re.compile(r"^(?P<segment>[CTLS]\d+)_(?P<tissue>[GW])_(?P<part>[A-Z]+)_(?P<side>[LR])$")
_GRAY_PARTS = {"D": "dorsal", "I": "intermediate", "V": "ventral"}


def region_table(regions) -> pd.DataFrame:
    """Parse PAM50 region names ``<segment>_<G|W>_<part>_<L|R>`` into columns.

    Parameters
    ----------
    regions : sequence of str
        E.g. ``"C6_G_D_L"`` (C6 gray matter, dorsal, left) or ``"T1_W_CST_R"``.

    Returns
    -------
    pandas.DataFrame
        One row per region: ``name, segment, tissue ("gray"/"white"), part, side``.

    Raises
    ------
    SpineprintError
        A name that does not follow the pattern.
    """
    rows = []
    for name in regions:
        m = _NAME.match(str(name))
        if m is None:
            raise SpineprintError(f"region name {name!r} is not <segment>_<G|W>_<part>_<L|R>")
        d = m.groupdict()
        rows.append({"name": str(name), "segment": d["segment"],
                     "tissue": "gray" if d["tissue"] == "G" else "white",
                     "part": _GRAY_PARTS.get(d["part"], d["part"]) if d["tissue"] == "G" else d["part"],
                     "side": d["side"]})
    return pd.DataFrame(rows, columns=["name", "segment", "tissue", "part", "side"])


def select_regions(regions, which: str = "gray + white") -> np.ndarray:
    """Boolean mask of the regions in a named set.

    Parameters
    ----------
    regions : sequence of str
    which : {"gray + white", "gray matter", "horns"}
        All regions; gray matter only (dorsal, intermediate, ventral); or the dorsal and
        ventral horns only (the four regions per segment of the simulated study).

    Returns
    -------
    ndarray of bool, shape (n_regions,)
    """
    tab = region_table(regions)
    if which == "gray + white":
        return np.ones(len(tab), bool)
    if which == "gray matter":
        return (tab["tissue"] == "gray").to_numpy()
    if which == "horns":
        return ((tab["tissue"] == "gray") & tab["part"].isin(["dorsal", "ventral"])).to_numpy()
    raise SpineprintError(f"unknown region set {which!r}; use 'gray + white', 'gray matter' or 'horns'")


def horn_region_names(regions) -> list:
    """Package names ``<segment>_<LV|RV|LD|RD>`` of dorsal/ventral horn regions (others ``""``).

    Lets :func:`spineprint_utils.connectivity.coupling_summary` classify the real regions
    like the simulated ones.
    """
    tab = region_table(regions)
    out = []
    for seg, tissue, part, side in tab[["segment", "tissue", "part", "side"]].itertuples(index=False):
        if tissue == "gray" and part in ("dorsal", "ventral"):
            out.append(f"{seg}_{side}{part[0].upper()}")
        else:
            out.append("")
    return out


def paradigm_design(onsets, durations, n_volumes: int, tr: float, model: str = "fir") -> np.ndarray:
    """Design matrix of a block paradigm, to regress the task-evoked response out.

    - ``"fir"`` (default): finite impulse response, one regressor per volume after a block
      onset over one block period (onset volume ``round(onset / tr)``, period the median
      spacing of onsets), the same for every block, so the mean block-locked response is
      fitted whatever its shape; Cole et al. (2019) found such flexible fits remove
      activation-induced inflation of task FC where canonical-HRF fits do not.
    - ``"spm"``: the blocks convolved with the SPM canonical haemodynamic response and its
      temporal derivative (Friston et al. 1998), with
      :func:`nilearn.glm.first_level.compute_regressor`, sampled at ``t = i * tr``.

    Parameters
    ----------
    onsets, durations : array_like, seconds
    n_volumes : int
    tr : float, seconds
    model : {"fir", "spm"}

    Returns
    -------
    ndarray, shape (n_volumes, k)
        First column the intercept.
    """
    onsets = np.asarray(onsets, float)
    durations = np.asarray(durations, float)
    if onsets.shape != durations.shape or onsets.ndim != 1 or onsets.size == 0:
        raise SpineprintError("paradigm: onsets and durations must be 1D arrays of the same non-zero length")
    if not tr > 0:
        raise SpineprintError(f"paradigm: TR must be positive, got {tr}")
    n_volumes = int(n_volumes)
    if model == "fir":
        period = np.median(np.diff(onsets)) if onsets.size > 1 else durations[0]
        n_lags = max(1, int(round(period / tr)))
        starts = np.round(onsets / tr).astype(int)
        idx = starts[:, None] + np.arange(n_lags)[None, :]  # (blocks, lags)
        X = np.zeros((n_volumes, n_lags))
        ok = (idx >= 0) & (idx < n_volumes)
        X[idx[ok], np.broadcast_to(np.arange(n_lags), idx.shape)[ok]] = 1.0
        return np.column_stack([np.ones(n_volumes), X])
    if model == "spm":
        from nilearn.glm.first_level import compute_regressor

        frame_times = np.arange(n_volumes) * float(tr)
        reg, _ = compute_regressor(np.vstack([onsets, durations, np.ones_like(onsets)]), "spm + derivative",
                                   frame_times)
        return np.column_stack([np.ones(n_volumes), reg])
    raise SpineprintError(f"paradigm: unknown model {model!r}; use 'fir' or 'spm'")


def regress_paradigm(timeseries, design, censored=None) -> np.ndarray:
    """Residuals of an ordinary least-squares fit of *design* to every run's time series.

    Parameters
    ----------
    timeseries : array_like, shape (..., T, R)
        Runs of regional time series.
    design : array_like, shape (T, k)
        Regressors (e.g. :func:`paradigm_design`), the same for every run.
    censored : array_like of bool, shape (..., T), optional
        Volumes left out of the fit (their residuals are set to 0).

    Returns
    -------
    ndarray, shape (..., T, R)
        ``Y - X beta`` with ``beta = argmin ||W (Y - X beta)||`` (W selects uncensored volumes).
    """
    ts = np.asarray(timeseries, dtype=np.float64)
    X = np.asarray(design, dtype=np.float64)
    if ts.ndim < 2 or X.ndim != 2 or X.shape[0] != ts.shape[-2]:
        raise SpineprintError(f"regress_paradigm: design {X.shape} does not match time series {ts.shape}")
    lead = ts.shape[:-2]
    flat = ts.reshape(-1, *ts.shape[-2:])
    keep = np.ones(flat.shape[:2], bool)
    if censored is not None:
        cens = np.asarray(censored, bool)
        if cens.shape != ts.shape[:-1]:
            raise SpineprintError(f"regress_paradigm: censored has shape {cens.shape}, expected {ts.shape[:-1]}")
        keep = ~cens.reshape(-1, ts.shape[-2])
    out = np.zeros_like(flat)
    # runs sharing the same kept volumes share one pseudo-inverse
    patterns, inverse = np.unique(keep, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        runs = np.flatnonzero(inverse.ravel() == k)
        # least-squares projection; pinv also handles a rank-deficient design (e.g. FIR
        # columns that sum to the intercept): the residuals are unique either way
        beta = np.linalg.pinv(X[pattern]) @ flat[runs][:, pattern]  # (runs, k, R)
        out[np.ix_(runs, np.flatnonzero(pattern))] = flat[runs][:, pattern] - X[pattern] @ beta
    return out.reshape(*lead, *ts.shape[-2:])


def _fc(ts, keep):
    return connectivity_matrix(ts[keep])


def connectomes(data, regions: str = "gray + white", regress: bool = False,
                drop_censored: bool = True, model: str = "fir") -> dict:
    """Connectomes of every run and of its two halves, in the layout of ``load_connectomes``.

    Parameters
    ----------
    data : SpinalROIData
        From :func:`spineprint_utils.datasets.fetch_spinal_graph_learning`.
    regions : str
        Region set (:func:`select_regions`).
    regress : bool
        Regress the task paradigm out (:func:`paradigm_design`, :func:`regress_paradigm`),
        separately in the full run and in each half (the halves never share a fit).
    model : {"fir", "spm"}
        Task model when *regress* (:func:`paradigm_design`).
    drop_censored : bool
        Leave censored volumes out of every correlation.

    Returns
    -------
    dict
        ``fc`` (n_runs, 3, R, R) Pearson correlations of the full run, its first half
        (volumes ``0 .. T//2 - 1``) and second half (``T - T//2 .. T - 1``), as in
        :func:`spineprint_utils.fingerprint.split_half`; ``subjects``, ``sessions``,
        ``runs`` (one label per run); ``regions`` (names kept); ``n_volumes_used``
        (n_runs, 3) volumes entering each correlation.
    """
    ts = np.asarray(data.timeseries, dtype=np.float64)
    n_sub, n_ses, T, _ = ts.shape
    cens = np.asarray(data.censored, bool) if drop_censored else np.zeros(ts.shape[:-1], bool)
    mask = select_regions(data.regions, regions)
    ts = ts[..., mask]
    h = T // 2
    halves = [np.arange(T), np.arange(h), np.arange(T - h, T)]
    parts = []
    X = paradigm_design(data.onsets, data.durations, T, data.tr, model) if regress else None
    for idx in halves:
        seg = ts[..., idx, :]
        if regress:
            # fitted on the volumes of this segment only: a fit over the whole run would put
            # the same fitted (noise-bearing) response into both halves and make the two
            # halves of one run artificially alike
            seg = regress_paradigm(seg, X[idx], cens[..., idx])
        parts.append(seg)
    fc, used, subjects, sessions = [], [], [], []
    for i in range(n_sub):
        for e in range(n_ses):
            fc.append([_fc(part[i, e], ~cens[i, e][idx]) for part, idx in zip(parts, halves)])
            used.append([int((~cens[i, e][idx]).sum()) for idx in halves])
            subjects.append(data.subjects[i])
            sessions.append(data.sessions[e])
    return {
        "fc": np.asarray(fc), "subjects": np.asarray(subjects), "sessions": np.asarray(sessions),
        "runs": np.full(len(subjects), ""), "regions": [r for r, k in zip(data.regions, mask) if k],
        "n_volumes_used": np.asarray(used),
    }


def fingerprint_real(conn: Mapping, *, n_permutations: int = 1000, n_bootstrap: int = 1000, seed=0) -> dict:
    """Within-session (split half, session 1) and between-session fingerprinting reports.

    Parameters
    ----------
    conn : mapping
        From :func:`connectomes` (or ``load_connectomes``).
    n_permutations, n_bootstrap, seed :
        As in :func:`spineprint_utils.fingerprint.fingerprint_design`.

    Returns
    -------
    designs : dict of str to Design
    reports : dict of str to FingerprintReport
        Keys ``"within"``, ``"between"``.
    """
    designs = fp.designs_from_connectomes(conn)
    reports = {name: fp.fingerprint_design(d.fc_a, d.fc_b, n_permutations=n_permutations,
                                           n_bootstrap=n_bootstrap, seed=seed)
               for name, d in designs.items()}
    return designs, reports


def conditions_table(data, region_sets=("gray + white", "gray matter"), regress_options=(False, True), *,
                     model: str = "fir", n_permutations: int = 1000, n_bootstrap: int = 1000,
                     seed=0) -> pd.DataFrame:
    """Fingerprinting summaries for every region set x task regression x design.

    Returns
    -------
    pandas.DataFrame
        One row per (regions, task, design) with the columns of
        :meth:`~spineprint_utils.fingerprint.FingerprintReport.summary` and
        ``n_regions``; ``task`` is ``"kept"`` or ``"regressed out"``.
    """
    rows = []
    for which in region_sets:
        for regress in regress_options:
            conn = connectomes(data, regions=which, regress=regress, model=model)
            _, reports = fingerprint_real(conn, n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed)
            for name, rep in reports.items():
                rows.append({"regions": which, "task": "regressed out" if regress else "kept", "design": name,
                             "n_regions": len(conn["regions"]), **rep.summary()})
    return pd.DataFrame(rows).set_index(["regions", "task", "design"])


def session_order_check(A, n_permutations: int = 10000, seed=0) -> dict:
    """Does row *i* of session 1 belong with column *i* of session 2? Numbers to decide.

    The real time series carry no participant labels; their order is only documented
    to be the same in both sessions. If it were not, between-session connectomes of
    "the same" index would be of different people and the between-session identifiability
    matrix would show no diagonal. Three numbers test this:

    - identification rate (both directions, Finn et al. 2015) and its permutation p-value
      (:func:`spineprint_utils.fingerprint.permutation_test`);
    - the one-to-one matching of session-1 to session-2 connectomes that maximises total
      similarity (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`):
      how many participants it maps to their own index;
    - the same count under random relabelling (mean over permutations; 1 expected).

    Parameters
    ----------
    A : array_like, shape (n, n)
        Between-session identifiability matrix (rows session 1, columns session 2).
    n_permutations : int
    seed : int

    Returns
    -------
    dict of plain floats/ints
        ``id_mean`` (%), ``p_id``, ``chance`` (%), ``n`` participants, ``n_matched``
        (assignment on the diagonal), ``p_matched`` (permutation p-value of ``n_matched``
        under random relabelling of session 2), ``diag_rank_median`` (median rank of ``A[i, i]`` in row *i*,
        1 = best).
    """
    from scipy.optimize import linear_sum_assignment

    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    perm = fp.permutation_test(A, n_permutations=n_permutations, seed=seed)
    _, cols = linear_sum_assignment(A, maximize=True)
    matched = int(np.sum(cols == np.arange(n)))
    # Relabelling session 2 by p leaves the optimal matching itself unchanged (it is invariant
    # to column permutations); participant i then counts as matched iff cols[i] == p[i].
    perms = fp._permutations(np.random.default_rng(seed), n, int(n_permutations))
    null = np.sum(perms == cols[None, :], axis=1)
    ranks = (A > np.diag(A)[:, None]).sum(axis=1) + 1
    return {
        "id_mean": float(100 * perm.rate_mean), "p_id": float(perm.p_rate_mean), "chance": float(100 / n),
        "n": int(n), "n_matched": matched,
        "p_matched": float((1 + np.count_nonzero(null >= matched)) / (1 + len(null))),
        "diag_rank_median": float(np.median(ranks)),
    }


def compare_with_claim(within: Mapping, between: Mapping, alpha: float = 0.05) -> str:
    """One sentence saying how two designs' results compare with the Spine-Prints claim.

    Ricchi et al. (2025) report a fingerprint within a session and a weaker one across
    sessions. A design "shows a fingerprint" here when its identification rate (mean of both
    directions) has a permutation p-value below *alpha*; "weaker" compares the two rates.
    The sentence is built from the numbers, so the prose never claims more than they show.

    Parameters
    ----------
    within, between : mapping
        :meth:`~spineprint_utils.fingerprint.FingerprintReport.summary` of each design
        (``id_mean`` in %, ``p_id``).
    alpha : float

    Returns
    -------
    str
    """
    w = float(within["p_id"]) < alpha
    b = float(between["p_id"]) < alpha
    weaker = float(between["id_mean"]) < float(within["id_mean"])
    if w and b and weaker:
        return ("the pattern the Spine-Prints study reported: identification above chance within a session "
                "and, weaker but still above chance, across sessions")
    if w and not b:
        return ("identification above chance within a session but not across sessions: the within-session "
                "part of the Spine-Prints claim, without its (weaker) between-session fingerprint")
    if w and b:
        return ("identification above chance in both designs, but not weaker across sessions than within "
                "one, unlike the Spine-Prints report")
    if b:
        return "identification above chance across sessions only, unlike the Spine-Prints report"
    return (f"no identification above chance at p < {alpha:g} in either design: these data do not show a "
            "spine-print")


# ------------------------------------------------------------------ a real EPI run
def epi_overview(path, mask=None, *, radius_mm: float = 10.0) -> dict:
    """Mean image, cord, tSNR maps and slice-wise motion of one EPI run, as chapter 00 shows them.

    The cord is found on the mean image by the pipeline's own cord finding
    (:func:`spineprint_utils.cord.find_cord`); motion is estimated with the package's
    slice-wise correction (:func:`spineprint_utils.motion.motion_correct`) within the
    spinal-canal disk of :func:`spineprint_utils.motion.auto_cord_mask`; tSNR is the temporal
    mean over the temporal standard deviation (:func:`spineprint_utils.preprocess.tsnr`),
    before and after motion correction.

    Parameters
    ----------
    path : path-like
        A 4D NIfTI run (e.g. ``fetch_sct_testing_data() / "fmri" / "fmri.nii.gz"``).
    mask : array_like of bool, shape (X, Y, Z), optional
        Region to summarise instead of the cord found on the mean image.
    radius_mm : float
        Radius of the canal disk used to estimate motion (and to summarise when the cord is
        not found).

    Returns
    -------
    dict
        ``mean`` (X, Y, Z), ``tsnr``, ``tsnr_moco`` (X, Y, Z), ``mask`` (bool, the region
        summarised), ``mask_kind`` (``"cord found on the mean image"``, ``"given"``, or
        ``"canal disk (cord not found: ...)"``), ``disk`` (motion mask), ``params`` (DataFrame
        of slice-wise translations, mm), ``fd`` (T,) framewise displacement (mm, Power et al.
        2012), ``tsnr_median``, ``tsnr_moco_median`` (median over the mask), ``fd_mean``,
        ``max_shift_mm``, ``cord_area_mm2`` (median over slices, NaN without a cord),
        ``shape``, ``zooms`` (mm, and the header TR in s), ``n_volumes``.
    """
    from . import motion as _motion
    from ._io import load_nifti
    from .cord import find_cord
    from .preprocess import tsnr

    img, data = load_nifti(path, ndim=4)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:4])
    mean = data.mean(axis=-1, dtype=np.float64)
    disk = _motion.auto_cord_mask(mean, zooms[:2], radius_mm=radius_mm)
    res = _motion.motion_correct(data, mask=disk, voxel_size=zooms[:2])
    area = float("nan")
    if mask is None:
        try:
            found = find_cord(mean, zooms[:3])
            roi, kind = found.cord, "cord found on the mean image"
            area = float(np.median(found.area_mm2[found.area_mm2 > 0]))
        except SpineprintError as exc:
            roi, kind = disk, f"canal disk (cord not found: {exc})"
    else:
        roi, kind = np.asarray(mask, bool), "given"
        if roi.shape != mean.shape:
            raise SpineprintError(f"{path}: mask shape {roi.shape} does not match the image {mean.shape}")
    t_raw, t_moco = tsnr(data), tsnr(res.corrected)
    return {
        "mean": mean, "tsnr": t_raw, "tsnr_moco": t_moco, "mask": roi, "mask_kind": kind, "disk": disk,
        "params": res.params, "fd": res.fd,
        "tsnr_median": float(np.median(t_raw[roi])), "tsnr_moco_median": float(np.median(t_moco[roi])),
        "fd_mean": float(res.fd[1:].mean()), "max_shift_mm": float(np.abs(res.params.to_numpy()).max()),
        "cord_area_mm2": area,
        "shape": tuple(int(s) for s in data.shape), "zooms": zooms, "n_volumes": int(data.shape[-1]),
    }


def coupling_pattern(fc, regions) -> pd.Series:
    """Mean coupling of horn pairs by type (within a segment), for real or simulated connectomes.

    Parameters
    ----------
    fc : array_like, shape (..., R, R)
    regions : sequence of str
        Package horn names (``C5_LV``) or real PAM50 names (``C6_G_V_L``; only the dorsal
        and ventral gray-matter regions are used, see :func:`horn_region_names`).

    Returns
    -------
    pandas.Series
        Mean correlation (over pairs and matrices) of ``ventral-ventral``,
        ``dorsal-dorsal``, ``dorsal-ventral same side`` and ``dorsal-ventral opposite sides``
        pairs within a segment and of all pairs between segments
        (:func:`spineprint_utils.connectivity.coupling_summary`).
    """
    from .connectivity import coupling_summary

    fc = np.asarray(fc, dtype=np.float64)
    names = [str(r) for r in regions]
    if names and _NAME.match(names[0]):
        horn = horn_region_names(names)
        keep = np.array([bool(h) for h in horn])
        fc = fc[..., keep, :][..., :, keep]
        names = [h for h in horn if h]
    tab = coupling_summary(fc, names, split_sides=True)
    within = tab[tab["scope"] == "within segment"].set_index("coupling")["mean"]
    between = tab[tab["scope"] == "between segments"]
    out = {f"{c} (same segment)": float(within[c]) for c in within.index}
    w = between["n_pairs"].to_numpy(float)
    out["all pairs, different segments"] = float(np.sum(between["mean"].to_numpy() * w) / w.sum())
    return pd.Series(out)


def realism_table(sim_conn: Mapping, sim_epi: dict, real, real_epi: dict, *, regions: str = "horns",
                  regress: bool = True, model: str = "fir") -> pd.DataFrame:
    """The simulated default study and real data on the same measures (chapter 00).

    Parameters
    ----------
    sim_conn : mapping
        Connectomes of the simulated study (``connectivity.load_connectomes``), measured
        from its preprocessed images.
    sim_epi, real_epi : dict
        :func:`epi_overview` of a simulated raw run and of the real EPI run.
    real : SpinalROIData
        Real ROI time series (:func:`spineprint_utils.datasets.fetch_spinal_graph_learning`).
    regions, regress, model :
        Real connectomes used (:func:`connectomes`); default the dorsal and ventral horns,
        the regions of the simulated study, with the task regressed out.

    Returns
    -------
    pandas.DataFrame
        Index ``measure``; columns ``simulated``, ``real``, ``real source`` and ``key`` (the
        measure as a glue-able identifier, e.g. ``median_tsnr_raw_run_canal_disk``).
    """
    real_conn = connectomes(real, regions=regions, regress=regress, model=model)
    rows = []
    src_epi = "SCT testing EPI run"
    src_roi = f"real ROI series ({regions}, task {'regressed out' if regress else 'kept'})"
    rows.append(("median cord tSNR, raw run", sim_epi["tsnr_median"], real_epi["tsnr_median"], src_epi))
    rows.append(("median cord tSNR, motion-corrected", sim_epi["tsnr_moco_median"],
                 real_epi["tsnr_moco_median"], src_epi))
    rows.append(("cord cross-sectional area (mm2)", sim_epi["cord_area_mm2"], real_epi["cord_area_mm2"], src_epi))
    rows.append(("mean framewise displacement (mm)", sim_epi["fd_mean"], real_epi["fd_mean"], src_epi))
    sim_full = np.asarray(sim_conn["fc"])[:, 0]
    real_full = np.asarray(real_conn["fc"])[:, 0]
    sim_pat = coupling_pattern(sim_full, sim_conn["regions"])
    real_pat = coupling_pattern(real_full, real_conn["regions"])
    for key in sim_pat.index:
        rows.append((f"mean r, {key}", float(sim_pat[key]), float(real_pat.get(key, np.nan)), src_roi))
    sim_d = fp.designs_from_connectomes(sim_conn)
    real_d = fp.designs_from_connectomes(real_conn)
    for name in ("within", "between"):
        s = fp.identifiability_summary(sim_d[name].fc_a, sim_d[name].fc_b)
        r = fp.identifiability_summary(real_d[name].fc_a, real_d[name].fc_b)
        rows.append((f"identification % ({name})", s["id_mean"], r["id_mean"], src_roi))
        rows.append((f"Idiff ({name})", s["idiff"], r["idiff"], src_roi))
        rows.append((f"chance % ({name})", s["chance"], r["chance"], src_roi))
    out = pd.DataFrame(rows, columns=["measure", "simulated", "real", "real source"]).set_index("measure")
    out["key"] = ["_".join(re.findall(r"[a-z0-9]+", m.lower())) for m in out.index]
    return out


#: The within-segment horn-pair types whose mean couplings enter ``coupling_rms``.
_COUPLING_KEYS = ("ventral_ventral_same_segment", "dorsal_dorsal_same_segment",
                  "dorsal_ventral_same_side_same_segment", "dorsal_ventral_opposite_sides_same_segment")


def realism_measures(table: pd.DataFrame) -> dict:
    """The calibration measures of both sides of a :func:`realism_table`.

    Returns
    -------
    dict
        ``{"simulated": {...}, "real": {...}}`` with ``tsnr_raw`` (median cord tSNR of a raw
        run), ``coupling_rms`` (root mean square of the four within-segment horn-pair mean
        correlations: ventral-ventral, dorsal-dorsal, dorsal-ventral same side and opposite
        sides), ``id_within``, ``id_between``, ``chance_within``, ``chance_between`` (%) and
        ``idiff_within``, ``idiff_between``.
    """
    t = table.set_index("key") if "key" in table.columns else table
    out = {}
    for side in ("simulated", "real"):
        v = t[side].astype(float)
        coup = np.array([v[f"mean_r_{k}"] for k in _COUPLING_KEYS])
        m = {"tsnr_raw": float(v["median_cord_tsnr_raw_run"]), "coupling_rms": float(np.sqrt(np.mean(coup ** 2)))}
        for d in ("within", "between"):
            m[f"id_{d}"] = float(v[f"identification_{d}"])
            m[f"chance_{d}"] = float(v[f"chance_{d}"])
            m[f"idiff_{d}"] = float(v[f"idiff_{d}"])
        out[side] = m
    return out


def realism_distance(sim: Mapping, real: Mapping) -> dict:
    """How far the simulated study is from the real data: log ratios and their root mean square.

    Six measures of :func:`realism_measures` enter as natural-log ratios simulated / real:
    ``tsnr_raw``, ``coupling_rms``, ``idiff_within``, ``idiff_between``, and ``id_within``,
    ``id_between`` in multiples of chance (the studies differ in size). Each value is first
    floored (tSNR and Idiff at 0.5, coupling at 0.005, identification at 0.5 x chance) so that
    a zero or negative value gives a large but finite ratio. ``distance`` is the root mean
    square of the six log ratios: ``exp(distance)`` is a typical factor between the two sides
    (0 when they agree). Used by ``benchmarks/calibrate_simulator.py`` to choose the
    simulator's defaults.

    Parameters
    ----------
    sim, real : mapping
        The two sides of :func:`realism_measures`.

    Returns
    -------
    dict
        The six log ratios by measure name and ``distance``.
    """
    def lr(a, b, floor):
        return float(np.log(max(a, floor) / max(b, floor)))

    parts = {
        "tsnr_raw": lr(sim["tsnr_raw"], real["tsnr_raw"], 0.5),
        "coupling_rms": lr(sim["coupling_rms"], real["coupling_rms"], 0.005),
        "idiff_within": lr(sim["idiff_within"], real["idiff_within"], 0.5),
        "idiff_between": lr(sim["idiff_between"], real["idiff_between"], 0.5),
    }
    for d in ("within", "between"):
        parts[f"id_{d}"] = lr(sim[f"id_{d}"] / sim[f"chance_{d}"], real[f"id_{d}"] / real[f"chance_{d}"], 0.5)
    parts["distance"] = float(np.sqrt(np.mean(np.square(list(parts.values())))))
    return parts


#: Reader-facing names of the six calibration measures (:func:`realism_distance`).
REALISM_MEASURE_NAMES = {
    "tsnr_raw": "raw tSNR",
    "coupling_rms": "horn-pair coupling",
    "id_within": "within-session identification",
    "idiff_within": "within-session Idiff",
    "id_between": "between-session identification",
    "idiff_between": "between-session Idiff",
}


def realism_agreement(distance: Mapping, factor: float = 1.5) -> tuple[list, list]:
    """Which calibration measures agree with the real data within a factor, and which do not.

    Parameters
    ----------
    distance : mapping
        :func:`realism_distance` (natural-log ratios simulated / real by measure).
    factor : float > 1
        A measure agrees when ``1 / factor <= simulated / real <= factor``.

    Returns
    -------
    near, far : list of str
        Names (:data:`REALISM_MEASURE_NAMES`) of the agreeing measures, and of the others
        with their ratio, e.g. ``"within-session Idiff (3.3 times)"``; a measure whose ratio
        is not finite counts as far.
    """
    lim = float(np.log(factor))
    near, far = [], []
    for key, name in REALISM_MEASURE_NAMES.items():
        v = float(distance[key])
        if np.isfinite(v) and abs(v) <= lim:
            near.append(name)
        else:
            far.append(f"{name} ({np.exp(v):.1f} times)")
    return near, far


def calibration_record() -> pd.DataFrame:
    """The calibration of the simulator's defaults against real data (``benchmarks/calibrate_simulator.py``).

    The committed result of the benchmark: for every grid point of simulator parameters, the
    measures of :func:`realism_table` on the default study simulated with them (``sim_*``)
    and on the real data (``real_*``), and their distance (root mean square of the log
    ratios, see the script). ``defaults`` marks the defaults before the calibration
    (``before``) and the current ones (``after``).

    Returns
    -------
    pandas.DataFrame
        One row per grid point, sorted by distance; columns ``defaults``, the grid parameters
        (``fingerprint_strength``, ``session_strength``, ``tsnr``, ``neural_amplitude``,
        ``n_volumes``), ``sim_<m>`` and ``real_<m>`` for ``m`` in ``tsnr_raw``,
        ``coupling_rms`` (root mean square of the four within-segment horn-pair means),
        ``id_within``, ``chance_within``, ``idiff_within``, ``id_between``, ``chance_between``,
        ``idiff_between`` (identification and chance in %), and ``distance``.
    """
    from importlib.resources import files

    path = files("spineprint_utils") / "data" / "simulator_calibration.tsv"
    df = pd.read_csv(str(path), sep="\t", keep_default_na=False, na_values=[""])
    df["defaults"] = df["defaults"].fillna("")
    return df

"""What drives a spine-print: parameter sweeps of the simulated study (chapter 5).

Every point of a sweep is one small simulated study run through the whole pipeline of
the book:

1. :func:`spineprint_utils.simulate.default_dataset` with the base parameters and one
   parameter changed (cached by the simulator's own parameter hash);
2. :func:`spineprint_utils.preprocess.preprocess_dataset` with or without the
   physiological noise model (derivatives in :func:`spineprint_utils._io.cache_dir`,
   never in the raw dataset; resumable);
3. :func:`spineprint_utils.connectivity.connectivity_dataset` (PAM50 horn x segment
   regions, full-run and split-half correlation matrices);
4. :mod:`spineprint_utils.fingerprint`: identifiability matrix, identification rate
   (Finn et al. 2015, mean of both directions) and Iself, Iothers, Idiff (Amico & Goñi
   2018), within a session (first vs second half of the run) or between sessions.

Because the simulator plants the neural fingerprint, its strength is known for every
point; the same fingerprint statistics of the planted neural signals
(``*_truth`` columns) show how much of it the acquisition and preprocessing keep.

:func:`physio_fingerprint` makes the caution of Kaptan et al. (2023) concrete:
physiological noise is itself participant specific, so connectivity computed from the
physiological noise *alone* (the RETROICOR fit of each voxel, Glover et al. 2000,
averaged in each region) can identify participants, and data in which that noise is not
removed can be "fingerprinted" by their physiology.

References
----------
Amico E, Goñi J (2018). The quest for identifiability in human functional connectomes.
Sci Rep 8:8254. doi:10.1038/s41598-018-25089-1
Brooks JCW, Beckmann CF, Miller KL, et al. (2008). Physiological noise modelling for
spinal functional magnetic resonance imaging studies. NeuroImage 39:680-692.
Finn ES, Shen X, Scheinost D, et al. (2015). Functional connectome fingerprinting:
identifying individuals using patterns of brain connectivity. Nat Neurosci
18:1664-1671. doi:10.1038/nn.4135
Glover GH, Li TQ, Ress D (2000). Image-based method for retrospective correction of
physiological motion effects in fMRI: RETROICOR. Magn Reson Med 44:162-167.
Kaptan M, Horn U, Vannesjo SJ, et al. (2023). Reliability of resting-state functional
connectivity in the human spinal cord: assessing the impact of distinct noise sources.
NeuroImage 275:120152. doi:10.1016/j.neuroimage.2023.120152
Ricchi I, Santoro A, Kinany N, et al. (2025). Spine-prints: transposing brain fingerprints to
the spinal cord. bioRxiv doi:10.1101/2025.05.30.656545 (Imaging Neuroscience 2026,
doi:10.1162/IMAG.a.1128)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import SpineprintError, atomic_write_json, cache_dir, load_nifti, read_json
from .parallel import parallel_map, pinned_threads
from .plotting import figsize, styled

__all__ = [
    "cleaning_leak",
    "cleaning_leak_values",
    "plot_cleaning_leak",
    "split_half_coupling",
    "trend_verdict",
    "trend_false_alarm",
    "sweep_trends",
    "BASE_STUDY",
    "SWEEP_PREPROCESS",
    "SWEEP_COLUMNS",
    "DESIGNS",
    "study_parameters",
    "sweep",
    "sweep_many",
    "plot_sweep",
    "fingerprint_point",
    "fingerprint_connectomes",
    "physio_timeseries",
    "physio_fingerprint",
    "SWEEP_SHORT_NAMES",
    "sweep_specs",
    "summarise_sweeps",
    "sweep_endpoints",
    "base_study_values",
    "base_point_values",
    "physio_caution_table",
    "physio_caution_values",
    "plot_physio_caution",
]

#: Base parameters of the small study of every sweep point (any
#: :data:`spineprint_utils.simulate.DEFAULTS` key). Small on purpose: one point takes
#: seconds, not minutes: two segments (C6-C7: 8 regions, 28 edges, 7 slices) and a field of view
#: that just holds the cord, its CSF and the motion-estimation margin (26 x 20 mm), the
#: geometry of the tests' studies; three segments on 28 x 22 mm (12 regions, 66 edges)
#: cost 1.7x as much per point (benchmarks/README.md, issue 17: a rerun of chapter 5 under a
#: minute of one core). Six participants (chance 1/6), one session (the within-session design
#: splits each run in halves). No
#: session-specific deviation: the two halves of a run share it, so within a session it
#: would act as a second fingerprint and ``fingerprint_strength = 0`` would still identify.
#: Every parameter that shapes the results is set here, so that a change of the
#: simulator's defaults does not silently change the chapter. ``tsnr`` is the tSNR of the
#: thermal noise alone (``tsnr_reference="thermal"``): the thermal noise stays the same when a
#: sweep adds physiological noise or motion, so each sweep changes one factor.
BASE_STUDY = {
    "n_subjects": 6,
    "n_sessions": 1,
    "n_volumes": 100,
    "segments": ("C6", "C7"),
    "fov_mm": (26.0, 20.0),
    "fingerprint_strength": 1.0,
    "session_strength": 0.0,
    "neural_amplitude": 5.0,
    "tsnr": 12.0,
    "tsnr_reference": "thermal",
    "physio_amplitude": 1.0,
    "physio_subject_specificity": 0.5,
    "motion_amplitude": 0.2,
}

#: Preprocessing of the sweeps (:func:`spineprint_utils.preprocess.preprocess_run`
#: arguments): the RETROICOR model of Glover et al. (2000), cardiac and respiratory order 2
#: without interaction terms (8 regressors per slice instead of the 32 of the 4/4/(2x2)
#: default), because the sweeps' runs are short (50-200 volumes) and every regressor costs a
#: degree of freedom in the pass band (chapter 02 shows the effect of the model order); three
#: aCompCor components; no QC figures; the preprocessed series stored without compression.
SWEEP_PREPROCESS = {
    "cardiac_order": 2,
    "respiratory_order": 2,
    "interaction_order": (0, 0),
    "n_csf_components": 3,
    "figures": False,
    "compresslevel": 0,  # the preprocessed series are read back at once and deleted
}

#: Columns of the table returned by :func:`sweep`.
SWEEP_COLUMNS = [
    "parameter", "value", "repeat", "seed", "design", "physio_model", "n_subjects", "n_volumes_compared",
    "identification", "identification_ab", "identification_ba", "iself", "iothers", "idiff", "chance",
    "identification_truth", "idiff_truth", "tsnr_raw", "tsnr_clean", "n_spikes", "dof_remaining",
]

DESIGNS = ("within", "between")


# ============================================================ fingerprint of one set of connectomes
def fingerprint_connectomes(fc_a, fc_b) -> dict:
    """Identification rate and differential identifiability of paired connectomes.

    Parameters
    ----------
    fc_a, fc_b : ndarray, shape (n_subjects, R, R) or (n_subjects, n_edges)
        Test and retest connectomes, subjects in the same order.

    Returns
    -------
    dict
        ``identification`` (mean of both directions, Finn et al. 2015),
        ``identification_ab``, ``identification_ba`` (fractions 0-1), ``iself``,
        ``iothers``, ``idiff`` (``100 (Iself - Iothers)``, Amico & Goñi 2018),
        ``chance`` (``1 / n_subjects``, the expected identification rate of a random
        match) and ``n_subjects``.
    """
    from . import fingerprint as fp

    A = fp.identifiability_matrix(fc_a, fc_b)
    ident = fp.identification_rate(A)
    idd = fp.differential_identifiability(A)
    n = A.shape[0]
    return {"identification": ident.rate_mean, "identification_ab": ident.rate_ab,
            "identification_ba": ident.rate_ba, "iself": idd.iself, "iothers": idd.iothers,
            "idiff": idd.idiff, "chance": 1.0 / n, "n_subjects": int(n)}


def _check_design(design: str) -> str:
    if design not in DESIGNS:
        raise SpineprintError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    return design


def _design_pairs(records: pd.DataFrame, design: str):
    """Row indices of the test and retest runs, and which part of the run each uses
    (``1, 2`` = halves for the within design, ``0, 0`` = full runs of the between design:
    sessions when the dataset has them, else runs, acquisitions, tasks ...; see
    :func:`spineprint_utils.fingerprint.designs_from_connectomes`)."""
    from . import fingerprint as fp
    from . import layout

    n = len(records)
    ent = pd.DataFrame({k: records[k].astype(str) if k in records.columns else [""] * n
                        for k in layout.RUN_ENTITIES if k not in ("sub", "ses", "run")})
    ent.insert(0, "sub", records["subject"].astype(str).to_numpy())
    ent.insert(1, "ses", records["session"].astype(str).to_numpy())
    ent["run"] = records["run"].astype(str).to_numpy()
    data = {"fc": np.zeros((n, 3, 2, 2)), "subjects": ent["sub"].to_numpy(), "sessions": ent["ses"].to_numpy(),
            "runs": ent["run"].to_numpy(), "entities": ent}
    d = fp.designs_from_connectomes(data, design)[design]
    return d.idx_a, d.idx_b, d.part_a, d.part_b, d.subjects


def _records(data: dict) -> pd.DataFrame:
    rec = pd.DataFrame({"subject": data["subjects"], "session": data["sessions"], "run": data["runs"]})
    ent = data.get("entities")
    if isinstance(ent, pd.DataFrame):
        for k in ent.columns:
            if k not in ("sub", "ses", "run"):
                rec[k] = ent[k].to_numpy()
    return rec


def _truth_fingerprint(bids_dir: Path, records: pd.DataFrame, design: str) -> dict:
    """Fingerprint of the planted neural signals (simulated data only), same design."""
    from . import connectivity
    from . import fingerprint as fp

    ia, ib, pa, pb, _ = _design_pairs(records, design)
    prefixes = [f"sub-{s}_ses-{e}_task-rest_run-{r}"
                for s, e, r in records[["subject", "session", "run"]].itertuples(index=False)]
    # only the tables this design needs (simulate.load_ground_truth reads every table of every run:
    # motion, physiological phases ..., which cost more than the fingerprint itself); same files, same parser
    key = "neural" if design == "within" else "fc"
    truth = _ground_truth_tables(bids_dir, prefixes, key)
    if design == "within":
        halves = [fp.split_half(truth[p]) for p in prefixes]
        fc = np.stack([[connectivity.connectivity_matrix(h) for h in pair] for pair in halves])
        fa, fb = fc[ia, 0], fc[ib, 1]
    else:
        fc = np.stack([truth[p] for p in prefixes])
        fa, fb = fc[ia], fc[ib]
    return fingerprint_connectomes(fa, fb)


def _ground_truth_tables(bids_dir: Path, prefixes, key: str) -> dict:
    """``neural`` (T, R) time series or ``fc`` (R, R) planted connectivity of these runs, as
    :func:`spineprint_utils.simulate.load_ground_truth` reads them (``tests/test_drivers.py``
    checks that they are equal), without the tables this chapter does not use."""
    gt = Path(bids_dir) / "derivatives" / "groundtruth"
    desc = {"neural": "neural_timeseries", "fc": "neural_connectivity"}[key]
    out = {}
    for prefix in prefixes:
        sub, ses = prefix.split("_")[:2]
        path = gt / sub / ses / "func" / f"{prefix}_desc-{desc}.tsv"
        if not path.is_file():
            raise SpineprintError(f"{path}: ground-truth file not found")
        out[prefix] = pd.read_csv(path, sep="\t").to_numpy()
    return out


def _short_hash(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _derivatives_folder(bids_dir: Path, physio_model: bool, preprocess_params: dict) -> Path:
    """Cache folder of the derivatives of *bids_dir* for these preprocessing settings."""
    from . import __version__

    key = _short_hash({"bids": str(Path(bids_dir).resolve()), "physio": bool(physio_model),
                       "pre": preprocess_params, "version": __version__})
    return cache_dir("drivers", f"{Path(bids_dir).name}-{key}")


def fingerprint_point(bids_dir, *, design: str = "within", physio_model: bool = True, preprocess_params=None,
                      segments=None, truth: bool | None = None, keep_derivatives: bool = False,
                      progress: bool = False) -> dict:
    """Preprocess, connect and fingerprint one BIDS dataset (one point of a sweep).

    Parameters
    ----------
    bids_dir : path-like
        Raw BIDS dataset (only read). Derivatives go to
        ``cache_dir("drivers", "<name>-<hash>")``, keyed by the dataset path, the
        preprocessing settings and the package version, and are reused when present.
    design : {"within", "between"}
        ``within``: first vs second half of each subject's first run of the first
        session; ``between``: full first runs of the first two sessions.
    physio_model : bool
        Apply the RETROICOR physiological noise model in preprocessing.
    preprocess_params : dict, optional
        Arguments of :func:`spineprint_utils.preprocess.preprocess_run`
        (default :data:`SWEEP_PREPROCESS`).
    segments : sequence of str, optional
        Spinal segments of the regions (default: the atlas default C3-C8; regions
        outside the field of view are dropped with a warning). A sweep passes the
        segments of the study it simulated; they are never read from a dataset's
        ground truth.
    truth : bool, optional
        Also fingerprint the planted neural signals (default: when the dataset has a
        simulation ground truth).
    keep_derivatives : bool
        Keep the preprocessed 4D images. By default they are deleted once the result is
        cached (``drivers_fingerprint.json`` in the derivatives folder, one entry per
        design), which divides the disk use of a sweep by about 15; the tables, QC and
        connectomes are kept. Asking later for a design not in the cache preprocesses
        the dataset again.
    progress : bool
        Progress bars of the stages.

    Returns
    -------
    dict
        The keys of :func:`fingerprint_connectomes`, ``identification_truth`` and
        ``idiff_truth`` (NaN without ground truth), ``n_volumes_compared`` (volumes per
        connectome), ``tsnr_raw`` and ``tsnr_clean`` (mean cord tSNR before and after
        preprocessing, mean over runs), ``n_spikes`` and ``dof_remaining`` (QC table, mean
        over runs).
    """
    from . import atlas, connectivity, preprocess

    design = _check_design(design)
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise SpineprintError(f"{bids_dir}: BIDS folder not found")
    pre = dict(SWEEP_PREPROCESS if preprocess_params is None else preprocess_params)
    pre["physio"] = bool(physio_model)
    # the ground truth only decides whether the planted signals are fingerprinted too
    # (evaluation); the pipeline's settings (segments) never come from the simulation
    has_gt = (bids_dir / "derivatives" / "groundtruth" / "params.json").is_file()
    if segments is None:
        segments = atlas.DEFAULT_SEGMENTS
    out = _derivatives_folder(bids_dir, physio_model, {**pre, "segments": list(segments)})
    result_file = out / "drivers_fingerprint.json"
    has_truth = has_gt if truth is None else bool(truth) and has_gt
    cached = {}
    if result_file.is_file():
        with contextlib.suppress(SpineprintError):
            cached = read_json(result_file).get("results", {})
    if design not in cached:
        with warnings.catch_warnings():
            # short simulated runs: the preprocessing warns about few degrees of freedom, which the
            # sweep over scan length is meant to show, not to interrupt
            warnings.simplefilter("ignore")
            deriv = preprocess.preprocess_dataset(bids_dir, output_dir=out, progress=progress, **pre)
            npz = connectivity.connectivity_dataset(deriv, segments=tuple(segments))
        data = connectivity.load_connectomes(npz)
        records = _records(data)
        ia, ib, pa, pb, _ = _design_pairs(records, design)
        res = fingerprint_connectomes(data["fc"][ia, pa], data["fc"][ib, pb])
        n_vol = np.asarray(data.get("n_volumes", np.full(len(records), -1)))
        res["n_volumes_compared"] = int(n_vol[ia].min() // 2 if design == "within" else n_vol[ia].min())
        qc = preprocess.load_qc_table(deriv)
        res["tsnr_raw"] = float(qc["tsnr_pre_cord"].mean())
        res["tsnr_clean"] = float(qc["tsnr_post_cord"].mean())
        res["n_spikes"] = float(qc["n_spikes"].mean())
        res["dof_remaining"] = float(qc["dof_remaining"].mean())
        if has_gt:
            t = _truth_fingerprint(bids_dir, records, design)
            res["identification_truth"], res["idiff_truth"] = t["identification"], t["idiff"]
        else:
            res["identification_truth"] = res["idiff_truth"] = float("nan")
        cached[design] = res
        atomic_write_json(result_file, {"results": cached})
        if not keep_derivatives:
            for bold in preprocess.find_bold_runs(bids_dir):
                preprocess.run_outputs(bold, out)["preproc"].unlink(missing_ok=True)
    res = dict(cached[design])
    if not has_truth:
        res["identification_truth"] = res["idiff_truth"] = float("nan")
    return res


# ============================================================ sweeps
def _warm_parallel_map(func, items, *, n_jobs=1, scheduler=None, desc=None, progress=False) -> list:
    """:func:`spineprint_utils.parallel.parallel_map`, the first item computed in this process
    when the others go to local worker processes.

    The workers are forked from this process, so they inherit what it has imported and cached
    (scipy.signal, the pipeline's modules, the PAM50 atlas and the simulator's anatomy, about 1.5-2 s
    of CPU time). Without the first item here, every worker of every map paid that again: ~3 s
    of CPU per map on one core (``n_jobs = 2``, chapter 5 runs three maps), for nothing when the
    cores are fewer than the workers (benchmarks/README.md). Same results in the same order.
    """
    items = list(items)
    local = int(n_jobs or 1) != 1 and not (scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS"))
    if not local or len(items) < 2:
        return parallel_map(func, items, n_jobs=n_jobs, scheduler=scheduler, desc=desc, progress=progress)
    with pinned_threads():  # as parallel_map runs every item
        head = func(items[0])
    return [head] + parallel_map(func, items[1:], n_jobs=n_jobs, scheduler=scheduler, desc=desc, progress=progress)


def _sweep_point(item, design, preprocess_params):
    """One point (module level: picklable for processes and Dask)."""
    from . import simulate

    params = item["study"]
    bids = simulate.default_dataset(**params)
    return fingerprint_point(bids, design=design, physio_model=item["physio_model"],
                             preprocess_params=preprocess_params, segments=params.get("segments"))


def study_parameters(base=None, design: str = "within", **changes) -> dict:
    """Simulation parameters of a sweep study: *base* updated with *changes*.

    Parameters
    ----------
    base : dict, optional
        Base parameters (default :data:`BASE_STUDY`).
    design : {"within", "between"}
        The between-session design needs two sessions: a base with one session gets two.
    **changes
        Parameters of :func:`spineprint_utils.simulate.simulate_dataset` to change.

    Returns
    -------
    dict
        Parameters for :func:`spineprint_utils.simulate.default_dataset`.

    Raises
    ------
    SpineprintError
        Unknown parameter or invalid value (checked by the simulator's validation).
    """
    from . import simulate

    design = _check_design(design)
    study = dict(BASE_STUDY if base is None else base)
    if design == "between" and int(study.get("n_sessions", simulate.DEFAULTS["n_sessions"])) < 2:
        study["n_sessions"] = 2
    study.update(changes)
    simulate._validate(study)  # clear error before any work
    return study


def _study_params(base, parameter, value, seed, design) -> dict:
    return study_parameters(base, design, **{parameter: value, "seed": int(seed)})


def sweep(parameter: str, values, *, base=None, design: str = "within", n_repeats: int = 1,
          physio_model: bool = True, seed: int = 0, n_jobs: int = 1, scheduler=None, preprocess_params=None,
          progress: bool = True) -> pd.DataFrame:
    """Fingerprinting results of small simulated studies as one parameter varies.

    For every value and repeat, a study with the base parameters, ``parameter = value``
    and simulator seed ``seed + repeat`` (a new set of participants per repeat, the same
    participants across values) is simulated, preprocessed, reduced to connectomes and
    fingerprinted (:func:`fingerprint_point`). Identification is the fraction of
    participants whose best-matching connectome in the other half/session is their own
    (Finn et al. 2015), averaged over both directions; Idiff is
    ``100 (Iself - Iothers)`` of the identifiability matrix (Amico & Goñi 2018).

    Parameters
    ----------
    parameter : str
        A parameter of :func:`spineprint_utils.simulate.simulate_dataset`, e.g.
        ``"n_volumes"`` (scan length), ``"tsnr"``, ``"physio_amplitude"``,
        ``"motion_amplitude"``, ``"fingerprint_strength"``.
    values : sequence
        Values of the parameter (at least one).
    base : dict, optional
        Base study parameters (default :data:`BASE_STUDY`); ``seed`` is set per repeat.
    design : {"within", "between"}
        Split halves of one run, or session 1 vs session 2 (the base then gets two
        sessions if it has one).
    n_repeats : int
        Independent simulated studies per value.
    physio_model : bool
        Preprocess with the RETROICOR physiological noise model.
    seed : int
        Seed of the first repeat.
    n_jobs, scheduler :
        Parallel execution of the points, see :func:`spineprint_utils.parallel.parallel_map`.
    preprocess_params : dict, optional
        Preprocessing arguments (default :data:`SWEEP_PREPROCESS`).
    progress : bool
        Progress bar over the points.

    Returns
    -------
    pandas.DataFrame
        One row per value x repeat, columns :data:`SWEEP_COLUMNS`: rates are fractions
        (0-1), ``chance = 1 / n_subjects``; ``*_truth`` are the same statistics of the
        planted neural signals; ``n_volumes_compared`` is the number of volumes behind
        each connectome; ``tsnr_raw``/``tsnr_clean`` the mean cord tSNR.

    Raises
    ------
    SpineprintError
        Unknown parameter, invalid value (checked for every point before any work),
        empty *values*, bad design or ``n_repeats < 1``.
    """
    return sweep_many([(parameter, values, physio_model)], base=base, design=design, n_repeats=n_repeats, seed=seed,
                      n_jobs=n_jobs, scheduler=scheduler, preprocess_params=preprocess_params, progress=progress)


def sweep_many(specs, *, base=None, design: str = "within", n_repeats: int = 1, seed: int = 0, n_jobs: int = 1,
               scheduler=None, preprocess_params=None, progress: bool = True) -> pd.DataFrame:
    """Several sweeps at once: every point of every sweep in one parallel map.

    Parameters
    ----------
    specs : sequence of (parameter, values) or (parameter, values, physio_model)
        The sweeps (``physio_model`` defaults to True). Points shared by several
        sweeps (e.g. the base study) are computed once.
    base, design, n_repeats, seed, n_jobs, scheduler, preprocess_params, progress :
        As in :func:`sweep`.

    Returns
    -------
    pandas.DataFrame
        The rows of every sweep (columns :data:`SWEEP_COLUMNS`), in the order of *specs*.
    """
    from . import simulate

    design = _check_design(design)
    if isinstance(n_repeats, bool) or int(n_repeats) != n_repeats or n_repeats < 1:
        raise SpineprintError(f"n_repeats must be a positive integer, got {n_repeats!r}")
    pre = dict(SWEEP_PREPROCESS if preprocess_params is None else preprocess_params)
    items, keys = [], []
    for spec in specs:
        parameter, values, *rest = spec
        physio_model = bool(rest[0]) if rest else True
        if parameter not in simulate.DEFAULTS or parameter == "seed":
            raise SpineprintError(f"cannot sweep {parameter!r}: choose a simulation parameter among "
                                  f"{', '.join(k for k in simulate.DEFAULTS if k != 'seed')}")
        values = list(values)
        if not values:
            raise SpineprintError(f"sweep of {parameter}: no values given")
        for r in range(int(n_repeats)):
            for v in values:
                try:
                    study = _study_params(base, parameter, v, seed + r, design)
                except SpineprintError as exc:
                    raise SpineprintError(f"sweep of {parameter} = {v!r}: {exc}") from None
                items.append({"parameter": parameter, "value": v, "repeat": r, "seed": seed + r, "study": study,
                              "physio_model": physio_model})
                keys.append(_short_hash([study, physio_model]))
    unique = list(dict.fromkeys(keys))
    first = {k: items[keys.index(k)] for k in unique}
    func = functools.partial(_sweep_point, design=design, preprocess_params=pre)
    done = dict(zip(unique, _warm_parallel_map(func, [first[k] for k in unique], n_jobs=n_jobs, scheduler=scheduler,
                                               desc="sweep", progress=progress)))
    rows = []
    for item, key in zip(items, keys):
        res = {k: v for k, v in done[key].items() if k not in ("value", "repeat", "seed")}
        rows.append({**res, **{k: item[k] for k in ("parameter", "value", "repeat", "seed", "physio_model")},
                     "design": design})
    df = pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS)  # results cached before a column was added: NaN
    order = {(p, bool(rest[0]) if rest else True): i for i, (p, _, *rest) in enumerate(specs)}
    df["_spec"] = [order[(p, m)] for p, m in zip(df["parameter"], df["physio_model"])]
    df = df.sort_values(["_spec", "repeat", "value"], kind="stable").drop(columns="_spec")
    return df.reset_index(drop=True)


@styled
def plot_sweep(df, xlabel: str, *, title: str | None = None, log_x: bool = False):
    """Identification (%) and Idiff against the swept parameter, pipeline vs planted signals.

    Parameters
    ----------
    df : pandas.DataFrame
        Rows of one parameter from :func:`sweep` / :func:`sweep_many` (several
        ``physio_model`` settings give one line each). Repeats are averaged; their
        minimum and maximum are shown as error bars and each repeat as a dot.
    xlabel : str
        Axis label with units.
    title : str, optional
    log_x : bool
        Logarithmic x axis.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: identification rate (%) with the chance level, and Idiff; dashed
        lines are the planted neural signals (simulation ground truth).
    """
    import matplotlib.pyplot as plt

    if len(df) == 0:
        raise SpineprintError("plot_sweep: empty sweep table")
    if df["parameter"].nunique() != 1:
        raise SpineprintError(f"plot_sweep: one parameter at a time, got {sorted(df['parameter'].unique())}")
    fig, axes = plt.subplots(1, 2, figsize=figsize(1.0, 0.46), constrained_layout=True)
    models = sorted(df["physio_model"].unique(), reverse=True)
    for m in models:
        sub = df[df["physio_model"] == m]
        g = sub.groupby("value")
        label = "pipeline" if len(models) == 1 else f"pipeline, physiological model {'on' if m else 'off'}"
        for ax, col, scale in ((axes[0], "identification", 100.0), (axes[1], "idiff", 1.0)):
            mean, lo, hi = (g[col].mean() * scale, g[col].min() * scale, g[col].max() * scale)
            bars = ax.errorbar(mean.index, mean.values, yerr=[mean.values - lo.values, hi.values - mean.values],
                               marker="o", capsize=3, label=label)
            if sub["repeat"].nunique() > 1:  # every repeat, so the spread is visible
                ax.plot(sub["value"], sub[col] * scale, ".", color=bars[0].get_color(), alpha=0.45, ms=5)
    g = df[df["physio_model"] == models[0]].groupby("value")
    axes[0].plot(g["identification_truth"].mean().index, 100 * g["identification_truth"].mean().values, "k--",
                 marker="s", mfc="none", label="planted neural signals")
    axes[1].plot(g["idiff_truth"].mean().index, g["idiff_truth"].mean().values, "k--", marker="s", mfc="none",
                 label="planted neural signals")
    axes[0].axhline(100 * df["chance"].mean(), color="0.5", lw=1, ls=":", label="chance")
    axes[1].axhline(0.0, color="0.5", lw=1, ls=":")
    axes[0].set_ylim(-3, 103)
    axes[0].set_ylabel("identification rate (%)")
    axes[1].set_ylabel("$I_{diff}$ (x 100 correlation)")
    values = np.sort(df["value"].unique()).astype(float)
    for ax in axes:
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(values, [f"{v:g}" for v in values])
    axes[0].legend()
    if title:
        fig.suptitle(title)
    return fig


# ============================================================ physiological noise alone
def physio_timeseries(bold, regressors, labels) -> np.ndarray:
    r"""Region time series of the physiological noise alone (RETROICOR fit).

    In each slice *z*, every voxel's time series :math:`y_v` is regressed on an
    intercept and the slice's RETROICOR regressors :math:`X_z` (Glover et al. 2000,
    slice-specific as in Brooks et al. 2008) by ordinary least squares; the fitted
    physiological component is :math:`\tilde X_z \hat\beta_v` with :math:`\tilde X_z`
    the column-centred regressors. Its mean over the voxels of each region gives the
    region's physiological time series. Because every voxel of a slice shares the
    design, the region mean of the fits equals the fit of the per-slice region means
    weighted by the region's voxel count in each slice, which is how it is computed.

    Parameters
    ----------
    bold : ndarray, shape (X, Y, Z, T)
        BOLD data.
    regressors : ndarray, shape (Z, T, P)
        Slice-wise physiological regressors
        (:func:`spineprint_utils.physio.slice_regressors`).
    labels : ndarray of int, shape (X, Y, Z)
        Region labels ``1..R`` (0 = background); every label must have voxels.

    Returns
    -------
    ndarray, shape (T, R)
        Fitted physiological signal of each region (same units as *bold*, zero mean).
    """
    bold = np.asarray(bold, dtype=np.float64)
    regs = np.asarray(regressors, dtype=np.float64)
    lab = np.asarray(labels)
    if bold.ndim != 4:
        raise SpineprintError(f"physio_timeseries: BOLD must be 4D, got shape {bold.shape}")
    X, Y, Z, T = bold.shape
    if regs.ndim != 3 or regs.shape[:2] != (Z, T):
        raise SpineprintError(f"physio_timeseries: regressors must have shape ({Z}, {T}, P), got {regs.shape}")
    if lab.shape != (X, Y, Z):
        raise SpineprintError(f"physio_timeseries: labels shape {lab.shape} differs from the BOLD grid {(X, Y, Z)}")
    if not np.all(np.isfinite(bold)) or not np.all(np.isfinite(regs)):
        raise SpineprintError("physio_timeseries: NaN or infinite values in the BOLD data or the regressors")
    lab = lab.astype(np.int64)
    R = int(lab.max())
    counts = np.bincount(lab.ravel(), minlength=R + 1)[1:]
    if R < 1 or np.any(counts == 0):
        raise SpineprintError("physio_timeseries: labels must number regions 1..R, each with voxels")
    out = np.zeros((T, R))
    for z in range(Z):
        lz = lab[:, :, z].ravel()
        sel = lz > 0
        if not sel.any():
            continue
        y = bold[:, :, z].reshape(-1, T)[sel]  # (V, T)
        sums = np.zeros((R, T))
        np.add.at(sums, lz[sel] - 1, y)
        xc = regs[z] - regs[z].mean(axis=0)  # centred regressors: the intercept takes the mean
        if xc.shape[1] == 0:
            continue
        beta, *_ = np.linalg.lstsq(xc, (sums - sums.mean(axis=1, keepdims=True)).T, rcond=None)
        out += (xc @ beta) / counts[None, :]  # fit of the region's voxel sum in this slice / region size
    return out


def _physio_run_fc(bold_path, orders, segments):
    """[full, half1, half2] FC (3, R, R) of the physiological fit of one raw run.

    The RETROICOR model is fitted separately in the full run and in each half (halves as
    in :func:`spineprint_utils.connectivity.split_half_connectivity`), so that the two
    halves share no fitted coefficient: what they share is the participant's physiology.
    """
    from . import atlas, connectivity, physio

    bold_path = Path(bold_path)
    img, data = load_nifti(bold_path, ndim=4, finite=True, dtype=np.float64)
    from . import preprocess

    run_meta = preprocess.run_metadata(bold_path)  # BIDS inheritance, SliceEncodingDirection, TR checks
    sidecar, tr = run_meta["sidecar"], run_meta["tr"]
    T = data.shape[3]
    if T < 6:
        raise SpineprintError(f"{bold_path}: {T} volumes are too few to split in halves")
    st = run_meta["slice_timing"]
    st = np.zeros(data.shape[2]) if st is None else np.asarray(st, float)
    if st.size != data.shape[2]:
        raise SpineprintError(f"{sidecar}: SliceTiming has {st.size} entries but the image has {data.shape[2]} slices")
    rec = physio.load_run_physio(bold_path, T, tr)
    if rec is None:
        raise SpineprintError(f"{bold_path}: no physiological recording (_physio.tsv.gz) for this run")
    regs, _ = physio.slice_regressors(rec, T, tr, st, *orders)
    labels_img, _ = atlas.region_labels(img, tuple(segments))
    labels = np.asarray(labels_img.dataobj).astype(np.int64)
    h = T // 2
    parts = (slice(0, T), slice(0, h), slice(T - h, T))
    return np.stack([connectivity.connectivity_matrix(physio_timeseries(data[..., p], regs[:, p], labels))
                     for p in parts])


def _physio_connectomes(bids_dir: Path, orders, segments, n_jobs=1, scheduler=None, progress=False):
    """Records and (n_runs, 3, R, R) [full, half1, half2] FC of the physiological fits."""
    from . import preprocess

    found = preprocess.find_runs(bids_dir)  # the dataset index: any layout, every entity
    func = functools.partial(_physio_run_fc, orders=orders, segments=segments)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = np.stack(_warm_parallel_map(func, [r.path for r in found], n_jobs=n_jobs, scheduler=scheduler,
                                   desc="physio FC", progress=progress))
    records = pd.DataFrame({"subject": [r.key["sub"] for r in found], "session": [r.key["ses"] for r in found],
                            "run": [r.key["run"] for r in found]})
    for k in ("task", "acq", "ce", "rec", "dir", "echo", "part"):
        records[k] = [r.key[k] for r in found]
    return records, fc


def physio_fingerprint(bids_dir, *, design: str = "within", preprocess_params=None, segments=None,
                       with_data: bool = True, n_jobs: int = 1, scheduler=None, progress: bool = False) -> pd.DataFrame:
    """Identification from physiological noise alone, next to identification from the data.

    Three sources of connectomes of the same runs are fingerprinted in the same design:

    - ``physiological noise alone``: FC of the region-averaged RETROICOR fit of the raw
      data (:func:`physio_timeseries`; Glover et al. 2000), i.e. of the part of the
      signal the physiological model explains;
    - ``preprocessed without physiological model``: the pipeline with
      ``physio=False`` (motion correction, CSF components, band-pass only);
    - ``preprocessed with physiological model``: the full pipeline (RETROICOR removed).

    Participant-specific physiological noise can identify participants on its own
    (Kaptan et al. 2023): with the simulator's ``fingerprint_strength = 0`` (no neural
    fingerprint) and ``physio_subject_specificity = 1`` the first row identifies
    participants above chance, with ``physio_subject_specificity = 0`` it does not
    (``tests/test_drivers.py``; with 6 participants, 60 volumes and 2 segments). Whether the
    data without the physiological model also identify depends on how much of that noise
    survives the rest of the preprocessing (CSF components, band-pass); in the small studies
    of the book it is close to chance.

    Parameters
    ----------
    bids_dir : path-like
        BIDS dataset with physiological recordings for every run.
    design : {"within", "between"}
        See :func:`fingerprint_point`.
    preprocess_params : dict, optional
        Preprocessing arguments (default :data:`SWEEP_PREPROCESS`); its RETROICOR
        orders are also those of the physiological fit.
    segments : sequence of str, optional
        Region segments (default: the atlas default C3-C8; pass the simulated study's).
    with_data : bool
        Also preprocess and fingerprint the data (rows 2 and 3); False gives the
        physiological row only (no preprocessing).
    n_jobs, scheduler, progress :
        See :func:`spineprint_utils.parallel.parallel_map`.

    Returns
    -------
    pandas.DataFrame
        One row per ``source`` with the columns of :func:`fingerprint_connectomes`.
    """
    from . import atlas

    design = _check_design(design)
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise SpineprintError(f"{bids_dir}: BIDS folder not found")
    pre = dict(SWEEP_PREPROCESS if preprocess_params is None else preprocess_params)
    if segments is None:
        segments = atlas.DEFAULT_SEGMENTS
    orders = (int(pre.get("cardiac_order", 4)), int(pre.get("respiratory_order", 4)),
              tuple(pre.get("interaction_order", (2, 2))))
    records, fc = _physio_connectomes(bids_dir, orders, segments, n_jobs, scheduler, progress)
    ia, ib, pa, pb, _ = _design_pairs(records, design)
    rows = [{"source": "physiological noise alone", **fingerprint_connectomes(fc[ia, pa], fc[ib, pb])}]
    models = ((False, "preprocessed without physiological model"),
              (True, "preprocessed with physiological model")) if with_data else ()
    for model, name in models:
        res = fingerprint_point(bids_dir, design=design, physio_model=model, preprocess_params=pre,
                                segments=segments, truth=False, progress=progress)
        rows.append({"source": name, **{k: res[k] for k in ("identification", "identification_ab",
                                                           "identification_ba", "iself", "iothers", "idiff",
                                                           "chance", "n_subjects")}})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ chapter 5 tables and glued values
#: short names of the swept parameters in the values glued by chapter 5 (``<short>_<stat>_<end>``)
SWEEP_SHORT_NAMES = {"n_volumes": "scan", "tsnr": "tsnr", "physio_amplitude": "physio",
                     "motion_amplitude": "motion", "fingerprint_strength": "strength"}

#: display labels and colours of the rows of :func:`physio_fingerprint` (chapter 5 caution figure)
PHYSIO_SOURCE_LABELS = {"physiological noise alone, maps shared by all": "physiology alone\n(shared maps)",
                        "physiological noise alone": "physiology alone",
                        "preprocessed without physiological model": "without\nphysio model",
                        "preprocessed with physiological model": "with\nphysio model"}
PHYSIO_SOURCE_COLORS = {"physiological noise alone, maps shared by all": "0.6",
                        "physiological noise alone": "tab:red",
                        "preprocessed without physiological model": "tab:orange",
                        "preprocessed with physiological model": "tab:blue"}


def sweep_specs(scan_lengths=(), tsnr_values=(), physio_amplitudes=(), motion_amplitudes=(),
                fingerprint_strengths=()) -> list:
    """The sweep specifications of chapter 5, for :func:`sweep_many`.

    One ``(parameter, values)`` spec per non-empty list, in the order scan length
    (``n_volumes``), ``tsnr``, ``physio_amplitude``, ``motion_amplitude``,
    ``fingerprint_strength``, then, if ``physio_amplitudes`` is non-empty, the same
    physiological-noise studies preprocessed without the RETROICOR model (Glover et al.
    2000): ``("physio_amplitude", physio_amplitudes, False)``.

    Parameters
    ----------
    scan_lengths, tsnr_values, physio_amplitudes, motion_amplitudes, fingerprint_strengths : sequence of float
        Values of each sweep; an empty sequence skips that sweep.

    Returns
    -------
    list of tuple
        Specs accepted by :func:`sweep_many` (empty if every sequence is empty).
    """
    sweeps = {"n_volumes": scan_lengths, "tsnr": tsnr_values, "physio_amplitude": physio_amplitudes,
              "motion_amplitude": motion_amplitudes, "fingerprint_strength": fingerprint_strengths}
    specs = [(p, list(v)) for p, v in sweeps.items() if len(v)]
    if len(physio_amplitudes):
        specs.append(("physio_amplitude", list(physio_amplitudes), False))
    return specs


def _check_results(results) -> pd.DataFrame:
    if not isinstance(results, pd.DataFrame):
        raise SpineprintError(f"sweep results: expected a pandas DataFrame, got {type(results).__name__}")
    missing = [c for c in ("parameter", "physio_model", "value") if c not in results.columns]
    if missing:
        raise SpineprintError(f"sweep results: missing column(s) {missing} (see drivers.SWEEP_COLUMNS)")
    return results


def summarise_sweeps(results) -> pd.DataFrame:
    """Mean over repeats of every sweep point.

    Parameters
    ----------
    results : pandas.DataFrame
        Rows of :func:`sweep` / :func:`sweep_many` (columns :data:`SWEEP_COLUMNS`).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``(parameter, physio_model, value)`` (sorted), one column per numeric
        column of ``results`` (identification, Iself, Iothers, Idiff of Finn et al. 2015 and
        Amico & Goñi 2018, tSNR, ...), each the mean over repeats. Empty (same index names)
        for empty results.
    """
    results = _check_results(results)
    keys = ["parameter", "physio_model", "value"]
    if not len(results):  # no dtypes to go by: every column but the keys and the design
        numeric = [c for c in results.columns if c not in keys and c != "design"]
        index = pd.MultiIndex.from_tuples([], names=keys)
        return pd.DataFrame({c: pd.Series(dtype=float) for c in numeric}, index=index)
    numeric = [c for c in results.columns if c not in keys and pd.api.types.is_numeric_dtype(results[c])]
    return results.groupby(keys)[numeric].mean()


def _sweep_by_value(results: pd.DataFrame, parameter: str, physio_model: bool):
    model = results["physio_model"].astype(bool)
    sub = results[(results["parameter"] == parameter) & (model if physio_model else ~model)]
    return sub.groupby("value").mean(numeric_only=True) if len(sub) else None


def sweep_endpoints(results) -> dict:
    """The values chapter 5 glues from its sweeps: first and last point of each sweep.

    For every swept parameter of :data:`SWEEP_SHORT_NAMES` (short name ``s``), with the
    physiological model on, after averaging the repeats at each value (points sorted by
    value): ``s_first``/``s_last`` (the smallest and largest value), ``s_id_first``/
    ``s_id_last`` (identification rate in %, Finn et al. 2015), ``s_idiff_first``/
    ``s_idiff_last`` (Idiff, Amico & Goñi 2018) and ``s_truth_idiff_first``/
    ``s_truth_idiff_last`` (Idiff of the planted neural signals). For the
    physiological-noise sweep without the model: ``physio_off_idiff_last`` and
    ``physio_off_id_last`` (%). A sweep without rows gives NaN (see :func:`sweep_trends`
    for what the repeats allow one to say about each sweep).

    Parameters
    ----------
    results : pandas.DataFrame
        Rows of :func:`sweep_many` (columns :data:`SWEEP_COLUMNS`), possibly empty.

    Returns
    -------
    dict of str to float
    """
    results = _check_results(results)
    nan = float("nan")
    out = {}
    for parameter, name in SWEEP_SHORT_NAMES.items():
        by = _sweep_by_value(results, parameter, True)
        for end, pos in (("first", 0), ("last", -1)):
            out[f"{name}_{end}"] = float(by.index[pos]) if by is not None else nan
            out[f"{name}_id_{end}"] = float(100 * by["identification"].iloc[pos]) if by is not None else nan
            out[f"{name}_idiff_{end}"] = float(by["idiff"].iloc[pos]) if by is not None else nan
            out[f"{name}_truth_idiff_{end}"] = float(by["idiff_truth"].iloc[pos]) if by is not None else nan
    by_off = _sweep_by_value(results, "physio_amplitude", False)
    out["physio_off_idiff_last"] = float(by_off["idiff"].iloc[-1]) if by_off is not None else nan
    out["physio_off_id_last"] = float(100 * by_off["identification"].iloc[-1]) if by_off is not None else nan
    return out


def sweep_trends(results) -> dict:
    """The trend sentences chapter 5 glues: :func:`trend_verdict` of every sweep.

    Returns
    -------
    dict of str to str
        ``<short>_id_trend`` (identification rate) and ``<short>_idiff_trend`` (Idiff) for
        every short name of :data:`SWEEP_SHORT_NAMES`, with the physiological model on, and
        ``physio_off_idiff_trend`` without it.
    """
    results = _check_results(results)
    out = {}
    for parameter, name in SWEEP_SHORT_NAMES.items():
        out[f"{name}_id_trend"] = trend_verdict(results, parameter, "identification")
        out[f"{name}_idiff_trend"] = trend_verdict(results, parameter, "idiff")
    out["physio_off_idiff_trend"] = trend_verdict(results, "physio_amplitude", "idiff", physio_model=False)
    return out


def trend_false_alarm(n_repeats: int) -> float:
    """How often :func:`trend_verdict` claims a trend for a factor that changes nothing.

    With no effect, the ``2 n`` repeats at the two ends of a sweep are exchangeable; for
    distinct values each of the ``C(2n, n)`` ways of choosing which ``n`` lie at the largest
    value is equally likely, and exactly one puts all of them above the others (the extreme of
    the Mann-Whitney U statistic, U = 0 or n^2; Mann & Whitney 1947). Either direction counts,
    so the rate is ``2 / C(2n, n)``: 1/3 for two repeats, 1/10 for three, 1/35 for four. Ties
    (identification rates take few values) make a strict separation rarer, so this is an upper
    bound for them.

    Parameters
    ----------
    n_repeats : int
        Repeats per point (>= 1).

    Returns
    -------
    float
        Probability (0-1).

    References
    ----------
    Mann HB, Whitney DR (1947). On a test of whether one of two random variables is
    stochastically larger than the other. Ann Math Stat 18:50-60.
    """
    import math

    n = int(n_repeats)
    if n < 1:
        raise SpineprintError(f"n_repeats must be >= 1, got {n_repeats!r}")
    return 2.0 / math.comb(2 * n, n)


def trend_verdict(results, parameter: str, column: str, *, physio_model: bool = True) -> str:
    """What the repeats of a sweep allow one to say about its trend, in words.

    The values at the smallest and the largest setting of *parameter* are compared
    through their repeats: if every repeat at one end lies above every repeat at the
    other (the min-max ranges do not overlap), the statistic "rises" or "falls"
    across the sweep; otherwise the difference is within the spread of the repeats.
    With a single repeat no spread is known and nothing is claimed.

    Parameters
    ----------
    results : pandas.DataFrame
        Rows of :func:`sweep_many` (columns :data:`SWEEP_COLUMNS`).
    parameter : str
        Swept parameter.
    column : str
        Statistic (e.g. ``"identification"`` or ``"idiff"``).
    physio_model : bool
        Which preprocessing (with or without the physiological model).

    Returns
    -------
    str
        E.g. ``"rises (all 3 repeats at the largest value lie above all repeats at the
        smallest)"``; a sentence saying so when the sweep is missing or has one value.
    """
    results = _check_results(results)
    model = results["physio_model"].astype(bool)
    sub = results[(results["parameter"] == parameter) & (model if physio_model else ~model)]
    if not len(sub):
        return "was not computed (no such sweep)"
    if sub["value"].nunique() < 2:
        return "cannot be judged from a single swept value"
    values = np.sort(sub["value"].unique())
    first = sub.loc[sub["value"] == values[0], column].to_numpy(float)
    last = sub.loc[sub["value"] == values[-1], column].to_numpy(float)
    n = int(min(first.size, last.size))
    if n < 2:
        return "cannot be judged from a single repeat per point (raise n_repeats)"
    if last.min() > first.max():
        return f"rises (all {n} repeats at the largest value lie above all repeats at the smallest)"
    if last.max() < first.min():
        return f"falls (all {n} repeats at the largest value lie below all repeats at the smallest)"
    return (f"changes less than the spread of the {n} repeats (their ranges overlap), so no trend can be read "
            "from this sweep")


def base_study_values(base: dict, base_df=None, n_repeats: int = 1) -> dict:
    """The values chapter 5 glues about its base study.

    Parameters
    ----------
    base : dict
        Base study parameters (e.g. ``{**BASE_STUDY, **study_params}``); ``tr`` defaults to
        :data:`spineprint_utils.simulate.DEFAULTS`.
    base_df : pandas.DataFrame, optional
        Rows of :func:`sweep` at the base parameters; adds their means over repeats.
    n_repeats : int
        Repeats per sweep point.

    Returns
    -------
    dict
        ``n_subjects`` (int), ``base_n_volumes`` (int), ``base_minutes`` (run length in
        min, ``n_volumes * tr / 60``), ``chance`` (``100 / n_subjects`` %), ``n_repeats``
        (int), ``trend_chance_pct`` (:func:`trend_false_alarm` in %: 100 for one repeat, which is
        why :func:`trend_verdict` then claims nothing) and,
        with ``base_df``, the values of :func:`base_point_values`.
    """
    from . import simulate

    try:
        n_subjects, n_volumes = int(base["n_subjects"]), int(base["n_volumes"])
    except KeyError as err:
        raise SpineprintError(f"base study parameters: missing {err.args[0]!r}") from None
    if n_subjects < 1:
        raise SpineprintError(f"base study parameters: n_subjects must be >= 1, got {n_subjects}")
    out = {"n_subjects": n_subjects, "base_n_volumes": n_volumes,
           "base_minutes": float(n_volumes * base.get("tr", simulate.DEFAULTS["tr"]) / 60),
           "chance": float(100 / n_subjects), "n_repeats": int(n_repeats),
           "trend_chance_pct": float(100 * trend_false_alarm(n_repeats))}
    if base_df is not None:
        out.update(base_point_values(base_df))
    return out


def base_point_values(base_df) -> dict:
    """The values chapter 5 glues about the sweep point at the base parameters.

    Parameters
    ----------
    base_df : pandas.DataFrame
        Rows of :func:`sweep` at the base parameters (one per repeat).

    Returns
    -------
    dict of str to float
        Means over repeats: ``base_identification`` (%, Finn et al. 2015), ``base_idiff``
        (Amico & Goñi 2018), ``base_idiff_truth`` (planted neural signals) and
        ``base_tsnr_clean`` (cord tSNR of the preprocessed data).
    """
    missing = [c for c in ("identification", "idiff", "idiff_truth", "tsnr_clean") if c not in base_df.columns]
    if missing or not len(base_df):
        raise SpineprintError(f"base sweep point: no rows or missing column(s) {missing}")
    return {"base_identification": float(100 * base_df["identification"].mean()),
            "base_idiff": float(base_df["idiff"].mean()),
            "base_idiff_truth": float(base_df["idiff_truth"].mean()),
            "base_tsnr_clean": float(base_df["tsnr_clean"].mean())}


def physio_caution_table(caution, shared=None) -> pd.DataFrame:
    """The table of the physiology-only section of chapter 5.

    Parameters
    ----------
    caution : pandas.DataFrame
        :func:`physio_fingerprint` of the study with participant-specific physiological
        noise maps (rows: alone, without model, with model).
    shared : pandas.DataFrame, optional
        :func:`physio_fingerprint` (``with_data=False``) of the same study with maps shared
        by all participants; its row is relabelled ``"physiological noise alone, maps
        shared by all"`` and put first.

    Returns
    -------
    pandas.DataFrame
        The rows of ``shared`` (if given) then of ``caution``, with a fresh index.
    """
    if shared is None:
        return caution.copy()
    shared = shared.copy()
    shared["source"] = "physiological noise alone, maps shared by all"
    return pd.concat([shared, caution], ignore_index=True)


def physio_caution_values(caution, shared=None) -> dict:
    """The values chapter 5 glues from its physiology-only section.

    ``caution_<key>_id`` (identification, %), ``caution_<key>_idiff`` and
    ``caution_<key>_iself`` for the rows of ``caution`` in order with keys ``alone``,
    ``nomodel``, ``model`` (see :func:`physio_fingerprint`; Kaptan et al. 2023), and
    ``shared_alone_id`` (%), ``shared_alone_idiff`` from the first row of ``shared`` (NaN
    without it).

    Parameters
    ----------
    caution, shared : pandas.DataFrame
        As in :func:`physio_caution_table`.

    Returns
    -------
    dict of str to float
    """
    out = {}
    for key, row in zip(("alone", "nomodel", "model"), caution.itertuples()):
        out[f"caution_{key}_id"] = float(100 * row.identification)
        out[f"caution_{key}_idiff"] = float(row.idiff)
        out[f"caution_{key}_iself"] = float(row.iself)
    nan = float("nan")
    out["shared_alone_id"] = float(100 * shared["identification"].iloc[0]) if shared is not None else nan
    out["shared_alone_idiff"] = float(shared["idiff"].iloc[0]) if shared is not None else nan
    return out


@styled
def plot_physio_caution(table):
    """Bar plots of identification and Idiff per source of :func:`physio_caution_table`.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of :func:`physio_caution_table` (columns ``source``, ``identification``,
        ``idiff``, ``chance``).

    Returns
    -------
    matplotlib.figure.Figure
        Left: identification rate (%) with chance (dotted); right: Idiff.
    """
    import matplotlib.pyplot as plt

    unknown = sorted(set(table["source"]) - set(PHYSIO_SOURCE_LABELS))
    if unknown:
        raise SpineprintError(f"physiology table: unknown source(s) {unknown}")
    fig, axes = plt.subplots(1, 2, figsize=figsize(1.0, 0.5), constrained_layout=True)
    names = [PHYSIO_SOURCE_LABELS[s] for s in table["source"]]
    colors = [PHYSIO_SOURCE_COLORS[s] for s in table["source"]]
    axes[0].bar(names, 100 * table["identification"], color=colors)
    axes[0].axhline(100 * table["chance"].iloc[0], color="0.3", ls=":", label="chance")
    axes[0].set_ylabel("identification rate (%)")
    axes[0].set_xlabel("data")
    axes[0].set_ylim(0, 103)
    axes[0].legend()
    axes[1].bar(names, table["idiff"], color=colors)
    axes[1].axhline(0.0, color="0.3", lw=1)
    axes[1].set_ylabel("$I_{diff}$ (x 100 correlation)")
    axes[1].set_xlabel("data")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
    fig.suptitle("No neural fingerprint: what physiology alone can do")
    return fig


# ============================================================ a spine-print made by the cleaning
def _residualise(E, X):
    """OLS residuals of every column of ``E`` (S, n, R) on ``[1, X]`` (S, n, P), subject by subject,
    and the orthonormal basis ``Q`` (S, n, P + 1) of the design (residual-forming matrix ``I - Q Q'``)."""
    ones = np.ones(X.shape[:2] + (1,))
    Q = np.linalg.qr(np.concatenate([ones, X], axis=2))[0]
    return E - Q @ (np.swapaxes(Q, 1, 2) @ E), Q


def _frob2_block(Qa, n):
    """``||I_n - Qa Qa'||_F^2`` for (S, n, k) bases: ``n - 2 tr(G) + ||G||_F^2``, ``G = Qa' Qa``."""
    G = np.swapaxes(Qa, 1, 2) @ Qa
    return n - 2 * np.trace(G, axis1=1, axis2=2) + (G ** 2).sum(axis=(1, 2))


def _batch_corr(Y):
    """Pearson correlation matrices of (S, n, R) series over axis 1 -> (S, R, R)."""
    Z = Y - Y.mean(axis=1, keepdims=True)
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    return np.swapaxes(Z, 1, 2) @ Z


def split_half_coupling(design, *, clean_halves: bool = False) -> dict:
    """Closed-form coupling of the two halves' connectome entries after OLS cleaning of white noise.

    Let ``M = I - P`` be the residual-forming matrix of the design ``[1, X]`` (T x (P+1),
    ``P`` its hat matrix) fitted over the whole run, or the block-diagonal ``diag(M_A, M_B)``
    when each half :func:`spineprint_utils.denoise.half_blocks` is fitted on its own. For
    two regions ``i != j`` with independent noise ``e_i, e_j`` (zero mean, covariance
    ``I_T``; normality not needed), the cleaned series are ``y = M e`` (Var ``M``: the
    residual covariance of OLS, Seber & Lee 2003, section 3.3), and the half-A entry
    ``c_A = y_i' D_A y_j`` (``D_A`` the 0/1 diagonal selecting the half's volumes) has
    mean 0. Taking the expectation over ``e_j`` first (``E[M e_j e_j' M] = M``) and then the
    expectation of a quadratic form (``E[x' A x] = tr(A Cov x)``, Mathai & Provost 1992,
    Theorem 3.2b.1) gives, with ``M^2 = M`` and the cyclic trace::

        Cov(c_A, c_B) = tr(D_A M D_B M) = sum_{t in A, s in B} M_ts^2,
        Var(c_A)      = tr(D_A M D_A M) = sum_{t, s in A} M_ts^2.

    Their ratio ``rho`` is the correlation, over noise realisations, between the same edge
    in the two halves: 0 when the halves are independent, so split-half connectomes of pure
    noise resemble each other only through ``rho``. With per-half cleaning ``M_ts = 0`` for
    ``t`` in A and ``s`` in B, so the covariance is exactly 0. (The connectomes of the book
    are correlations over each half, centred within the half; the formula is for the
    uncentred cross-products, which differ by ``O(1/h)``.)

    Parameters
    ----------
    design : array_like, (T, P)
        Nuisance regressors (an intercept is added).
    clean_halves : bool
        Fit the design on each half separately.

    Returns
    -------
    dict
        ``cov`` (``tr(D_A M D_B M)``), ``var_a``, ``var_b`` and ``rho``
        (``cov / sqrt(var_a var_b)``), for the halves of
        :func:`spineprint_utils.fingerprint.split_half`.

    References
    ----------
    Mathai AM, Provost SB (1992). Quadratic Forms in Random Variables: Theory and
    Applications. New York: Marcel Dekker.
    Seber GAF, Lee AJ (2003). Linear Regression Analysis, 2nd ed. Hoboken: Wiley.
    """
    from . import denoise

    X = np.asarray(design, dtype=np.float64)
    if X.ndim != 2:
        raise SpineprintError(f"split_half_coupling: design must be (T, P), got shape {X.shape}")
    T = X.shape[0]
    h = T // 2
    blocks = denoise.half_blocks(T) if clean_halves else (slice(0, T),)
    M = np.zeros((T, T))
    for b in blocks:
        Xb = np.column_stack([np.ones(b.stop - b.start), X[b]])
        if np.linalg.matrix_rank(Xb) >= Xb.shape[0]:
            raise SpineprintError(f"split_half_coupling: {Xb.shape[1]} regressors leave no residual in "
                                  f"{Xb.shape[0]} volumes")
        M[b, b] = np.eye(Xb.shape[0]) - Xb @ np.linalg.pinv(Xb)
    a, bb = np.arange(h), np.arange(T - h, T)
    cov = float((M[np.ix_(a, bb)] ** 2).sum())
    var_a, var_b = float((M[np.ix_(a, a)] ** 2).sum()), float((M[np.ix_(bb, bb)] ** 2).sum())
    return {"cov": cov, "var_a": var_a, "var_b": var_b, "rho": cov / np.sqrt(var_a * var_b)}


def cleaning_leak(n_regressors, *, n_volumes: int = 150, n_regions: int = 24, n_subjects: int = 10,
                  n_repeats: int = 1, seed: int = 0) -> pd.DataFrame:
    """Split-half fingerprint of pure noise after whole-run vs per-half nuisance regression.

    Each "subject" is white Gaussian noise (``n_volumes`` x ``n_regions``, no signal, nothing
    shared between subjects) cleaned by OLS on ``[1, X]`` with ``X`` its own random Gaussian
    regressors (``n_regressors`` columns), fitted over the whole run or on each half
    (:func:`spineprint_utils.denoise.half_blocks`). The halves of
    :func:`spineprint_utils.fingerprint.split_half` are compared with the package's
    :func:`fingerprint_connectomes` (Pearson connectomes): with independent halves the
    identification rate is at chance and Idiff near 0 (Finn et al. 2015; Amico & Goñi
    2018); a whole-run fit couples the halves (:func:`split_half_coupling`), which makes
    the noise look like a fingerprint.

    Parameters
    ----------
    n_regressors : int or sequence of int
        Number(s) of nuisance regressors P (each half must keep more than P + 1 volumes).
    n_volumes, n_regions, n_subjects : int
    n_repeats : int
        Independent studies per P (seeds ``seed, seed + 1, ...``).
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per (P, cleaning, repeat): ``n_regressors``, ``cleaning`` (``"whole run"``
        or ``"per half"``), ``repeat``, ``identification`` (fraction), ``idiff``, ``chance``
        and ``rho`` (the closed-form coupling ``cov / sqrt(var_a var_b)`` of
        :func:`split_half_coupling`, from the same residual-forming matrices, mean over
        subjects).
    """
    from . import denoise

    ps = np.atleast_1d(np.asarray(n_regressors, dtype=int))
    T, R, S = int(n_volumes), int(n_regions), int(n_subjects)
    h = T // 2
    if S < 2 or R < 3 or h < 3:
        raise SpineprintError(f"cleaning_leak: need >= 2 subjects, >= 3 regions and >= 6 volumes, "
                              f"got {S}, {R}, {T}")
    if ps.min() < 0 or ps.max() + 1 >= h:
        raise SpineprintError(f"cleaning_leak: {ps.max()} regressors leave no residual in a half of {h} volumes")
    rows = []
    a, b = np.arange(h), np.arange(T - h, T)  # the halves of fingerprint.split_half
    for rep in range(int(n_repeats)):
        rng = np.random.default_rng(seed + rep)
        for p in ps:
            E = rng.standard_normal((S, T, R))
            X = rng.standard_normal((S, T, int(p)))
            for cleaning in ("whole run", "per half"):
                if cleaning == "whole run":
                    Y, Q = _residualise(E, X)
                    Qa, Qb = Q[:, a], Q[:, b]
                    # off-diagonal block of I - Q Q' is -Qa Qb': sum of squares tr(Qa'Qa Qb'Qb)
                    cov = np.einsum("sij,sji->s", np.swapaxes(Qa, 1, 2) @ Qa, np.swapaxes(Qb, 1, 2) @ Qb)
                else:  # the same fit on each row block of denoise.half_blocks: no off-diagonal block
                    Y = np.empty_like(E)
                    blk1, blk2 = denoise.half_blocks(T)
                    Y[:, blk1], Q1 = _residualise(E[:, blk1], X[:, blk1])
                    Y[:, blk2], Q2 = _residualise(E[:, blk2], X[:, blk2])
                    Qa, Qb = Q1, Q2[:, (T - h) - blk2.start:]
                    cov = np.zeros(S)
                res = fingerprint_connectomes(_batch_corr(Y[:, a]), _batch_corr(Y[:, b]))
                var = np.sqrt(_frob2_block(Qa, h) * _frob2_block(Qb, h))
                rows.append({"n_regressors": int(p), "cleaning": cleaning, "repeat": rep,
                             "identification": res["identification"], "idiff": res["idiff"],
                             "chance": res["chance"], "rho": float(np.mean(cov / var))})
    return pd.DataFrame(rows)


def plot_cleaning_leak(df):
    """Split-half identification (%) and Idiff of pure noise against the number of regressors.

    Parameters
    ----------
    df : pandas.DataFrame
        Rows of :func:`cleaning_leak` (repeats averaged; their minimum and maximum shown as
        error bars).

    Returns
    -------
    matplotlib.figure.Figure
        Two panels, one line per cleaning (whole run, per half), chance dotted.
    """
    import matplotlib.pyplot as plt

    if len(df) == 0:
        raise SpineprintError("plot_cleaning_leak: empty table")
    fig, axes = plt.subplots(1, 2, figsize=figsize(1.0, 0.46), constrained_layout=True)
    for cleaning, sub in df.groupby("cleaning", sort=False):
        g = sub.groupby("n_regressors")
        for ax, col, scale in ((axes[0], "identification", 100.0), (axes[1], "idiff", 1.0)):
            mean, lo, hi = g[col].mean() * scale, g[col].min() * scale, g[col].max() * scale
            ax.errorbar(mean.index, mean.values, yerr=[mean.values - lo.values, hi.values - mean.values],
                        marker="o", capsize=3, label=f"cleaned {'over the whole run' if cleaning == 'whole run' else 'per half'}")
    axes[0].axhline(100 * df["chance"].mean(), color="0.5", lw=1, ls=":", label="chance")
    axes[1].axhline(0.0, color="0.5", lw=1, ls=":")
    axes[0].set_ylim(-3, 103)
    axes[0].set_ylabel("identification rate (%)")
    axes[1].set_ylabel("$I_{diff}$ (x 100 correlation)")
    for ax in axes:
        ax.set_xlabel("nuisance regressors")
    # one key for both panels, below them (inside a panel it covered the whole-run curve)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="small")
    fig.suptitle("Pure noise, split halves")
    return fig


def cleaning_leak_values(noise, whole=None, halves=None) -> dict:
    """The values chapter 5 glues about the split-half leak of the cleaning.

    Parameters
    ----------
    noise : pandas.DataFrame
        Rows of :func:`cleaning_leak`.
    whole, halves : pandas.DataFrame, optional
        Rows of :func:`sweep` at the base study, within-session design, preprocessed with the
        cleaning fitted over the whole run and on each half (``clean_halves=True``), the same
        repeats (seeds) in both.

    Returns
    -------
    dict
        Means over repeats at the largest number of regressors ``leak_p``:
        ``leak_whole_id``, ``leak_half_id`` (%), ``leak_whole_idiff``, ``leak_half_idiff``,
        ``leak_whole_rho`` (closed-form coupling), ``leak_chance`` (%), ``leak_n_repeats``;
        with *whole*/*halves*: ``study_whole_id``, ``study_half_id`` (%),
        ``study_whole_idiff``, ``study_half_idiff``, ``study_half_dof`` (effective degrees of
        freedom per half, QC mean) and ``study_n_repeats``.
    """
    if len(noise) == 0:
        raise SpineprintError("cleaning_leak_values: empty noise table")
    p = int(noise["n_regressors"].max())
    at = noise[noise["n_regressors"] == p]
    w, h = at[at["cleaning"] == "whole run"], at[at["cleaning"] == "per half"]
    out = {"leak_p": p, "leak_whole_id": float(100 * w["identification"].mean()),
           "leak_half_id": float(100 * h["identification"].mean()), "leak_whole_idiff": float(w["idiff"].mean()),
           "leak_half_idiff": float(h["idiff"].mean()), "leak_whole_rho": float(w["rho"].mean()),
           "leak_chance": float(100 * noise["chance"].mean()), "leak_n_repeats": int(noise["repeat"].nunique())}
    if whole is not None and halves is not None:
        if not len(whole) or not len(halves):
            raise SpineprintError("cleaning_leak_values: empty study table")
        out.update({"study_whole_id": float(100 * whole["identification"].mean()),
                    "study_half_id": float(100 * halves["identification"].mean()),
                    "study_whole_idiff": float(whole["idiff"].mean()), "study_half_idiff": float(halves["idiff"].mean()),
                    "study_half_dof": float(halves["dof_remaining"].mean()),
                    "study_whole_dof": float(whole["dof_remaining"].mean()),
                    "study_n_repeats": int(halves["repeat"].nunique())})
    return out

"""QC figures of one preprocessed run (the reportlets of the participant report).

Figures only: every function takes arrays that the pipeline already computed and writes a
PNG (atomically, without a timestamp, so that the same inputs give the same bytes); no
computation of the pipeline lives here. Matplotlib's object API is used (no ``pyplot``), so
the caller's backend is never touched. A step that was not applied is drawn as a labelled
"not applied" panel, never as if it had been.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "masks_figure",
    "motion_figure",
    "physio_figure",
    "physio_trace_summary",
    "tsnr_figure",
    "carpet_rows",
    "carpet_figure",
    "confounds_correlation_figure",
    "native_figure",
    "not_applied_figure",
]

_DPI = 90


def _figure(w, h, **margins):
    """A figure with fixed margins (inches, converted to fractions): the pipeline draws these
    figures for every run, and a constrained layout costs about as much as the drawing."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    m = {"left": 0.7, "right": 0.2, "bottom": 0.5, "top": 0.5, "hspace": 0.35, "wspace": 0.3, **margins}
    fig.subplots_adjust(left=m["left"] / w, right=1 - m["right"] / w, bottom=m["bottom"] / h, top=1 - m["top"] / h,
                        hspace=m["hspace"], wspace=m["wspace"])
    return fig


def _save(fig, path):
    import io

    from ._io import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def _slices(mask, n_max=12):
    """Slices to show: those holding the mask (all when <= n_max, else evenly spaced)."""
    zs = np.flatnonzero(mask.any(axis=(0, 1))) if mask.any() else np.arange(mask.shape[2])
    if zs.size > n_max:
        zs = zs[np.linspace(0, zs.size - 1, n_max).round().astype(int)]
    return zs


def _crop(mask, margin=6):
    """In-plane bounding box of *mask* (all slices) with a margin, or the full plane."""
    if not mask.any():
        return np.s_[:, :]
    xs, ys = np.nonzero(mask.any(axis=2))
    return np.s_[max(xs.min() - margin, 0):xs.max() + margin + 1, max(ys.min() - margin, 0):ys.max() + margin + 1]


def not_applied_figure(path, title, reason):
    """A small panel that says a step was not applied, and why."""
    fig = _figure(6, 1.2, left=0.1, right=0.1, bottom=0.1, top=0.1)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: not applied\n{reason}", ha="center", va="center", fontsize=10)
    return _save(fig, path)


def _montage(vol, zs, box, cols, gap=1):
    """Tile the in-plane crops *box* of slices *zs* of *vol* into one 2D image.

    One image in one axes instead of one axes per slice: drawing (and the layout of) a
    figure costs per axes, and the QC figures of every run are written by the pipeline.

    Returns
    -------
    tiles : ndarray, (rows * (h + gap) - gap, cols * (w + gap) - gap), float
        For ``imshow(origin="lower")``: tile *k* (slice ``zs[k]``, transposed so that y is
        up) in row ``k // cols`` counted from the top; gaps are NaN.
    corners : list of (x, y)
        Top-left corner of each tile in the image's pixel coordinates (for labels).
    """
    crops = [np.asarray(vol[box + (z,)], dtype=float).T for z in zs]  # (h, w) each
    h, w = crops[0].shape
    rows = int(np.ceil(len(crops) / cols))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    corners = []
    for k, tile in enumerate(crops):
        r, c = divmod(k, cols)
        y0 = (rows - 1 - r) * (h + gap)
        x0 = c * (w + gap)
        out[y0:y0 + h, x0:x0 + w] = tile
        corners.append((x0 - 0.5, y0 + h - 0.5))
    return out, corners


def _gray(cmap="gray"):
    from matplotlib import colormaps

    return colormaps[cmap].with_extremes(bad="white")


def masks_figure(mean, cord, csf, path, title, source=""):
    """Mean EPI of every slice holding the cord, with the cord (cyan) and CSF (orange) contours.

    Parameters
    ----------
    mean : ndarray, (X, Y, Z)
        Temporal mean of the motion-corrected series.
    cord, csf : ndarray, (X, Y, Z) bool
    source : str
        Where the masks come from (printed, e.g. "mean image (guess)").
    """
    zs = _slices(cord | csf)
    box = _crop(cord | csf)
    n = len(zs)
    cols = min(n, 6)
    rows = int(np.ceil(n / cols))
    img, corners = _montage(mean, zs, box, cols, gap=2)
    import textwrap

    width = 1.6 * cols
    # the mask source can be a long sentence: wrapped to the figure width (~13 characters per inch at 9 pt)
    lines = [title, *textwrap.wrap("cord (cyan) and CSF (orange) masks" + (f" - {source}" if source else ""),
                                   max(int(width * 13), 30))]
    fig = _figure(width, width * img.shape[0] / img.shape[1] + 0.35 + 0.16 * len(lines), left=0.05, right=0.05,
                  bottom=0.05, top=0.2 + 0.16 * len(lines))
    ax = fig.subplots()
    ax.axis("off")
    ax.imshow(img, origin="lower", cmap=_gray(), vmin=np.percentile(mean, 1), vmax=np.percentile(mean, 99.5),
              interpolation="nearest")
    for m, colour in ((cord, "c"), (csf, "tab:orange")):
        if m.any():
            tiles = np.nan_to_num(_montage(m, zs, box, cols, gap=2)[0])
            ax.contour(tiles, levels=[0.5], colors=colour, linewidths=0.8)
    for (x0, y1), z in zip(corners, zs):
        ax.text(x0 + 0.5, y1 - 0.5, f"slice {z}", color="w", fontsize=8, ha="left", va="top")
    fig.suptitle("\n".join(lines), fontsize=9)
    return _save(fig, path)


def motion_figure(table, path, title, threshold=None):
    """Slice-wise translations (one line per slice, colour = slice; black: their mean) and
    framewise displacement with the outlier threshold and the outlier volumes marked.

    Parameters
    ----------
    table : DataFrame
        The run's motion table (``trans_{x,y}_sliceNN``, ``trans_x``, ``trans_y``,
        ``framewise_displacement``; :func:`spineprint_utils.confounds.motion_table`).
    threshold : float, optional
        FD threshold (mm) of the outlier volumes.
    """
    from matplotlib import colormaps

    fig = _figure(7.5, 5.0, left=0.8, hspace=0.15, top=0.45)
    axes = fig.subplots(3, 1, sharex=True)
    cmap = colormaps["viridis"]
    for k, ax_name in enumerate("xy"):
        cols = sorted(c for c in table.columns if c.startswith(f"trans_{ax_name}_slice"))
        for i, c in enumerate(cols):
            axes[k].plot(table[c].to_numpy(), color=cmap(i / max(len(cols) - 1, 1)), lw=0.7)
        axes[k].plot(table[f"trans_{ax_name}"].to_numpy(), color="k", lw=1.2, label="mean over slices")
        axes[k].set_ylabel(f"{ax_name} (mm)")
    axes[0].legend(fontsize=7, loc="upper right")
    fd = table["framewise_displacement"].to_numpy(dtype=float)
    axes[2].plot(fd, color="k", lw=0.8)
    if threshold is not None and np.isfinite(threshold):
        axes[2].axhline(threshold, color="tab:red", ls="--", lw=0.8, label=f"outlier threshold {threshold} mm")
        out = np.flatnonzero(np.nan_to_num(fd) > threshold)
        axes[2].plot(out, fd[out], "o", color="tab:red", ms=4, label=f"{out.size} outlier volume(s)")
        axes[2].legend(fontsize=7, loc="upper right")
    axes[2].set_ylabel("FD (mm)")
    axes[2].set_xlabel("volume")
    fig.suptitle(f"{title}: slice-wise motion ({len(cols)} slices, colour = slice)", fontsize=9)
    return _save(fig, path)


def physio_trace_summary(rec, seconds: float = 30.0) -> dict:
    """What :func:`physio_figure` draws, from a recording: the first *seconds* of the cardiac
    trace with the beats detected on the whole trace, and of the respiratory trace with its
    phase (Glover 2000 histogram phase, computed on the whole trace).

    Kept apart from the drawing so that the pipeline can save these few arrays and draw the
    figure later without the recording (``preprocess_run(figures=False)``).

    Returns
    -------
    dict of ndarray
        ``t`` (n,) s since the first sample; ``cardiac`` (n,) or absent; ``beats`` (k,) sample
        indices below n; ``hr_bpm`` and ``n_missing_beats`` (scalars); ``respiratory`` (n,) or
        absent; ``phase`` (n,) rad or absent (when the phase cannot be computed).
    """
    from . import physio

    fs = float(rec.sampling_frequency)
    n = min(rec.n_samples, int(seconds * fs))
    t = np.arange(n) / fs
    out = {"t": t}
    if rec.cardiac is not None:
        peaks, q = physio.detect_cardiac_peaks(rec.cardiac, fs)
        out["cardiac"] = np.asarray(rec.cardiac[:n], dtype=np.float64)
        out["beats"] = np.asarray(peaks[peaks < n], dtype=np.int64)
        out["hr_bpm"] = np.float64(q.get("mean_hr_bpm", float("nan")))
        out["n_missing_beats"] = np.int64(q.get("n_missing_beats", 0))
    if rec.respiratory is not None:
        out["respiratory"] = np.asarray(rec.respiratory[:n], dtype=np.float64)
        try:
            out["phase"] = np.asarray(physio.respiratory_phase(rec.respiratory, fs, t), dtype=np.float64)
        except Exception:  # noqa: BLE001 - the phase is illustrative; the trace is still shown
            pass
    return out


def physio_figure(summary, path, title):
    """Cardiac trace with the detected beats and the respiratory trace with its phase
    (Glover 2000 histogram phase), over the first seconds of the recording.

    Parameters
    ----------
    summary : dict
        :func:`physio_trace_summary` of the recording.
    """
    t = np.asarray(summary["t"])
    fig = _figure(7.5, 4.2, left=0.8, right=0.75, top=0.55, hspace=0.35)
    axes = fig.subplots(2, 1, sharex=True)
    if "cardiac" in summary:
        cardiac, pk = np.asarray(summary["cardiac"]), np.asarray(summary["beats"], dtype=int)
        axes[0].plot(t, cardiac, lw=0.7)
        axes[0].plot(t[pk], cardiac[pk], "o", ms=3, color="tab:red", label="detected beats")
        axes[0].set_title(f"cardiac: {float(summary['hr_bpm']):.0f} bpm, {int(summary['n_missing_beats'])} "
                          "missed beat(s)", fontsize=8)
        axes[0].legend(fontsize=7, loc="upper right")
    else:
        axes[0].text(0.5, 0.5, "no cardiac trace", ha="center", transform=axes[0].transAxes)
    if "respiratory" in summary:
        axes[1].plot(t, np.asarray(summary["respiratory"]), lw=0.7, color="tab:green", label="belt")
        if "phase" in summary:
            ax2 = axes[1].twinx()
            ax2.plot(t, np.asarray(summary["phase"]), lw=0.6, color="tab:purple", alpha=0.7)
            ax2.set_ylabel("phase (rad)", fontsize=7, color="tab:purple")
        axes[1].set_title("respiratory belt (green) and its phase (purple)", fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no respiratory trace", ha="center", transform=axes[1].transAxes)
    axes[1].set_xlabel("time since the first physio sample (s)")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def tsnr_figure(pre, post, cord, path, title):
    """tSNR before and after cleaning on every slice holding the cord (same colour scale),
    and the mean cord tSNR per slice."""
    zs = _slices(cord)
    box = _crop(cord)
    vmax = float(np.percentile(post[cord], 99)) if cord.any() else float(np.max(post))
    n = len(zs)
    fig = _figure(max(1.3 * n, 5), 5.2, left=0.75, right=0.1, top=0.6, hspace=0.3)
    axes = fig.subplots(3, 1)
    cord_tiles = np.nan_to_num(_montage(cord, zs, box, n)[0]) if cord.any() else None
    for ax, im, lab in ((axes[0], pre, "before"), (axes[1], post, "after")):
        tiles, corners = _montage(im, zs, box, n)
        h = ax.imshow(tiles, origin="lower", cmap=_gray("inferno"), vmin=0, vmax=vmax, interpolation="nearest")
        if cord_tiles is not None:
            ax.contour(cord_tiles, levels=[0.5], colors="c", linewidths=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(f"tSNR {lab}", fontsize=8)
        if lab == "before":
            width = im[box + (zs[0],)].shape[0]
            for (x0, _), z in zip(corners, zs):
                ax.text(x0 + width / 2, tiles.shape[0], f"z={z}", fontsize=7, ha="center", va="bottom")
    fig.colorbar(h, ax=axes[:2], shrink=0.8, label="tSNR")
    ax = axes[2]
    allz = np.arange(cord.shape[2])
    has = cord.any(axis=(0, 1))
    for im, lab, colour in ((pre, "before", "tab:gray"), (post, "after", "tab:red")):
        per = np.array([im[..., z][cord[..., z]].mean() if has[z] else np.nan for z in allz])
        ax.plot(allz, per, "o-", color=colour, ms=3, label=lab)
    ax.set_xlabel("slice")
    ax.set_ylabel("cord tSNR")
    ax.legend(fontsize=7)
    fig.suptitle(f"{title}: tSNR before / after cleaning, every cord slice", fontsize=9)
    return _save(fig, path)


def carpet_rows(data, mask, max_voxels: int = 600) -> np.ndarray:
    """Rows of a carpet plot (Power 2017): the z-scored time series of the voxels of *mask*,
    in slice order, evenly sub-sampled to at most *max_voxels*.

    Parameters
    ----------
    data : ndarray, (X, Y, Z, T)
    mask : ndarray, (X, Y, Z) bool

    Returns
    -------
    ndarray, (min(n_voxels, max_voxels), T), float64
        Each row z-scored over time (a constant voxel gives zeros).
    """
    idx = np.flatnonzero(np.asarray(mask, bool).transpose(2, 0, 1).ravel())  # slice-major order
    if idx.size > max_voxels:
        idx = idx[np.linspace(0, idx.size - 1, max_voxels).round().astype(int)]
    flat = data.transpose(2, 0, 1, 3).reshape(-1, data.shape[-1])[idx].astype(np.float64)
    sd = flat.std(axis=1, keepdims=True)
    return (flat - flat.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1)


def carpet_figure(before, after, n_cord, fd, std_dvars, path, title):
    """Carpet plot (Power 2017): z-scored voxel time series of the cord and CSF masks before
    and after cleaning, under FD and standardised DVARS.

    Parameters
    ----------
    before, after : ndarray, (n_rows, T)
        Carpet rows (:func:`carpet_rows`) of the motion-corrected and of the cleaned series:
        the cord's rows, then the CSF's.
    n_cord : int
        Number of cord rows (the orange line is drawn below them).
    fd, std_dvars : ndarray, (T,)
    """
    fig = _figure(7.5, 6.5, left=0.95, hspace=0.12, top=0.45)
    axes = fig.subplots(4, 1, sharex=True, height_ratios=[0.6, 0.6, 2, 2])
    axes[0].plot(fd, color="k", lw=0.8)
    axes[0].set_ylabel("FD (mm)", fontsize=8)
    axes[1].plot(std_dvars, color="tab:blue", lw=0.8)
    axes[1].set_ylabel("std DVARS", fontsize=8)
    for ax, carpet, lab in ((axes[2], before, "motion corrected"), (axes[3], after, "cleaned")):
        ax.imshow(np.asarray(carpet, dtype=np.float64), aspect="auto", cmap="gray", vmin=-2, vmax=2,
                  interpolation="nearest")
        ax.axhline(int(n_cord) - 0.5, color="tab:orange", lw=1)
        ax.set_ylabel(f"{lab}\ncord | CSF voxels", fontsize=8)
        ax.set_yticks([])
    axes[3].set_xlabel("volume")
    fig.suptitle(f"{title}: carpet plot (z-scored voxels; cord above the orange line, CSF below)", fontsize=9)
    return _save(fig, path)


def confounds_correlation_figure(table, cord_signal, path, title):
    """Correlation of the summary confounds with each other and with the mean cord signal.

    Parameters
    ----------
    table : DataFrame
        The run's confounds (fMRIPrep names).
    cord_signal : ndarray, (T,)
        Mean signal in the cord mask (motion corrected, before cleaning).
    """
    cols = [c for c in ("trans_x", "trans_y", "framewise_displacement", "std_dvars", "csf") if c in table]
    cols += [c for c in table.columns if c.startswith("c_comp_cor_")][:5]
    df = table[cols].copy()
    df.insert(0, "cord_mean", cord_signal)
    corr = df.corr().to_numpy()
    fig = _figure(8, 4, left=1.45, bottom=1.45, top=0.45, wspace=0.9)
    ax, bx = fig.subplots(1, 2, width_ratios=[1.2, 1])
    h = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(df.columns)), df.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(df.columns)), df.columns, fontsize=7)
    fig.colorbar(h, ax=ax, shrink=0.7, label="Pearson r")
    r = corr[0, 1:]
    bx.barh(range(len(r)), r, color=["tab:red" if abs(v) > 0.5 else "tab:gray" for v in r])
    bx.set_yticks(range(len(r)), df.columns[1:], fontsize=7)
    bx.axvline(0, color="k", lw=0.5)
    bx.set_xlim(-1, 1)
    bx.set_xlabel("r with the mean cord signal")
    bx.invert_yaxis()
    fig.suptitle(f"{title}: confound correlations", fontsize=9)
    return _save(fig, path)


def native_figure(before, after, field, labels, cord, path, title, anat_note=""):
    """Native-space run: mean BOLD before/after distortion correction, the estimated field and
    the PAM50 regions brought to the run through func -> T2w -> PAM50 (regions coloured by
    spinal segment, which gives the levels), axial and sagittal. A step that was skipped is
    labelled "not applied"."""
    z = int(np.argmax(cord.sum(axis=(0, 1)))) if cord.any() else before.shape[2] // 2
    x = int(round(np.mean(np.nonzero(cord)[0]))) if cord.any() else before.shape[0] // 2
    panels = [("mean BOLD, raw", before, "gray"),
              ("distortion corrected" if field is not None else "distortion correction:\nnot applied", after, "gray")]
    if field is not None:
        panels.append(("estimated field (Hz)", field, "RdBu_r"))
    fig = _figure(2.4 * (len(panels) + 1), 4.6, left=0.1, right=0.1, bottom=0.1, top=0.6, wspace=0.15,
                  hspace=0.15)
    axes = fig.subplots(2, len(panels) + 1, squeeze=False)
    for c, (lab, im, cmap) in enumerate(panels):
        for r, sl in enumerate((np.s_[:, :, z], np.s_[x, :, :])):
            ax = axes[r, c]
            h = ax.imshow(im[sl].T, origin="lower", cmap=cmap, aspect="auto" if r else "equal")
            if cmap != "gray":
                fig.colorbar(h, ax=ax, shrink=0.7)
            ax.set_title(lab if r == 0 else "", fontsize=8)
            ax.axis("off")
    has_regions = bool(np.any(labels))
    for r, sl in enumerate((np.s_[:, :, z], np.s_[x, :, :])):
        ax = axes[r, -1]
        ax.imshow(after[sl].T, origin="lower", cmap="gray", aspect="auto" if r else "equal")
        if has_regions:
            lab = np.ma.masked_equal(labels[sl].T, 0)
            ax.imshow(lab, origin="lower", cmap="tab20", alpha=0.6, interpolation="nearest",
                      aspect="auto" if r else "equal")
        ax.contour(cord[sl].T.astype(float), levels=[0.5], colors="c", linewidths=0.6)
        ax.set_title(("PAM50 regions + cord" if has_regions else "registration to PAM50:\nnot applied")
                     if r == 0 else "", fontsize=8)
        ax.axis("off")
    fig.suptitle(title + (f"\n{anat_note}" if anat_note else ""), fontsize=9)
    return _save(fig, path)

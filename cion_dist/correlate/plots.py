"""PNG figures of a correlation run: how big the identities are, how many videos they span, what each level
removed and why, and the two calibration histograms with the chosen ``r`` and ``d`` marked.

Inputs are the driver's per-image arrays (identity, video rank, reason: a few bytes per image) and the
histograms the calibration task returns, so drawing never needs a vector. matplotlib runs headless (Agg).
"""

from __future__ import annotations

import io

import numpy as np

from cion_dist.correlate.denoise import LEVEL_OF_REASON, REASONS

HIST_BINS = 80
HIST_RANGE = (0.0, 2.0)  # cosine distances between L2-normalised vectors


def distance_histogram(values: np.ndarray) -> list[int]:
    """Counts of ``values`` over ``HIST_BINS`` equal bins of [0, 2] (what the calibration task returns)."""
    return np.histogram(np.asarray(values, dtype=np.float64), bins=HIST_BINS, range=HIST_RANGE)[0].astype(int).tolist()


def identity_statistics(identity: np.ndarray, video_rank: np.ndarray) -> dict[str, np.ndarray]:
    """Images per identity and distinct videos per identity (identities numbered 0..n-1, -1 = removed)."""
    identity = np.asarray(identity)
    kept = identity >= 0
    n = int(identity[kept].max()) + 1 if kept.any() else 0
    images = np.bincount(identity[kept], minlength=n)
    pairs = np.unique(np.stack([identity[kept], np.asarray(video_rank)[kept]]), axis=1) if n else np.zeros((2, 0), int)
    videos = np.bincount(pairs[0], minlength=n) if n else np.zeros(0, int)
    return {"images": images, "videos": videos}


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return buf.getvalue()


def plot_identity_sizes(stats: dict[str, np.ndarray]) -> bytes:
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, what in ((axes[0], "images", "images per identity"), (axes[1], "videos", "videos per identity")):
        v = stats[key]
        if len(v):
            ax.hist(v, bins=np.arange(0.5, v.max() + 1.5, max(1, int(v.max()) // 40 or 1)), color="#3b75af")
            ax.axvline(float(np.median(v)), color="k", ls="--", lw=1, label=f"median {np.median(v):.0f}")
            ax.legend()
        ax.set_xlabel(what)
        ax.set_ylabel("identities")
        ax.set_title(f"{what} ({len(v)} identities)")
    return _png(fig)


def plot_removals(reason: np.ndarray) -> bytes:
    """Bar per removal reason, coloured by the level that removed it."""
    plt = _figure()
    counts = np.bincount(np.asarray(reason), minlength=len(REASONS))
    idx = [i for i in range(1, len(REASONS))]
    colours = {1: "#e07b39", 2: "#3b75af", 3: "#6a9f58"}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(
        [REASONS[i].replace("_", " ") for i in idx],
        [counts[i] for i in idx],
        color=[colours[int(LEVEL_OF_REASON[i])] for i in idx],
    )
    for b, i in zip(bars, idx):
        ax.annotate(str(int(counts[i])), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom")
    for lvl, c in colours.items():
        ax.bar([], [], color=c, label=f"level {lvl}")
    ax.legend()
    ax.set_ylabel("images removed")
    ax.set_title(f"removals by level and reason ({int(counts[1:].sum())} of {int(counts.sum())} images)")
    ax.tick_params(axis="x", rotation=20)
    return _png(fig)


def plot_calibration(
    radius_hist: list | None, link_hist: list | None, r: float, d: float, calibrated: list[str]
) -> bytes:
    """The two distributions ``r`` and ``d`` come from, with both thresholds marked on each."""
    plt = _figure()
    edges = np.linspace(*HIST_RANGE, HIST_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = (
        (axes[0], radius_hist, "image to its tracklet centroid", "radius" in calibrated),
        (axes[1], link_hist, "tracklet centroid to nearest in other videos", "link_distance" in calibrated),
    )
    for ax, hist, what, auto in panels:
        if hist:
            ax.bar(centres, hist, width=edges[1] - edges[0], color="#9bb7d4")
        ax.axvline(r, color="#e07b39", lw=1.5, label=f"r = {r:.3f}")
        ax.axvline(d, color="#6a9f58", lw=1.5, ls="--", label=f"d = {d:.3f}")
        ax.set_xlabel("cosine distance")
        ax.set_ylabel("count")
        ax.set_title(what + (" (calibrated)" if auto else " (configured)"), fontsize=10)
        ax.legend()
        ax.set_xlim(0, max(1.0, d * 1.5, r * 1.5))
    return _png(fig)


def correlate_figures(
    identity: np.ndarray, video_rank: np.ndarray, reason: np.ndarray, summary: dict
) -> dict[str, bytes]:
    """File name -> PNG bytes for one correlation run."""
    figs = {
        "identity_sizes.png": plot_identity_sizes(identity_statistics(identity, video_rank)),
        "removals.png": plot_removals(reason),
    }
    rs, ls = summary.get("radius_stats") or {}, summary.get("link_stats") or {}
    figs["calibration.png"] = plot_calibration(
        rs.get("hist"),
        ls.get("hist"),
        float(summary["radius"]),
        float(summary["link_distance"]),
        list(summary.get("calibrated", [])),
    )
    return figs

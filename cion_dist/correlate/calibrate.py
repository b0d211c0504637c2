"""Read the two thresholds of the noise definition off the corpus itself (no labels needed).

- ``r`` (intra-identity radius): image-to-tracklet-centroid distances describe within-person spread, apart from
  tracker errors. Errors are set aside first: an image closer to the centroid of *another* tracklet of its video
  than to its own is most likely an identity switch (on clean trackers this flags ~1% of images, on a tracker
  with switches about the switched share). ``r`` is then a high quantile (0.98 by default) of the distances of
  the other images, so a clean tracker loses about 2% of its images at level 1 and a dirty one loses its switches
  too. (A MAD-based bound of the bulk is far tighter: within-person spread is skewed, with a long tail of pose and
  occlusion changes that are still the same person, and every image removed is lost recall.) ``r`` is capped at
  ``d``: an image farther from its tracklet's centroid than two identities' centroids are from each other is no
  evidence of the same person.
- ``d`` (inter-identity distance): ``d`` is used at level 3 to link identities of *different* videos, so it is read
  off cross-video distances: for each tracklet centroid, the distances to its ``k`` nearest centroids in other
  videos (``k`` = 2 by default). The nearest is most often the same person seen elsewhere (small), the next ones
  are mostly other people (large); the pooled sample is bimodal and Otsu's threshold (maximal between-class
  variance of the 1-D histogram) separates the two modes. Same-video neighbours are left out: tracklets of one
  video are fragments or bystanders of one scene and would blur the modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion_dist.correlate.geometry import exact_knn, group_centroids
from cion_dist.correlate.plots import distance_histogram


@dataclass
class Calibration:
    radius: float
    link_distance: float
    radius_stats: dict
    link_stats: dict


def distances_to_tracklet_centroids(x: np.ndarray, tracklet: np.ndarray) -> np.ndarray:
    """Cosine distance of each image to its tracklet's centroid, for tracklets with at least 2 images."""
    keys, inv, counts = np.unique(np.asarray(tracklet), return_inverse=True, return_counts=True)
    cents = group_centroids(x, inv, len(keys))
    dist = 1.0 - np.einsum("ij,ij->i", np.asarray(x, dtype=np.float32), cents[inv])
    return dist[counts[inv] >= 2]


def tracker_disagreements(x: np.ndarray, tracklet: np.ndarray, video: np.ndarray) -> np.ndarray:
    """Mask of images closer to another tracklet's centroid of the same video than to their own tracklet's."""
    x = np.asarray(x, dtype=np.float32)
    keys, inv = np.unique(np.asarray(tracklet), return_inverse=True)
    cents = group_centroids(x, inv, len(keys))
    own = 1.0 - np.einsum("ij,ij->i", x, cents[inv])
    out = np.zeros(len(x), dtype=bool)
    vids, vinv = np.unique(np.asarray(video), return_inverse=True)
    order = np.argsort(vinv, kind="stable")
    bounds = np.searchsorted(vinv[order], np.arange(len(vids) + 1))
    for v in range(len(vids)):
        rows = order[bounds[v] : bounds[v + 1]]
        ks, local = np.unique(inv[rows], return_inverse=True)
        if len(ks) < 2:
            continue
        dist = 1.0 - x[rows] @ cents[ks].T
        dist[np.arange(len(rows)), local] = np.inf
        out[rows] = dist.min(axis=1) < own[rows]
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Threshold maximising the between-class variance of a 1-D sample (Otsu, 1979)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * mids)
    mu_t = mu[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    # an empty gap between the classes is a plateau of equal scores: cut in its middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def nearest_cross_video_distances(cents: np.ndarray, video: np.ndarray, k: int, extra: int = 64) -> np.ndarray:
    """Distances from each centroid to its k nearest centroids of other videos (exact, in-process FAISS).

    Searches ``k + extra`` neighbours and keeps the first ``k`` from another video; a centroid whose video holds
    more than ``extra`` near tracklets contributes fewer than ``k`` distances.
    """
    video = np.asarray(video)
    n = len(cents)
    kk = min(k + extra, n - 1)
    if kk <= 0 or len(np.unique(video)) < 2:
        return np.zeros(0, dtype=np.float32)
    sim, nbr = exact_knn(cents, kk + 1)
    other = (nbr >= 0) & (video[np.maximum(nbr, 0)] != video[:, None])
    first_k = other & (np.cumsum(other, axis=1) <= k)
    return (1.0 - sim[first_k]).astype(np.float32)


def nearest_centroid_distances(cents: np.ndarray, k: int) -> np.ndarray:
    """Distances from each centroid to its k nearest other centroids (exact, in-process FAISS)."""
    n = len(cents)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros(0, dtype=np.float32)
    sim, nbr = exact_knn(cents, k + 1)
    own = nbr == np.arange(n)[:, None]
    # drop the self match (or the last column when a duplicate displaced it)
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    mask = np.ones_like(nbr, dtype=bool)
    mask[np.arange(n), drop] = False
    return (1.0 - sim[mask]).astype(np.float32)


def calibrate(
    x: np.ndarray,
    tracklet: np.ndarray,
    video: np.ndarray | None = None,
    *,
    radius_quantile: float = 0.98,
    link_neighbours: int = 2,
    min_tracklet: int = 2,
    sample: int = 200_000,
    seed: int = 0,
) -> Calibration:
    """Calibrate ``r`` and ``d`` from embeddings ``x`` (n, d), tracklet keys (n,) and video ids (n,).

    Without ``video`` (or with a single video) ``d`` pools the nearest centroids of any tracklet instead.
    """
    rng = np.random.default_rng(seed)
    tracklet = np.asarray(tracklet)
    video = None if video is None else np.asarray(video)
    keys, inv, counts = np.unique(tracklet, return_inverse=True, return_counts=True)
    if len(keys) > sample:  # sample whole tracklets so centroids stay exact
        chosen = np.zeros(len(keys), dtype=bool)
        chosen[rng.choice(len(keys), sample, replace=False)] = True
        sel = chosen[inv]
        x, tracklet = x[sel], tracklet[sel]
        video = None if video is None else video[sel]
        keys, inv, counts = np.unique(tracklet, return_inverse=True, return_counts=True)
    dist = distances_to_tracklet_centroids(x, tracklet)
    if len(dist) == 0:
        raise ValueError("cannot calibrate the radius: no tracklet has two images")
    switched = np.zeros(len(dist), dtype=bool)
    if video is not None:
        switched = tracker_disagreements(x, tracklet, video)[counts[inv] >= 2]
    trusted = dist[~switched] if (~switched).any() else dist
    radius = float(np.clip(np.quantile(trusted, radius_quantile), 1e-4, 2.0))
    big = counts >= max(min_tracklet, 1)
    cents = group_centroids(x, inv, len(keys))[big]
    nn = np.zeros(0, dtype=np.float32)
    if video is not None:
        first = np.zeros(len(keys), dtype=np.int64)
        first[inv[::-1]] = np.arange(len(inv))[::-1]
        nn = nearest_cross_video_distances(cents, video[first][big], link_neighbours)
    if len(nn) == 0:
        nn = nearest_centroid_distances(cents, link_neighbours)
    link = float(otsu_threshold(nn)) if len(nn) else radius
    link = float(np.clip(link, 1e-4, 2.0))
    radius_uncapped = radius
    radius = min(radius, link)
    return Calibration(
        radius=radius,
        link_distance=link,
        radius_stats={
            "median": float(np.median(dist)),
            "p90": float(np.quantile(dist, 0.9)),
            "quantile": float(np.quantile(trusted, radius_quantile)),
            "kept_by_radius": float((dist <= radius).mean()),
            "tracker_disagreements": float(switched.mean()),
            "n": int(len(dist)),
            "hist": distance_histogram(dist),
            "capped_at_link_distance": bool(radius_uncapped > link),
        },
        link_stats={
            "median": float(np.median(nn)) if len(nn) else None,
            "n": int(len(nn)),
            "tracklets": int(len(cents)),
            "hist": distance_histogram(nn),
        },
    )

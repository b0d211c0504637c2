"""Read the two thresholds of the noise definition off the corpus itself (no labels needed).

- ``r`` (intra-identity radius): a tracker keeps one person most of the time, so the bulk of image-to-tracklet-
  centroid distances describes genuine within-person spread and the upper tail holds noise. We take a robust upper
  bound of the bulk: ``median + k * 1.4826 * MAD`` (k = 3 by default; 1.4826 * MAD estimates a standard deviation
  and ignores a contaminated tail up to about half the data).
- ``d`` (inter-identity distance): for each tracklet centroid, the distances to its nearest other centroids mix
  two populations, the same person seen in another tracklet (small) and different people (large). The
  threshold separating them is Otsu's (it maximises the between-class variance of the pooled 1-D histogram). It is
  kept at least ``r``: two centroids closer than one identity's radius cannot be told apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion_dist.correlate.geometry import group_centroids


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


def robust_upper(values: np.ndarray, k: float) -> float:
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return med + k * 1.4826 * mad


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


def nearest_centroid_distances(cents: np.ndarray, k: int) -> np.ndarray:
    """Distances from each centroid to its k nearest other centroids (exact, in-process FAISS)."""
    import faiss

    n = len(cents)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros(0, dtype=np.float32)
    index = faiss.IndexFlatIP(cents.shape[1])
    index.add(np.ascontiguousarray(cents, dtype=np.float32))
    sim, nbr = index.search(np.ascontiguousarray(cents, dtype=np.float32), k + 1)
    own = nbr == np.arange(n)[:, None]
    # drop the self match (or the last column when a duplicate displaced it)
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    mask = np.ones_like(nbr, dtype=bool)
    mask[np.arange(n), drop] = False
    return (1.0 - sim[mask]).astype(np.float32)


def calibrate(
    x: np.ndarray,
    tracklet: np.ndarray,
    *,
    radius_mad: float = 3.0,
    link_neighbours: int = 5,
    min_tracklet: int = 2,
    sample: int = 200_000,
    seed: int = 0,
) -> Calibration:
    """Calibrate ``r`` and ``d`` from embeddings ``x`` (n, d) and their tracklet keys (n,)."""
    rng = np.random.default_rng(seed)
    tracklet = np.asarray(tracklet)
    keys, inv, counts = np.unique(tracklet, return_inverse=True, return_counts=True)
    if len(keys) > sample:  # sample whole tracklets so centroids stay exact
        chosen = np.zeros(len(keys), dtype=bool)
        chosen[rng.choice(len(keys), sample, replace=False)] = True
        sel = chosen[inv]
        x, tracklet = x[sel], tracklet[sel]
        keys, inv, counts = np.unique(tracklet, return_inverse=True, return_counts=True)
    dist = distances_to_tracklet_centroids(x, tracklet)
    if len(dist) == 0:
        raise ValueError("cannot calibrate the radius: no tracklet has two images")
    radius = float(np.clip(robust_upper(dist, radius_mad), 1e-4, 2.0))
    big = counts >= max(min_tracklet, 1)
    cents = group_centroids(x, inv, len(keys))[big]
    nn = nearest_centroid_distances(cents, link_neighbours)
    link = float(otsu_threshold(nn)) if len(nn) else radius
    link = float(np.clip(max(link, radius), 1e-4, 2.0))
    return Calibration(
        radius=radius,
        link_distance=link,
        radius_stats={"median": float(np.median(dist)), "p90": float(np.quantile(dist, 0.9)), "n": int(len(dist))},
        link_stats={"median": float(np.median(nn)) if len(nn) else None, "n": int(len(nn)), "tracklets": int(len(cents))},
    )

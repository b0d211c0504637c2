"""Reference labellings scored beside CION on the same embeddings (pure numpy / FAISS / scikit-learn).

- ``tracklet_identity``: every tracklet is its own identity (what a tracker alone gives).
- ``dbscan_knn``: DBSCAN over a symmetrised sparse k-NN cosine-distance graph (the pseudo-labelling step of Cluster-Contrast,
  minus the Jaccard re-ranking); ``eps`` defaults to CION's ``d``, so both use the same distance scale.
- ``finch``: First Integer Neighbor Clustering Hierarchy (Sarfraz, Sharma, Stiefelhagen, CVPR 2019): link each
  point to its first neighbour, take connected components, repeat on cluster means. It yields a hierarchy of
  partitions without any threshold; we pick the level whose cluster count is closest to a target count (by
  default the number of identities CION found, so both are compared at the same granularity without labels).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from cion_dist.correlate.geometry import group_centroids, l2_normalise


def tracklet_identity(video: np.ndarray, tracklet: np.ndarray) -> np.ndarray:
    keys = np.char.add(np.char.add(np.asarray(video).astype(str), "\x1f"), np.asarray(tracklet).astype(str))
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the k nearest rows of x to each row, self included (in-process FAISS)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, min(k, len(x)))


def dbscan_knn(x: np.ndarray, eps: float, min_samples: int = 4, k: int = 20) -> np.ndarray:
    """DBSCAN labels (-1 = noise) on the k-NN cosine-distance graph."""
    from sklearn.cluster import DBSCAN

    n = len(x)
    sim, nbr = exact_knn(x, k)
    dist = np.clip(1.0 - sim, 1e-9, None)  # explicit tiny values: sparse zeros would read as "no edge"
    ok = nbr >= 0
    rows = np.repeat(np.arange(n), nbr.shape[1])[ok.ravel()]
    g = sp.csr_matrix((dist[ok], (rows, nbr[ok])), shape=(n, n))
    g = g.maximum(g.T).tocsr()  # symmetric: a k-NN list is one-sided, the distance is not
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(g).astype(np.int64)


def finch_hierarchy(x: np.ndarray, max_levels: int = 20) -> list[np.ndarray]:
    """FINCH partitions, finest first; each is a label per row of x."""
    x = l2_normalise(x)
    n = len(x)
    labels = np.arange(n)
    parts: list[np.ndarray] = []
    feats = x
    for _ in range(max_levels):
        m = len(feats)
        if m <= 1:
            break
        _, nbr = exact_knn(feats, 2)
        first = np.where(nbr[:, 0] == np.arange(m), nbr[:, 1], nbr[:, 0])
        adj = sp.csr_matrix((np.ones(m), (np.arange(m), first)), shape=(m, m))
        n_comp, comp = connected_components(adj, directed=True, connection="weak")
        if n_comp == m:
            break
        labels = comp[labels]
        parts.append(labels.copy())
        if n_comp == 1:
            break
        feats = group_centroids(x, labels, n_comp)
    return parts


def finch(x: np.ndarray, target_clusters: int) -> tuple[np.ndarray, int]:
    """The FINCH partition whose cluster count is closest to ``target_clusters``; returns (labels, level)."""
    parts = finch_hierarchy(x)
    if not parts:
        return np.arange(len(x), dtype=np.int64), 0
    counts = np.array([len(np.unique(p)) for p in parts])
    level = int(np.argmin(np.abs(counts - target_clusters)))
    return parts[level].astype(np.int64), level + 1

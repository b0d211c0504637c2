"""Reference labellings scored beside CION on the same embeddings (pure numpy / FAISS / scikit-learn).

- ``tracklet_identity``: every tracklet is its own identity (what a tracker alone gives).
- ``dbscan_knn``: DBSCAN over a symmetrised sparse k-NN cosine-distance graph (the pseudo-labelling step of
Cluster-Contrast,
  minus the Jaccard re-ranking); ``eps`` defaults to CION's ``d``, so both use the same distance scale.
- ``finch``: First Integer Neighbor Clustering Hierarchy (Sarfraz, Sharma, Stiefelhagen, CVPR 2019): link each
  point to its first neighbour, take connected components, repeat on cluster means, as the authors'
  implementation (pip package ``finch-clust``) does in its default mode; a test checks the two agree. It yields a
  hierarchy of
  partitions without any threshold; we pick the level whose cluster count is closest to a target count (by
  default the number of identities CION found, so both are compared at the same granularity without labels).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from cion_dist.correlate.geometry import exact_knn, group_sums
from cion_dist.vectors import l2_normalise


def tracklet_identity(video: np.ndarray, tracklet: np.ndarray) -> np.ndarray:
    keys = np.char.add(np.char.add(np.asarray(video).astype(str), "\x1f"), np.asarray(tracklet).astype(str))
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


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


def first_neighbours(x: np.ndarray) -> np.ndarray:
    """Each row's nearest other row by cosine similarity (exact, in-process FAISS)."""
    _, nbr = exact_knn(l2_normalise(np.asarray(x, dtype=np.float32)), 2)
    return np.where(nbr[:, 0] == np.arange(len(x)), nbr[:, 1], nbr[:, 0])


def _link_components(first: np.ndarray) -> tuple[int, np.ndarray]:
    """Weakly connected components of the graph ``i -> first[i]``."""
    m = len(first)
    adj = sp.csr_matrix((np.ones(m), (np.arange(m), first)), shape=(m, m))
    return connected_components(adj, directed=True, connection="weak")


def finch_hierarchy(x: np.ndarray, max_levels: int = 50) -> list[np.ndarray]:
    """FINCH partitions, finest first; each is a label per row of x.

    Behaves as the authors' implementation in its default mode (cosine distance): every level links each row (then
    each cluster's mean of the *raw* rows) to its first neighbour and takes weakly connected components. A level
    that merges everything into one cluster, or merges a single pair, ends the hierarchy and is not kept. (That
    implementation's early-exit guard sets over-long links to zero in a sparse matrix, and scipy's csgraph still
    counts stored zeros as links, so in effect it prunes nothing; the test against the package pins this.)
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) < 2:
        return []
    n_comp, labels = _link_components(first_neighbours(x))
    parts, counts = [labels], [n_comp]
    while len(parts) < max_levels and counts[-1] > 1:
        sizes = np.bincount(labels, minlength=counts[-1]).astype(np.float32)
        means = group_sums(x, labels, counts[-1]) / sizes[:, None]
        n_comp, comp = _link_components(first_neighbours(means))
        if n_comp == 1 or counts[-1] - n_comp <= 1:
            break
        labels = comp[labels]
        parts.append(labels)
        counts.append(n_comp)
    return parts


def finch(x: np.ndarray, target_clusters: int) -> tuple[np.ndarray, int]:
    """The FINCH partition whose cluster count is closest to ``target_clusters``; returns (labels, level)."""
    parts = finch_hierarchy(x)
    if not parts:
        return np.arange(len(x), dtype=np.int64), 0
    counts = np.array([len(np.unique(p)) for p in parts])
    level = int(np.argmin(np.abs(counts - target_clusters)))
    return parts[level].astype(np.int64), level + 1

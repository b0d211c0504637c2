"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), written from the paper's description.

Steps: (1) pairwise distances over queries + gallery, each column scaled by its maximum; (2) for every probe, the
k1-reciprocal neighbours (j in top-k1 of i and i in top-k1 of j), expanded by the k1/2-reciprocal sets of its
members when they overlap by more than 2/3; (3) a weight vector over that set, ``exp(-d)`` normalised to sum 1;
(4) local query expansion: average the vectors of the k2 nearest neighbours; (5) Jaccard distance between vectors,
``1 - sum(min) / sum(max)``; (6) final distance ``(1 - lambda) * jaccard + lambda * original``.

Pure numpy. Memory is O((Q+G)^2): use it on evaluation sets, not on corpora.
"""

from __future__ import annotations

import numpy as np


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Indices j among i's k+1 nearest (itself included) whose own k+1 nearest contain i."""
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def k_reciprocal_distances(qf: np.ndarray, gf: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked ``(Q, G)`` distance matrix from query and gallery features (rows L2-normalised by the caller)."""
    qf = np.asarray(qf, dtype=np.float32)
    gf = np.asarray(gf, dtype=np.float32)
    nq = qf.shape[0]
    feats = np.concatenate([qf, gf], axis=0)
    n = feats.shape[0]
    original = _pairwise_sq(feats, feats).astype(np.float32)
    original /= np.maximum(original.max(axis=0, keepdims=True), 1e-12)
    original = original.T  # row i: distances from i, scaled per target column as in the paper's code path
    k1 = min(k1, n - 1)
    initial_rank = np.argsort(original, axis=1, kind="stable")[:, : k1 + 1]
    half = int(np.around(k1 / 2.0))

    V = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        members = _reciprocal(initial_rank, i, k1)
        expanded = members
        for c in members:
            cand = _reciprocal(initial_rank, int(c), half)
            if len(np.intersect1d(cand, members, assume_unique=True)) > (2.0 / 3.0) * len(cand):
                expanded = np.union1d(expanded, cand)
        w = np.exp(-original[i, expanded])
        V[i, expanded] = w / w.sum()

    if k2 > 1:
        V = np.stack([V[initial_rank[i, :k2]].mean(axis=0) for i in range(n)])

    # Jaccard between each query vector and each gallery vector; sums of rows are 1 so sum(max) = 2 - sum(min).
    jaccard = np.zeros((nq, n - nq), dtype=np.float32)
    Vg = V[nq:]
    for i in range(nq):
        cols = np.flatnonzero(V[i])
        mins = np.minimum(V[i, cols][None, :], Vg[:, cols]).sum(axis=1)
        jaccard[i] = 1.0 - mins / (2.0 - mins)
    return (1.0 - lambda_value) * jaccard + lambda_value * original[:nq, nq:]

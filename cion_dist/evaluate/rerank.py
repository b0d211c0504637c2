"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), written from the paper's description.

Steps: (1) pairwise distances over queries + gallery, each column scaled by its maximum; (2) for every probe, the
k1-reciprocal neighbours (j in top-k1 of i and i in top-k1 of j), expanded by the k1/2-reciprocal sets of its
members when they overlap by more than 2/3; (3) a weight vector over that set, ``exp(-d)`` normalised to sum 1;
(4) local query expansion: average the vectors of the k2 nearest neighbours; (5) Jaccard distance between vectors,
``1 - sum(min) / sum(max)``; (6) final distance ``(1 - lambda) * jaccard + lambda * original``.

``k_reciprocal_distances`` works in blocks of rows and never forms an (n x n) matrix, n = Q + G: the distances of a
block of rows to all n give each row's scale and its top-(k1 + 1) list (the top-k graph, n x (k1 + 1) ints); the
weight vectors are sparse rows (about 1.5 k1 entries each, k2 times that after query expansion); the Jaccard
distance of a query to the gallery sums, over the columns where the query's vector is non-zero, the gallery rows
holding that column (an inverted index, as in the authors' code). Memory: O(n k1 k2) for the sparse vectors plus
one (block x n) float32 slab, plus the (Q x G) result (``k_reciprocal_blocks`` yields it a block of queries at a
time). MSMT17 (93,820 images) held 24 bytes per (Q + G)^2 entry in the dense form (~211 GB).
``k_reciprocal_distances_dense`` is that dense form, kept as the yardstick the blocked one is tested against.
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


def k_reciprocal_distances_dense(
    qf: np.ndarray, gf: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Re-ranked ``(Q, G)`` distances with dense (Q + G)^2 matrices: small inputs and tests only."""
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


def _scaled_rows(feats: np.ndarray, sq: np.ndarray, rows: slice) -> np.ndarray:
    """Squared distances of ``feats[rows]`` to every row, each row scaled by its own maximum (float32)."""
    d = sq[rows, None] + sq[None, :] - 2.0 * (feats[rows] @ feats.T)
    d = np.maximum(d, 0.0).astype(np.float32)
    d /= np.maximum(d.max(axis=1, keepdims=True), 1e-12)
    return d


def _top_graph(feats: np.ndarray, sq: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k + 1 nearest rows (itself included, stable order) and its scale (maximum squared distance)."""
    n = len(feats)
    rank = np.empty((n, k + 1), dtype=np.int64)
    for s in range(0, n, block):
        d = _scaled_rows(feats, sq, slice(s, s + block))
        rank[s : s + block] = np.argsort(d, axis=1, kind="stable")[:, : k + 1]
    return rank


def _weights(feats: np.ndarray, sq: np.ndarray, rank: np.ndarray, k1: int, block: int):
    """Sparse k-reciprocal weight vectors (CSR, n x n): exp(-distance) over each row's expanded set, sum 1."""
    import scipy.sparse as sp

    n = len(feats)
    half = int(np.around(k1 / 2.0))
    indptr, indices, data = [0], [], []
    for s in range(0, n, block):
        d = _scaled_rows(feats, sq, slice(s, s + block))
        for i in range(s, min(s + block, n)):
            members = _reciprocal(rank, i, k1)
            expanded = members
            for c in members:
                cand = _reciprocal(rank, int(c), half)
                if len(np.intersect1d(cand, members, assume_unique=True)) > (2.0 / 3.0) * len(cand):
                    expanded = np.union1d(expanded, cand)
            expanded = np.unique(expanded)
            w = np.exp(-d[i - s, expanded])
            indices.append(expanded)
            data.append((w / w.sum()).astype(np.float32))
            indptr.append(indptr[-1] + len(expanded))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.asarray(indptr)), shape=(n, n))


def k_reciprocal_blocks(
    qf: np.ndarray, gf: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, block: int = 512
):
    """Yield ``(first query, (b, G) re-ranked distances)`` for consecutive blocks of queries (see the module)."""
    import scipy.sparse as sp

    qf = np.asarray(qf, dtype=np.float32)
    gf = np.asarray(gf, dtype=np.float32)
    nq = qf.shape[0]
    feats = np.concatenate([qf, gf], axis=0)
    n = feats.shape[0]
    sq = (feats * feats).sum(1)
    k1 = min(k1, n - 1)
    rank = _top_graph(feats, sq, k1, block)
    V = _weights(feats, sq, rank, k1, block)
    if k2 > 1:  # local query expansion: the mean of the k2 nearest rows' vectors
        rows = np.repeat(np.arange(n), k2)
        A = sp.csr_matrix((np.full(n * k2, 1.0, np.float32), (rows, rank[:, :k2].reshape(-1))), shape=(n, n))
        V = (A @ V).tocsr() / np.float32(k2)
        V = sp.csr_matrix(V, dtype=np.float32)
    Vq = V[:nq]
    Vg = V[nq:].tocsc()  # the inverted index: per column, the gallery rows that hold it
    ng = n - nq
    for s in range(0, nq, block):
        e = min(s + block, nq)
        mins = np.zeros((e - s, ng), dtype=np.float32)
        for i in range(s, e):
            lo, hi = Vq.indptr[i], Vq.indptr[i + 1]
            cols, vals = Vq.indices[lo:hi], Vq.data[lo:hi]
            starts, stops = Vg.indptr[cols], Vg.indptr[cols + 1]
            counts = stops - starts
            if counts.sum() == 0:
                continue
            idx = np.repeat(starts - np.cumsum(np.r_[0, counts[:-1]]), counts) + np.arange(counts.sum())
            g = Vg.indices[idx]
            np.add.at(mins[i - s], g, np.minimum(np.repeat(vals, counts), Vg.data[idx]))
        jaccard = 1.0 - mins / (2.0 - mins)
        d = _scaled_rows(feats, sq, slice(s, e))[:, nq:]
        yield s, (1.0 - lambda_value) * jaccard + lambda_value * d


def k_reciprocal_distances(
    qf: np.ndarray, gf: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, block: int = 512
) -> np.ndarray:
    """Re-ranked ``(Q, G)`` distance matrix from query and gallery features (rows L2-normalised by the caller),
    computed in blocks (see the module)."""
    qf = np.asarray(qf, dtype=np.float32)
    out = np.empty((qf.shape[0], np.asarray(gf).shape[0]), dtype=np.float32)
    for s, part in k_reciprocal_blocks(qf, gf, k1, k2, lambda_value, block):
        out[s : s + len(part)] = part
    return out

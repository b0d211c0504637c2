"""Vector geometry shared by every denoising level.

The metric is the cosine distance ``1 - cos(a, b)`` (0 = same direction, 2 = opposite). A set's centroid is the
*normalised* mean of its L2-normalised members, so an image-to-centroid distance is ``1 - <f, c>`` and two
centroids compare the same way as two images. This matches the PLIP seed filter's cosine thresholds
(similarity 0.60 = distance 0.40), CION's closest published relative (docs/method.md section 2).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cion_dist.vectors import l2_normalise


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the k nearest rows of x to each row by inner product, self included (``faiss.knn``:
    exact, in-process, no index kept)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    return faiss.knn(x, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)


def centroid(x: np.ndarray) -> np.ndarray:
    """Normalised mean of the rows of x: shape (d,)."""
    return l2_normalise(np.asarray(x, dtype=np.float32).sum(axis=0))


def distance_to(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Cosine distance of each (normalised) row of x to the normalised vector c."""
    return 1.0 - np.asarray(x, dtype=np.float32) @ np.asarray(c, dtype=np.float32)


def group_sums(x: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group sum of rows (labels < 0 are ignored): shape (n_groups, d)."""
    labels = np.asarray(labels)
    ok = labels >= 0
    rows = np.flatnonzero(ok)
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (labels[ok], rows)), shape=(n_groups, len(labels)))
    return np.asarray(m @ np.asarray(x, dtype=np.float32), dtype=np.float32)


def group_centroids(x: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    return l2_normalise(group_sums(x, labels, n_groups))

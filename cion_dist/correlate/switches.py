"""Identity switches inside a tracklet: where along time its appearance changes, cut it. Pure numpy.

A tracker that follows one person into a crossing and leaves with another keeps one tracklet id for two people.
When the two halves sit within radius ``r`` of their joint centroid, level 1's radius check keeps both, and the
mixed tracklet becomes a mixed identity. Before the radius check, each tracklet's embeddings are taken in frame
order and cut by binary segmentation (change-point detection, Scott and Knott 1974): the cut ``k`` that maximises
the cosine distance between the mean of rows ``[0, k)`` and the mean of rows ``[k, n)``, with both sides at least
``min_segment`` long, is kept if that distance reaches ``threshold``; each side is then searched the same way.

The threshold is CION's inter-identity criterion: level 2 treats two tracklets whose centroids are ``d`` or more
apart as different people, so one tracklet whose two parts are that far apart holds two people. The default is
``d`` itself (``factor`` 1). Prefix sums make one search O(n dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SwitchSplit:
    """Settings of switch splitting: cut where the two sides' centroids are ``factor * d`` or more apart."""

    enabled: bool = True
    factor: float = 1.0
    min_segment: int = 4


def best_cut(x: np.ndarray, min_segment: int) -> tuple[int, float]:
    """(k, distance) of the cut of rows ``x`` (time order) whose two sides' means are farthest apart (cosine
    distance), both sides at least ``min_segment`` rows; ``(-1, 0.0)`` when the sequence is too short."""
    n = len(x)
    if n < 2 * min_segment:
        return -1, 0.0
    x = np.asarray(x, dtype=np.float64)
    prefix = np.cumsum(x, axis=0)
    total = prefix[-1]
    ks = np.arange(min_segment, n - min_segment + 1)
    left = prefix[ks - 1]
    right = total - left
    cos = np.einsum("ij,ij->i", left, right) / np.maximum(
        np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1), 1e-12
    )
    j = int(np.argmax(1.0 - cos))
    return int(ks[j]), float(1.0 - cos[j])


def switch_segments(x: np.ndarray, threshold: float, min_segment: int) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """Segment label per row of ``x`` (rows in time order, labels 0.. in time order) and the cuts made as
    ``(row where the new segment starts, distance between the two sides)``, by recursive binary segmentation."""
    n = len(x)
    cuts: list[tuple[int, float]] = []
    stack = [(0, n)]
    while stack:
        lo, hi = stack.pop()
        k, dist = best_cut(x[lo:hi], min_segment)
        if k < 0 or dist < threshold:
            continue
        cuts.append((lo + k, dist))
        stack += [(lo, lo + k), (lo + k, hi)]
    cuts.sort()
    label = np.zeros(n, dtype=np.int64)
    for c, _ in cuts:
        label[c:] += 1
    return label, cuts

"""Level 3 of CION's denoising (long-range, cross-video), as pure numpy functions.

Videos are laid end to end (ordered by source, then start time) and a window of ``W`` videos slides by ``S``
(``S < W``: consecutive windows overlap, so a person seen in videos 1 and 9 links through videos shared by
windows). Inside a window every level-2 identity (a node: one person in one video) is linked to its k nearest
neighbours from *other* videos whose centroid lies closer than ``d``. Links from all windows then go through
one global guarded union-find (``denoise.guarded_merge``), and the merged identities are re-checked against the
radius ``r`` and the minimum size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion_dist.correlate.denoise import IDENTITY_RADIUS, IDENTITY_TOO_SMALL, shrink_to_radius


def plan_windows(n_videos: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) video ranges covering every video; the last window is flush with the end."""
    if n_videos <= 0:
        return []
    if window >= n_videos:
        return [(0, n_videos)]
    starts = list(range(0, n_videos - window + 1, stride))
    if starts[-1] + window < n_videos:
        starts.append(n_videos - window)
    return [(s, s + window) for s in starts]


def links_from_knn(
    sim: np.ndarray,
    nbr: np.ndarray,
    query_ids: np.ndarray,
    node_video: np.ndarray,
    d: float,
    mutual: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross-video links (src < dst, distance) from a k-NN result over node centroids.

    ``sim``/``nbr``: (q, k) inner products and global node ids (-1 = no neighbour) for the nodes ``query_ids``.
    A link needs cosine distance ``1 - sim < d`` and different videos; with ``mutual`` each end must also be in
    the other's list (the other end must then be among the queries too).
    """
    q, k = nbr.shape
    src = np.repeat(np.asarray(query_ids, dtype=np.int64), k)
    dst = nbr.reshape(-1).astype(np.int64)
    dist = (1.0 - sim.reshape(-1)).astype(np.float32)
    ok = (dst >= 0) & (dst != src)
    ok[ok] &= node_video[src[ok]] != node_video[dst[ok]]
    ok &= dist < d
    src, dst, dist = src[ok], dst[ok], dist[ok]
    if mutual and len(src):
        directed = set(zip(src.tolist(), dst.tolist()))
        keep = np.fromiter(((b, a) in directed for a, b in zip(src.tolist(), dst.tolist())), dtype=bool, count=len(src))
        src, dst, dist = src[keep], dst[keep], dist[keep]
    return dedupe_links(src, dst, dist)


def dedupe_links(src: np.ndarray, dst: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected unique links with src < dst (the smallest distance wins for a repeated pair)."""
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    if len(a) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), np.zeros(0, dtype=np.float32)
    order = np.lexsort((dist, b, a))
    a, b, dist = a[order], b[order], np.asarray(dist)[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], dist[first].astype(np.float32)


@dataclass
class IdentityResult:
    identity: np.ndarray  # global identity per image (0..n-1), -1 = removed
    reason: np.ndarray  # reason code per image, updated for level-3 removals
    n_identities: int


def merged_identity(node_of_image: np.ndarray, node_label: np.ndarray) -> np.ndarray:
    """The merged identity (a node label) of every image; -1 for images no level-2 identity kept."""
    node_of_image = np.asarray(node_of_image)
    if len(node_label) == 0:
        return np.full(len(node_of_image), -1, dtype=np.int64)
    return np.where(node_of_image >= 0, np.asarray(node_label)[np.maximum(node_of_image, 0)], -1).astype(np.int64)


def identity_rows(ident: np.ndarray) -> list[np.ndarray]:
    """Rows of each identity (identities in label order, rows ascending); removed rows (-1) left out."""
    order = np.argsort(ident, kind="stable")
    sorted_ids = ident[order]
    starts = np.searchsorted(sorted_ids, np.unique(sorted_ids[sorted_ids >= 0]))
    ends = np.append(starts[1:], len(sorted_ids))
    return [order[s:e] for s, e in zip(starts, ends)]


def radius_removals(x: np.ndarray, members: list[np.ndarray], r: float) -> np.ndarray:
    """Rows (of ``x``) that the radius re-check drops from each identity's ``members`` rows."""
    out = [idx[~shrink_to_radius(x[idx], r)] for idx in members if len(idx) > 1]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def number_identities(ident: np.ndarray, reason: np.ndarray, min_images: int) -> IdentityResult:
    """Drop identities below ``min_images`` and number the rest by their first image (video order when images
    are).

    Labels are small non-negative integers (node labels), so counts and first images are per-label arrays indexed
    by label, not sorts of the image arrays: besides its output the numbering holds two int64 arrays per image and
    two per label (the corpus-scale driver's peak used to be this step's and the re-check's sorts).
    """
    ident = np.array(ident, dtype=np.int64, copy=True)
    reason = np.array(reason, dtype=np.int8, copy=True)
    ok = np.flatnonzero(ident >= 0)
    n_labels = int(ident[ok].max()) + 1 if len(ok) else 0
    counts = np.bincount(ident[ok], minlength=n_labels)
    small = ok[counts[ident[ok]] < min_images]
    ident[small] = -1
    reason[small] = IDENTITY_TOO_SMALL
    del small, counts
    ok = np.flatnonzero(ident >= 0)
    first = np.full(n_labels, len(ident), dtype=np.int64)
    np.minimum.at(first, ident[ok], ok)  # each label's first image row
    present = np.flatnonzero(first < len(ident))
    new_id = np.full(n_labels, -1, dtype=np.int64)
    new_id[present[np.argsort(first[present], kind="stable")]] = np.arange(len(present))
    out = np.full(len(ident), -1, dtype=np.int64)
    out[ok] = new_id[ident[ok]]
    return IdentityResult(identity=out, reason=reason, n_identities=len(present))


def finalize_identities(
    x: np.ndarray, node_of_image: np.ndarray, node_label: np.ndarray, reason: np.ndarray, r: float, min_images: int
) -> IdentityResult:
    """Map images to merged identities, re-check the radius and drop identities below ``min_images``.

    Identity ids are numbered in order of each identity's first image (so in video order when images are).
    """
    ident = merged_identity(node_of_image, node_label)
    reason = np.array(reason, dtype=np.int8, copy=True)
    drop = radius_removals(x, identity_rows(ident), r)
    ident[drop] = -1
    reason[drop] = IDENTITY_RADIUS
    return number_identities(ident, reason, min_images)

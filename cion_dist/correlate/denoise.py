"""Levels 1 and 2 of CION's progressive denoising, as pure numpy functions (no Ray, no IO).

Level 1 (single tracklet): drop the image farthest from the recomputed centroid until every image lies within
radius ``r`` (intra-identity consistency); tracklets left with fewer than ``min_tracklet`` images are dropped.
Level 2 (short-range, one video): merge tracklets whose centroids are closer than ``d`` (inter-identity
discrimination), hand images removed at level 1 to the nearest merged tracklet if within ``r``, gather leftover
removed images that agree among themselves into new tracklets (this is how a tracklet that mixed two people is
split), and re-check the radius. Every removed image keeps a reason code (``REASONS``) and the level that removed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from cion_dist.correlate.geometry import distance_to, group_sums
from cion_dist.correlate.switches import SwitchSplit, switch_segments
from cion_dist.correlate.unionfind import UnionFind
from cion_dist.vectors import l2_normalise

KEPT = 0
TRACKLET_OUTLIER = 1
TRACKLET_TOO_SMALL = 2
VIDEO_RADIUS = 3
IDENTITY_RADIUS = 4
IDENTITY_TOO_SMALL = 5
REASONS = ("", "tracklet_outlier", "tracklet_too_small", "video_radius", "identity_radius", "identity_too_small")
LEVEL_OF_REASON = np.array([0, 1, 1, 2, 3, 3], dtype=np.int8)


def shrink_to_radius(x: np.ndarray, r: float) -> np.ndarray:
    """Keep-mask after repeatedly removing the row farthest from the running centroid while it is beyond r.

    The centroid is recomputed after each removal (a running sum, so one pass costs O(n d)). A single image is
    always consistent with itself, so at least one row survives.
    """
    x = np.asarray(x, dtype=np.float32)
    keep = np.ones(len(x), dtype=bool)
    if len(x) <= 1:
        return keep
    s = x.sum(axis=0, dtype=np.float64)
    while keep.sum() > 1:
        c = (s / max(np.linalg.norm(s), 1e-12)).astype(np.float32)
        dist = distance_to(x, c)
        dist[~keep] = -np.inf
        j = int(np.argmax(dist))
        if dist[j] <= r:
            break
        keep[j] = False
        s -= x[j]
    return keep


@dataclass
class MergeResult:
    label: np.ndarray  # component per node, numbered 0.. by smallest node id
    accepted: np.ndarray  # per input link: True where that link joined two sets
    linkage: np.ndarray  # per input link: the average-linkage distance of the merge it made (NaN: none)


def guarded_merge(
    sums: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    dist: np.ndarray,
    d: float,
    tags: Optional[Sequence[frozenset] | np.ndarray] = None,
    linkage: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The component label per node of ``merge_links`` (see there); ``linkage``, when given, is filled in place
    with ``MergeResult.linkage``."""
    res = merge_links(sums, src, dst, dist, d, tags)
    if linkage is not None:
        linkage[:] = res.linkage
    return res.label


def merge_links(
    sums: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    dist: np.ndarray,
    d: float,
    tags: Optional[Sequence[frozenset] | np.ndarray] = None,
) -> MergeResult:
    """Union nodes along candidate links, nearest first, keeping only merges that stay discriminable.

    A link (a, b) joins their current sets only if (1) the two sets' centroids (normalised sums of member vectors)
    are closer than ``d`` and (2) the *average* distance over all pairs of members, one from each set, is below
    ``d`` too (average linkage, UPGMA). Plain union-find over all links under ``d`` lets chains (A~B, B~C) fuse
    people whose centroids are far apart. Check (1) weighs members by their image counts, so one big member can
    carry a merge that most members disagree with; check (2) weighs every member equally, so two people seen in
    two videos each do not fuse because one pair of their members happens to be close. The mean pairwise cosine
    similarity of two sets is the dot product of their sums of unit member vectors over ``|A| |B|``, so (2) costs
    O(dim) per link. Deterministic for a fixed input. ``tags`` adds cannot-links: two sets merge only if their
    tags are disjoint (frames, so two people seen in the same frame stay apart; or videos, so level 3 never
    undoes level 2). ``tags`` is one frozenset per node, or one integer per node (its set is that one tag; sets
    are then built only for nodes that merge).

    Only nodes that some link under ``d`` touches get vectors: memory is ``2 * dim * 4`` bytes (float32 running
    sums and sums of unit members) per linked node, plus 24 bytes per node (union-find, sizes), plus a Python set
    per merged set when tags are given. ``accepted`` marks the links that joined two sets: per final set, the
    largest accepted distance is its weakest link (``weakest_link``); ``linkage`` holds, for each accepted link,
    the average-linkage distance of that merge (NaN for the others): the margin the merge audit reports.
    """
    n = len(sums)
    src, dst, dist = np.asarray(src, np.int64), np.asarray(dst, np.int64), np.asarray(dist, np.float32)
    accepted = np.zeros(len(src), dtype=bool)
    linkage = np.full(len(src), np.nan, dtype=np.float32)
    live = np.flatnonzero(dist < d)
    touched = np.unique(np.concatenate([src[live], dst[live]]))
    local = np.full(n, -1, dtype=np.int64)
    local[touched] = np.arange(len(touched))
    acc = np.asarray(sums, dtype=np.float32)[touched].copy()  # running sums of member vectors
    unit = acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)  # running sums of unit members
    size = np.ones(len(touched), dtype=np.int64)
    uf = UnionFind(len(touched))
    int_tags = tags is not None and isinstance(tags, np.ndarray) and tags.dtype.kind in "iu"
    held: Optional[dict] = {} if tags is not None else None

    def tag_set(root: int) -> frozenset:
        got = held.get(root)
        if got is None:
            node = int(touched[root])
            got = frozenset([int(tags[node])]) if int_tags else tags[node]
        return got

    order = live[np.lexsort((dst[live], src[live], dist[live]))]
    for e in order:
        ra, rb = uf.find(int(local[src[e]])), uf.find(int(local[dst[e]]))
        if ra == rb:
            continue
        ca, cb = acc[ra], acc[rb]
        cos = float(ca @ cb) / max(float(np.linalg.norm(ca)) * float(np.linalg.norm(cb)), 1e-12)
        if 1.0 - cos >= d:
            continue
        avg = 1.0 - float(unit[ra] @ unit[rb]) / (size[ra] * size[rb])
        if avg >= d:
            continue
        if held is not None:
            ta, tb = tag_set(ra), tag_set(rb)
            if not ta.isdisjoint(tb):
                continue
        linkage[e] = avg
        root = uf.union(ra, rb)
        acc[root] = ca + cb
        unit[root] = unit[ra] + unit[rb]
        size[root] = size[ra] + size[rb]
        accepted[e] = True
        if held is not None:
            held.pop(ra, None), held.pop(rb, None)
            held[root] = ta | tb
    # label per node: its set's smallest node id, numbered in order
    rep = np.arange(n, dtype=np.int64)
    if len(touched):
        roots = uf.roots()
        smallest = np.full(len(touched), n, dtype=np.int64)
        np.minimum.at(smallest, roots, touched)
        rep[touched] = smallest[roots]
    _, label = np.unique(rep, return_inverse=True)
    return MergeResult(label=label.astype(np.int64), accepted=accepted, linkage=linkage)


def weakest_link(label: np.ndarray, src: np.ndarray, dist: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Per component of ``label``, the largest distance among the links that built it (NaN for a single node)."""
    out = np.full(int(label.max()) + 1 if len(label) else 0, np.nan, dtype=np.float32)
    if accepted.any():
        comp = label[np.asarray(src)[accepted]]
        d = np.asarray(dist, np.float32)[accepted]
        cur = np.full(len(out), -np.inf, dtype=np.float32)
        np.maximum.at(cur, comp, d)
        out = np.where(np.isfinite(cur), cur, np.nan).astype(np.float32)
    return out


def pairs_under(c: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of normalised rows with cosine distance below d (for the few rows of one video)."""
    if len(c) < 2:
        e = np.zeros(0, dtype=np.int64)
        return e, e, np.zeros(0, dtype=np.float32)
    dm = 1.0 - c @ c.T
    i, j = np.triu_indices(len(c), k=1)
    ok = dm[i, j] < d
    return i[ok], j[ok], dm[i, j][ok].astype(np.float32)


def denoise_tracklets(
    x: np.ndarray,
    tracklet: np.ndarray,
    r: float,
    min_tracklet: int,
    frame: Optional[np.ndarray] = None,
    split_threshold: Optional[float] = None,
    min_segment: int = 4,
    cuts: Optional[list] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Level 1. Returns (group per image: the tracklet's index in ``np.unique(tracklet)`` or -1, reason code).

    With ``frame`` and ``split_threshold``, each tracklet is first cut where its appearance switches along time
    (``switches.switch_segments``); each piece is then its own tracklet (group numbers continue past the
    tracklets' count) and ``cuts`` (when given) receives ``(tracklet, frame where the piece starts, distance)``.
    """
    x = np.asarray(x, dtype=np.float32)
    keys, inv = np.unique(np.asarray(tracklet), return_inverse=True)
    group = np.full(len(x), -1, dtype=np.int64)
    reason = np.full(len(x), KEPT, dtype=np.int8)
    pieces = []
    for t in range(len(keys)):
        idx = np.flatnonzero(inv == t)
        if split_threshold is not None and frame is not None and len(idx) >= 2 * min_segment:
            idx = idx[np.argsort(frame[idx], kind="stable")]
            seg, made = switch_segments(x[idx], split_threshold, min_segment)
            if cuts is not None:
                cuts += [(keys[t], frame[idx[c]], dist) for c, dist in made]
            pieces += [(t, idx[seg == s]) for s in range(int(seg.max()) + 1)]
        else:
            pieces.append((t, idx))
    extra = len(keys)
    seen = set()
    for t, idx in pieces:
        g = t if t not in seen else extra
        if t in seen:
            extra += 1
        seen.add(t)
        keep = shrink_to_radius(x[idx], r)
        reason[idx[~keep]] = TRACKLET_OUTLIER
        if keep.sum() < min_tracklet:
            reason[idx[keep]] = TRACKLET_TOO_SMALL
        else:
            group[idx[keep]] = g
    return group, reason


@dataclass
class VideoResult:
    group: np.ndarray  # local identity per image (0..n_groups-1), -1 = removed
    reason: np.ndarray  # reason code per image (REASONS)
    n_groups: int
    cuts: list = field(default_factory=list)  # switch splits: (tracklet, frame where a piece starts, distance)


def _compact(group: np.ndarray) -> tuple[np.ndarray, int]:
    out = np.full(len(group), -1, dtype=np.int64)
    ok = group >= 0
    uniq, inv = np.unique(group[ok], return_inverse=True)
    out[ok] = inv
    return out, len(uniq)


def _frame_tags(group: np.ndarray, n: int, frame: Optional[np.ndarray]) -> Optional[list[frozenset]]:
    if frame is None:
        return None
    return [frozenset(frame[group == g].tolist()) for g in range(n)]


def denoise_video(
    x: np.ndarray,
    tracklet: np.ndarray,
    r: float,
    d: float,
    min_tracklet: int,
    frame: Optional[np.ndarray] = None,
    split: SwitchSplit = SwitchSplit(),
) -> VideoResult:
    """Levels 1 and 2 over the images of one video (rows of x, any order).

    ``frame`` (optional, the image's frame index) adds the tracker's strongest cue: one person is never twice in
    the same frame, so tracklets that share a frame are never merged and an image is never moved into a tracklet
    that already has an image of its frame. It also gives the time order in which tracklets are cut where their
    appearance switches (``split``, before the radius check; the cuts are returned).
    """
    x = np.asarray(x, dtype=np.float32)
    frame = None if frame is None else np.asarray(frame)
    cuts: list = []
    group, reason = denoise_tracklets(
        x, tracklet, r, min_tracklet, frame, split.factor * d if split.enabled else None, split.min_segment, cuts
    )
    group, n = _compact(group)

    # merge tracklets of the same person (centroids closer than d)
    if n > 1:
        sums = group_sums(x, group, n)
        i, j, dist = pairs_under(l2_normalise(sums), d)
        merged = guarded_merge(sums, i, j, dist, d, _frame_tags(group, n, frame))
        group = np.where(group >= 0, merged[np.maximum(group, 0)], -1)
        group, n = _compact(group)

    # reassign images removed at level 1 to the nearest tracklet of this video within r
    pool = np.flatnonzero(group < 0)
    if n > 0 and len(pool):
        cents = l2_normalise(group_sums(x, group, n))
        dist = 1.0 - x[pool] @ cents.T
        if frame is not None:
            tags = _frame_tags(group, n, frame)
            for row, img in enumerate(pool):
                for g in range(n):
                    if frame[img] in tags[g]:
                        dist[row, g] = np.inf
        best = np.argmin(dist, axis=1)
        ok = dist[np.arange(len(pool)), best] <= r
        group[pool[ok]] = best[ok]
        reason[pool[ok]] = KEPT

    # leftover removed images that agree among themselves form new tracklets (splits a mixed tracklet)
    pool = np.flatnonzero(group < 0)
    if len(pool) >= min_tracklet:
        xp = x[pool]
        i, j, dist = pairs_under(xp, d)
        tags = None if frame is None else [frozenset([f]) for f in frame[pool].tolist()]
        comp = guarded_merge(xp.astype(np.float64), i, j, dist, d, tags)
        for c in np.unique(comp):
            members = pool[comp == c]
            if len(members) < min_tracklet:
                continue
            keep = shrink_to_radius(x[members], r)
            if keep.sum() >= min_tracklet:
                group[members[keep]] = n
                reason[members[keep]] = KEPT
                n += 1

    # radius re-check on the merged tracklets
    for g in range(n):
        idx = np.flatnonzero(group == g)
        keep = shrink_to_radius(x[idx], r)
        if keep.sum() < min_tracklet:
            keep[:] = False
        group[idx[~keep]] = -1
        reason[idx[~keep]] = VIDEO_RADIUS
    group, n = _compact(group)
    return VideoResult(group=group, reason=reason, n_groups=n, cuts=cuts)

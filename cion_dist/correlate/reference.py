"""CION's three levels in one process over an in-memory corpus: the yardstick for the distributed stage.

Same pure functions as the stage, an in-process exact FAISS index per window instead of sharded actors, no Ray
and no IO. Tests assert that the stage's output equals this one's; the correlate benchmark times both.
"""

from __future__ import annotations

import numpy as np

from cion_dist.correlate.denoise import denoise_video, guarded_merge
from cion_dist.correlate.geometry import exact_knn, group_sums
from cion_dist.correlate.linking import IdentityResult, finalize_identities, links_from_knn, plan_windows
from cion_dist.correlate.switches import SwitchSplit
from cion_dist.vectors import l2_normalise


def correlate_in_process(
    x: np.ndarray,
    video: np.ndarray,
    tracklet: np.ndarray,
    r: float,
    d: float,
    *,
    window: int = 8,
    stride: int = 4,
    k: int = 10,
    min_tracklet: int = 2,
    min_images: int = 4,
    frame: np.ndarray | None = None,
    split: SwitchSplit = SwitchSplit(),
) -> IdentityResult:
    """Levels 1-3 over images whose videos come in corpus order (rows of one video need not be contiguous)."""
    videos = list(dict.fromkeys(np.asarray(video).tolist()))
    node_of = np.full(len(x), -1, dtype=np.int64)
    reason = np.zeros(len(x), np.int8)
    node_video, n = [], 0
    for vi, v in enumerate(videos):
        idx = np.flatnonzero(video == v)
        res = denoise_video(
            x[idx], tracklet[idx], r, d, min_tracklet, None if frame is None else frame[idx], split=split
        )
        node_of[idx] = np.where(res.group >= 0, res.group + n, -1)
        reason[idx] = res.reason
        node_video += [vi] * res.n_groups
        n += res.n_groups
    node_video = np.array(node_video, dtype=np.int64)
    sums = group_sums(x, node_of, n)
    cents = l2_normalise(sums)
    links = []
    for s, e in plan_windows(len(videos), window, stride):
        q = np.flatnonzero((node_video >= s) & (node_video < e))
        if len(q) < 2:
            continue
        sim, nb = exact_knn(cents[q], k + 1)
        links.append(links_from_knn(sim, np.where(nb >= 0, q[nb], -1), q, node_video, d))
    if links:
        src, dst, dist = (np.concatenate(p) for p in zip(*links))
    else:
        src = dst = np.zeros(0, np.int64)
        dist = np.zeros(0, np.float32)
    label = guarded_merge(sums, src, dst, dist, d, [frozenset([v]) for v in node_video.tolist()])
    return finalize_identities(x, node_of, label, reason, r, min_images)

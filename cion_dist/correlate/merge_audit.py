"""Merge audit of level 3: for every identity formed across videos, how close to the threshold its weakest link was.

A cross-video identity is held together by the links ``guarded_merge`` accepted. The weakest one says how much
the identity depends on the thresholds: its centroid distance (the largest accepted link distance) and the
average-linkage distance of the merge it made, both against ``d``. Identities whose margins are smallest are the
look-alike merges a user should check first (``cion inspect``). Pure numpy over per-node and per-link arrays the
stage already holds (a few bytes per level-2 identity and per link).
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def final_identity_of_labels(node_label: np.ndarray, node_of_image: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """Per merged set (``node_label`` value), the final identity most of its kept images carry (-1 for none)."""
    n = int(node_label.max()) + 1 if len(node_label) else 0
    out = np.full(n, -1, dtype=np.int64)
    ok = (node_of_image >= 0) & (identity >= 0)
    if not ok.any():
        return out
    lab = node_label[node_of_image[ok]]
    pairs, counts = np.unique(np.stack([lab, identity[ok]]), axis=1, return_counts=True)
    order = np.lexsort((-counts, pairs[0]))  # per label, the most frequent identity first
    first = np.unique(pairs[0][order], return_index=True)[1]
    out[pairs[0][order][first]] = pairs[1][order][first]
    return out


def audit_merges(
    node_label: np.ndarray,
    node_video: np.ndarray,
    src: np.ndarray,
    dist: np.ndarray,
    linkage: np.ndarray,
    d: float,
    identity_of_label: Optional[np.ndarray] = None,
    top: int = 10,
) -> dict:
    """Summary of the cross-video merges.

    ``linkage[e]`` is the average-linkage distance at which link ``e`` joined two sets, NaN where it joined
    nothing (``guarded_merge(..., linkage=...)``). Returns the number of merged sets spanning several videos and
    the ``top`` closest to the threshold (smallest margin ``d - weakest``), each with its final identity, videos,
    level-2 identities, weakest link distance and weakest average linkage.
    """
    node_label = np.asarray(node_label, np.int64)
    n_sets = int(node_label.max()) + 1 if len(node_label) else 0
    videos = np.zeros(n_sets, np.int64)
    if n_sets:
        pairs = np.unique(np.stack([node_label, np.asarray(node_video, np.int64)]), axis=1)
        videos = np.bincount(pairs[0], minlength=n_sets)
    nodes = np.bincount(node_label, minlength=n_sets) if n_sets else videos
    acc = np.isfinite(linkage)
    weakest = np.full(n_sets, -np.inf)
    weakest_avg = np.full(n_sets, -np.inf)
    if acc.any():
        comp = node_label[np.asarray(src, np.int64)[acc]]
        np.maximum.at(weakest, comp, np.asarray(dist, np.float64)[acc])
        np.maximum.at(weakest_avg, comp, np.asarray(linkage, np.float64)[acc])
    multi = np.flatnonzero(videos > 1)
    margin = d - np.maximum(weakest[multi], weakest_avg[multi])
    order = multi[np.argsort(margin, kind="stable")][:top]
    rows = []
    for s in order.tolist():
        rows.append(
            {
                "identity": int(identity_of_label[s]) if identity_of_label is not None else -1,
                "set": s,
                "videos": int(videos[s]),
                "level2_identities": int(nodes[s]),
                "weakest_link": round(float(weakest[s]), 4),
                "weakest_average_linkage": round(float(weakest_avg[s]), 4),
                "margin": round(float(d - max(weakest[s], weakest_avg[s])), 4),
            }
        )
    return {
        "identities_multi_video": int(len(multi)),
        "links_accepted": int(acc.sum()),
        "link_distance": float(d),
        "closest_to_threshold": rows,
    }


def format_audit(audit: dict) -> str:
    lines = [
        f"merge audit: {audit['identities_multi_video']} identities span several videos "
        f"({audit['links_accepted']} links accepted, d = {audit['link_distance']:.4f}); closest to the threshold:"
    ]
    for r in audit["closest_to_threshold"]:
        lines.append(
            f"  identity {r['identity']:>6}: {r['videos']} videos, {r['level2_identities']} level-2 "
            f"identities, weakest link {r['weakest_link']:.4f}, average linkage "
            f"{r['weakest_average_linkage']:.4f}, margin {r['margin']:.4f}"
        )
    return "\n".join(lines)

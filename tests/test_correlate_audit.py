"""Merge audit: the weakest accepted link of each cross-video identity, closest to the threshold first."""

from __future__ import annotations

import numpy as np
import pytest

from cion_dist.correlate.denoise import guarded_merge
from cion_dist.correlate.merge_audit import (
    audit_merges,
    final_identity_of_labels,
    format_audit,
)
from cion_dist.vectors import l2_normalise


def test_linkage_marks_exactly_the_accepted_links():
    rng = np.random.default_rng(0)
    a, b = l2_normalise(rng.normal(size=(2, 16)))
    x = l2_normalise(np.vstack([a + 0.05 * rng.normal(size=(3, 16)), b + 0.05 * rng.normal(size=(2, 16))]))
    src = np.array([0, 1, 0, 3, 0])
    dst = np.array([1, 2, 2, 4, 3])
    dist = 1.0 - np.sum(x[src] * x[dst], axis=1)
    linkage = np.zeros(len(src))
    label = guarded_merge(x.astype(np.float64), src, dst, dist, 0.3, linkage=linkage)
    assert label.tolist() == [0, 0, 0, 1, 1]
    acc = np.isfinite(linkage)
    # a tree over {0,1,2} needs 2 of its 3 links; {3,4} one; the a-b link is refused
    assert acc.sum() == 3 and not acc[4] and acc[3]
    assert np.all(linkage[acc] < 0.3) and np.all(linkage[acc] >= dist[acc] - 1e-6)
    # labels do not depend on asking for the audit
    assert guarded_merge(x.astype(np.float64), src, dst, dist, 0.3).tolist() == label.tolist()


def test_audit_ranks_cross_video_identities_by_margin():
    # sets: {0,1} over videos 0-1 (weak link 0.18), {2,3,4} over videos 0,1,2 (links 0.05, 0.08), {5} alone,
    # {6,7} in one video (not cross-video)
    node_label = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    node_video = np.array([0, 1, 0, 1, 2, 2, 0, 0])
    src = np.array([0, 2, 3, 6, 0])
    dist = np.array([0.18, 0.05, 0.08, 0.02, 0.25])
    linkage = np.array([0.19, 0.06, 0.10, 0.03, np.nan])
    ident = final_identity_of_labels(node_label, np.array([0, 0, 1, 2, 3, -1]), np.array([7, 7, 7, 9, 9, 5]))
    assert ident.tolist() == [7, 9, -1, -1]
    audit = audit_merges(node_label, node_video, src, dist, linkage, 0.2, ident, top=5)
    assert audit["identities_multi_video"] == 2 and audit["links_accepted"] == 4
    first, second = audit["closest_to_threshold"]
    assert (first["identity"], first["videos"], first["weakest_link"]) == (7, 2, 0.18)
    assert first["margin"] == pytest.approx(0.01) and first["weakest_average_linkage"] == pytest.approx(0.19)
    assert (second["identity"], second["videos"], second["level2_identities"]) == (9, 3, 3)
    assert second["margin"] == pytest.approx(0.1)
    text = format_audit(audit)
    assert "2 identities span several videos" in text and "margin 0.0100" in text

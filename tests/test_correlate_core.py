"""Pure denoising, linking, calibration, metric and baseline functions on constructed vectors."""

from __future__ import annotations

import numpy as np
import pytest
from correlate_fixtures import make_corpus
from sklearn.metrics import normalized_mutual_info_score

from cion_dist.correlate import baselines, quality
from cion_dist.correlate.calibrate import (
    calibrate,
    nearest_cross_video_distances,
    otsu_threshold,
    tracker_disagreements,
)
from cion_dist.correlate.denoise import (
    IDENTITY_RADIUS,
    IDENTITY_TOO_SMALL,
    KEPT,
    TRACKLET_OUTLIER,
    TRACKLET_TOO_SMALL,
    VIDEO_RADIUS,
    denoise_tracklets,
    denoise_video,
    guarded_merge,
    shrink_to_radius,
)
from cion_dist.correlate.geometry import centroid, distance_to
from cion_dist.correlate.linking import dedupe_links, finalize_identities, links_from_knn, plan_windows
from cion_dist.correlate.unionfind import UnionFind
from cion_dist.vectors import l2_normalise

DIM = 32


def _person(rng, n, base=None, spread=0.15):
    base = l2_normalise(rng.normal(size=DIM)) if base is None else base
    return l2_normalise(base + spread * rng.normal(size=(n, DIM)) / np.sqrt(DIM)), base


def test_shrink_removes_far_image_and_recomputes_centroid():
    rng = np.random.default_rng(0)
    x, base = _person(rng, 10)
    far = l2_normalise(-base + 0.1 * rng.normal(size=DIM))
    keep = shrink_to_radius(np.vstack([x, far]), r=0.05)
    assert not keep[-1] and keep[:-1].all()
    kept = np.vstack([x, far])[keep]
    assert distance_to(kept, centroid(kept)).max() <= 0.05
    assert shrink_to_radius(x[:1], 0.01).all()  # a single image is self-consistent


def test_level1_far_image_removed_with_reason_and_small_tracklet_dropped():
    rng = np.random.default_rng(1)
    a, base = _person(rng, 8)
    junk = l2_normalise(rng.normal(size=(1, DIM)))
    b, _ = _person(rng, 1)
    x = np.vstack([a, junk, b])
    trk = np.array([0] * 9 + [1])
    group, reason = denoise_tracklets(x, trk, r=0.05, min_tracklet=2)
    assert reason[8] == TRACKLET_OUTLIER and group[8] == -1
    assert reason[9] == TRACKLET_TOO_SMALL and group[9] == -1
    assert (reason[:8] == KEPT).all() and (group[:8] == 0).all()


def test_mixed_tracklet_is_split_and_fragments_merge():
    rng = np.random.default_rng(2)
    a, _ = _person(rng, 12)
    b, _ = _person(rng, 7)
    c1, cb = _person(rng, 6)
    c2, _ = _person(rng, 6, base=cb)
    # tracklet 0 mixes A (12) and B (7); person C is cut into tracklets 1 and 2
    x = np.vstack([a, b, c1, c2])
    trk = np.array([0] * 19 + [1] * 6 + [2] * 6)
    true = np.array([0] * 12 + [1] * 7 + [2] * 12)
    res = denoise_video(x, trk, r=0.05, d=0.3, min_tracklet=2)
    assert res.n_groups == 3
    assert (res.group >= 0).all()
    # each true person maps to exactly one group and no group holds two people
    for t in range(3):
        assert len(np.unique(res.group[true == t])) == 1
    assert len(np.unique(res.group)) == 3


def test_reassigned_image_rejoins_its_person():
    rng = np.random.default_rng(3)
    a, _ = _person(rng, 10)
    b, _ = _person(rng, 10)
    # one of B's images was put in A's tracklet by the tracker
    x = np.vstack([a, b[:1], b[1:]])
    trk = np.array([0] * 11 + [1] * 9)
    res = denoise_video(x, trk, r=0.05, d=0.3, min_tracklet=2)
    assert res.group[10] == res.group[11] != res.group[0]
    assert res.reason[10] == KEPT


def test_video_radius_recheck_after_merge():
    # two tracklets whose centroids are within d but whose images do not all fit r around the merged centroid
    e = np.eye(DIM, dtype=np.float32)
    u = l2_normalise(e[0] + 0.30 * e[1])
    v = l2_normalise(e[0] - 0.30 * e[1])
    x = np.vstack([np.repeat(u[None], 5, 0), np.repeat(v[None], 3, 0)])
    trk = np.array([0] * 5 + [1] * 3)
    res = denoise_video(x, trk, r=0.02, d=0.2, min_tracklet=2)
    assert (res.reason[5:] == VIDEO_RADIUS).all() and (res.group[5:] == -1).all()
    assert (res.group[:5] == 0).all()


def test_union_find_and_guarded_merge_link_across_windows_transitively():
    uf = UnionFind(5)
    uf.union(0, 1)
    uf.union(3, 4)
    uf.union(1, 3)
    assert uf.labels().tolist() == [0, 0, 1, 0, 0]  # 2 stays alone

    # A (video 0), B (video 1), C (video 2): windows of 2 videos see A-B then B-C, never A-C
    e = np.eye(DIM, dtype=np.float32)
    a, b, c = (l2_normalise(e[0] + t * e[1]) for t in (0.0, 0.15, 0.30))
    far = e[5]
    cents = np.vstack([a, b, c, far])
    video = np.array([0, 1, 2, 2])
    links = []
    for lo, hi in [(0, 2), (1, 4)]:
        q = np.arange(lo, hi)
        sims = cents[q] @ cents[q].T
        order = np.argsort(-sims, axis=1)
        links.append(links_from_knn(np.take_along_axis(sims, order, 1), q[order], q, video, d=0.05))
    src, dst, dist = dedupe_links(*(np.concatenate(p) for p in zip(*links)))
    assert (0, 2) not in set(zip(src.tolist(), dst.tolist()))
    labels = guarded_merge(cents * 5.0, src, dst, dist, d=0.05)
    assert labels[0] == labels[1] == labels[2] != labels[3]


def test_guarded_merge_needs_average_linkage_not_one_close_pair():
    """Two people seen in two videos each, one heavy member each: their pooled centroids are close, the members'
    average distance is not, so the sets stay apart."""
    ang = np.deg2rad([0.0, 10.0, 22.0, 32.0])  # A1, A2 | B1, B2: A and B pairs 10 degrees apart, A2-B1 12
    nodes = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    sums = nodes * np.array([[1.0], [40.0], [40.0], [1.0]])  # A2 and B1 hold most images
    d = 0.05  # about 18 degrees
    src, dst = np.array([0, 2, 1]), np.array([1, 3, 2])
    dist = (1 - np.einsum("ij,ij->i", nodes[src], nodes[dst])).astype(np.float32)
    pooled = 1 - l2_normalise(sums[:2].sum(0)) @ l2_normalise(sums[2:].sum(0))
    average = np.mean(1 - nodes[:2] @ nodes[2:].T)
    assert pooled < d < average
    labels = guarded_merge(sums, src, dst, dist, d)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]


def test_guarded_merge_refuses_a_chain_of_far_ends():
    e = np.eye(DIM, dtype=np.float32)
    pts = np.vstack([l2_normalise(e[0] + t * e[1]) for t in (0.0, 0.45, 0.9, 1.35)])
    i, j = np.array([0, 1, 2]), np.array([1, 2, 3])
    dist = (1 - np.einsum("ij,ij->i", pts[i], pts[j])).astype(np.float32)
    d = float(dist.max()) + 1e-3
    chained = UnionFind(4)
    for a, b in zip(i, j):
        chained.union(int(a), int(b))
    assert len(set(chained.labels())) == 1  # plain union-find chains all four
    assert len(set(guarded_merge(pts, i, j, dist, d))) > 1


def test_links_are_cross_video_under_d_and_mutual_option():
    sim = np.array([[0.99, 0.97], [0.99, 0.90], [0.97, 0.10]], dtype=np.float32)
    nbr = np.array([[1, 2], [0, 2], [0, 1]])
    video = np.array([0, 1, 1])
    s, d_, _ = links_from_knn(sim, nbr, np.arange(3), video, d=0.05)
    assert set(zip(s.tolist(), d_.tolist())) == {(0, 1), (0, 2)}  # (1, 2): same video
    sim2 = np.array([[0.99, 0.97], [0.99, 0.5], [0.5, 0.4]], dtype=np.float32)
    nbr2 = np.array([[1, 2], [0, 2], [1, 0]])
    s, d_, _ = links_from_knn(sim2, nbr2, np.arange(3), np.array([0, 1, 2]), d=0.05, mutual=True)
    assert set(zip(s.tolist(), d_.tolist())) == {(0, 1)}  # 0->2 is not returned by 2


def test_plan_windows_cover_and_overlap():
    assert plan_windows(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert plan_windows(9, 4, 3) == [(0, 4), (3, 7), (5, 9)]
    assert plan_windows(3, 8, 4) == [(0, 3)]
    covered = set()
    for s, e in plan_windows(23, 5, 3):
        covered |= set(range(s, e))
    assert covered == set(range(23))


def test_finalize_radius_and_min_images():
    rng = np.random.default_rng(5)
    a, base = _person(rng, 6)
    b, _ = _person(rng, 3)
    out = l2_normalise(-base)
    x = np.vstack([a, out, b])
    node_of = np.array([0] * 6 + [1] + [2] * 3)
    label = np.array([0, 0, 1])  # node 1 (the opposite vector) was merged into A
    res = finalize_identities(x, node_of, label, np.zeros(10, np.int8), r=0.05, min_images=4)
    assert res.reason[6] == IDENTITY_RADIUS and res.identity[6] == -1
    assert (res.reason[7:] == IDENTITY_TOO_SMALL).all()
    assert (res.identity[:6] == 0).all() and res.n_identities == 1


def test_calibration_is_sane_on_clustered_corpus():
    c = make_corpus(seed=7)
    key = np.char.add(c.video, c.tracklet.astype(str))
    cal = calibrate(c.x, key)
    # within-person image-centroid distances of clean tracklets lie below r; different people's centroids beyond d
    true_cents = l2_normalise(np.vstack([c.x[c.identity == p].mean(0) for p in np.unique(c.identity)]))
    between = 1 - true_cents @ true_cents.T
    np.fill_diagonal(between, 2)
    assert cal.radius <= cal.link_distance < between.min(axis=1).mean()
    own = 1 - np.einsum("ij,ij->i", c.x, true_cents[np.searchsorted(np.unique(c.identity), c.identity)])
    assert np.quantile(own, 0.5) < cal.radius
    # this tracker is dirty (junk boxes, switches): the 0.98 quantile lies in the junk, so d caps r
    assert cal.radius_stats["quantile"] > cal.link_distance == cal.radius
    # with the video ids, d only looks across videos and still separates people
    cal_v = calibrate(c.x, key, c.video)
    assert cal_v.link_distance < between.min(axis=1).mean()
    assert otsu_threshold(np.r_[np.full(50, 0.1), np.full(50, 0.9)]) == pytest.approx(0.5, abs=0.01)


def test_radius_is_a_quantile_of_a_clean_tracker():
    """A clean tracker (one person per tracklet, no junk) loses about 1 - radius_quantile of its images."""
    c = make_corpus(seed=3, mix_prob=0.0, split_prob=0.0, outlier_prob=0.0)
    key = np.char.add(c.video, c.tracklet.astype(str))
    cal = calibrate(c.x, key, c.video, radius_quantile=0.95)
    assert cal.radius < cal.link_distance
    assert cal.radius_stats["kept_by_radius"] == pytest.approx(0.95, abs=0.01)


def test_tracker_disagreements_find_switches_and_keep_them_out_of_the_radius():
    """Images swallowed from another person are closer to that person's tracklet: they are flagged, and r is read
    off the rest, so a switch-heavy tracker does not widen r the way a clean tracker's long tail does."""
    dirty = make_corpus(seed=5, mix_prob=0.6, split_prob=0.0, outlier_prob=0.0)
    clean = make_corpus(seed=5, mix_prob=0.0, split_prob=0.0, outlier_prob=0.0)
    for c in (dirty, clean):
        c.key = np.char.add(c.video, c.tracklet.astype(str))
    flag = tracker_disagreements(dirty.x, dirty.key, dirty.video)
    majority = {}
    for k in np.unique(dirty.key):
        ids, n = np.unique(dirty.identity[dirty.key == k], return_counts=True)
        majority[k] = ids[n.argmax()]
    switched = dirty.identity != np.array([majority[k] for k in dirty.key])
    assert switched.mean() > 0.05
    assert flag[switched].mean() > 0.8 and flag[~switched].mean() < 0.05
    assert tracker_disagreements(clean.x, clean.key, clean.video).mean() < 0.02
    cal = calibrate(dirty.x, dirty.key, dirty.video)
    assert cal.radius_stats["tracker_disagreements"] == pytest.approx(flag.mean(), abs=1e-6)
    naive = np.quantile(
        1
        - np.einsum("ij,ij->i", dirty.x, l2_normalise(np.vstack([dirty.x[dirty.key == k].sum(0) for k in dirty.key]))),
        0.98,
    )
    assert cal.radius < naive


def test_nearest_cross_video_distances_skip_own_video():
    cents = l2_normalise(np.array([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.6, 0.8]]))
    video = np.array(["a", "a", "b", "b"])
    got = nearest_cross_video_distances(cents, video, k=1)
    # row 0's nearest is row 1 (same video): skipped, its nearest other-video centroid is row 3
    want = [1 - cents[0] @ cents[3], 1 - cents[1] @ cents[3], 1 - cents[2] @ cents[1], 1 - cents[3] @ cents[1]]
    assert np.sort(got) == pytest.approx(np.sort(want), abs=1e-5)


def test_pairwise_bcubed_nmi_hand_computed():
    true = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 1])
    # true pairs: 3 + 1 = 4; predicted pairs: 1 + 3 = 4; common: (0,1) and (3,4) = 2
    assert quality.pairwise_prf(true, pred) == pytest.approx((0.5, 0.5, 0.5))
    # BCubed precision: items 0,1: 1; item 2: 1/3; items 3,4: 2/3 -> (2 + 1/3 + 4/3)/5
    p, r, f = quality.bcubed_prf(true, pred)
    assert p == pytest.approx((2 + 1 / 3 + 4 / 3) / 5)
    assert r == pytest.approx((2 * 2 / 3 + 1 / 3 + 2 * 1) / 5)  # item 2: 1 of its class of 3
    rng = np.random.default_rng(0)
    t, q = rng.integers(0, 5, 200), rng.integers(0, 7, 200)
    assert quality.nmi(t, q) == pytest.approx(normalized_mutual_info_score(t, q))
    assert quality.nmi(true, true) == pytest.approx(1.0)
    s = quality.score(true, np.array([0, 0, -1, 1, 1]))
    assert s["pairwise_precision"] == 1.0 and s["pairwise_recall"] == pytest.approx(0.5)
    assert s["kept_fraction"] == pytest.approx(0.8) and s["clusters"] == 2


def test_baselines_on_separated_blobs():
    rng = np.random.default_rng(4)
    blobs = [_person(rng, 15, spread=0.1)[0] for _ in range(4)]
    x = np.vstack(blobs)
    true = np.repeat(np.arange(4), 15)
    db = baselines.dbscan_knn(x, eps=0.05, min_samples=3, k=10)
    assert quality.score(true, db)["pairwise_f"] == pytest.approx(1.0)
    parts = baselines.finch_hierarchy(x)
    counts = [len(np.unique(p)) for p in parts]
    assert counts == sorted(counts, reverse=True) and 4 in counts
    labels, level = baselines.finch(x, 4)
    assert quality.score(true, labels)["pairwise_f"] == pytest.approx(1.0)
    trk = baselines.tracklet_identity(np.array(["a", "a", "b"]), np.array([1, 2, 1]))
    assert len(np.unique(trk)) == 3


def test_number_identities_matches_a_sort_based_reference():
    from cion_dist.correlate.denoise import IDENTITY_TOO_SMALL
    from cion_dist.correlate.linking import number_identities

    rng = np.random.default_rng(5)
    ident = rng.integers(0, 150, 400) * 7  # sparse labels, about two images each: many below the minimum size
    ident[rng.random(400) < 0.2] = -1
    reason = np.zeros(400, np.int8)
    got = number_identities(ident, reason, min_images=3)
    labels, counts = np.unique(ident[ident >= 0], return_counts=True)  # the former sort-based numbering
    small = np.isin(ident, labels[counts < 3])
    kept = np.where(small, -1, ident)
    want = np.full(400, -1)
    ok = np.flatnonzero(kept >= 0)
    uniq, first, inv = np.unique(kept[ok], return_index=True, return_inverse=True)
    want[ok] = np.argsort(np.argsort(first))[inv]
    assert np.array_equal(got.identity, want) and got.n_identities == len(uniq) > 10
    assert 0 < small.sum() < (ident >= 0).sum()
    assert np.array_equal(got.reason == IDENTITY_TOO_SMALL, small)

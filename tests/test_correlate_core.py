"""Pure denoising, linking, calibration, metric and baseline functions on constructed vectors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from cion_dist.correlate import baselines, quality
from cion_dist.correlate.calibrate import calibrate, otsu_threshold, robust_upper
from cion_dist.correlate.denoise import (
    IDENTITY_RADIUS, IDENTITY_TOO_SMALL, KEPT, TRACKLET_OUTLIER, TRACKLET_TOO_SMALL, VIDEO_RADIUS,
    denoise_tracklets, denoise_video, guarded_merge, shrink_to_radius,
)
from cion_dist.correlate.geometry import centroid, distance_to, l2_normalise
from cion_dist.correlate.linking import dedupe_links, finalize_identities, links_from_knn, plan_windows
from cion_dist.correlate.unionfind import UnionFind
from correlate_fixtures import make_corpus

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
    assert cal.radius < cal.link_distance < between.min(axis=1).mean()
    own = 1 - np.einsum("ij,ij->i", c.x, true_cents[np.searchsorted(np.unique(c.identity), c.identity)])
    assert np.quantile(own, 0.5) < cal.radius
    assert otsu_threshold(np.r_[np.full(50, 0.1), np.full(50, 0.9)]) == pytest.approx(0.5, abs=0.01)
    assert robust_upper(np.r_[np.zeros(80), np.ones(20) * 100], 3.0) == 0.0


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

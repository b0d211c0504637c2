"""Re-ID metrics: hand-computed cases (ignored same-camera matches, ties, queries without a match), the chunked
feature path against a per-query reference loop, and k-reciprocal re-ranking."""

import numpy as np
import pytest
import torch

from cion_dist.evaluate.metrics import evaluate_distances, evaluate_features, naive_metrics
from cion_dist.evaluate.rerank import k_reciprocal_distances

# gallery: g0 pid1 cam0, g1 pid2 cam1, g2 pid1 cam1, g3 pid3 cam1, g4 pid1 cam2
G_PIDS = [1, 2, 1, 3, 1]
G_CAMS = [0, 1, 1, 1, 2]
Q_PIDS = [1, 4, 2, 3]
Q_CAMS = [0, 0, 0, 0]
DIST = np.array(
    [
        [0.1, 0.2, 0.3, 0.4, 0.5],  # g0 ignored (same pid+cam): g1 -, g2 + (rank 2), g3 -, g4 + (rank 4)
        [0.1, 0.2, 0.3, 0.4, 0.5],  # pid 4 has no gallery image: skipped
        [0.9, 0.1, 0.5, 0.5, 0.7],  # g1 + at rank 1
        [0.5, 0.5, 0.5, 0.5, 0.5],  # all tied: gallery order kept, g3 + at rank 4
    ]
)


@pytest.mark.parametrize("ranking", ["count", "sort"])
def test_hand_computed_case(ranking):
    m = evaluate_distances(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, ranking=ranking)
    assert m.num_queries == 4 and m.num_valid == 3 and m.num_skipped == 1
    # APs: q0 = (1/2 + 2/4)/2 = 0.5, q2 = 1, q3 = 1/4
    assert m.mAP == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    # INP = matches / rank of last match: q0 2/4, q2 1/1, q3 1/4
    assert m.mINP == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    assert m.cmc == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
    assert m.rank1 == pytest.approx(1 / 3) and m.rank5 == pytest.approx(1.0)
    assert m.rank10 == pytest.approx(1.0)  # ranks beyond the table clamp to its last column


def test_reference_loop_agrees_on_hand_case():
    ref = naive_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    assert ref.mAP == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    assert ref.num_skipped == 1


def test_same_camera_match_is_not_a_hit():
    # the only same-pid gallery image shares the query camera -> the query has no valid match
    m = evaluate_distances([[0.0, 1.0]], [7], [7, 8], [2], [2, 0], max_rank=1)
    assert m.num_valid == 0 and m.num_skipped == 1 and np.isnan(m.mAP)


def test_all_queries_perfect():
    d = np.array([[0.0, 1.0], [1.0, 0.0]])
    m = evaluate_distances(d, [1, 2], [1, 2], [0, 0], [1, 1])
    assert m.mAP == 1.0 and m.rank1 == 1.0 and m.mINP == 1.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_features_match_reference(metric, chunk):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 15, size=120)
    centres = rng.normal(size=(15, 16))
    feats = centres[ids] + 0.9 * rng.normal(size=(120, 16))
    cams = rng.integers(0, 3, size=120)
    q, g = slice(0, 40), slice(40, 120)
    m = evaluate_features(feats[q], feats[g], ids[q], ids[g], cams[q], cams[g], metric=metric, chunk_size=chunk)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    if metric == "cosine":
        d = 1 - f[q] @ f[g].T
    else:
        d = ((f[q][:, None, :] - f[g][None, :, :]) ** 2).sum(-1)
    ref = naive_metrics(d, ids[q], ids[g], cams[q], cams[g])
    assert m.num_valid == ref.num_valid and m.num_valid > 30
    assert m.mAP == pytest.approx(ref.mAP, abs=1e-6)
    assert m.mINP == pytest.approx(ref.mINP, abs=1e-6)
    assert m.cmc == pytest.approx(ref.cmc, abs=1e-9)
    assert 0.0 < m.mAP < 1.0


@pytest.mark.parametrize("levels", [3, 1000])
def test_counting_and_sorting_agree_with_many_ties(levels):
    # distances quantised to a few levels: most comparisons are exact ties, settled by gallery index
    rng = np.random.default_rng(levels)
    q, g = 60, 90
    d = rng.integers(0, levels, size=(q, g)).astype(np.float32)
    qp, gp = rng.integers(0, 8, q), rng.integers(0, 8, g)
    qc, gc = rng.integers(0, 3, q), rng.integers(0, 3, g)
    a = evaluate_distances(d, qp, gp, qc, gc, ranking="count")
    b = evaluate_distances(d, qp, gp, qc, gc, ranking="sort")
    ref = naive_metrics(d, qp, gp, qc, gc)
    for m in (a, b):
        assert m.num_valid == ref.num_valid
        assert m.mAP == pytest.approx(ref.mAP, abs=1e-6) and m.mINP == pytest.approx(ref.mINP, abs=1e-6)
        assert m.cmc == pytest.approx(ref.cmc, abs=1e-12)


def test_faiss_backend_matches_torch():
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    qp, gp = rng.integers(0, 5, 30), rng.integers(0, 5, 50)
    qc, gc = np.zeros(30, int), np.ones(50, int)
    a = evaluate_features(qf, gf, qp, gp, qc, gc, backend="torch", chunk_size=8)
    b = evaluate_features(qf, gf, qp, gp, qc, gc, backend="faiss", chunk_size=8)
    assert a.mAP == pytest.approx(b.mAP, abs=1e-5) and a.cmc == pytest.approx(b.cmc)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="gallery rows"):
        evaluate_distances(np.zeros((1, 3)), [1], [1, 2], [0], [0, 0])
    with pytest.raises(ValueError, match="feature shapes"):
        evaluate_features(np.zeros((2, 4)), np.zeros((3, 5)), [1, 2], [1, 2, 3], [0, 0], [0, 0, 0])


def _clusters(seed=0, n_ids=12, per_id=6, dim=12, noise=0.8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    ids = np.repeat(np.arange(n_ids), per_id)
    feats = centres[ids] + noise * rng.normal(size=(len(ids), dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    cams = np.tile(np.arange(per_id), n_ids)
    qmask = cams == 0
    return feats[qmask], feats[~qmask], ids[qmask], ids[~qmask], cams[qmask], cams[~qmask]


def test_rerank_lambda_one_keeps_original_order():
    qf, gf, *_ = _clusters()
    d = k_reciprocal_distances(qf, gf, k1=5, k2=3, lambda_value=1.0)
    orig = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    assert d.shape == (len(qf), len(gf))
    assert np.array_equal(np.argsort(d, axis=1, kind="stable"), np.argsort(orig, axis=1, kind="stable"))


def test_rerank_improves_map_on_noisy_clusters():
    qf, gf, qp, gp, qc, gc = _clusters(noise=1.1)
    before = evaluate_features(qf, gf, qp, gp, qc, gc)
    d = k_reciprocal_distances(qf, gf, k1=6, k2=3, lambda_value=0.3)
    after = evaluate_distances(d, qp, gp, qc, gc)
    assert after.num_valid == before.num_valid == len(qp)
    assert after.mAP > before.mAP


def test_rerank_jaccard_of_identical_neighbourhoods_is_zero():
    # two tight, far-apart groups: a query's reciprocal set equals its group's, so Jaccard to members is ~0
    # (not exactly: the exp(-d) weights differ by the tiny in-group distances)
    a = np.tile([1.0, 0.0], (4, 1)) + 1e-3 * np.arange(4)[:, None]
    b = np.tile([0.0, 1.0], (4, 1)) + 1e-3 * np.arange(4)[:, None]
    qf = np.stack([a[0], b[0]])
    gf = np.concatenate([a[1:], b[1:]])
    d = k_reciprocal_distances(qf, gf, k1=3, k2=1, lambda_value=0.0)
    assert torch.allclose(torch.tensor(d[0, :3]), torch.zeros(3), atol=1e-4)
    assert np.all(d[0, 3:] == pytest.approx(1.0))

"""Blocked k-reciprocal re-ranking (top-k graph, sparse weight vectors) equals the dense (Q + G)^2 form."""

from __future__ import annotations

import numpy as np
import pytest

from cion_dist.evaluate.rerank import k_reciprocal_blocks, k_reciprocal_distances, k_reciprocal_distances_dense


def _fixed_input(ids=80, per_id=6, dim=32, noise=1.0, seed=3):
    """Clustered unit vectors, one query per identity and the rest gallery (a fixed seed: the same input each run)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    lab = np.repeat(np.arange(ids), per_id)
    f = centres[lab] + noise * rng.normal(size=(len(lab), dim))
    f = (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)
    q = np.arange(0, len(f), per_id)
    return f[q], np.delete(f, q, axis=0)


@pytest.mark.parametrize("k1,k2,lam,block", [(20, 6, 0.3, 64), (20, 1, 0.3, 1000), (7, 3, 0.0, 13)])
def test_blocked_equals_dense(k1, k2, lam, block):
    qf, gf = _fixed_input()
    dense = k_reciprocal_distances_dense(qf, gf, k1, k2, lam)
    blocked = k_reciprocal_distances(qf, gf, k1, k2, lam, block=block)
    assert blocked.shape == dense.shape == (80, 400) and blocked.dtype == np.float32
    np.testing.assert_allclose(blocked, dense, rtol=0, atol=1e-5)
    # the rankings a re-ID metric reads are the same
    assert (np.argsort(blocked, axis=1, kind="stable") == np.argsort(dense, axis=1, kind="stable")).mean() > 0.999
    # re-ranking changed something: the Jaccard term is not the original distance
    if lam < 1:
        orig = ((qf[:, None] - gf[None]) ** 2).sum(-1)
        assert np.abs(np.corrcoef(blocked.ravel(), orig.ravel())[0, 1]) < 0.999


def test_blocks_cover_every_query_once():
    qf, gf = _fixed_input(ids=30)
    seen = [(s, part.shape) for s, part in k_reciprocal_blocks(qf, gf, 10, 3, 0.3, block=7)]
    assert [s for s, _ in seen] == list(range(0, 30, 7))
    assert sum(shape[0] for _, shape in seen) == 30 and all(shape[1] == 150 for _, shape in seen)

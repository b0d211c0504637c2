"""ShardedKnnIndex on the shared local Ray instance: exact mode equals one in-process IndexFlatIP."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from cion_dist.correlate.knn_index import ShardedKnnIndex, drop_self
from cion_dist.errors import ConfigError
from cion_dist.vectors import l2_normalise


def clustered(n, dim, centres=50, seed=0):
    rng = np.random.default_rng(seed)
    c = l2_normalise(rng.normal(size=(centres, dim)))
    return l2_normalise(c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim)) / np.sqrt(dim))


def assert_same_topk(sim, ids, ref_sim, ref_ids):
    np.testing.assert_allclose(sim, ref_sim, rtol=0, atol=1e-5)
    differ = ids != ref_ids
    # an id may differ only where two candidates tie in similarity
    assert np.all(np.abs(sim[differ] - ref_sim[differ]) < 1e-5)
    assert differ.mean() < 0.01


@pytest.mark.parametrize("shards", [1, 3])
def test_sharded_flat_equals_single_index(ray_local, shards):
    x = clustered(3000, 48)
    index = ShardedKnnIndex(x, num_shards=shards, kind="flat")
    try:
        sim, ids = index.search(x[:700], 12, batch=256)
        ref = faiss.IndexFlatIP(48)
        ref.add(x)
        ref_sim, ref_ids = ref.search(x[:700], 12)
        assert_same_topk(sim, ids, ref_sim, ref_ids)

        # a window: contiguous id range, as level 3 uses it
        sim_w, ids_w = index.search(x[:50], 5, id_range=(900, 2100))
        sub = faiss.IndexFlatIP(48)
        sub.add(x[900:2100])
        rs, ri = sub.search(x[:50], 5)
        assert_same_topk(sim_w, ids_w, rs, ri + 900)

        # whole-corpus graph without self matches
        gs, gi = index.knn_graph(5, x[:200])
        assert not (gi == np.arange(200)[:, None]).any()
        es, ei = drop_self(ref_sim[:200], ref_ids[:200], np.arange(200), 5)
        np.testing.assert_allclose(gs, es, atol=1e-5)
    finally:
        index.close()


def test_ivf_is_approximate_but_close(ray_local):
    x = clustered(4000, 32, centres=40, seed=1)
    ref = faiss.IndexFlatIP(32)
    ref.add(x)
    _, ref_ids = ref.search(x[:300], 10)
    index = ShardedKnnIndex(x, num_shards=2, kind="ivf", nlist=16, nprobe=4)
    try:
        _, ids = index.search(x[:300], 10)
    finally:
        index.close()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref_ids)])
    assert 0.5 < recall <= 1.0


def test_fewer_rows_than_k_pads_with_minus_one(ray_local):
    x = clustered(5, 8, centres=2)
    index = ShardedKnnIndex(x, num_shards=2)
    try:
        sim, ids = index.search(x, 8)
    finally:
        index.close()
    assert (ids[:, :5] >= 0).all() and (ids[:, 5:] == -1).all()
    assert sorted(ids[0, :5].tolist()) == list(range(5))


def test_unplaceable_shards_are_a_config_error(ray_local):
    with pytest.raises(ConfigError, match="num_shards=2 x correlate.shard_cpus=64"):
        ShardedKnnIndex(clustered(10, 8), num_shards=2, shard_cpus=64, ready_timeout_s=2)

"""ShardedKnnIndex over a real 2-node Ray cluster (ray.cluster_utils.Cluster): shards spread, results exact."""

from __future__ import annotations

import faiss
import pytest

pytestmark = pytest.mark.slow


def test_sharded_index_on_two_nodes_equals_single_index():
    import ray
    from ray.cluster_utils import Cluster
    from test_correlate_knn import assert_same_topk, clustered

    from cion_dist.correlate.knn_index import ShardedKnnIndex

    if ray.is_initialized():
        ray.shutdown()  # the shared local instance; ray_local restarts it for later tests
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        x = clustered(4000, 64, seed=3)
        index = ShardedKnnIndex(x, num_shards=2, kind="flat")
        try:
            nodes = ray.get(
                [s.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()) for s in index.shards]
            )
            assert len(set(nodes)) == 2  # SPREAD put one shard on each node
            sim, ids = index.search(x[:1000], 10, batch=300)
        finally:
            index.close()
        ref = faiss.IndexFlatIP(64)
        ref.add(x)
        assert_same_topk(sim, ids, *ref.search(x[:1000], 10))
    finally:
        ray.shutdown()
        cluster.shutdown()

"""A FAISS index split into shards held by Ray actors: k-NN search over more vectors than one process holds.

Rows are dealt out round-robin (striped): shard ``s`` of ``S`` holds global rows ``s, s + S, s + 2S, ...``, so its
local id ``j`` is global id ``j * S + s``. Every shard thus holds a slice of every region of the corpus, and a
search restricted to one region (a level-3 window) really fans out over all shards; with contiguous blocks one
shard held the whole window and the others answered empty.
The shard actors sit in a placement group with the SPREAD strategy (one bundle each), so on a cluster they land on
different nodes. Every query batch goes to every shard; the per-shard top-k lists are merged into the global
top-k with ``faiss.ResultHeap`` (max-heap on inner products). An optional ``id_range`` restricts a search to a
contiguous block of global ids (on each shard, the local range of its stripe inside it): level 3 lays identity
centroids out in video order, so a sliding window is one id range of the same index. ``flat`` is exact
(``IndexFlatIP``); ``ivf`` is approximate (``IndexIVFFlat`` over
inner products, trained per shard on the shard's own rows).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import ray

from cion_dist.errors import ConfigError

log = logging.getLogger(__name__)


class _Shard:
    """One block of rows and its FAISS index (runs inside a Ray actor)."""

    def __init__(self, kind: str, nlist: int, nprobe: int, threads: int):
        import faiss

        faiss.omp_set_num_threads(max(1, threads))
        self.kind, self.nlist, self.nprobe = kind, nlist, nprobe
        self.index = None
        self.stripe, self.stripes = 0, 1
        self.n = 0

    def build(self, vectors: np.ndarray, stripe: int, stripes: int, offset: int = 0) -> int:
        """Index the rows ``offset + stripe, offset + stripe + stripes, ...`` of the corpus (given in that order)."""
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = x.shape[1]
        self.stripe, self.stripes, self.n = int(offset + stripe), int(stripes), len(x)
        if self.kind == "ivf" and len(x) >= 2:
            nlist = max(1, min(self.nlist, len(x) // 39 or 1))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = min(self.nprobe, nlist)
            self._quantizer = quantizer
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(x)
        self.index = index
        return self.n

    def build_from_blocks(self, blocks: list, storage, stripe: int, stripes: int) -> tuple[int, int]:
        """Index this shard's stripe of the level-2 identity blocks (read here): rows ``stripe::stripes``."""
        from cion_dist.correlate.distributed import _sums_of
        from cion_dist.storage.stage_io import read_table
        from cion_dist.vectors import l2_normalise

        parts = []
        for a, b, uri in blocks:
            if b <= a:
                continue
            first = (stripe - a) % stripes  # first row of the block on this stripe
            parts.append(l2_normalise(_sums_of(read_table(uri, storage, columns=["sum"]))[first::stripes]))
        x = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
        self.build(x, stripe, stripes)
        return self.n, x.shape[1]

    def search(self, queries: np.ndarray, k: int, id_range: Optional[tuple[int, int]] = None):
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        lo, hi = 0, self.n
        if id_range is not None:  # local j holds global j * stripes + stripe: the first j at or past each bound
            lo = max(0, -(-(id_range[0] - self.stripe) // self.stripes))
            hi = min(self.n, -(-(id_range[1] - self.stripe) // self.stripes))
        if hi <= lo or self.n == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        params = None
        if (lo, hi) != (0, self.n):
            sel = faiss.IDSelectorRange(lo, hi)
            params = (
                faiss.SearchParametersIVF(sel=sel, nprobe=self.index.nprobe)
                if self.kind == "ivf" and hasattr(self.index, "nprobe")
                else faiss.SearchParameters(sel=sel)
            )
        sim, ids = self.index.search(q, k, params=params)
        ids = np.where(ids >= 0, ids * self.stripes + self.stripe, -1)
        sim = np.where(ids >= 0, sim, -np.inf).astype(np.float32)
        return sim, ids


_ShardActor = ray.remote(_Shard)


class ShardedKnnIndex:
    """Top-k inner-product search over vectors sharded across Ray actors. Picklable: tasks can search it."""

    def __init__(
        self,
        vectors: Optional[np.ndarray],
        num_shards: int = 2,
        kind: str = "flat",
        nlist: int = 64,
        nprobe: int = 8,
        shard_cpus: float = 1.0,
        ready_timeout_s: float = 120.0,
        layout: str = "striped",
        blocks: Optional[tuple] = None,
    ):
        """``vectors`` (n, dim), or ``vectors=None`` and ``blocks=(block list, storage, n)``: each shard then reads
        its own stripe of the correlate identity blocks, so the vectors never pass through the caller.
        ``layout="blocks"`` (contiguous row blocks per shard, the former layout) is kept for benchmarks."""
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if vectors is not None:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            n, dim = vectors.shape
        else:
            n, dim = int(blocks[2]), None
        num_shards = max(1, min(num_shards, n))
        self.n, self.dim, self.kind = n, dim, kind
        self.num_shards = num_shards
        self.pg = placement_group([{"CPU": shard_cpus}] * num_shards, strategy="SPREAD")
        try:
            ray.get(self.pg.ready(), timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.pg)
            raise ConfigError(
                f"correlate.num_shards={num_shards} x correlate.shard_cpus={shard_cpus} CPUs cannot be placed on this "
                f"Ray cluster ({ray.cluster_resources().get('CPU', 0)} CPUs); lower one of them"
            ) from None
        threads = max(1, int(shard_cpus))
        self.shards = [
            _ShardActor.options(
                num_cpus=shard_cpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=i
                ),
            ).remote(kind, nlist, nprobe, threads)
            for i in range(num_shards)
        ]
        t0 = time.time()
        if vectors is None:
            refs = [s.build_from_blocks.remote(blocks[0], blocks[1], i, num_shards) for i, s in enumerate(self.shards)]
            self.dim = ray.get(refs)[0][1]
            refs = []
        elif layout == "blocks":
            b = np.linspace(0, n, num_shards + 1).astype(np.int64)
            refs = [s.build.remote(vectors[b[i] : b[i + 1]], 0, 1, int(b[i])) for i, s in enumerate(self.shards)]
        else:
            refs = [s.build.remote(vectors[i::num_shards], i, num_shards) for i, s in enumerate(self.shards)]
        ray.get(refs)
        log.info("built %d %s shards over %d vectors in %.2fs", num_shards, kind, n, time.time() - t0)

    def search(self, queries: np.ndarray, k: int, id_range: Optional[tuple[int, int]] = None, batch: int = 16384):
        """(similarities, global ids) of the k best rows per query, best first; -1 ids where fewer exist."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        sims, ids = [], []
        for s in range(0, max(len(queries), 1), batch):
            q = queries[s : s + batch]
            if len(q) == 0:
                break
            q_ref = ray.put(q)
            parts = ray.get([sh.search.remote(q_ref, k, id_range) for sh in self.shards])
            heap = faiss.ResultHeap(len(q), k, keep_max=True)
            for sim, idx in parts:
                heap.add_result(np.where(idx >= 0, sim, -np.inf).astype(np.float32), idx)
            heap.finalize()
            sims.append(heap.D)
            ids.append(heap.I)
        if not sims:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(sims), np.concatenate(ids)

    def knn_graph(self, k: int, vectors: np.ndarray, id_range: Optional[tuple[int, int]] = None):
        """k nearest other rows of each row (self excluded): the whole-corpus graph when no range is given."""
        sim, ids = self.search(vectors, k + 1, id_range)
        return drop_self(sim, ids, np.arange(len(vectors)) + (id_range[0] if id_range else 0), k)

    def close(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for s in self.shards:
            ray.kill(s)
        self.shards = []
        remove_placement_group(self.pg)


def drop_self(sim: np.ndarray, ids: np.ndarray, own: np.ndarray, k: int):
    """Remove each row's own id from its neighbour list (or the last column if it is absent), keeping k."""
    n = len(ids)
    is_self = ids == own[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    mask = np.ones_like(ids, dtype=bool)
    mask[np.arange(n), drop] = False
    return sim[mask].reshape(n, -1)[:, :k], ids[mask].reshape(n, -1)[:, :k]

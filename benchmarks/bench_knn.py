"""k-NN graph build time and recall@k: sharded FAISS on Ray actors vs one in-process index, with a sgemm reference.

For each N (clustered synthetic unit vectors, d=256 by default) the whole-corpus graph (every row queries its k
nearest rows) is built by:
  faiss-1proc   one in-process IndexFlatIP (the baseline; exact)
  sharded-1     ShardedKnnIndex, exact, 1 actor
  sharded-2     ShardedKnnIndex, exact, 2 actors (SPREAD placement group)
  ivf-2         ShardedKnnIndex, IVF (nlist=sqrt N per shard, nprobe), 2 actors
Recall@k is measured against the exact graph. The FLOP/s reference is a float32 matmul (numpy -> BLAS sgemm) of
the same shape class, timed in the same run; an exact graph costs 2*N*N*d FLOPs, so 'fraction' is the share of
the sgemm rate each exact build achieves.

``--windows N`` times searches restricted to one id range (a level-3 window: its rows query the rows of the same
range) over an N-row index, for the striped shard layout beside the former contiguous blocks, with 1, 2 and 4
shards, for a small window (latency) and a large one (where fanning out pays).

    python benchmarks/bench_knn.py --sizes 10000 100000 [--million] [--cpus 4] [--windows 200000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 50, 2), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sgemm_flops(dim: int, reps: int = 3) -> float:
    """FLOP/s of a float32 (4096 x d) @ (d x 16384) product: the BLAS ceiling for a flat inner-product search."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4096, dim)).astype(np.float32)
    b = rng.normal(size=(dim, 16384)).astype(np.float32)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * 4096 * dim * 16384 / best


def recall(ids: np.ndarray, ref: np.ndarray) -> float:
    k = ref.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, ref)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--million", action="store_true", help="also N = 1e6 (exact neighbours from a query sample)")
    ap.add_argument("--sample", type=int, default=10_000, help="queries with exact neighbours above --sample_above")
    ap.add_argument("--sample_above", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray instance")
    ap.add_argument("--windows", type=int, default=0, help="rows of the index for the windowed-search comparison")
    ap.add_argument("--window_rows", type=int, nargs="+", default=[8, 16384])
    args = ap.parse_args()
    sizes = args.sizes + ([1_000_000] if args.million else [])

    import faiss
    import ray

    from cion_dist.correlate.knn_index import ShardedKnnIndex

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    threads = faiss.omp_get_max_threads()
    ref_flops = sgemm_flops(args.dim)
    print(f"cores={os.cpu_count()} faiss_threads={threads} dim={args.dim} k={args.k}")
    print(f"sgemm reference: {ref_flops / 1e9:.1f} GFLOP/s (numpy float32 matmul, same process)")
    print(f"{'N':>9} {'method':>12} {'build_s':>8} {'search_s':>9} {'GFLOP/s':>8} {'fraction':>8} {'recall@k':>8}")
    for n in sizes:
        x = clustered(n, args.dim)
        # above --sample_above, exact neighbours come from a sample of queries and the full-graph exact time is
        # extrapolated from it (the exact graph of 1e6 points takes most of an hour on 2 cores)
        sampled = n > args.sample_above
        q_idx = np.random.default_rng(1).choice(n, size=args.sample, replace=False) if sampled else np.arange(n)
        scale = n / len(q_idx)
        flops = 2.0 * n * n * args.dim
        t = time.perf_counter()
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(x)
        build = time.perf_counter() - t
        t = time.perf_counter()
        _, ref = flat.search(x[q_idx], args.k)
        search = (time.perf_counter() - t) * scale
        del flat
        note = f" (from {len(q_idx)} queries)" if sampled else ""
        print(
            f"{n:>9} {'faiss-1proc':>12} {build:8.2f} {search:9.2f} {flops / search / 1e9:8.1f} "
            f"{flops / search / ref_flops:8.2f} {1.0:8.3f}{note}",
            flush=True,
        )
        exact_search = search
        runs = (
            [("ivf-2", 2, "ivf")]
            if sampled
            else [("sharded-1", 1, "flat"), ("sharded-2", 2, "flat"), ("ivf-2", 2, "ivf")]
        )
        for name, shards, kind in runs:
            t = time.perf_counter()
            index = ShardedKnnIndex(
                x,
                num_shards=shards,
                kind=kind,
                nlist=max(1, int(np.sqrt(n / shards))),
                nprobe=args.nprobe,
                shard_cpus=max(1, args.cpus // 2) if shards == 1 else 1,
            )
            build = time.perf_counter() - t
            t = time.perf_counter()
            _, ids = index.search(x, args.k)  # the whole graph, every point a query
            search = time.perf_counter() - t
            index.close()
            rate = flops / search
            exact = kind == "flat"
            speed = "" if exact else f"  {exact_search / search:.1f}x the exact full graph"
            print(
                f"{n:>9} {name:>12} {build:8.2f} {search:9.2f} {rate / 1e9 if exact else float('nan'):8.1f} "
                f"{rate / ref_flops if exact else float('nan'):8.2f} {recall(ids[q_idx], ref):8.3f}{speed}",
                flush=True,
            )
    if args.windows:
        windowed(args)
    ray.shutdown()


def windowed(args) -> None:
    """Per-window search time, shards holding contiguous blocks (before) vs striped rows (now)."""
    from cion_dist.correlate.knn_index import ShardedKnnIndex

    n = args.windows
    x = clustered(n, args.dim)
    rng = np.random.default_rng(2)
    print(f"\nwindowed search over {n} rows: each window's rows query the same id range (ms per window, mean)")
    print(f"{'rows':>7} {'shards':>6} {'blocks_ms':>10} {'striped_ms':>10} {'speedup':>8}")
    for rows in args.window_rows:
        reps = max(3, min(50, 200_000 // rows))
        starts = rng.integers(0, n - rows, reps)
        for shards in (1, 2, 4):
            ms = {}
            for layout in ("blocks", "striped"):
                index = ShardedKnnIndex(x, num_shards=shards, shard_cpus=0.5, layout=layout)
                index.search(x[:rows], args.k + 1, id_range=(0, rows))  # warm the actors
                t = time.perf_counter()
                for s in starts:
                    index.search(x[s : s + rows], args.k + 1, id_range=(int(s), int(s) + rows))
                ms[layout] = (time.perf_counter() - t) / reps * 1e3
                index.close()
            print(
                f"{rows:>7} {shards:>6} {ms['blocks']:10.2f} {ms['striped']:10.2f} {ms['blocks'] / ms['striped']:8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

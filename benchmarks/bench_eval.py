"""Re-ID evaluation cost: chunked CMC + mAP + mINP against a full-matrix baseline, side by side.

Each case runs in a fresh child process so its peak resident memory (``ru_maxrss``) is its own; the figure
printed is the peak above the memory the child held once the features were in place. The chunked path ranks
true matches by counting (``ranking_stats``); ``chunked-sort`` chunks the same way but sorts every row (the
memory saving alone); the full-matrix baseline sorts every row of the whole matrix. Wall and CPU seconds are
both printed: on a shared machine the CPU time (all threads) is the steadier figure. The baseline builds the
whole ``Q x G`` distance matrix and ranks it in one go (what a straightforward implementation does); it runs at a
smaller size when the full one would not fit (``--naive-max``). Both paths must give the same mAP.

    .venv/bin/python benchmarks/bench_eval.py                 # 20000 x 20000 at d=512, baseline at 6000
    .venv/bin/python benchmarks/bench_eval.py --n 4000 --naive-max 4000 --chunk 256
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

from cion_dist.procmem import peak_rss_mb, rss_mb


def _data(n_query: int, n_gallery: int, dim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n_ids = max(2, (n_query + n_gallery) // 10)
    centres = rng.normal(size=(n_ids, dim)).astype(np.float32)
    qp, gp = rng.integers(0, n_ids, n_query), rng.integers(0, n_ids, n_gallery)
    qf = centres[qp] + 3.0 * rng.normal(size=(n_query, dim)).astype(np.float32)
    gf = centres[gp] + 3.0 * rng.normal(size=(n_gallery, dim)).astype(np.float32)
    qc, gc = rng.integers(0, 6, n_query), rng.integers(0, 6, n_gallery)
    return qf, gf, qp, gp, qc, gc


_rss_mib, _current_rss_mib = peak_rss_mb, rss_mb


def _case(kind: str, n: int, dim: int, chunk: int, threads: int, out) -> None:
    import torch

    from cion_dist.evaluate.metrics import distance_block, evaluate_distances, evaluate_features

    torch.set_num_threads(threads)
    qf, gf, qp, gp, qc, gc = _data(n, n, dim)
    base = _current_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    if kind in ("chunked", "chunked-sort"):
        m = evaluate_features(
            qf, gf, qp, gp, qc, gc, chunk_size=chunk, ranking="sort" if kind == "chunked-sort" else "count"
        )
    else:
        q = torch.nn.functional.normalize(torch.from_numpy(qf), dim=1)
        g = torch.nn.functional.normalize(torch.from_numpy(gf), dim=1)
        m = evaluate_distances(distance_block(q, g), qp, gp, qc, gc, ranking="sort")
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.put(
        {
            "kind": kind,
            "n": n,
            "seconds": secs,
            "cpu_seconds": cpu,
            "peak_mib": max(0.0, _rss_mib() - base),
            "mAP": m.mAP,
            "rank1": m.rank1,
            "valid": m.num_valid,
        }
    )


def run_case(kind: str, n: int, dim: int, chunk: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_case, args=(kind, n, dim, chunk, threads, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="queries = gallery images")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--naive-max", type=int, default=6000, help="largest size the full-matrix baseline runs at")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    sizes = sorted({min(a.n, a.naive_max), a.n})
    rows = []
    for n in sizes:
        rows.append(run_case("chunked", n, a.dim, a.chunk, a.threads))
        rows.append(run_case("chunked-sort", n, a.dim, a.chunk, a.threads))
        if n <= a.naive_max:
            rows.append(run_case("full-matrix", n, a.dim, a.chunk, a.threads))
        else:
            est = n * n * 26 / 2**20  # bytes per matrix cell: distances, sort indices, gathered ids, masks, ranks
            rows.append({"kind": "full-matrix", "n": n, "skipped": f"not run: needs roughly {est:,.0f} MiB"})
    print(
        f"re-ID evaluation, queries = gallery = N, d = {a.dim}, chunk = {a.chunk} queries, torch threads = {a.threads}"
    )
    print(f"{'N':>7} {'method':<12} {'wall s':>9} {'CPU s':>9} {'peak MiB':>9} {'mAP':>8} {'rank1':>7}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['n']:>7} {r['kind']:<12} {r['skipped']}")
        else:
            print(
                f"{r['n']:>7} {r['kind']:<12} {r['seconds']:>9.2f} {r['cpu_seconds']:>9.2f} {r['peak_mib']:>9.0f} "
                f"{r['mAP']:>8.4f} {r['rank1']:>7.4f}"
            )
    same = [r["mAP"] for r in rows if r["n"] == sizes[0] and "mAP" in r]
    if len(same) > 1:
        print(f"agreement at N={sizes[0]}: largest |mAP difference| = {max(same) - min(same):.2e}")


if __name__ == "__main__":
    main()

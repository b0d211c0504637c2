"""End-to-end correlate time vs corpus size: the Ray stage (tasks + sharded index + Parquet IO) beside the same
three levels run in one process on the same embeddings (pure core, no Ray, no IO), with quality for both.

    python benchmarks/bench_correlate.py --sizes 2000 10000 40000 [--cpus 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np


def in_process(c, r: float, d: float, window: int, stride: int, k: int, min_images: int) -> np.ndarray:
    """Levels 1-3 with the pure functions and an in-process exact FAISS index per window."""
    from cion_dist.correlate.baselines import exact_knn
    from cion_dist.correlate.denoise import denoise_video, guarded_merge
    from cion_dist.correlate.geometry import group_sums, l2_normalise
    from cion_dist.correlate.linking import finalize_identities, links_from_knn, plan_windows

    videos = list(dict.fromkeys(c.video.tolist()))
    node_of = np.full(len(c.x), -1)
    reason = np.zeros(len(c.x), np.int8)
    node_video, n = [], 0
    for vi, v in enumerate(videos):
        idx = np.flatnonzero(c.video == v)
        res = denoise_video(c.x[idx], c.tracklet[idx], r, d, 2)
        node_of[idx] = np.where(res.group >= 0, res.group + n, -1)
        reason[idx] = res.reason
        node_video += [vi] * res.n_groups
        n += res.n_groups
    node_video = np.array(node_video)
    sums = group_sums(c.x, node_of, n)
    cents = l2_normalise(sums)
    links = []
    for s, e in plan_windows(len(videos), window, stride):
        q = np.flatnonzero((node_video >= s) & (node_video < e))
        sim, nb = exact_knn(cents[q], k + 1)
        links.append(links_from_knn(sim, q[nb], q, node_video, d))
    src, dst, dist = (np.concatenate(p) for p in zip(*links))
    label = guarded_merge(sums, src, dst, dist, d, [frozenset([v]) for v in node_video.tolist()])
    return finalize_identities(c.x, node_of, label, reason, r, min_images).identity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 40000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--cpus", type=int, default=4)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--stride", type=int, default=4)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    from cion_dist.config import job_from_dict
    from cion_dist.correlate import quality
    from cion_dist.correlate.job import run
    from cion_dist.correlate.synthetic import make_corpus, write_embed_output
    from cion_dist.storage.stage_io import StageOutput

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    print(f"{'N':>7} {'videos':>6} {'mode':>10} {'total_s':>8} {'img/s':>8} {'lvl12_s':>8} {'lvl3_s':>7} "
          f"{'pair_F':>7} {'ids':>5} {'true':>5}")
    for n in args.sizes:
        per_video, images = 8, 20
        videos = max(2, n // (per_video * images))
        c = make_corpus(people=videos * 2 + per_video, videos=videos, people_per_video=per_video, images=images,
                        dim=args.dim, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            embed_uri = write_embed_output(tmp, c)
            job = job_from_dict({"stage": "correlate", "output": tmp, "mlflow": {"enabled": False},
                                 "correlate": {"input": embed_uri, "window_videos": args.window,
                                               "stride_videos": args.stride, "num_shards": 2,
                                               "videos_per_task": max(1, -(-videos // args.cpus))}})
            t = time.perf_counter()
            res = run(job)
            total = time.perf_counter() - t
            out = StageOutput(res.uri).read(columns=["image_id", "identity_id"]).sort_by("image_id")
            ident = out.column("identity_id").to_numpy()
            order = np.argsort(c.image_id)
            f = quality.score(c.identity[order], ident)["pairwise_f"]
            tm = res.summary["timings"]
            print(f"{len(c.x):>7} {videos:>6} {'ray-stage':>10} {total:8.2f} {len(c.x) / total:8.0f} "
                  f"{tm['levels12_s']:8.2f} {tm['level3_s']:7.2f} {f:7.3f} {res.rows['identities']:>5} "
                  f"{len(np.unique(c.identity)):>5}", flush=True)
            r, d = res.summary["radius"], res.summary["link_distance"]
        t = time.perf_counter()
        ident = in_process(c, r, d, args.window, args.stride, 10, 4)
        total = time.perf_counter() - t
        f = quality.score(c.identity, ident)["pairwise_f"]
        print(f"{len(c.x):>7} {videos:>6} {'in-process':>10} {total:8.2f} {len(c.x) / total:8.0f} {'':>8} {'':>7} "
              f"{f:7.3f} {len(np.unique(ident[ident >= 0])):>5} {len(np.unique(c.identity)):>5}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()

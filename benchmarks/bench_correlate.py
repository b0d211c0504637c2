"""End-to-end correlate time vs corpus size: the Ray stage (tasks + sharded index + Parquet IO) beside the same
three levels run in one process on the same embeddings (pure core, no Ray, no IO), with quality for both.

``--driver-memory N`` adds the driver's peak memory on an N-image float16 corpus (one part per video): the stage
run in a fresh process, beside a fresh process that only loads the same embeddings into memory (what a driver
that holds the corpus pays before any work).

    python benchmarks/bench_correlate.py --sizes 2000 10000 40000 [--cpus 4] [--driver-memory 1000000]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np


def in_process(c, r: float, d: float, window: int, stride: int, k: int, min_images: int) -> np.ndarray:
    from cion_dist.correlate.reference import correlate_in_process

    return correlate_in_process(
        c.x, c.video, c.tracklet, r, d, window=window, stride=stride, k=k, min_images=min_images
    ).identity


_CHILD = r"""
import json, sys, time
mode, output, embed_uri, cpus = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def hwm_mb():  # VmHWM starts afresh at exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

import numpy as np, ray
from cion_dist.config import job_from_dict
from cion_dist.correlate.inputs import load_embeddings
from cion_dist.correlate.job import run
from cion_dist.storage.stage_io import StageOutput
base = hwm_mb()
t = time.perf_counter()
if mode == "load":
    data = load_embeddings(StageOutput(embed_uri))
    out = {"images": len(data)}
else:
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    res = run(job_from_dict({"stage": "correlate", "output": output, "mlflow": {"enabled": False},
                             "correlate": {"input": embed_uri, "num_shards": 2, "videos_per_task": 16}}))
    out = {"images": res.rows["images"], "identities": res.rows["identities"], "timings": res.summary["timings"]}
print(json.dumps(dict(out, seconds=time.perf_counter() - t, base_mb=base, peak_mb=hwm_mb())))
"""


def driver_memory(n: int, dim: int, cpus: int) -> None:
    """Peak RSS of the correlate driver vs a process that only loads the corpus, same float16 parts."""
    import json
    import subprocess
    import sys

    import pyarrow as pa

    from cion_dist.correlate.clustered_corpus import make_corpus
    from cion_dist.embed.parts import embedding_array
    from cion_dist.storage.stage_io import StageOutput

    per_video, images = 10, 125
    videos = min(999, max(2, n // (per_video * images)))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        c = make_corpus(
            people=videos * 2 + per_video, videos=videos, people_per_video=per_video, images=images, dim=dim, seed=0
        )
        out = StageOutput.create(tmp, "embed", "fp16")
        bounds = np.flatnonzero(np.r_[True, c.video[1:] != c.video[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            out.write_unit(
                c.video[lo],
                pa.table(
                    {
                        "image_id": pa.array(c.image_id[lo:hi]),
                        "tracklet_id": pa.array(c.tracklet[lo:hi]),
                        "video_id": pa.array(c.video[lo:hi]),
                        "embedding": embedding_array(c.x[lo:hi], "float16"),
                    }
                ),
            )
        out.finalize(stage="embed", rows={"images": len(c.x)})
        size = sum(os.path.getsize(f) for f in out.files()) / 2**20
        print(
            f"\ndriver memory: {len(c.x)} images x {dim} float16 in {videos} parts ({size:.0f} MiB on disk), "
            f"written in {time.perf_counter() - t:.0f} s"
        )
        del c
        print(f"{'process':>28} {'peak MiB':>9} {'over import':>11} {'seconds':>8}")
        for mode, label in (("load", "load corpus (baseline)"), ("stage", "correlate stage driver")):
            r = subprocess.run(
                [sys.executable, "-c", _CHILD, mode, tmp, out.uri, str(cpus)], capture_output=True, text=True
            )
            if r.returncode:
                print(r.stderr[-3000:])
                raise SystemExit(f"{mode} child failed")
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(
                f"{label:>28} {m['peak_mb']:9.0f} {m['peak_mb'] - m['base_mb']:11.0f} {m['seconds']:8.1f}"
                + (f"   identities {m['identities']}, {m['timings']}" if "timings" in m else ""),
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[2000, 10000, 40000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--cpus", type=int, default=4)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--driver-memory", type=int, default=0, metavar="N")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.driver_memory:
        driver_memory(args.driver_memory, args.dim, args.cpus)
        if not args.sizes:
            return

    import ray

    from cion_dist.config import job_from_dict
    from cion_dist.correlate import quality
    from cion_dist.correlate.clustered_corpus import make_corpus, write_embed_output
    from cion_dist.correlate.job import run
    from cion_dist.storage.stage_io import StageOutput

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    print(
        f"{'N':>7} {'videos':>6} {'mode':>10} {'total_s':>8} {'img/s':>8} {'lvl12_s':>8} {'lvl3_s':>7} "
        f"{'pair_F':>7} {'ids':>5} {'true':>5}"
    )
    for n in args.sizes:
        per_video, images = 8, 20
        videos = max(2, n // (per_video * images))
        c = make_corpus(
            people=videos * 2 + per_video,
            videos=videos,
            people_per_video=per_video,
            images=images,
            dim=args.dim,
            seed=0,
        )
        with tempfile.TemporaryDirectory() as tmp:
            embed_uri = write_embed_output(tmp, c)
            job = job_from_dict(
                {
                    "stage": "correlate",
                    "output": tmp,
                    "mlflow": {"enabled": False},
                    "correlate": {
                        "input": embed_uri,
                        "window_videos": args.window,
                        "stride_videos": args.stride,
                        "num_shards": 2,
                        "videos_per_task": max(1, -(-videos // args.cpus)),
                    },
                }
            )
            t = time.perf_counter()
            res = run(job)
            total = time.perf_counter() - t
            out = StageOutput(res.uri).read(columns=["image_id", "identity_id"]).sort_by("image_id")
            ident = out.column("identity_id").to_numpy()
            order = np.argsort(c.image_id)
            f = quality.score(c.identity[order], ident)["pairwise_f"]
            tm = res.summary["timings"]
            print(
                f"{len(c.x):>7} {videos:>6} {'ray-stage':>10} {total:8.2f} {len(c.x) / total:8.0f} "
                f"{tm['levels12_s']:8.2f} {tm['level3_s']:7.2f} {f:7.3f} {res.rows['identities']:>5} "
                f"{len(np.unique(c.identity)):>5}",
                flush=True,
            )
            r, d = res.summary["radius"], res.summary["link_distance"]
        t = time.perf_counter()
        ident = in_process(c, r, d, args.window, args.stride, 10, 4)
        total = time.perf_counter() - t
        f = quality.score(c.identity, ident)["pairwise_f"]
        print(
            f"{len(c.x):>7} {videos:>6} {'in-process':>10} {total:8.2f} {len(c.x) / total:8.0f} {'':>8} {'':>7} "
            f"{f:7.3f} {len(np.unique(ident[ident >= 0])):>5} {len(np.unique(c.identity)):>5}",
            flush=True,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()

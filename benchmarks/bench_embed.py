"""Embed-stage throughput: crops/s of OSNet (ONNX) and the handcrafted descriptor, 1 vs 2 Ray actors.

Each row runs the whole stage (read ingest Parquet, decode JPEG, embed, write Parquet) on the same ingest output
of real MOT17 pedestrian crops, into a fresh run folder. The baseline in the same run is the embedder called
in-process on already-decoded crops with one thread: the ceiling one actor could reach with no IO or decode.

    .venv/bin/python benchmarks/bench_embed.py [--crops 2000] [--parts 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from embed_fixtures import mot17_crops, write_ingest  # noqa: E402

from cion_dist.config import job_from_dict  # noqa: E402
from cion_dist.embed.config import EmbedConfig  # noqa: E402
from cion_dist.embed.embedders import build_embedder  # noqa: E402
from cion_dist.embed.job import run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", type=int, default=2000)
    ap.add_argument("--parts", type=int, default=16)
    ap.add_argument("--data", default=os.environ.get("CION_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    data = Path(args.data)
    onnx = str(data / "models" / "osnet_x0_25_msmt17.onnx")

    base = mot17_crops(data, ids_per_seq=6, frames_per_id=8, min_height=60)
    crops = []
    for i in range(args.crops):  # cycle the real crops into the requested count and number of parts
        c = dict(base[i % len(base)])
        c["seq"] = f"video-{i % args.parts:03d}"
        crops.append(c)
    root = tempfile.mkdtemp(prefix="bench-embed-")
    write_ingest(root, crops)

    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    backbones = {"onnx (OSNet x0.25)": {"backbone": "onnx", "model": onnx}, "handcrafted": {"backbone": "handcrafted"}}
    rows = []
    from cion_dist.embed.preprocess import decode_jpeg, encode_jpeg

    blobs = [encode_jpeg(c["rgb"]) for c in crops]
    t0 = time.perf_counter()
    for b in blobs:
        decode_jpeg(b)
    rows.append(("(JPEG decode only)", "in-process, 1 thread", len(blobs) / (time.perf_counter() - t0)))
    for label, spec in backbones.items():
        emb = build_embedder(EmbedConfig(**spec, threads=1, batch_size=32))
        rgb = [c["rgb"] for c in crops]
        emb(rgb[:32])  # warm up
        t0 = time.perf_counter()
        emb(rgb)
        rows.append((label, "in-process, 1 thread (baseline)", len(rgb) / (time.perf_counter() - t0)))
        for actors in (1, 2):
            job = job_from_dict({
                "stage": "embed", "output": root, "run_id": f"bench-{spec['backbone']}-{actors}",
                "mlflow": {"enabled": False},
                "embed": {**spec, "concurrency": actors, "num_cpus": 1, "threads": 1, "batch_size": 32},
            })
            t0 = time.perf_counter()
            res = run(job)
            dt = time.perf_counter() - t0
            assert res.rows["embeddings"] == len(crops)
            rows.append((label, f"stage, {actors} actor(s), 1 thread each", len(crops) / dt))
    ray.shutdown()

    print(f"\nembed throughput: {len(crops)} MOT17 crops in {args.parts} parts, {os.cpu_count()} cores")
    print(f"{'backbone':<20} {'setting':<36} {'crops/s':>9}")
    for label, setting, rate in rows:
        print(f"{label:<20} {setting:<36} {rate:>9.1f}")
    print("stage figures include actor start-up (model load) and Parquet IO; in-process figures do not.")


if __name__ == "__main__":
    main()

"""Embed-stage throughput per core: the stage as it is beside the stage before units and large batches.

Both run the whole stage (read ingest Parquet, decode JPEG, embed, write Parquet, finalize) on the same ingest
output of real MOT17 pedestrian crops, one part per clip of ``--crops-per-part`` crops (a clip's ~20 crops, as
ingest writes them), with one actor holding one CPU and one thread, each in a fresh process with its own local Ray
instance (start-up not timed, actor start-up and model load timed). The code before (``--old-rev``, extracted with
``git archive``) embeds one ingest part per actor call; the current code groups parts into units of
``crops_per_unit`` crops, reads ``read_ahead`` parts ahead of the model on I/O threads, and calls the model on
full batches of ``batch_size``; it also runs with ``read_ahead: 0`` (parts read one after another).

``--s3`` puts the ingest output on a loopback S3 server (moto) instead of a local folder: each part then costs
round trips, the regime of an object store, where reading parts one after another bounds an actor whatever its
model costs.

Each stage runs at two corpus sizes (``--crops``), and the line through the two walls splits a run into its fixed
cost (Ray Data planning, actor start-up, model load, finalize: the intercept) and its cost per crop (the slope):
crops/s per core is the inverse of the slope, the rate a long run settles at. The baseline printed beside is the
embedder called in-process on decoded crops (the ceiling with no IO or decode).

    python benchmarks/bench_embed.py [--crops 2000,8000] [--crops-per-part 20] [--old-rev 1b98bbf] [--s3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datadir import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
OSNET = "models/osnet_x0_25_msmt17.onnx"


def child(spec: dict) -> None:
    import logging

    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    from cion_dist.config import job_from_dict
    from cion_dist.embed.job import run

    job = job_from_dict(spec)
    t0 = time.perf_counter()
    res = run(job)
    print("RESULT " + json.dumps({"wall": time.perf_counter() - t0, "rows": res.rows}))


def stage(spec: dict, pythonpath: str) -> dict:
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=pythonpath),
        cwd=pythonpath,
        timeout=3600,
    )
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(line[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", default="2000,8000", help="two corpus sizes, comma-separated")
    ap.add_argument("--crops-per-part", type=int, default=20)
    ap.add_argument("--old-rev", default="1b98bbf")
    ap.add_argument("--data", default=str(SHARED_DATA))
    ap.add_argument("--s3", action="store_true", help="the ingest output on a loopback S3 server")
    ap.add_argument("--backbones", default="handcrafted,onnx", help="which of handcrafted,onnx to run")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.s3:
        from s3_counter import counting_s3_server

        for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
            os.environ.setdefault(k, v)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        with counting_s3_server() as (endpoint, _):
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            import s3fs

            s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("bench-embed")
            run(args, "s3://bench-embed")
    else:
        run(args, None)


def run(args, s3_root) -> None:
    """Write the two ingest outputs (under ``s3_root``, else local folders), run every variant, print the table."""
    from embed_fixtures import mot17_crops, write_ingest

    from cion_dist.embed.config import EmbedConfig
    from cion_dist.embed.embedders import build_embedder

    sizes = sorted(int(n) for n in args.crops.split(","))
    if len(sizes) != 2 or sizes[0] == sizes[1]:
        raise SystemExit("--crops takes two different sizes, e.g. 2000,8000")
    data = Path(args.data)
    base = mot17_crops(data, ids_per_seq=6, frames_per_id=8, min_height=60)
    roots, rgb = {}, []
    for n in sizes:
        crops = []
        for i in range(n):  # cycle the real crops into the requested count, crops_per_part to a clip
            c = dict(base[i % len(base)])
            c["seq"] = f"video-{i // args.crops_per_part:05d}"
            crops.append(c)
        roots[n] = f"{s3_root}/{n}" if s3_root else tempfile.mkdtemp(prefix=f"bench-embed-{n}-")
        write_ingest(roots[n], crops)
        rgb = [c["rgb"] for c in crops]
    old_tree = tempfile.mkdtemp(prefix="cion-old-")
    subprocess.run(f"git -C {ROOT} archive {args.old_rev} cion_dist | tar -x -C {old_tree}", shell=True, check=True)

    wanted = set(args.backbones.split(","))
    backbones = {"handcrafted": {"backbone": "handcrafted"}} if "handcrafted" in wanted else {}
    if "onnx" in wanted and (data / OSNET).exists():
        backbones["onnx (OSNet x0.25)"] = {"backbone": "onnx", "model": str(data / OSNET)}
    rows = []
    for label, spec in backbones.items():
        emb = build_embedder(EmbedConfig(**spec, threads=1))
        emb(rgb[:64])  # warm up
        t0 = time.perf_counter()
        emb(rgb)
        ceiling = len(rgb) / (time.perf_counter() - t0)
        rows.append((label, "in-process, decoded, 1 thread (ceiling)", ceiling, None, None))
        rates = {}
        variants = (
            ("before", old_tree, {}),
            ("now, read_ahead 0", str(ROOT), {"read_ahead": 0}),
            ("now", str(ROOT), {}),
        )
        for code, path, extra in variants:
            walls = []
            for n in sizes:
                job = {
                    "stage": "embed",
                    "output": roots[n],
                    "run_id": f"bench-{spec['backbone']}-{code.replace(',', '').replace(' ', '-')}",
                    "mlflow": {"enabled": False},
                    "embed": {**spec, "concurrency": 1, "num_cpus": 1, "threads": 1, **extra},
                }
                r = stage(job, path)
                assert r["rows"]["embeddings"] == n, r
                walls.append(r["wall"])
                print(f"{label} {code} {n} crops: {r['wall']:.1f} s", flush=True)
            per_crop = (walls[1] - walls[0]) / (sizes[1] - sizes[0])
            fixed = walls[0] - per_crop * sizes[0]
            rates[code] = 1.0 / per_crop if per_crop > 0 else float("inf")
            rows.append(
                (
                    label,
                    f"stage {code}, 1 actor x 1 CPU",
                    rates[code],
                    fixed,
                    rates[code] / rates["before"] if code != "before" else None,
                )
            )

    print(
        f"\nembed throughput per core: {sizes[0]} and {sizes[1]} MOT17 crops, {args.crops_per_part} per ingest part, "
        f"{'on loopback S3' if s3_root else 'local files'}, {os.cpu_count()} cores, measured under load"
    )
    print(f"{'backbone':<20} {'setting':<42} {'crops/s/core':>12} {'fixed s':>8} {'x before':>9}")
    for label, setting, rate, fixed, ratio in rows:
        f = "" if fixed is None else f"{fixed:.1f}"
        print(f"{label:<20} {setting:<42} {rate:>12.1f} {f:>8} {'' if ratio is None else f'{ratio:.2f}':>9}")
    print(
        "crops/s/core: the inverse of the wall's growth per crop between the two sizes; fixed s: the wall at zero "
        "crops on that line (planning, actor start-up, model load, finalize). The ceiling has neither IO nor decode."
    )


if __name__ == "__main__":
    main()

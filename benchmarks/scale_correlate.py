"""Correlate's driver memory and wall time against corpus size, with fitted growth exponents, beside a baseline tree.

For each size N (embeddings, d = 256, float16) a synthetic embed output is written (parts of ``--videos-per-part``
videos, 50 images per video: 5 people x 10 images, each person seen in a few neighbouring videos, so level 3 has
cross-video links to find), then the correlate stage runs in a fresh process: its driver's peak RSS (VmHWM, the
driver only; Ray workers are separate processes) and its wall time are reported. ``--baseline PATH`` runs the same
job with another source tree first on ``PYTHONPATH`` (the former code) up to ``--baseline-max`` embeddings, side by
side in the same run. Exponents are the log-log slopes of peak RSS and time between the smallest and largest size.
Under each run, the driver's highest RSS (sampled every 20 ms) is listed by the last log line the stage wrote
before it: where the peak is reached.

    python benchmarks/scale_correlate.py --sizes 100000 1000000 10000000 --baseline /path/to/former/tree

1e7 x 256 x float16 is ~5 GB of parts: the data lives under ``--work`` and is removed afterwards (``--keep`` keeps).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_VIDEO, IMAGES = 5, 10  # people per video, images per person per video

_CHILD = r"""
import json, sys, time
output, embed_uri, cpus = sys.argv[1], sys.argv[2], int(sys.argv[3])

def rss():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out

import logging, threading
import ray
import cion_dist
from cion_dist.config import job_from_dict
from cion_dist.correlate.job import run

# the driver's RSS sampled every 20 ms against the last log line the stage wrote: where its peak is reached
phase, peaks, stop = ["start"], {}, threading.Event()

class Phase(logging.Handler):
    def emit(self, record):
        phase[0] = record.getMessage()[:100]

lg = logging.getLogger("cion_dist")
lg.addHandler(Phase())
lg.setLevel(logging.INFO)

def sample():
    while not stop.is_set():
        m, p = rss()["VmRSS"], phase[0]
        peaks[p] = max(peaks.get(p, 0.0), m)
        stop.wait(0.02)

threading.Thread(target=sample, daemon=True).start()
base = rss()["VmHWM"]
ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
t = time.perf_counter()
res = run(job_from_dict({"stage": "correlate", "output": output, "mlflow": {"enabled": False},
                         "correlate": {"input": embed_uri, "radius": 0.3, "link_distance": 0.5, "num_shards": 2,
                                       "videos_per_task": 64}}))
wall = time.perf_counter() - t
stop.set()
top = sorted(((round(v), k) for k, v in peaks.items()), reverse=True)[:6]
print(json.dumps({"images": res.rows["images"], "identities": res.rows["identities"], "seconds": wall,
                  "base_mb": base, "peak_mb": rss()["VmHWM"], "timings": res.summary["timings"],
                  "phases": top, "code": cion_dist.__file__}))
"""


def person_centre(pid: int, dim: int) -> np.ndarray:
    c = np.random.default_rng(10_000_019 + pid).normal(size=dim)
    return c / np.linalg.norm(c)


def write_corpus(root: str, n: int, dim: int, videos_per_part: int) -> tuple[str, int]:
    """An embed output of ~n embeddings; returns (run URI, videos). Memory: one part at a time."""
    import pyarrow as pa

    from cion_dist.embed.parts import embedding_array
    from cion_dist.storage.stage_io import StageOutput

    videos = max(2, n // (PER_VIDEO * IMAGES))
    out = StageOutput.create(root, "embed", f"scale-{n}")
    rng = np.random.default_rng(n)
    for p0 in range(0, videos, videos_per_part):
        xs, img, trk, vid = [], [], [], []
        for v in range(p0, min(p0 + videos_per_part, videos)):
            shift = rng.normal(size=dim) * 0.25 / np.sqrt(dim)
            people = 2 * v + rng.choice(8, PER_VIDEO, replace=False)  # a person recurs in ~4 neighbouring videos
            for pid in people:
                x = person_centre(int(pid), dim) + shift + rng.normal(size=(IMAGES, dim)) * 0.35 / np.sqrt(dim)
                xs.append(x / np.linalg.norm(x, axis=1, keepdims=True))
                img += [f"v{v:07d}-p{pid}-{i}" for i in range(IMAGES)]
                trk += [int(pid)] * IMAGES
                vid += [f"v{v:07d}"] * IMAGES
        out.write_reported_unit(  # reported, as the embed stage does: finalize reads no part back
            f"p{p0:07d}",
            pa.table(
                {
                    "image_id": pa.array(img),
                    "tracklet_id": pa.array(trk, pa.int64()),
                    "video_id": pa.array(vid),
                    "embedding": embedding_array(np.concatenate(xs), "float16"),
                }
            ),
        )
    out.finalize(stage="embed", rows={"images": videos * PER_VIDEO * IMAGES})
    return out.uri, videos


def run_child(tree: str, output: str, embed_uri: str, cpus: int, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    try:
        r = subprocess.run(
            [sys.executable, "-c", _CHILD, output, embed_uri, str(cpus)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1][:160] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def slope(xs: list, ys: list) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0]) if len(xs) >= 2 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--videos-per-part", type=int, default=200)
    ap.add_argument("--baseline", default="", help="source tree of the former code (put first on PYTHONPATH)")
    ap.add_argument("--baseline-max", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "scale_correlate"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    os.makedirs(args.work, exist_ok=True)
    free = shutil.disk_usage(args.work).free / 2**30
    need = max(args.sizes) * args.dim * 2 * 1.3 / 2**30
    print(
        f"cores={os.cpu_count()} ray_cpus={args.cpus} dim={args.dim} float16; work {args.work} "
        f"({free:.0f} GiB free, ~{need:.1f} GiB needed for the largest size)"
    )
    if need > free * 0.8:
        raise SystemExit("not enough disk for the largest size")
    trees = [("this", ROOT)] + ([("baseline", os.path.abspath(args.baseline))] if args.baseline else [])
    rows = {name: [] for name, _ in trees}
    print(f"{'N':>9} {'videos':>7} {'code':>9} {'peak_MiB':>9} {'over_import':>11} {'wall_s':>8} {'ids':>8}  timings")
    try:
        for n in args.sizes:
            root = os.path.join(args.work, f"n{n}")
            t = time.perf_counter()
            embed_uri, videos = write_corpus(root, n, args.dim, args.videos_per_part)
            gen = time.perf_counter() - t
            print(f"{n:>9} {videos:>7} {'(data)':>9} {'':>9} {'':>11} {gen:8.1f}  corpus written", flush=True)
            for name, tree in trees[::-1]:  # baseline first, so a cold page cache does not favour this tree
                if name == "baseline" and n > args.baseline_max:
                    print(f"{n:>9} {videos:>7} {name:>9}  (not run above --baseline-max)")
                    continue
                m = run_child(tree, os.path.join(root, f"out-{name}"), embed_uri, args.cpus, args.timeout)
                if "error" in m:
                    print(f"{n:>9} {videos:>7} {name:>9}  failed: {m['error']}", flush=True)
                    continue
                rows[name].append((n, m["peak_mb"], m["seconds"]))
                print(
                    f"{n:>9} {videos:>7} {name:>9} {m['peak_mb']:9.0f} {m['peak_mb'] - m['base_mb']:11.0f} "
                    f"{m['seconds']:8.1f} {m['identities']:>8}  {m['timings']}",
                    flush=True,
                )
                for mb, where in m.get("phases", []):  # the driver's highest RSS, by the stage's last log line
                    print(f"{'':>28} {mb:9.0f} MiB after: {where}", flush=True)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    print("\ngrowth exponents (log-log slope over the sizes run):")
    for name, r in rows.items():
        if len(r) >= 2:
            ns, mem, sec = zip(*r)
            print(
                f"  {name:>9}: peak RSS ~ N^{slope(ns, mem):.2f}, wall time ~ N^{slope(ns, sec):.2f} "
                f"({ns[0]}..{ns[-1]})"
            )


if __name__ == "__main__":
    main()

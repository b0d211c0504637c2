"""Ingest speed and memory, each figure next to its baseline from the same run.

1. decode: frames/s on one core, decord (random access ``get_batch``) vs PyAV (sequential decode), same clips,
   same sampling (every frame, every 5th frame).
2. ingest: clips/s of the whole stage on a local Ray instance with 1 vs 2 concurrent clip tasks, same corpus.
3. memory: peak RSS of one clip's ingest in a fresh process, 10 s vs 60 s clip, chunked decode (64 frames) vs
   the whole clip decoded at once.

    python benchmarks/bench_ingest.py [--shared DATA_FOLDER] [--work /tmp/cion-bench-ingest]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from datadir import SHARED_DATA


def decode_ingest(data: bytes, step: int) -> tuple[int, float]:
    """The ingest stage's own path: decord in bounded chunks of sampled indices."""
    from cion_dist.ingest.decode import iter_chunks, open_clip, sample_indices

    t = time.perf_counter()
    clip = open_clip(data)
    idx = sample_indices(clip.num_frames, clip.fps, every_n=step)
    n = sum(len(frames) for _, frames in iter_chunks(clip, idx, 64))
    return n, time.perf_counter() - t


def decode_decord(data: bytes, step: int) -> tuple[int, float]:
    """decord random access (get_batch on the sampled indices)."""
    import decord

    t = time.perf_counter()
    vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
    idx = list(range(0, len(vr), step))
    n = 0
    for s in range(0, len(idx), 64):
        n += len(vr.get_batch(idx[s : s + 64]).asnumpy())
    return n, time.perf_counter() - t


def decode_pyav(data: bytes, step: int) -> tuple[int, float]:
    import av

    t = time.perf_counter()
    n = 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.thread_count = 1
        for i, frame in enumerate(container.decode(stream)):
            if i % step == 0:
                frame.to_ndarray(format="rgb24")
                n += 1
    return n, time.perf_counter() - t


def bench_decode(clips: dict[str, bytes]) -> list[tuple]:
    rows = []
    for name, data in clips.items():
        for step in (1, 5):
            for lib, fn in (
                ("decord (ingest)", decode_ingest),
                ("decord get_batch", decode_decord),
                ("pyav", decode_pyav),
            ):
                fn(data, step)  # warm up codecs and caches
                n, sec = fn(data, step)
                rows.append((name, step, lib, n, round(n / sec, 1)))
    return rows


def make_corpus(root: str, videos: int, frames: int, seed: int = 0) -> dict:
    from cion_dist.storage.fs import Storage
    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus

    cfg = SynthConfig(
        out=root, videos=videos, frames=frames, identities=8, people_per_video=4, benchmark_identities=0, seed=seed
    )
    return generate_corpus(cfg, Storage())


def bench_concurrency(work: str, frames: int) -> list[tuple]:
    import ray

    from cion_dist.config import job_from_dict
    from cion_dist.ingest.job import run

    corpus = make_corpus(os.path.join(work, f"corpus-c{frames}"), videos=8, frames=frames)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        shutil.rmtree(os.path.join(work, "warm"), ignore_errors=True)
        # a warm-up run so both measured runs find worker processes started and modules imported
        run(
            job_from_dict(
                {
                    "stage": "ingest",
                    "output": os.path.join(work, "warm"),
                    "mlflow": {"enabled": False},
                    "ingest": {"manifest": corpus["manifest_uri"], "max_frames": 8, "concurrency": 2},
                }
            )
        )
        for conc in (1, 2):
            shutil.rmtree(os.path.join(work, f"conc{conc}"), ignore_errors=True)
            job = job_from_dict(
                {
                    "stage": "ingest",
                    "output": os.path.join(work, f"conc{conc}"),
                    "mlflow": {"enabled": False},
                    "ingest": {"manifest": corpus["manifest_uri"], "concurrency": conc},
                }
            )
            t = time.perf_counter()
            res = run(job)
            sec = time.perf_counter() - t
            rows.append(
                (
                    conc,
                    res.rows["clips"],
                    res.summary["frames_decoded"],
                    round(sec, 2),
                    round(res.rows["clips"] / sec, 3),
                    round(res.summary["frames_decoded"] / sec, 1),
                )
            )
    finally:
        ray.shutdown()
    return rows


_CHILD = r"""
import json, sys, time
import decord, cv2
from cion_dist.ingest.clip import ingest_clip
from cion_dist.ingest.config import IngestConfig

def hwm_mb():  # VmHWM starts afresh at exec, unlike ru_maxrss, which keeps the forking parent's peak
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

uri, chunk = sys.argv[1], int(sys.argv[2])
base = hwm_mb()
t = time.perf_counter()
res = ingest_clip("clip", uri, IngestConfig(chunk_frames=chunk))
print(json.dumps({"frames": res.frames, "crops": res.table.num_rows, "seconds": time.perf_counter() - t,
                  "base_mb": base, "peak_mb": hwm_mb()}))
"""


def bench_memory(work: str) -> list[tuple]:
    rows = []
    for seconds in (10, 60):
        corpus = make_corpus(os.path.join(work, f"corpus-{seconds}s"), videos=1, frames=seconds * 10, seed=1)
        import pyarrow.parquet as pq

        uri = pq.read_table(corpus["manifest_uri"]).column("uri")[0].as_py()
        for chunk, label in ((64, "chunked 64"), (seconds * 10, "whole clip")):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, uri, str(chunk)], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                (
                    f"{seconds} s",
                    label,
                    r["frames"],
                    round(r["peak_mb"], 1),
                    round(r["peak_mb"] - r["base_mb"], 1),
                    round(r["seconds"], 2),
                )
            )
    return rows


def table(title: str, header: tuple, rows: list[tuple]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shared",
        default=str(SHARED_DATA),
        help="the test and benchmark data folder (README); its videos/vtest.avi is decoded when present",
    )
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cion-bench-ingest"))
    ap.add_argument(
        "--clip-frames",
        type=int,
        default=400,
        help="frames per clip of the concurrency corpus: clips long enough that a task's work, not "
        "Ray's per-task scheduling, is what is measured",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["decode", "ingest", "memory"])
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    print(f"cpus: {os.cpu_count()}; work folder {args.work}")

    if "decode" not in args.skip:
        clips = {}
        vtest = os.path.join(args.shared, "videos", "vtest.avi")
        if os.path.exists(vtest):
            clips["vtest.avi 768x576 mpeg4"] = open(vtest, "rb").read()
        synth = make_corpus(os.path.join(args.work, "corpus-d"), videos=1, frames=200)
        import pyarrow.parquet as pq

        clips["synthetic 640x360 h264"] = open(
            pq.read_table(synth["manifest_uri"]).column("uri")[0].as_py(), "rb"
        ).read()
        table("decode, one thread: frames/s", ("clip", "every_n", "decoder", "frames", "frames/s"), bench_decode(clips))
    if "ingest" not in args.skip:
        table(
            f"ingest stage (background detector), 8 clips x {args.clip_frames} frames, local Ray",
            ("concurrency", "clips", "frames", "seconds", "clips/s", "frames/s"),
            bench_concurrency(args.work, args.clip_frames),
        )
    if "memory" not in args.skip:
        table(
            "one clip task, background detector, fresh process",
            ("clip", "decode", "frames", "peak RSS MB", "over import MB", "seconds"),
            bench_memory(args.work),
        )


if __name__ == "__main__":
    main()

"""Growth of the pretraining input path with the corpus: the identity-sharded stream against the previous
one-table implementation, side by side in one run.

The input path alone: a synthetic corpus of tiny JPEGs written as real per-video ingest and correlate outputs
(~16 images per identity, identities spanning 2-3 videos), then a local Ray cluster with 2 CPU workers whose
train loop takes ``--steps`` P x K multi-crop batches and no model step. Each (implementation, size) runs in its own
driver process. Figures: driver peak RSS (the driver process), per-worker peak RSS (largest training worker),
object-store peak (sampled every 0.2 s), time to first step (from the driver's start, the labelled set included),
input images/s from the first step to the last (the rate the Ray Data producers sustain), the time to build the
labelled set. Memory exponents are fitted as
log(memory) against log(crops) over the sizes each implementation ran.

    python benchmarks/scale_pretrain.py [--sizes 1e4,1e5,1e6] [--baseline-max 1e5] [--steps 6] [--workers 2]

The baseline is the implementation at ``--baseline-rev`` (default: the commit before the stream), extracted
with ``git archive`` into a temporary folder and run with that folder first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cion_dist.procmem import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REV = "1b98bbf"
PER_VIDEO = 1000


def tiny_jpegs(n: int = 512) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        arr = np.zeros((32, 16, 3), np.uint8) + rng.integers(0, 255, 3).astype(np.uint8)
        arr[8:20, 4:12] = rng.integers(0, 255, 3)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=70)
        out.append(buf.getvalue())
    return out


def make_corpus(root: str, n: int) -> str:
    """ingest + embed-less correlate outputs under ``root`` (per video parts); returns the correlate run URI."""
    import pyarrow as pa

    from cion_dist.storage.stage_io import StageOutput, input_record

    out = os.path.join(root, f"corpus-{n}")
    corr = StageOutput.create(out, "correlate", "c")
    if corr.is_complete():
        return corr.uri
    ingest = StageOutput.create(out, "ingest", "i")
    pool = tiny_jpegs()
    rng = np.random.default_rng(1)
    ids_total = max(1, n // 16)
    videos = -(-n // PER_VIDEO)
    for v in range(videos):
        m = min(PER_VIDEO, n - v * PER_VIDEO)
        vid = f"vid{v:06d}"
        # identities of a neighbourhood of videos: each identity recurs in 2-3 videos
        ident = (v * PER_VIDEO // 16 + rng.integers(-40, 100, m)) % ids_total
        ident[rng.random(m) < 0.05] = -1  # noise
        image_ids = [f"{vid}-{i}" for i in range(m)]
        jpeg = pa.array([pool[j] for j in rng.integers(0, len(pool), m)], pa.binary())
        ingest.write_unit(vid, pa.table({"image_id": image_ids, "video_id": [vid] * m, "jpeg": jpeg}))
        corr.write_unit(
            vid, pa.table({"image_id": image_ids, "video_id": [vid] * m, "identity_id": pa.array(ident, pa.int64())})
        )
    ingest.finalize(stage="ingest", rows={"crops": n})
    corr.finalize(stage="correlate", rows={"images": n}, inputs=[input_record(ingest)])
    return corr.uri


# ---------------------------------------------------------------- one measured run (its own process)


class StorePeak(threading.Thread):
    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.peak, self.stop = address, 0, False

    def run(self):
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(self.address)
        while not self.stop:
            try:
                used = get_memory_info_reply(state).store_stats.object_store_bytes_used
                self.peak = max(self.peak, int(used))
            except Exception:  # noqa: BLE001 - the cluster may be starting or stopping
                pass
            time.sleep(0.2)


_peak_rss_mb = peak_rss_mb


def loop_new(config: dict) -> None:
    import ray.train

    from cion_dist.pretrain.augment import MultiCropSpec
    from cion_dist.pretrain.stream import DATASET, worker_batches

    rank = ray.train.get_context().get_world_rank()
    spec = MultiCropSpec(local_crops=2)
    t0 = time.time()
    first, n = None, 0
    stream = worker_batches(ray.train.get_dataset_shard(DATASET), config["cursor"], rank, 0, 0, spec, True, 2)
    for _ in range(config["steps"]):
        next(stream)
        n += 1
        if first is None:
            first = time.time()
    _record(config, rank, t0, first, n)


def loop_old(config: dict) -> None:
    import ray.train

    from cion_dist.pretrain.augment import MultiCropSpec
    from cion_dist.pretrain.feed import iterate_steps
    from cion_dist.pretrain.sampler import PKSampler

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec = MultiCropSpec(local_crops=2)
    t0 = time.time()
    sampler = PKSampler(config["labels"], config["batch"], world, rank, 0)
    batches = list(sampler.batches(0, 2))[: config["steps"]]
    first, n = None, 0
    for _ in iterate_steps(config["table_ref"], batches, 0, spec, 0, 0, rank, "ray_data", 2):
        n += 1
        if first is None:
            first = time.time()
    _record(config, rank, t0, first, n)


def _record(config, rank, t0, first, n):
    end = time.time()
    Path(config["out"], f"rank{rank}.json").write_text(
        json.dumps(
            {
                "peak_rss_mb": _peak_rss_mb(),
                "first_step_at": first,
                "steps": n,
                "images_per_s": (n - 1) * config["batch"] * config["world"] / max(end - first, 1e-9)
                if n > 1
                else float("nan"),
            }
        )
    )


def one(impl: str, corr_uri: str, workers: int, steps: int, batch: int, work: str) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t_start = time.time()
    ctx = ray.init(
        num_cpus=workers + 2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=2 * 1024**3,
        _temp_dir=os.path.join(work, "ray"),
    )
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    peak = StorePeak(ctx.address_info["address"])
    peak.start()
    from cion_dist.storage.fs import Storage
    from cion_dist.storage.stage_io import StageOutput

    st = Storage()
    corr = StageOutput(corr_uri, st)
    crops = StageOutput(corr_uri.replace("/correlate/c", "/ingest/i"), st)
    out_dir = tempfile.mkdtemp(dir=work)
    config = {"steps": steps, "batch": batch, "world": workers, "out": out_dir}
    kwargs = {}
    t_set = time.time()
    if impl == "new":
        from cion_dist.pretrain import labelled
        from cion_dist.pretrain.augment import MultiCropSpec
        from cion_dist.pretrain.stream import DATASET, RunPlan, ingest_config, make_cursor, work_items

        data = labelled.build(
            corr,
            crops,
            work,
            f"lab-{os.getpid()}",
            world=workers,
            shard_images=4096,
            min_ids_per_shard=2 * batch // 2,
            seed=0,
            config={},
        )
        set_s = time.time() - t_set
        plan = RunPlan.build(labelled.read_index(data), labelled.shard_files(data), workers, batch, 0, 1, [1], [2], 8)
        plan.check()
        cursor = make_cursor()
        config["cursor"] = cursor
        items, bounds = work_items(plan, 1)
        kwargs = {
            "datasets": {DATASET: items},
            "dataset_config": ingest_config(
                plan, bounds, spec=MultiCropSpec(local_crops=2), augment=True, cursor=cursor, storage=st
            ),
        }
        loop = loop_new
    else:
        from cion_dist.pretrain.job import labelled_crops

        table = labelled_crops(corr, crops)
        set_s = time.time() - t_set
        config["labels"] = table["identity_id"].to_numpy()
        config["table_ref"] = ray.put(table)
        del table
        loop = loop_old
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=workers),
        run_config=RunConfig(name=f"scale-{impl}", storage_path=os.path.join(work, "train")),
        **kwargs,
    )
    res = trainer.fit()
    if res.error is not None:
        raise res.error
    peak.stop = True
    ranks = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("rank*.json"))]
    ray.shutdown()
    return {
        "impl": impl,
        "driver_peak_rss_mb": _peak_rss_mb(),
        "worker_peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
        "object_store_peak_mb": peak.peak / 2**20,
        "first_step_s": min(r["first_step_at"] for r in ranks) - t_start,
        "images_per_s": float(np.mean([r["images_per_s"] for r in ranks])),
        "set_s": set_s,
        "steps": min(r["steps"] for r in ranks),
    }


# ---------------------------------------------------------------- the table


def baseline_src(rev: str, work: str) -> str:
    dest = os.path.join(work, f"baseline-{rev}")
    if not os.path.isdir(dest):
        os.makedirs(dest)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "cion_dist"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def exponent(sizes, values) -> float:
    if len(sizes) < 2:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1e4,1e5,1e6")
    ap.add_argument("--baseline-max", type=float, default=1e5, help="largest size the baseline is run at")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--steps",
        type=int,
        default=40,
        help="steps per worker (enough that prefetch does not hide the producers' rate)",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cion-scale-pretrain"))
    ap.add_argument("--one", nargs=2, metavar=("IMPL", "CORRELATE_URI"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.one:
        res = one(args.one[0], args.one[1], args.workers, args.steps, args.batch, tempfile.mkdtemp(dir=args.work))
        print("RESULT " + json.dumps(res))
        return
    sys.path.insert(0, str(ROOT))
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    base = baseline_src(args.baseline_rev, args.work)
    rows = []
    for n in sizes:
        corr = make_corpus(args.work, n)
        for impl in ("old", "new"):
            if impl == "old" and n > args.baseline_max:
                continue
            # the baseline runs from its own folder: Ray workers put the driver's working directory on their path
            env = dict(os.environ, PYTHONPATH=base if impl == "old" else str(ROOT))
            cmd = [
                sys.executable,
                __file__,
                "--one",
                impl,
                corr,
                "--workers",
                str(args.workers),
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--work",
                args.work,
            ]
            t = time.time()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=base if impl == "old" else ROOT)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"{impl} at {n}: failed after {time.time() - t:.0f} s: {' | '.join(tail)}", flush=True)
                rows.append({"impl": impl, "n": n, "failed": True})
                continue
            r = json.loads(line[0][7:])
            r["n"] = n
            rows.append(r)
            print(
                f"{impl:>4} {n:>9} crops: driver {r['driver_peak_rss_mb']:.0f} MB, "
                f"worker {r['worker_peak_rss_mb']:.0f} MB, store {r['object_store_peak_mb']:.0f} MB, "
                f"first step {r['first_step_s']:.1f} s, "
                f"{r['images_per_s']:.1f} images/s",
                flush=True,
            )
    print(
        f"\n{'impl':<6}{'crops':>10}{'driver MB':>11}{'worker MB':>11}{'store MB':>10}{'set s':>8}{'1st step s':>12}"
        f"{'images/s':>10}"
    )
    for r in rows:
        if r.get("failed"):
            print(f"{r['impl']:<6}{r['n']:>10}   failed")
            continue
        print(
            f"{r['impl']:<6}{r['n']:>10}{r['driver_peak_rss_mb']:>11.0f}{r['worker_peak_rss_mb']:>11.0f}"
            f"{r['object_store_peak_mb']:>10.0f}{r['set_s']:>8.1f}{r['first_step_s']:>12.1f}{r['images_per_s']:>10.1f}"
        )
    for impl in ("old", "new"):
        ok = [r for r in rows if r["impl"] == impl and not r.get("failed")]
        if len(ok) >= 2:
            ns = [r["n"] for r in ok]
            print(
                f"{impl}: growth exponents over {ns[0]:.0e}..{ns[-1]:.0e} crops: driver "
                f"{exponent(ns, [r['driver_peak_rss_mb'] for r in ok]):.3f}, worker "
                f"{exponent(ns, [r['worker_peak_rss_mb'] for r in ok]):.3f}, object store "
                f"{exponent(ns, [max(r['object_store_peak_mb'], 1e-3) for r in ok]):.3f}"
            )
    from cion_dist.pretrain.sampler import counts_plan

    counts = np.random.default_rng(0).geometric(1 / 16, 250_000)
    counts = np.maximum(1, (counts * 4_000_000 / counts.sum()).astype(np.int64))
    t = time.time()
    plan = counts_plan(counts, 2, 60, np.random.default_rng(0))
    print(
        f"P x K plan, {counts.sum()} images / {len(counts)} identities, K = 2, P = 60: {time.time() - t:.2f} s "
        f"({len(plan)} batches, {len(np.unique(plan)) / counts.sum():.4f} of the images)"
    )


if __name__ == "__main__":
    main()

"""Pretraining throughput and memory: plain data parallel (ZeRO 0, the baseline) vs ZeRO 2 vs ZeRO 3.

Same data, same global batch, same seed, 2 CPU workers on a local Ray instance. Data: real pedestrians cut from
the MOT17 frames in $CION_SHARED_DATA/mot17_mini (one identity per sequence and track, visible >= 30%), falling back
to drawn figures when the folder is absent. Prints, per configuration: images/s (mean over steps after the
first), the fraction of step time spent waiting for the multi-crop batches (made in Ray Data tasks, or inline
with --augment worker), peak RSS of the larger worker, the loss curve's ends, and the student's model state per
worker (weights, gradients and optimizer state): measured, as the distinct tensor storages the worker holds
between steps less the teacher's (``cion_dist.pretrain.hooks.MemoryProbe``), beside ZeRO's accounting (fp32 weights
+ grads +
2 AdamW moments, divided as the stage partitions them). Peak RSS includes the full student built on every rank
before DeepSpeed partitions it and the teacher (a replica under ZeRO 0-2, partitioned under ZeRO-3); end RSS is
the steady state.

    .venv/bin/python benchmarks/bench_pretrain.py [--backbone resnet18] [--out-dim 16384] [--epochs 2] [--identities 32]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from datadir import SHARED_DATA
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PARTS = ("weights", "master", "optimizer", "other")  # cion_dist.pretrain.memory.model_state_parts + the rest
MOT = SHARED_DATA / "mot17_mini" / "train"


def mot17_crops(min_visibility: float = 0.3, min_height: int = 60) -> pa.Table:
    from cion_dist.images import decode_image

    ids, image_ids, jpegs = [], [], []
    next_id = 0
    for seq in sorted(MOT.iterdir()):
        gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2)
        keep = (gt[:, 6] == 1) & (gt[:, 7] == 1) & (gt[:, 8] >= min_visibility) & (gt[:, 5] >= min_height)
        frames = {}
        track_ids = {}
        for f, tid, x, y, w, h, *_ in gt[keep]:
            path = seq / "img1" / f"{int(f):06d}.jpg"
            if not path.exists():
                continue
            img = frames.setdefault(int(f), Image.fromarray(decode_image(path.read_bytes(), str(path))))
            box = (max(0, int(x)), max(0, int(y)), min(img.width, int(x + w)), min(img.height, int(y + h)))
            buf = io.BytesIO()
            img.crop(box).save(buf, format="JPEG", quality=90)
            if int(tid) not in track_ids:
                track_ids[int(tid)] = next_id
                next_id += 1
            ids.append(track_ids[int(tid)])
            image_ids.append(f"{seq.name}-{int(tid)}-{int(f)}")
            jpegs.append(buf.getvalue())
    return pa.table(
        {"image_id": image_ids, "identity_id": pa.array(ids, pa.int64()), "jpeg": pa.array(jpegs, pa.binary())}
    )


def drawn_crops(identities: int = 48, per_identity: int = 6) -> pa.Table:
    rng = np.random.default_rng(0)

    ids, image_ids, jpegs = [], [], []
    for i in range(identities):
        top, bottom = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
        for v in range(per_identity):
            arr = np.zeros((128, 64, 3), np.uint8) + rng.integers(60, 200, 3).astype(np.uint8)
            arr[20:70, 16:48] = top
            arr[70:124, 18:46] = bottom
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG")
            ids.append(i)
            image_ids.append(f"{i}-{v}")
            jpegs.append(buf.getvalue())
    return pa.table(
        {"image_id": image_ids, "identity_id": pa.array(ids, pa.int64()), "jpeg": pa.array(jpegs, pa.binary())}
    )


def model_state_mb(backbone: str, out_dim: int, zero: int, world: int) -> float:
    from cion_dist.models.dino_head import DINOHead
    from cion_dist.models.factory import build_backbone

    bb = build_backbone(backbone)
    n = sum(p.numel() for p in bb.parameters()) + sum(p.numel() for p in DINOHead(bb.embed_dim, out_dim).parameters())
    weights, grads, adam = 4 * n, 4 * n, 8 * n
    if zero >= 1:
        adam /= world
    if zero >= 2:
        grads /= world
    if zero >= 3:
        weights /= world
    return (weights + grads + adam) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--out-dim", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=8, help="images per worker step")
    ap.add_argument("--local-crops", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--stages", default="0,2,3,3r", help="ZeRO stages; 3r = ZeRO 3 with a replicated teacher")
    ap.add_argument("--augment", default="ray_data", choices=["ray_data", "worker"])
    ap.add_argument("--identities", type=int, default=32, help="first N identities (0 = all): bounds the steps")
    args = ap.parse_args()

    from cion_dist.config.job import Job
    from cion_dist.pretrain import hooks
    from cion_dist.pretrain.job import fit

    table = mot17_crops() if MOT.exists() else drawn_crops()
    counts = np.bincount(table["identity_id"].to_numpy())
    table = table.filter(pa.array(counts[table["identity_id"].to_numpy()] >= 2))
    if args.identities:
        keep_ids = np.unique(table["identity_id"].to_numpy())[: args.identities]
        table = table.filter(pa.array(np.isin(table["identity_id"].to_numpy(), keep_ids)))
    n_ids = len(np.unique(table["identity_id"].to_numpy()))
    print(
        f"data: {table.num_rows} crops of {n_ids} identities ({'MOT17' if MOT.exists() else 'drawn'}); "
        f"backbone {args.backbone}, head out_dim {args.out_dim}, 2 workers x {args.batch} images, "
        f"2 global + {args.local_crops} local crops, augmentation in {args.augment}"
    )
    rows, parts = [], []
    for token in args.stages.split(","):
        stage, replicated = int(token.rstrip("r")), token.endswith("r")
        job = Job(
            stage="pretrain",
            output=tempfile.gettempdir(),
            ray={"num_cpus": 4, "log_to_driver": False},
            mlflow={"enabled": False},
            pretrain={
                "backbone": args.backbone,
                "out_dim": args.out_dim,
                "batch_size_per_worker": args.batch,
                "local_crops": args.local_crops,
                "epochs": args.epochs,
                "gradual_epochs": [args.epochs],
                "gradual_instances": [2],
                "zero_stage": stage,
                "num_workers": 2,
                "partition_teacher": not replicated,
                "cpu_shm_comm": False,
                "augment_in": args.augment,
                "max_failures": 0,
            },
        )
        t0 = time.time()
        ckpt_dir = os.path.join(tempfile.gettempdir(), f"cion-bench-pretrain-z{token}-{int(t0)}")
        try:
            with hooks.installed(hooks.MemoryProbe()):
                res = fit(job, table, ckpt_dir, f"bench-z{token}")
        finally:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        if res.error is not None:
            raise res.error
        m = res.metrics
        name = "DDP (ZeRO 0)" if stage == 0 else f"ZeRO {stage}" + (", replica T" if replicated else "")
        rows.append(
            (
                name,
                m.get("images_per_s_mean", float("nan")),
                m.get("data_wait_fraction_mean", float("nan")),
                m["peak_rss_mb_max_worker"],
                m["rss_mb_max_worker"],
                m["student_state_mb"],
                model_state_mb(args.backbone, args.out_dim, stage, 2),
                m["first_loss"],
                m["last_loss"],
                m["global_step"],
                time.time() - t0,
            )
        )
        parts.append((name, *(m[f"student_{k}_mb"] for k in PARTS), m["teacher_mb"]))
    print(
        f"{'config':<18}{'images/s':>10}{'data wait':>11}{'peak RSS MB':>13}{'end RSS MB':>12}{'state MB':>10}"
        f"{'vs DDP':>8}{'accounting MB':>15}{'first loss':>12}{'last loss':>11}{'steps':>7}{'wall s':>8}"
    )
    ddp_state = next((r[5] for r in rows if r[0].startswith("DDP")), float("nan"))
    for name, ips, wait, peak, rss, state_mb, acct_mb, l0, l1, steps, wall in rows:
        print(
            f"{name:<18}{ips:>10.2f}{wait:>11.1%}{peak:>13.0f}{rss:>12.0f}{state_mb:>10.1f}{state_mb / ddp_state:>8.2f}"
            f"{acct_mb:>15.1f}{l0:>12.4f}{l1:>11.4f}{steps:>7}{wall:>8.1f}"
        )
    print(
        "state MB, measured, by part (max over workers): "
        + ", ".join(f"{name} {' / '.join(f'{p[1 + i]:.1f}' for p in parts)}" for i, name in enumerate(PARTS))
        + f"; teacher {' / '.join(f'{p[-1]:.1f}' for p in parts)}"
        + f" for {' / '.join(p[0] for p in parts)}"
    )
    print(
        "images/s counts every image of the global batch (2 global + local crops each); RSS includes the Python, "
        "torch and Ray runtime of the worker process."
    )


if __name__ == "__main__":
    main()

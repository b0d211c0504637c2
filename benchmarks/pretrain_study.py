"""Does pretraining on CION-correlated identities give a better re-ID backbone than the alternatives?

One synthetic corpus of person videos goes through the real stage cores in process (synth -> ingest: decode,
detect, track -> embed: handcrafted descriptor -> correlate: calibration and CION's three levels). The same crops,
the same backbone, the same optimiser steps and images seen then pretrain with five label sources ("arms"):

1. ``random``    no pretraining (the random initialisation itself is evaluated);
2. ``instance``  instance-level DINO: every crop its own identity, K = 1;
3. ``tracklet``  tracklet = identity (LUPerson-NL style labels);
4. ``cion``      the correlate stage's identities;
5. ``truth``     ground-truth identities (the upper bound the synthetic corpus allows).

Each arm runs for several seeds and is evaluated on identities never seen in pretraining: a Market-1501-layout
synthetic benchmark (frozen features, and the short fine-tune protocol of ``cion_dist.evaluate.finetune``) and a
real one cut from the MOT17 ground-truth people (frozen features). The handcrafted descriptor is scored beside the
arms as the "no learning" reference. With ``--rounds 2`` the round-1 CION backbone re-embeds the crops, correlation
runs again on those features (iterative bootstrapping) and a round-2 arm trains on its identities.

The defaults fit a 2-core CPU in about 25 minutes; on a GPU cluster raise ``--identities``, ``--videos``,
``--steps``, ``--batch``, ``--image-size`` and the backbone (``--backbone resnet50_ibn_a``).

    python benchmarks/pretrain_study.py                       # the default study
    python benchmarks/pretrain_study.py --seeds 1 --steps 60  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datadir import SHARED_DATA

ARMS = ("random", "instance", "tracklet", "cion", "truth")
# not run by default: the ground-truth labels with a plain classification loss, a control that says what the
# backbone, crops and step budget can learn at all when the labels are used directly
CONTROLS = ("supervised",)
DATA = str(SHARED_DATA)
log = logging.getLogger("pretrain_study")


# ---------------------------------------------------------------- corpus and labels (the real stage cores)


def corpus_config(args, out: str):
    """A corpus that colour alone does not solve: texture-only look-alikes, small shape details, and benchmark crops
    with lighting changes, far people and occlusion."""
    from cion_dist.synth.config import SynthConfig

    return SynthConfig(
        out=out,
        identities=args.identities,
        cameras=args.cameras,
        videos=args.videos,
        frames=args.frames,
        people_per_video=args.people_per_video,
        benchmark_identities=2 * args.test_identities,
        benchmark_images_per_camera=args.images_per_camera,
        look_alike_fraction=args.look_alike_fraction,
        texture_look_alikes=True,
        details=True,
        benchmark_light_jitter=0.25,
        benchmark_far=0.4,
        benchmark_occlusion=0.3,
        seed=args.corpus_seed,
    )


def ingest_corpus(manifest_uri: str, out: str, every_n: int) -> pa.Table:
    """Every clip through ``ingest_clip`` (decord decode, background detector, tracker) in manifest order."""
    from cion_dist.ingest.clip import ingest_clip
    from cion_dist.ingest.config import IngestConfig

    if os.path.exists(out):
        return pq.read_table(out)
    cfg = IngestConfig(every_n=every_n)
    manifest = pq.read_table(manifest_uri).to_pylist()
    parts = []
    for row in manifest:
        res = ingest_clip(row["video_id"], row["uri"], cfg)
        parts.append(res.table.replace_schema_metadata(None))
        log.info("ingest %s: %d crops in %.1f s", row["video_id"], res.table.num_rows, res.seconds)
    table = pa.concat_tables(parts)
    pq.write_table(table, out + ".tmp")
    os.replace(out + ".tmp", out)
    return table


def crop_truth(crops: pa.Table, gt_uri: str) -> np.ndarray:
    """The true identity of each crop (IoU >= 0.5 with a ground-truth box), -1 for false detections."""
    from cion_dist.synth.groundtruth import label_boxes, read_ground_truth

    bbox = np.asarray(crops.column("bbox").to_pylist(), dtype=np.float64).reshape(-1, 4)
    boxes = pd.DataFrame(
        {
            "video_id": crops.column("video_id").to_pylist(),
            "frame_index": crops.column("frame_index").to_numpy(),
            "x1": bbox[:, 0],
            "y1": bbox[:, 1],
            "x2": bbox[:, 2],
            "y2": bbox[:, 3],
        }
    )
    return label_boxes(boxes, read_ground_truth(gt_uri))


def decode_all(jpegs: list[bytes]) -> list[np.ndarray]:
    from cion_dist.images import decode_image

    return [decode_image(j, f"#{i}") for i, j in enumerate(jpegs)]


def embed_for_correlation(images: list[np.ndarray], embedder: str) -> np.ndarray:
    """The embed stage's features: an ONNX re-ID model (e.g. OSNet) given as a path, or the handcrafted descriptor."""
    if embedder == "handcrafted":
        return embed_handcrafted(images)
    from cion_dist.embed.embedders import OnnxEmbedder

    x = OnnxEmbedder(embedder)(images)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_handcrafted(images: list[np.ndarray]) -> np.ndarray:
    from cion_dist.embed.embedders import HandcraftedEmbedder

    return HandcraftedEmbedder()(images)


@torch.no_grad()
def embed_backbone(backbone: torch.nn.Module, images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """L2-normalised backbone features (flip-averaged), as the embed stage's torch backbone gives them."""
    from cion_dist.evaluate.features import embed_tensor, to_tensor

    backbone = backbone.eval()
    out = [embed_tensor(backbone, to_tensor(images[s : s + 256], height, width)) for s in range(0, len(images), 256)]
    x = np.concatenate(out).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Correlation:
    labels: np.ndarray  # identity per crop, -1 where CION dropped the crop
    radius: float
    link_distance: float
    quality: dict  # pairwise / BCubed F and NMI for CION and tracklet = identity


def correlate(x: np.ndarray, crops: pa.Table, truth: np.ndarray, window: int, stride: int) -> Correlation:
    """Calibrate r and d on the corpus, then CION's three levels (``correlate_in_process``, the stage's yardstick)."""
    from cion_dist.correlate.calibrate import calibrate
    from cion_dist.correlate.quality import score
    from cion_dist.correlate.reference import correlate_in_process

    video = np.asarray(crops.column("video_id").to_pylist())
    tkey = np.asarray(crops.column("tracklet_id").to_pylist())
    _, tracklet = np.unique(tkey, return_inverse=True)
    frame = crops.column("frame_index").to_numpy()
    cal = calibrate(x, tkey, video)
    res = correlate_in_process(
        x, video, tracklet, cal.radius, cal.link_distance, window=window, stride=stride, frame=frame
    )
    known = truth >= 0
    quality = {"cion": score(truth[known], res.identity[known]), "tracklet": score(truth[known], tracklet[known])}
    return Correlation(np.asarray(res.identity), cal.radius, cal.link_distance, quality)


def arm_labels(arm: str, crops: pa.Table, truth: np.ndarray, cion: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, labels)``: the crops an arm trains on and their identity labels (contiguous ints).

    ``instance`` and ``tracklet`` use every crop; ``cion`` the crops correlation kept; ``truth`` the crops that
    overlap a ground-truth person."""
    n = crops.num_rows
    if arm == "instance":
        rows, lab = np.arange(n), np.arange(n)
    elif arm == "tracklet":
        rows = np.arange(n)
        _, lab = np.unique(np.asarray(crops.column("tracklet_id").to_pylist()), return_inverse=True)
    elif arm in ("cion", "cion2"):
        if cion is None:
            raise ValueError(f"arm {arm} needs correlation labels")
        rows = np.flatnonzero(cion >= 0)
        lab = cion[rows]
    elif arm in ("truth", "supervised"):
        rows = np.flatnonzero(truth >= 0)
        lab = truth[rows]
    else:
        raise ValueError(f"unknown arm {arm!r}; use one of {', '.join(ARMS + CONTROLS)}")
    _, lab = np.unique(lab, return_inverse=True)
    return rows.astype(np.int64), lab.astype(np.int64)


def label_stats(labels: np.ndarray) -> dict:
    _, counts = np.unique(labels, return_counts=True)
    return {"images": int(len(labels)), "identities": int(len(counts)), "median_per_identity": float(np.median(counts))}


# ---------------------------------------------------------------- evaluation


def reid_scores(qf: np.ndarray, gf: np.ndarray, ds) -> dict:
    from cion_dist.evaluate.datasets import pids_cams
    from cion_dist.evaluate.metrics import evaluate_features

    qp, qc = pids_cams(ds.query)
    gp, gc = pids_cams(ds.gallery)
    m = evaluate_features(qf, gf, qp, gp, qc, gc)
    return {"mAP": m.mAP, "rank1": m.rank1, "mINP": m.mINP, "queries": m.num_valid}


class Benchmarks:
    """The evaluation sets, decoded once."""

    def __init__(self, market_root: str, mot17_list: str | None, height: int, width: int):
        from cion_dist.evaluate.datasets import load_dataset
        from cion_dist.evaluate.features import load_images

        self.height, self.width = height, width
        self.sets = {"synth": load_dataset(market_root)}
        if mot17_list:
            self.sets["mot17"] = load_dataset(mot17_list)
        self.images = {
            name: {s: load_images([r.uri for r in ds.split(s)]) for s in ("query", "gallery")}
            for name, ds in self.sets.items()
        }

    def frozen(self, model: torch.nn.Module) -> dict:
        from cion_dist.evaluate.features import embed_tensor, to_tensor

        model = model.eval()
        out = {}
        for name, ds in self.sets.items():
            feats = {}
            for s, ims in self.images[name].items():
                parts = [
                    embed_tensor(model, to_tensor(ims[i : i + 256], self.height, self.width))
                    for i in range(0, len(ims), 256)
                ]
                feats[s] = np.concatenate(parts)
            out[name] = reid_scores(feats["query"], feats["gallery"], ds)
        return out

    def handcrafted(self) -> dict:
        out = {}
        for name, ds in self.sets.items():
            qf = embed_handcrafted(self.images[name]["query"])
            gf = embed_handcrafted(self.images[name]["gallery"])
            out[name] = reid_scores(qf, gf, ds)
        return out

    def finetuned(self, backbone: torch.nn.Module, iterations: int, seed: int) -> dict:
        """The short BoT-style fine-tune on the synthetic benchmark's training identities, then frozen scores."""
        from cion_dist.evaluate.config import FinetuneConfig
        from cion_dist.evaluate.finetune import finetune

        cfg = FinetuneConfig(iterations=iterations, p=8, k=4)
        model, _ = finetune(
            backbone, self.sets["synth"].train, cfg, height=self.height, width=self.width, device="cpu", seed=seed
        )
        return {"synth": self.frozen(model)["synth"]}

    def sizes(self) -> dict:
        return {name: ds.counts() for name, ds in self.sets.items()}


# ---------------------------------------------------------------- training (the project's in-process step)


def pretrain_config(args, instances: list[int]):
    """The stage's own config for an arm: one 'epoch' per K stage, so K grows at the same steps in every arm."""
    from cion_dist.pretrain.config import PretrainConfig

    fixed = dict(
        backbone=args.backbone,
        backbone_kwargs=backbone_kwargs(args),
        out_dim=args.out_dim,
        hidden_dim=args.hidden_dim,
        bottleneck_dim=args.bottleneck_dim,
        batch_size_per_worker=args.batch,
        local_crops=args.local_crops,
        image_size=(args.height, args.width),
        local_size=(args.height // 2, args.width // 2),
        epochs=len(instances),
        gradual_epochs=list(range(1, len(instances) + 1)),
        gradual_instances=list(instances),
        lr=args.lr,
        teacher_temp=args.teacher_temp,
        head_bn=args.head_bn,
        momentum_teacher=args.momentum_teacher,
        num_workers=1,
    )
    extra = {"warmup_epochs": 0, "freeze_last_layer": 0}
    for kv in getattr(args, "pretrain_set", None) or []:
        key, sep, value = kv.partition("=")
        if not sep or key in fixed:
            raise SystemExit(f"--pretrain-set {kv!r}: expected KEY=VALUE for a key the study does not set itself")
        extra[key] = value
    return PretrainConfig(**fixed, **extra)


def pk_views(images: list, labels: np.ndarray, instances: list[int], steps: int, batch: int, spec, seed: int):
    """``(views, labels)`` batches: the stage's P x K plan (``epoch_plan``) and multi-crop (``multi_crop``), with K
    switching to ``instances[i]`` after ``i / len(instances)`` of the steps; epochs are replayed as needed."""
    from PIL import Image

    from cion_dist.pretrain.augment import multi_crop
    from cion_dist.pretrain.sampler import epoch_plan

    pil = [Image.fromarray(im) for im in images]
    rng = np.random.default_rng([seed, 17])
    per_stage = steps // len(instances)
    done, epoch = 0, 0
    for stage, k in enumerate(instances):
        stage_steps = per_stage if stage < len(instances) - 1 else steps - done
        left = stage_steps
        while left > 0:
            plan = epoch_plan(labels, k, batch // k, seed, epoch)
            epoch += 1
            if not len(plan):
                raise ValueError(f"{len(np.unique(labels))} identities cannot fill a batch of {batch // k} (K={k})")
            for rows in plan[:left]:
                per_image = [multi_crop(pil[i], spec, rng) for i in rows]
                yield [np.stack([c[v] for c in per_image]) for v in range(spec.ncrops)], labels[rows]
            left -= min(left, len(plan))
        done += stage_steps


def train_arm(images: list[np.ndarray], labels: np.ndarray, instances: list[int], args, seed: int):
    """Pretrain a fresh backbone on ``images`` with identity ``labels`` through the stage's in-process step
    (``cion_dist.pretrain.step.train``); returns (teacher backbone, per-step history)."""
    from cion_dist.pretrain.augment import MultiCropSpec
    from cion_dist.pretrain.step import train

    cfg = pretrain_config(args, instances)
    spec = MultiCropSpec(tuple(cfg.image_size), tuple(cfg.local_size), cfg.local_crops)
    batches = pk_views(images, labels, instances, args.steps, args.batch, spec, seed)
    res = train(cfg, batches, steps=args.steps, seed=seed, steps_per_epoch=args.steps // len(instances))
    return res.teacher, res.history


def train_supervised(images: list[np.ndarray], labels: np.ndarray, instances: list[int], args, seed: int):
    """The control arm: the same backbone, P x K batches and global crops, trained with identity cross-entropy
    through a BatchNorm + linear classifier (BoT's neck, no triplet) and AdamW at the study's per-image lr."""
    from cion_dist.pretrain.augment import MultiCropSpec, normalize

    backbone = random_backbone(args, seed)
    clf = torch.nn.Sequential(
        torch.nn.BatchNorm1d(backbone.embed_dim), torch.nn.Linear(backbone.embed_dim, int(labels.max()) + 1)
    )
    params = list(backbone.parameters()) + list(clf.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr * args.batch / 256, weight_decay=0.04)
    spec = MultiCropSpec((args.height, args.width), (args.height // 2, args.width // 2), 0)
    backbone.train()
    history = []
    for views, lab in pk_views(images, labels, instances, args.steps, args.batch, spec, seed):
        logits = clf(backbone(normalize(torch.from_numpy(views[0]))))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(lab))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return backbone, history


def health_of(history: list[dict], args) -> dict:
    """Loss over the first and last tenth of the steps and the stage's health verdict."""
    if not history:
        return {}
    from cion_dist.pretrain.health import health_verdict

    w = max(1, len(history) // 10)
    verdict, _ = health_verdict(history, args.out_dim)
    return {
        "loss_first": float(np.mean([h["loss"] for h in history[:w]])),
        "loss_last": float(np.mean([h["loss"] for h in history[-w:]])),
        "verdict": verdict,
    }


def backbone_kwargs(args) -> dict:
    return {"widths": tuple(args.widths)} if args.widths else {}


def random_backbone(args, seed: int) -> torch.nn.Module:
    from cion_dist.models.factory import build_backbone

    torch.manual_seed(seed)
    return build_backbone(args.backbone, **backbone_kwargs(args))


# ---------------------------------------------------------------- reporting


def spread(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return "-"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} +- {v.std(ddof=1):.3f} [{v.min():.3f}-{v.max():.3f}]"


COLUMNS = (
    ("synth", "frozen", "mAP"),
    ("synth", "frozen", "rank1"),
    ("synth", "frozen", "mINP"),
    ("synth", "finetune", "mAP"),
    ("synth", "finetune", "rank1"),
    ("mot17", "frozen", "mAP"),
    ("mot17", "frozen", "rank1"),
    ("mot17", "frozen", "mINP"),
)


def table(results: dict[str, list[dict]], handcrafted: dict) -> str:
    """One row per arm: mean +- std [min-max] over seeds for each (set, protocol, metric)."""
    head = ["arm"] + [f"{s} {p} {m}" for s, p, m in COLUMNS]
    rows = [head]
    for arm, runs in results.items():
        row = [arm]
        for s, p, m in COLUMNS:
            row.append(spread([r.get(p, {}).get(s, {}).get(m) for r in runs]))
        rows.append(row)
    hc = ["handcrafted (no learning)"]
    for s, p, m in COLUMNS:
        hc.append(f"{handcrafted[s][m]:.3f}" if p == "frozen" and s in handcrafted else "-")
    rows.append(hc)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def health_lines(results: dict[str, list[dict]]) -> list[str]:
    """Each trained arm's health verdicts over seeds, with the loss at both ends: an arm whose self-distillation
    collapsed compares nothing, whatever its mAP."""
    lines = []
    for arm, runs in results.items():
        verdicts = [r["verdict"] for r in runs if r.get("verdict")]
        if not verdicts:
            continue
        counts = ", ".join(f"{v} x{verdicts.count(v)}" for v in dict.fromkeys(verdicts))
        l0 = np.mean([r["loss_first"] for r in runs if "loss_first" in r])
        l1 = np.mean([r["loss_last"] for r in runs if "loss_last" in r])
        lines.append(f"health {arm}: {counts}; loss {l0:.3f} -> {l1:.3f}")
    return lines


def verdict(results: dict[str, list[dict]], against=("instance", "tracklet")) -> list[str]:
    """CION against each baseline on synthetic frozen mAP: mean gap and whether it exceeds the seed spread."""

    def maps(arm):
        return np.asarray([r["frozen"]["synth"]["mAP"] for r in results.get(arm, [])])

    c = maps("cion")
    lines = []
    for other in against:
        o = maps(other)
        if not len(c) or not len(o):
            continue
        gap = c.mean() - o.mean()
        sd = max(c.std(ddof=1) if len(c) > 1 else 0.0, o.std(ddof=1) if len(o) > 1 else 0.0)
        separated = c.min() > o.max()
        lines.append(
            f"cion - {other}: {gap:+.3f} mAP (largest seed std {sd:.3f}; every cion seed above every "
            f"{other} seed: {'yes' if separated else 'no'}) -> {'holds' if gap > sd and separated else 'does not hold'}"
        )
    return lines


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work", default="./study-out", help="working folder (corpus, crops, results); reused if present")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"comma-separated, of {', '.join(ARMS + CONTROLS)} (controls not by default)",
    )
    p.add_argument("--rounds", type=int, default=2, choices=(1, 2), help="2: also the bootstrapped round-2 CION arm")
    # corpus
    p.add_argument("--identities", type=int, default=48)
    p.add_argument("--cameras", type=int, default=5)
    p.add_argument("--videos", type=int, default=20)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--people-per-video", type=int, default=6)
    p.add_argument("--look-alike-fraction", type=float, default=0.5)
    p.add_argument("--test-identities", type=int, default=100, help="held-out test identities (as many for training)")
    p.add_argument("--images-per-camera", type=int, default=3)
    p.add_argument("--corpus-seed", type=int, default=0)
    p.add_argument("--every-n", type=int, default=2, help="ingest every n-th frame")
    p.add_argument(
        "--embedder",
        default="auto",
        help="features for correlation: an ONNX re-ID model path, 'handcrafted', or auto (the OSNet file "
        "under $CION_SHARED_DATA/models when present, else handcrafted)",
    )
    p.add_argument("--window", type=int, default=0, help="videos per level-3 window; 0: the whole corpus")
    p.add_argument("--stride", type=int, default=0, help="0: half the window")
    # pretraining
    p.add_argument("--backbone", default="resnet_tiny")
    p.add_argument("--widths", type=int, nargs="*", default=[16, 32, 64, 128], help="resnet_tiny stage widths")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--instances", type=int, nargs="+", default=[4, 8], help="K per part of training (identity arms)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--local-crops", type=int, default=2)
    p.add_argument("--out-dim", type=int, default=1024)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--bottleneck-dim", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.02, help="peak lr per 256 images")
    # the reference recipe (teacher_temp 0.04, no BN in the head) collapses at this budget: docs/pretrain_study.md
    p.add_argument("--teacher-temp", type=float, default=0.02, help="reference: 0.04")
    p.add_argument(
        "--head-bn", action=argparse.BooleanOptionalAction, default=True, help="BatchNorm in the head (reference: off)"
    )
    p.add_argument("--momentum-teacher", type=float, default=0.99, help="reference: 0.996 (for ~400k steps)")
    p.add_argument(
        "--pretrain-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="other pretrain settings for every arm, e.g. center_momentum=0.99 warmup_epochs=1 (keys the study "
        "sets itself are refused)",
    )
    # evaluation
    p.add_argument("--finetune-iterations", type=int, default=60)
    p.add_argument(
        "--mot17",
        default=os.path.join(DATA, "mot17_mini", "train"),
        help="MOT17 frames with ground truth (MOTChallenge layout) for the real-crop benchmark; skipped when absent",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); 1 is several times faster on a loaded 2-core machine",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    t_start = time.time()
    timings: dict[str, float] = {}

    from cion_dist.evaluate.mot17_reid import build_benchmark
    from cion_dist.synth.generate import generate_corpus

    t = time.time()
    info = generate_corpus(corpus_config(args, os.path.join(work, "corpus")))
    timings["synth"] = time.time() - t
    t = time.time()
    crops = ingest_corpus(info["manifest_uri"], os.path.join(work, f"crops-every{args.every_n}.parquet"), args.every_n)
    timings["ingest"] = time.time() - t
    truth = crop_truth(crops, info["gt_uri"])
    t = time.time()
    images = decode_all(crops.column("jpeg").to_pylist())
    if args.embedder == "auto":
        osnet = os.path.join(DATA, "models", "osnet_x0_25_msmt17.onnx")
        args.embedder = osnet if os.path.exists(osnet) else "handcrafted"
    args.window = args.window or args.videos
    args.stride = args.stride or max(1, args.window // 2)
    cache = os.path.join(work, f"features-{os.path.basename(args.embedder)}-every{args.every_n}.npy")
    x = np.load(cache) if os.path.exists(cache) else embed_for_correlation(images, args.embedder)
    np.save(cache, x)
    corr1 = correlate(x, crops, truth, args.window, args.stride)
    timings["embed+correlate"] = time.time() - t
    mot17 = None
    if args.mot17 and os.path.isdir(args.mot17):
        mot17 = build_benchmark(args.mot17, os.path.join(work, "mot17-reid"))["list_uri"]
    bench = Benchmarks(info["market_uri"], mot17, args.height, args.width)
    handcrafted = bench.handcrafted()
    print(
        f"corpus: {info['videos']} videos, {info['identities']} identities, {crops.num_rows} crops "
        f"({int((truth >= 0).sum())} on a true person), "
        f"{len(np.unique(crops.column('tracklet_id').to_pylist()))} tracklets"
    )
    print(f"evaluation sets: {json.dumps(bench.sizes())}")
    print(
        f"correlation round 1 ({os.path.basename(args.embedder)} features, window {args.window} videos): "
        f"r={corr1.radius:.3f} d={corr1.link_distance:.3f} pairwise F CION {corr1.quality['cion']['pairwise_f']:.3f} "
        f"/ tracklet {corr1.quality['tracklet']['pairwise_f']:.3f}"
    )

    results: dict[str, list[dict]] = {a: [] for a in arms}
    labels_info = {}
    cion_backbones = {}
    t = time.time()
    for arm in arms:
        if arm != "random":
            rows, lab = arm_labels(arm, crops, truth, corr1.labels)
            labels_info[arm] = label_stats(lab)
        for seed in range(args.seeds):
            ts = time.time()
            if arm == "random":
                model, curve = random_backbone(args, seed), []
            elif arm == "supervised":
                model, losses = train_supervised([images[i] for i in rows], lab, args.instances, args, seed)
                curve = []
                log.info("supervised seed %d: cross-entropy %.3f -> %.3f", seed, losses[0], losses[-1])
            else:
                ks = [1] if arm == "instance" else args.instances
                model, curve = train_arm([images[i] for i in rows], lab, ks, args, seed)
                if arm == "cion":
                    cion_backbones[seed] = model
            run = {
                "seed": seed,
                "frozen": bench.frozen(model),
                "finetune": bench.finetuned(model, args.finetune_iterations, seed) if args.finetune_iterations else {},
                **health_of(curve, args),
                "seconds": time.time() - ts,
            }
            results[arm].append(run)
            log.info(
                "%s seed %d: synth mAP %.3f (finetuned %s), %.0f s",
                arm,
                seed,
                run["frozen"]["synth"]["mAP"],
                f"{run['finetune']['synth']['mAP']:.3f}" if run["finetune"] else "-",
                run["seconds"],
            )
    timings["arms"] = time.time() - t

    rounds = {}
    if args.rounds == 2 and cion_backbones:
        t = time.time()
        results["cion round 2"] = []
        rounds["round1"] = corr1.quality
        rounds["round2"] = []
        for seed, model in cion_backbones.items():
            corr2 = correlate(
                embed_backbone(model, images, args.height, args.width), crops, truth, args.window, args.stride
            )
            rounds["round2"].append(
                {"seed": seed, **corr2.quality["cion"], "r": corr2.radius, "d": corr2.link_distance}
            )
            rows, lab = arm_labels("cion2", crops, truth, corr2.labels)
            model2, curve = train_arm([images[i] for i in rows], lab, args.instances, args, seed)
            results["cion round 2"].append(
                {
                    "seed": seed,
                    "frozen": bench.frozen(model2),
                    "finetune": bench.finetuned(model2, args.finetune_iterations, seed)
                    if args.finetune_iterations
                    else {},
                    **health_of(curve, args),
                    "labels": label_stats(lab),
                }
            )
        timings["round2"] = time.time() - t

    print(
        f"\npretraining: {args.backbone} {args.widths or ''}, {args.steps} steps x {args.batch} images "
        f"({args.steps * args.batch} images seen), {args.height}x{args.width} global crops + {args.local_crops} local, "
        f"K {args.instances} (instance arm K=1), seeds {args.seeds}"
    )
    print("labels per arm: " + json.dumps(labels_info))
    print("\nmAP / Rank-1 / mINP on held-out identities, mean +- std [min-max] over seeds\n")
    print(table(results, handcrafted))
    print()
    for line in health_lines(results):
        print(line)
    for line in verdict(results):
        print(line)
    if rounds:
        f2 = [r["pairwise_f"] for r in rounds["round2"]]
        m1 = [r["frozen"]["synth"]["mAP"] for r in results.get("cion", [])]
        m2 = [r["frozen"]["synth"]["mAP"] for r in results["cion round 2"]]
        print(
            f"bootstrapping: correlation pairwise F round 1 {rounds['round1']['cion']['pairwise_f']:.3f} -> round 2 "
            f"{spread(f2)}; synth frozen mAP round 1 {spread(m1)} -> round 2 {spread(m2)}"
        )
    timings["total"] = time.time() - t_start
    print("seconds: " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
    summary = {
        "args": vars(args),
        "results": results,
        "handcrafted": handcrafted,
        "labels": labels_info,
        "correlation": {"round1": corr1.quality, **({"round2": rounds["round2"]} if rounds else {})},
        "sizes": bench.sizes(),
        "timings": timings,
    }
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)
    return summary


if __name__ == "__main__":
    main()

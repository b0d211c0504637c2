"""Test data for the embed stage: real MOT17 ground-truth crops, drawn colour people, and an ingest-like output."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pyarrow as pa

from cion_dist.images import encode_jpeg
from cion_dist.storage.fs import Storage
from cion_dist.storage.reports import part_record
from cion_dist.storage.stage_io import StageOutput, unit_filename


def mot17_crops(
    root: Path, ids_per_seq: int = 3, frames_per_id: int = 3, min_height: int = 80, seqs: Optional[list[str]] = None
) -> list[dict]:
    """Crops of pedestrians (class 1, consider flag 1, visibility > 0.5) cut from MOT17 frames by their gt boxes.

    Per sequence, the ``ids_per_seq`` identities with the most qualifying frames are taken (tallest boxes break
    ties), ``frames_per_id`` frames each. Identity key = ``<seq>/<gt id>``.
    """
    out = []
    seq_dirs = sorted((root / "mot17_mini" / "train").iterdir())
    for seq_dir in seq_dirs:
        if seqs and seq_dir.name not in seqs:
            continue
        gt = np.loadtxt(seq_dir / "gt" / "gt.txt", delimiter=",", ndmin=2)
        keep = (gt[:, 7] == 1) & (gt[:, 6] == 1) & (gt[:, 8] > 0.5) & (gt[:, 5] >= min_height)
        rows = gt[keep]
        by_id: dict[int, list] = defaultdict(list)
        for r in rows:
            by_id[int(r[1])].append(r)
        ranked = sorted(by_id.items(), key=lambda kv: (-len(kv[1]), -float(np.mean([r[5] for r in kv[1]]))))
        frames: dict[int, np.ndarray] = {}
        for pid, rs in ranked[:ids_per_seq]:
            for r in sorted(rs, key=lambda r: r[0])[:frames_per_id]:
                f = int(r[0])
                if f not in frames:
                    bgr = cv2.imread(str(seq_dir / "img1" / f"{f:06d}.jpg"))
                    frames[f] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                img = frames[f]
                x, y, w, h = (int(round(v)) for v in r[2:6])
                x0, y0 = max(0, x), max(0, y)
                x1, y1 = min(img.shape[1], x + w), min(img.shape[0], y + h)
                if x1 - x0 < 8 or y1 - y0 < 16:
                    continue
                out.append(
                    {
                        "seq": seq_dir.name,
                        "pid": f"{seq_dir.name}/{pid}",
                        "frame": f,
                        "bbox": [float(x0), float(y0), float(x1), float(y1)],
                        "rgb": img[y0:y1, x0:x1].copy(),
                    }
                )
    return out


_COLOURS = np.array(
    [
        (200, 30, 30),
        (30, 160, 40),
        (30, 60, 200),
        (230, 210, 40),
        (240, 240, 240),
        (25, 25, 25),
        (150, 60, 170),
        (240, 130, 20),
        (110, 70, 40),
        (20, 170, 180),
    ],
    dtype=np.float64,
)


def draw_person(rng: np.random.Generator, shirt, trousers, h: int = 128, w: int = 64) -> np.ndarray:
    """A crude pedestrian (head, torso, legs) on a random textured background, jittered in place, size and light."""
    bg = rng.integers(60, 200, size=3)
    img = np.clip(bg + rng.normal(0, 25, size=(h, w, 3)), 0, 255)
    cx = w / 2 + rng.uniform(-5, 5)
    bw = w * rng.uniform(0.55, 0.7)
    top = rng.uniform(2, 8)
    light = rng.uniform(0.75, 1.2)

    def rect(y0, y1, half, colour):
        ys, ye = int(top + y0 * (h - top)), int(top + y1 * (h - top))
        xs, xe = max(0, int(cx - half)), min(w, int(cx + half))
        noise = rng.normal(0, 12, size=(max(0, ye - ys), max(0, xe - xs), 3))
        img[ys:ye, xs:xe] = np.clip(np.asarray(colour) * light + noise, 0, 255)

    rect(0.0, 0.14, bw * 0.25, (200, 160, 130))  # head
    rect(0.14, 0.55, bw / 2, shirt)
    rect(0.55, 0.98, bw * 0.42, trousers)
    return img.astype(np.uint8)


def synthetic_people(n_ids: int = 6, per_id: int = 5, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Crops of ``n_ids`` people, each a distinct (shirt, trousers) colour pair; returns (crops, labels)."""
    rng = np.random.default_rng(seed)
    pairs = [(i % len(_COLOURS), (i * 3 + 1) % len(_COLOURS)) for i in range(n_ids)]
    crops, labels = [], []
    for pid, (a, b) in enumerate(pairs):
        for _ in range(per_id):
            crops.append(draw_person(rng, _COLOURS[a], _COLOURS[b]))
            labels.append(pid)
    return crops, np.array(labels)


def ingest_table(crops: list[dict], video_id: str, start_index: int = 0) -> pa.Table:
    """Rows in the ingest stage's layout for crops of one video."""
    n = len(crops)
    return pa.table(
        {
            "image_id": [f"{video_id}-{start_index + i:05d}" for i in range(n)],
            "video_id": [video_id] * n,
            "tracklet_id": [str(c["pid"]) for c in crops],
            "frame_index": pa.array([int(c["frame"]) for c in crops], pa.int64()),
            "timestamp_s": pa.array([c["frame"] / 30.0 for c in crops], pa.float64()),
            "bbox": pa.array([c["bbox"] for c in crops], pa.list_(pa.float32())),
            "score": pa.array([1.0] * n, pa.float32()),
            "jpeg": pa.array([c.get("jpeg") or encode_jpeg(c["rgb"]) for c in crops], pa.binary()),
        }
    )


def write_ingest(
    output: str, crops: list[dict], storage: Optional[Storage] = None, run_id: str = "ingest-test"
) -> StageOutput:
    """A complete ingest output: one part per MOT17 sequence (= one video), then ``_SUCCESS.json``."""
    st = storage or Storage()
    out = StageOutput.create(output, "ingest", run_id, st)
    by_seq: dict[str, list[dict]] = defaultdict(list)
    for c in crops:
        by_seq[c["seq"]].append(c)
    total = 0
    reports = out.report_writer()
    for seq, cs in sorted(by_seq.items()):
        written = out.write_unit(seq, ingest_table(cs, seq))
        reports.add([part_record(unit_filename(seq), written, crops=len(cs))])
        total += len(cs)
    reports.flush()
    out.finalize(stage="ingest", rows={"crops": total}, config={"test": True})
    return out


TINY_KWARGS = {"widths": [8, 16, 32, 48]}  # not resnet_tiny's default: loading only works if kwargs are honoured
TINY_INPUT = (128, 64)


def tiny_backbone_folder(folder):
    """A folder in the exported backbone layout (backbone.safetensors + backbone.json) for a small resnet_tiny."""
    import torch
    from safetensors.torch import save_file

    from cion_dist.models.factory import build_backbone

    torch.manual_seed(0)
    model = build_backbone("resnet_tiny", **TINY_KWARGS).eval()
    with torch.no_grad():  # move BN statistics off their defaults so a wrong load shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "backbone.safetensors"))
    meta = {
        "architecture": "resnet_tiny",
        "embed_dim": int(model.embed_dim),
        "kwargs": TINY_KWARGS,
        "input_size": list(TINY_INPUT),
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    (folder / "backbone.json").write_text(json.dumps(meta))
    return model


def register_backbone(tmp_path: Path, name: str, alias: str) -> str:
    """Log ``tmp_path/model`` as a run's ``model/`` artifact folder, register it, set an alias; returns the store
    URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment(f"weights-{name}", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifacts(str(tmp_path / "model"), artifact_path="model")
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model(name)
        mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        client.set_registered_model_alias(name, alias, mv.version)
    finally:
        mlflow.set_tracking_uri(previous)
    return uri

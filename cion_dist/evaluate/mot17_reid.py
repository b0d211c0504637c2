"""A small real-pixel re-ID benchmark from MOTChallenge ground truth (e.g. MOT17 train sequences).

MOTChallenge ``gt/gt.txt`` rows are ``frame, id, left, top, width, height, consider, class, visibility`` (1-based
frames; Milan et al., "MOT16: A Benchmark for Multi-Object Tracking", 2016). Only pedestrians (class 1) flagged to
be considered, visible enough and tall enough become crops. Identities are ``sequence number * 1000 + track id``.

Split: within every sequence, identities alternate between training (for the fine-tune protocol) and test. A test
identity's query is its crop in its earliest frame; its crops in every *other* frame are gallery. Query and gallery
get different camera ids (0 and 1), so the Market protocol, which ignores same-camera matches, keeps every
cross-frame match; all people of every sequence share one gallery, so the other people are the negatives.
Sequences with only a few frames make this a near-duplicate task: the figures rank models, they are not
Market-scale numbers.

``build_benchmark`` writes JPEG crops and a ``list.parquet`` (``path, pid, camid, split``) that
``cion_dist.evaluate.datasets.read_list`` reads.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa

from cion_dist.errors import DataError
from cion_dist.storage.stage_io import write_table_atomic

PEDESTRIAN = 1


@dataclass(frozen=True)
class Box:
    sequence: str
    seq_no: int
    frame: int
    track: int
    x: float
    y: float
    w: float
    h: float
    visibility: float

    @property
    def pid(self) -> int:
        return self.seq_no * 1000 + self.track


def read_gt(seq_dir: str, min_visibility: float = 0.3, min_height: float = 50) -> list[Box]:
    """Pedestrian boxes of one sequence that have an image on disk."""
    gt = os.path.join(seq_dir, "gt", "gt.txt")
    if not os.path.exists(gt):
        raise DataError(f"{seq_dir}: no gt/gt.txt")
    name = os.path.basename(seq_dir.rstrip("/"))
    try:
        seq_no = int(name.split("-")[1])
    except (IndexError, ValueError):
        raise DataError(f"{seq_dir}: cannot read a sequence number from {name!r} (want MOT17-NN-...)") from None
    have = set(os.listdir(os.path.join(seq_dir, _im_dir(seq_dir))))
    out = []
    with open(gt) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                fr, tid, x, y, w, h, consider, cls, vis = line.strip().split(",")[:9]
                box = Box(name, seq_no, int(fr), int(tid), float(x), float(y), float(w), float(h), float(vis))
                consider_i, cls_i = int(float(consider)), int(float(cls))
            except ValueError:
                raise DataError(f"{gt} line {n}: not a MOTChallenge ground-truth row: {line.strip()!r}") from None
            if consider_i != 1 or cls_i != PEDESTRIAN or box.visibility < min_visibility or box.h < min_height:
                continue
            if f"{box.frame:06d}.jpg" in have:
                out.append(box)
    return out


def _im_dir(seq_dir: str) -> str:
    ini = os.path.join(seq_dir, "seqinfo.ini")
    if os.path.exists(ini):
        cp = configparser.ConfigParser()
        cp.read(ini)
        return cp.get("Sequence", "imDir", fallback="img1")
    return "img1"


def split_boxes(boxes: list[Box]) -> dict[str, list[Box]]:
    """train / query / gallery as described in the module docstring (identities seen in one frame only are dropped
    from test: they have no cross-frame match)."""
    by_pid: dict[int, list[Box]] = {}
    for b in boxes:
        by_pid.setdefault(b.pid, []).append(b)
    out: dict[str, list[Box]] = {"train": [], "query": [], "gallery": []}
    for pid in sorted(by_pid):
        items = sorted(by_pid[pid], key=lambda b: b.frame)
        if len({b.frame for b in items}) < 2:
            continue
        if (pid % 1000) % 2 == 1:
            out["train"] += items
        else:
            out["query"].append(items[0])
            out["gallery"] += items[1:]
    return out


def _crop(img: np.ndarray, b: Box, size: tuple[int, int]) -> np.ndarray:
    H, W = img.shape[:2]
    x1, y1 = int(np.clip(round(b.x), 0, W - 2)), int(np.clip(round(b.y), 0, H - 2))
    x2, y2 = int(np.clip(round(b.x + b.w), x1 + 2, W)), int(np.clip(round(b.y + b.h), y1 + 2, H))
    return cv2.resize(img[y1:y2, x1:x2], (size[1], size[0]), interpolation=cv2.INTER_AREA)


def build_benchmark(
    root: str, out: str, *, min_visibility: float = 0.3, min_height: float = 50, size: tuple[int, int] = (256, 128)
) -> dict:
    """Crops of every sequence folder under ``root`` (``<root>/<SEQ>/img1``, ``gt/gt.txt``) into ``out``.

    Returns counts; the dataset is ``<out>/list.parquet``. Idempotent: an existing list is reused."""
    lst = os.path.join(out, "list.parquet")
    if not os.path.isdir(root):
        raise DataError(f"MOTChallenge folder not found: {root}")
    seqs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "gt")))
    if not seqs:
        raise DataError(f"{root}: no sequence folder with gt/gt.txt")
    boxes = [b for s in seqs for b in read_gt(os.path.join(root, s), min_visibility, min_height)]
    parts = split_boxes(boxes)
    if not parts["query"]:
        raise DataError(f"{root}: no identity is seen in two frames; nothing to query")
    if not os.path.exists(lst):
        rows: dict[str, list] = {"path": [], "pid": [], "camid": [], "split": []}
        images: dict[tuple[str, int], np.ndarray] = {}
        for split, items in parts.items():
            os.makedirs(os.path.join(out, split), exist_ok=True)
            for b in items:
                key = (b.sequence, b.frame)
                if key not in images:
                    path = os.path.join(root, b.sequence, _im_dir(os.path.join(root, b.sequence)), f"{b.frame:06d}.jpg")
                    img = cv2.imread(path, cv2.IMREAD_COLOR)
                    if img is None:
                        raise DataError(f"cannot read image {path}")
                    images = {key: img}  # frames come in order per split: keep one decoded frame
                rel = f"{split}/{b.pid:06d}_f{b.frame:06d}.jpg"
                cv2.imwrite(os.path.join(out, rel), _crop(images[key], b, size), [cv2.IMWRITE_JPEG_QUALITY, 95])
                rows["path"].append(rel)
                rows["pid"].append(b.pid)
                rows["camid"].append(0 if split == "query" else 1)
                rows["split"].append(split)
        write_table_atomic(lst, pa.table(rows))
    return {
        "list_uri": lst,
        "sequences": len(seqs),
        **{f"{k}_images": len(v) for k, v in parts.items()},
        **{f"{k}_ids": len({b.pid for b in v}) for k, v in parts.items()},
    }

"""Sliced inference for small people: a stateless detector runs on overlapping tiles plus the whole frame.

A 416 px detector sees a 1920 px frame at a fifth of its size, where a 70 px pedestrian is 15 px tall and mostly
missed. Cutting the frame into a ``cols x rows`` grid of overlapping tiles lets the detector see each part at
higher resolution (the idea of SAHI, Akyon et al., 2022); the whole frame is still run so that people taller than
a tile are found whole. Tile boxes that touch a tile edge inside the frame are people cut by the tile: they are
dropped, since the neighbouring tile (overlap) or the whole frame sees them whole. What is left is merged by
class-aware NMS.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cion_dist.ingest.boxes import nms
from cion_dist.ingest.detectors.base import Detections, Detector


def tile_windows(width: int, height: int, cols: int, rows: int, overlap: float) -> np.ndarray:
    """``[cols * rows, 4]`` int windows ``x1 y1 x2 y2`` covering the frame; neighbours share ``overlap`` of a tile."""

    def spans(length: int, n: int) -> list[tuple[int, int]]:
        if n <= 1:
            return [(0, length)]
        size = length / (n - (n - 1) * overlap)
        starts = np.linspace(0, length - size, n)
        return [(int(round(s)), min(length, int(round(s + size)))) for s in starts]

    return np.asarray(
        [[x1, y1, x2, y2] for y1, y2 in spans(height, rows) for x1, x2 in spans(width, cols)], dtype=np.int64
    ).reshape(-1, 4)


def cut_by_window(boxes: np.ndarray, window, width: int, height: int, margin: float) -> np.ndarray:
    """Mask of boxes (frame pixels) within ``margin`` px of an edge of ``window`` that is not a frame edge."""
    x1, y1, x2, y2 = window
    cut = np.zeros(len(boxes), bool)
    if x1 > 0:
        cut |= boxes[:, 0] <= x1 + margin
    if y1 > 0:
        cut |= boxes[:, 1] <= y1 + margin
    if x2 < width:
        cut |= boxes[:, 2] >= x2 - margin
    if y2 < height:
        cut |= boxes[:, 3] >= y2 - margin
    return cut


def merge_tiles(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], nms_threshold: float):
    """Per-source (boxes, scores, classes) in frame pixels -> one set, class-aware NMS across sources."""
    boxes = np.concatenate([p[0] for p in parts]).reshape(-1, 4)
    scores = np.concatenate([p[1] for p in parts]).reshape(-1)
    classes = np.concatenate([p[2] for p in parts]).reshape(-1)
    keep = nms(boxes, scores, nms_threshold, classes=classes)
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32)


class TiledDetector:
    """Wraps a stateless detector; all tiles (and whole frames) of one call go to it as one batch."""

    def __init__(self, inner: Detector, cfg, nms_threshold: float):
        self.inner, self.cfg, self.nms_threshold = inner, cfg, nms_threshold

    def detect(self, frames: Sequence[np.ndarray]) -> Detections:
        cfg = self.cfg
        images, owners = [], []  # owners: (frame index, window or None for the whole frame)
        for i, frame in enumerate(frames):
            h, w = frame.shape[:2]
            if cfg.full_frame:
                images.append(frame)
                owners.append((i, None))
            for win in tile_windows(w, h, cfg.grid[0], cfg.grid[1], cfg.overlap):
                x1, y1, x2, y2 = win.tolist()
                images.append(frame[y1:y2, x1:x2])
                owners.append((i, (x1, y1, x2, y2)))
        found = self.inner.detect(images)
        per_frame: list[list] = [[] for _ in frames]
        for (i, win), (boxes, scores) in zip(owners, found):
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
            scores = np.asarray(scores, np.float64).reshape(-1)
            if win is not None and len(boxes):
                boxes = boxes + np.array([win[0], win[1], win[0], win[1]], np.float64)
                h, w = frames[i].shape[:2]
                margin = cfg.edge_margin * max(win[2] - win[0], win[3] - win[1])
                keep = ~cut_by_window(boxes, win, w, h, margin)
                boxes, scores = boxes[keep], scores[keep]
            per_frame[i].append((boxes, scores, np.zeros(len(boxes), np.int64)))
        return [merge_tiles(parts, self.nms_threshold) for parts in per_frame]

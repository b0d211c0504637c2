"""Person detection for static cameras without model weights: median background, foreground blobs as people.

The background is the per-pixel median of recent sampled frames (people who keep moving vanish from a median),
re-estimated every ``refresh_every`` frames from every ``history_stride``-th frame, so a few frames span a long
time. Pixels that differ from it form a mask. After a small opening (noise) and a vertical closing (joins head,
body and legs), components stacked on top of each other are joined, blobs too wide for one person are cut into
person-wide slices (people walking side by side), and each region whose height, aspect (h / w) and fill look
like an upright person becomes a box. The score grows with the region's fill, so solid blobs count as confident.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from cion_dist.ingest.detectors.base import Detections


def foreground_mask(frame: np.ndarray, background: np.ndarray, diff_threshold: int) -> np.ndarray:
    """uint8 mask (0/255) of pixels whose largest channel difference to the background exceeds the threshold."""
    d = cv2.absdiff(frame, background)
    diff = cv2.max(cv2.max(d[:, :, 0], d[:, :, 1]), d[:, :, 2])
    return cv2.threshold(diff, diff_threshold, 255, cv2.THRESH_BINARY)[1]


def merge_stacked(boxes: list[list[int]], max_gap: float = 0.5, min_overlap: float = 0.5) -> list[list[int]]:
    """Join blobs stacked on top of each other (legs cut off from a torso by clothes that match the background).

    Two boxes merge when they share at least ``min_overlap`` of the narrower one's width and the vertical gap
    between them is below ``max_gap`` times the taller one's height. Repeats until nothing merges.
    """
    boxes = [list(b) for b in boxes]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                overlap = min(a[2], b[2]) - max(a[0], b[0])
                narrow = min(a[2] - a[0], b[2] - b[0])
                gap = max(a[1], b[1]) - min(a[3], b[3])
                tall = max(a[3] - a[1], b[3] - b[1])
                if narrow > 0 and overlap >= min_overlap * narrow and gap <= max_gap * tall:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes


def split_wide(box: list[int], aspect: float) -> list[list[int]]:
    """A blob too wide for one upright person (people side by side) -> equal slices of about ``aspect`` h/w."""
    x1, y1, x2, y2 = box
    n = max(1, int(round((x2 - x1) * aspect / max(y2 - y1, 1))))
    edges = np.linspace(x1, x2, n + 1)
    return [[int(round(edges[k])), y1, int(round(edges[k + 1])), y2] for k in range(n)]


def person_blobs(mask: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[n, 4]`` and scores of person-shaped foreground regions of a mask."""
    h_img = mask.shape[0]
    k = max(3, int(round(h_img / 180)) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, 3 * k)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_area = (cfg.min_height_fraction * h_img) ** 2 / 40  # specks far below a person's size
    comps = [[int(x), int(y), int(x + w), int(y + h)] for x, y, w, h, a in stats[1:] if a >= min_area]
    candidates = []
    for b in merge_stacked(comps):
        w, h = b[2] - b[0], b[3] - b[1]
        if cfg.split_aspect and h >= cfg.min_height_fraction * h_img:
            candidates.extend(split_wide(b, cfg.split_aspect))
        else:
            candidates.append(b)
    boxes, scores = [], []
    for x1, y1, x2, y2 in candidates:
        w, h = x2 - x1, y2 - y1
        if w <= 0 or h <= 0:
            continue
        fill = float(np.count_nonzero(mask[y1:y2, x1:x2])) / (w * h)
        frac, aspect = h / h_img, h / w
        if not (cfg.min_height_fraction <= frac <= cfg.max_height_fraction):
            continue
        if not (cfg.min_aspect <= aspect <= cfg.max_aspect) or fill < cfg.min_fill:
            continue
        boxes.append([x1, y1, x2, y2])
        scores.append(min(1.0, 0.4 + fill))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return np.asarray(boxes, np.float32), np.asarray(scores, np.float32)


class BackgroundDetector:
    """Stateful over one clip: frames must arrive in order, one clip per instance."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.buffer: deque = deque(maxlen=cfg.history)
        self.background = None
        self.since_refresh = 0
        self.seen = 0

    def _refresh(self) -> None:
        self.background = np.median(np.stack(self.buffer), axis=0).astype(np.uint8)
        self.since_refresh = 0

    def detect(self, frames: np.ndarray) -> Detections:
        for f in frames:
            if self.seen % self.cfg.history_stride == 0:
                self.buffer.append(f.copy())  # a view would keep its whole decoded chunk alive
            self.seen += 1
        if self.background is None or self.since_refresh >= self.cfg.refresh_every:
            self._refresh()
        out: Detections = []
        for f in frames:
            out.append(person_blobs(foreground_mask(f, self.background, self.cfg.diff_threshold), self.cfg))
            self.since_refresh += 1
        return out

"""Crop quality gate: which detections are clean enough to become training crops. Pure numpy / OpenCV.

A tracker follows every detection, but only clean crops should reach pretraining: a crop of half a person cut by
the frame border, a box around two people walking together, a bus, or a 30 px smear teach the backbone the wrong
identity. ``assess`` gives each box of one frame a reason to drop it, or ``""`` to keep it; the first failing
check wins, in the order of ``REASONS``:

- ``tiny``: shorter than ``min_height`` source pixels;
- ``border``: within ``border_margin`` (share of the frame's width / height) of a frame edge: truncated;
- ``two_person``: height / width below ``two_person_aspect``: wide enough for two people side by side;
- ``aspect``: height / width outside ``[min_aspect, max_aspect]``: not an upright person (a car, a pole);
- ``overlap``: another detection covers more than ``max_overlap`` of the box: two people in one crop;
- ``blur``: variance of the Laplacian of the crop (grey, scaled to 128 px high) below ``min_sharpness``.

``GateTally`` counts the reasons and describes the kept crops (share near an edge, aspect histogram), and adds
up across clips. A kept crop "touches an edge" when it lies within ``EDGE_TOUCH`` of one, whatever the gate's
``border_margin``, so the figure means the same with the gate on or off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from cion_dist.ingest.boxes import as_boxes

REASONS = ("tiny", "border", "two_person", "aspect", "overlap", "blur")
EDGE_TOUCH = 0.01  # a kept crop within 1% of the frame's size of an edge counts as touching it
ASPECT_BINS = (0.0, 1.5, 2.0, 2.5, 3.0, 4.0, float("inf"))  # height / width of kept crops


def covered_fraction(boxes: np.ndarray, covering: Optional[np.ndarray] = None) -> np.ndarray:
    """Per box, the largest share of its area covered by one other box of the same frame (among ``covering``,
    a boolean mask of the boxes that count as covering; all by default)."""
    b = as_boxes(boxes)
    if len(b) < 2:
        return np.zeros(len(b))
    x1 = np.maximum(b[:, None, 0], b[None, :, 0])
    y1 = np.maximum(b[:, None, 1], b[None, :, 1])
    x2 = np.minimum(b[:, None, 2], b[None, :, 2])
    y2 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    own = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    frac = inter / own[:, None]
    np.fill_diagonal(frac, 0.0)
    if covering is not None:
        frac[:, ~np.asarray(covering, bool)] = 0.0
    return frac.max(axis=1)


def near_border(boxes: np.ndarray, width: int, height: int, margin: float) -> np.ndarray:
    b = as_boxes(boxes)
    mx, my = margin * width, margin * height
    return (b[:, 0] <= mx) | (b[:, 1] <= my) | (b[:, 2] >= width - mx) | (b[:, 3] >= height - my)


def sharpness(crop_rgb: np.ndarray, height: int = 128) -> float:
    """Variance of the Laplacian of a grey crop scaled to ``height`` px (Pech-Pacheco et al., 2000)."""
    grey = cv2.cvtColor(np.ascontiguousarray(crop_rgb), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    if h == 0 or w == 0:
        return 0.0
    scaled = cv2.resize(grey, (max(1, int(round(w * height / h))), height), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(scaled, cv2.CV_64F).var())


def assess(
    boxes,
    width: int,
    height: int,
    cfg,
    scale: tuple[float, float] = (1.0, 1.0),
    frame: Optional[np.ndarray] = None,
    scores=None,
) -> list[str]:
    """Drop reason per box of one frame (``""`` = clean); ``boxes`` in frame pixels, ``scale`` maps them to source
    pixels (``min_height`` is in source pixels); ``frame`` (RGB) is needed for the blur check only; boxes whose
    ``scores`` are under ``overlap_min_score`` do not count as covering others."""
    b = as_boxes(boxes)
    reasons = [""] * len(b)
    if not cfg.enabled or len(b) == 0:
        return reasons
    h = (b[:, 3] - b[:, 1]) * scale[1]
    aspect = (b[:, 3] - b[:, 1]) / np.maximum(b[:, 2] - b[:, 0], 1e-9)
    checks = [
        ("tiny", h < cfg.min_height),
        (
            "border",
            near_border(b, width, height, cfg.border_margin) if cfg.border_margin > 0 else np.zeros(len(b), bool),
        ),
        ("two_person", aspect < cfg.two_person_aspect),
        ("aspect", (aspect < cfg.min_aspect) | (aspect > cfg.max_aspect)),
        (
            "overlap",
            covered_fraction(b, None if scores is None else np.asarray(scores) >= cfg.overlap_min_score)
            > cfg.max_overlap,
        ),
    ]
    for name, bad in checks:
        for i in np.flatnonzero(bad):
            if not reasons[i]:
                reasons[i] = name
    if frame is not None and cfg.min_sharpness > 0:
        for i, box in enumerate(b):
            if not reasons[i]:
                x1, y1, x2, y2 = (int(round(v)) for v in box)
                crop = frame[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)]
                if crop.size == 0 or sharpness(crop) < cfg.min_sharpness:
                    reasons[i] = "blur"
    return reasons


@dataclass
class GateTally:
    """Counts over crops that reached the gate: drops by reason, and what the kept ones look like."""

    considered: int = 0
    dropped: dict = field(default_factory=lambda: {r: 0 for r in REASONS})
    flagged: dict = field(default_factory=lambda: {r: 0 for r in REASONS})
    kept: int = 0
    kept_near_edge: int = 0
    kept_aspect: list = field(default_factory=lambda: [0] * (len(ASPECT_BINS) - 1))

    def add_kept(self, box, width: int, height: int, edge_margin: float) -> None:
        b = as_boxes(box)
        self.kept += 1
        self.kept_near_edge += int(near_border(b, width, height, edge_margin)[0])
        a = float((b[0, 3] - b[0, 1]) / max(b[0, 2] - b[0, 0], 1e-9))
        self.kept_aspect[int(np.searchsorted(ASPECT_BINS, a, side="right") - 1)] += 1

    def to_dict(self) -> dict:
        return {
            "considered": self.considered,
            "dropped": dict(self.dropped),
            "flagged": dict(self.flagged),
            "kept": self.kept,
            "kept_near_edge": self.kept_near_edge,
            "kept_aspect": list(self.kept_aspect),
        }

    @classmethod
    def merged(cls, parts) -> "GateTally":
        t = cls()
        for p in parts:
            p = p if isinstance(p, dict) else p.to_dict()
            t.considered += p["considered"]
            t.kept += p["kept"]
            t.kept_near_edge += p["kept_near_edge"]
            for r in REASONS:
                t.dropped[r] += p["dropped"].get(r, 0)
                t.flagged[r] += p["flagged"].get(r, 0)
            t.kept_aspect = [a + b for a, b in zip(t.kept_aspect, p["kept_aspect"])]
        return t

    def summary(self) -> dict:
        """Flat figures for a stage summary and MLflow: drops by reason, kept share, edge share, aspect histogram."""
        labels = [
            f"{lo:g}-{hi:g}" if hi != float("inf") else f">={lo:g}" for lo, hi in zip(ASPECT_BINS[:-1], ASPECT_BINS[1:])
        ]
        return {
            "gate_considered": self.considered,
            **{f"gate_dropped_{r}": n for r, n in self.dropped.items()},
            **{f"gate_flagged_{r}": n for r, n in self.flagged.items() if n},
            "gate_kept": self.kept,
            "gate_kept_fraction": round(self.kept / self.considered, 4) if self.considered else 0.0,
            "gate_kept_edge_touch_fraction": round(self.kept_near_edge / self.kept, 4) if self.kept else 0.0,
            "gate_kept_aspect_histogram": dict(zip(labels, self.kept_aspect)),
        }

"""Detection quality against ground truth boxes: one-to-one IoU matching, precision and recall. Pure numpy.

Detections that match no counted ground truth but overlap an ignored region (people too occluded to count,
non-pedestrian classes in MOTChallenge terms) are neither right nor wrong and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from cion_dist.ingest.boxes import as_boxes, iou_matrix


@dataclass
class DetectionCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: "DetectionCounts") -> "DetectionCounts":
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0


def match_frame(pred, gt, ignore=None, iou_threshold: float = 0.5) -> DetectionCounts:
    """Counts for one frame: Hungarian matching on IoU, pairs below ``iou_threshold`` do not match."""
    pred, gt = as_boxes(pred), as_boxes(gt)
    ignore = as_boxes(ignore if ignore is not None else np.zeros((0, 4)))
    matched_pred = np.zeros(len(pred), bool)
    tp = 0
    if len(pred) and len(gt):
        iou = iou_matrix(pred, gt)
        rows, cols = linear_sum_assignment(-iou)
        ok = iou[rows, cols] >= iou_threshold
        tp = int(ok.sum())
        matched_pred[rows[ok]] = True
    rest = np.flatnonzero(~matched_pred)
    if len(rest) and len(ignore):
        # a leftover detection covering an ignored person is not a false positive
        overlaps = iou_matrix(pred[rest], ignore).max(axis=1) >= iou_threshold
        rest = rest[~overlaps]
    return DetectionCounts(tp=tp, fp=int(len(rest)), fn=int(len(gt) - tp))


HEIGHT_BINS = (0.0, 64.0, 128.0, 256.0, float("inf"))  # ground-truth box height in pixels


def matched_ground_truth(pred, gt, iou_threshold: float = 0.5) -> np.ndarray:
    """Boolean per ground-truth box: matched by a prediction under the same one-to-one matching as ``match_frame``."""
    pred, gt = as_boxes(pred), as_boxes(gt)
    hit = np.zeros(len(gt), bool)
    if len(pred) and len(gt):
        iou = iou_matrix(pred, gt)
        rows, cols = linear_sum_assignment(-iou)
        hit[cols[iou[rows, cols] >= iou_threshold]] = True
    return hit


def recall_by_height(gt_heights: np.ndarray, hit: np.ndarray, bins=HEIGHT_BINS) -> list[tuple[str, int, float]]:
    """``(label, ground-truth count, recall)`` per box-height bin."""
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (gt_heights >= lo) & (gt_heights < hi)
        label = f"<{hi:.0f}" if lo == 0 else (f">{lo:.0f}" if hi == float("inf") else f"{lo:.0f}-{hi:.0f}")
        out.append((label, int(sel.sum()), float(hit[sel].mean()) if sel.any() else float("nan")))
    return out

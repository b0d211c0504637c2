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

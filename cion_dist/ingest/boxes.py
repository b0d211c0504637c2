"""Box arithmetic on ``[n, 4]`` float arrays of ``x1, y1, x2, y2`` corners: IoU, NMS (OpenCV), clipping."""

from __future__ import annotations

import numpy as np


def as_boxes(boxes) -> np.ndarray:
    """Any box-like input -> float64 ``[n, 4]`` (an empty input gives shape ``[0, 4]``)."""
    arr = np.asarray(boxes, dtype=np.float64)
    return arr.reshape(-1, 4)


def area(boxes: np.ndarray) -> np.ndarray:
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, shape ``[len(a), len(b)]``."""
    a, b = as_boxes(a), as_boxes(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes=None) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first (OpenCV's ``NMSBoxes``).

    With ``classes`` (one integer per box) suppression is class-aware: boxes of different classes never
    suppress each other (``NMSBoxesBatched``).
    """
    import cv2

    boxes = as_boxes(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]].tolist()
    ranked = (scores - scores.min() + 1.0).tolist()  # OpenCV wants scores above a threshold >= 0; order is kept
    if classes is None:
        keep = cv2.dnn.NMSBoxes(xywh, ranked, 0.0, float(iou_threshold))
    else:
        cls = np.asarray(classes, dtype=np.int64).reshape(-1).tolist()
        keep = cv2.dnn.NMSBoxesBatched(xywh, ranked, cls, 0.0, float(iou_threshold))
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b

"""Cheap appearance vectors for the tracker: a hue-saturation histogram of the box centre, L2-normalised.

The centre of the box (a person's torso and upper legs) holds most of the clothing colour and least of the
background, so two people who overlap can still be told apart by colour.
"""

from __future__ import annotations

import cv2
import numpy as np


def box_histograms(frame_rgb: np.ndarray, boxes: np.ndarray, bins: tuple[int, int] = (12, 4)) -> np.ndarray:
    """``[n, bins[0] * bins[1]]`` float32 unit vectors, one per box (zeros for an empty box)."""
    h, w = frame_rgb.shape[:2]
    out = np.zeros((len(boxes), bins[0] * bins[1]), np.float32)
    if len(boxes) == 0:
        return out
    hsv = cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2HSV)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64)):
        bw, bh = x2 - x1, y2 - y1
        cx1, cx2 = int(max(0, x1 + 0.2 * bw)), int(min(w, x2 - 0.2 * bw))
        cy1, cy2 = int(max(0, y1 + 0.15 * bh)), int(min(h, y2 - 0.25 * bh))
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        patch = hsv[cy1:cy2, cx1:cx2]
        hist = cv2.calcHist([patch], [0, 1], None, list(bins), [0, 180, 0, 256]).reshape(-1)
        hist = np.sqrt(hist)  # Hellinger-style: dampens a dominant colour
        n = np.linalg.norm(hist)
        if n > 0:
            out[i] = hist / n
    return out

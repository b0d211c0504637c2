"""The detector interface every ingest detector implements. No implementations are imported here.

``factory.make_detector`` picks an implementation from the config; implementations import only this module, so
the interface and the factory do not import each other.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

Detections = list[tuple[np.ndarray, np.ndarray]]  # per image: (boxes [n, 4] x1 y1 x2 y2, scores [n])


class Detector(Protocol):
    """Finds people in a batch of images.

    ``frames`` is a sequence of ``[H, W, 3]`` RGB uint8 images (an ``[N, H, W, 3]`` array of consecutive clip
    frames, or tiles of different sizes for a stateless detector). Stateful detectors (a background model) keep
    state across calls, so one instance serves one clip, fed in frame order, and cannot be tiled.
    """

    def detect(self, frames: Sequence[np.ndarray]) -> Detections: ...


def empty_detection() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.float32)

"""The detector interface every ingest detector implements, and the factory that picks one from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

import numpy as np

if TYPE_CHECKING:
    from cion_dist.ingest.config import DetectorConfig
    from cion_dist.storage.fs import Storage

Detections = list[tuple[np.ndarray, np.ndarray]]  # per frame: (boxes [n, 4] x1 y1 x2 y2, scores [n])


class Detector(Protocol):
    """Finds people in a batch of consecutive frames of one clip.

    ``frames`` is ``[N, H, W, 3]`` RGB uint8. Detectors may keep state across calls (a background model), so one
    instance serves one clip, fed in frame order.
    """

    def detect(self, frames: np.ndarray) -> Detections: ...


def empty_detection() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.float32)


def make_detector(cfg: "DetectorConfig", storage: Optional["Storage"] = None) -> Detector:
    """Build the detector named by ``cfg.kind``."""
    if cfg.kind == "background":
        from cion_dist.ingest.detectors.background import BackgroundDetector

        return BackgroundDetector(cfg.background)
    if cfg.kind == "yolox":
        from cion_dist.ingest.detectors.yolox import YoloxDetector

        return YoloxDetector.from_config(cfg, storage)
    if cfg.kind == "torchvision":
        from cion_dist.ingest.detectors.torchvision_slot import TorchvisionDetector

        return TorchvisionDetector.from_config(cfg, storage)
    raise ValueError(f"unknown detector kind {cfg.kind!r}")

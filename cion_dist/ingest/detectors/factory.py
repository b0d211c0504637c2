"""Build the detector a config names, wrapped in tiled inference when the config asks for tiles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from cion_dist.errors import ConfigError
from cion_dist.ingest.detectors.base import Detector

if TYPE_CHECKING:
    from cion_dist.ingest.config import DetectorConfig
    from cion_dist.storage.fs import Storage


def make_detector(cfg: "DetectorConfig", storage: Optional["Storage"] = None) -> Detector:
    """The detector named by ``cfg.kind``; neural detectors run over ``cfg.tiles`` when it asks for more than one."""
    if cfg.kind == "background":
        from cion_dist.ingest.detectors.background import BackgroundDetector

        return BackgroundDetector(cfg.background)
    if cfg.kind == "yolox":
        from cion_dist.ingest.detectors.yolox import YoloxDetector

        det: Detector = YoloxDetector.from_config(cfg, storage)
    elif cfg.kind == "torchvision":
        from cion_dist.ingest.detectors.torchvision_slot import TorchvisionDetector

        det = TorchvisionDetector.from_config(cfg, storage)
    else:
        raise ConfigError(f"ingest.detector.kind: unknown detector kind {cfg.kind!r}")
    if cfg.tiles.enabled:
        from cion_dist.ingest.detectors.tiling import TiledDetector

        det = TiledDetector(det, cfg.tiles, cfg.nms_threshold)
    return det

"""Slot for torchvision's Faster R-CNN person detector, usable where torchvision is installed (GPU images).

torchvision is optional: without it this detector refuses to start with a clear message instead of failing at
import time. Weights come from a local path or s3:// URI (no downloads at run time).
"""

from __future__ import annotations

import numpy as np

from cion_dist.errors import ConfigError
from cion_dist.ingest.boxes import nms
from cion_dist.ingest.detectors.base import Detections

COCO_PERSON = 1  # torchvision's COCO label ids start at 1 (0 = background)


class TorchvisionDetector:
    def __init__(self, model, score_threshold: float, nms_threshold: float, device: str):
        self.model, self.score_threshold, self.nms_threshold, self.device = (
            model,
            score_threshold,
            nms_threshold,
            device,
        )

    @classmethod
    def from_config(cls, cfg, storage=None) -> "TorchvisionDetector":
        try:
            import torchvision  # noqa: F401
        except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision built for another torch
            raise ConfigError(
                f"ingest.detector.kind=torchvision needs a working torchvision package ({e}); "
                "use kind=yolox (ONNX) or kind=background"
            ) from None
        if not cfg.model_uri:
            raise ConfigError(
                "ingest.detector.model_uri: the torchvision detector needs a weights file (path or s3://)"
            )
        import io

        import torch
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        from cion_dist.storage.fs import read_bytes

        state = torch.load(io.BytesIO(read_bytes(cfg.model_uri, storage)), map_location="cpu")
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        model.load_state_dict(state)
        device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        return cls(model.eval().to(device), cfg.score_threshold, cfg.nms_threshold, device)

    def detect(self, frames: np.ndarray) -> Detections:
        import torch

        batch = [
            torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).float().div(255).to(self.device) for f in frames
        ]
        with torch.no_grad():
            preds = self.model(batch)
        out: Detections = []
        for p in preds:
            boxes, scores, labels = (p[k].cpu().numpy() for k in ("boxes", "scores", "labels"))
            keep = (labels == COCO_PERSON) & (scores >= self.score_threshold)
            boxes, scores = boxes[keep], scores[keep]
            idx = nms(boxes, scores, self.nms_threshold)
            out.append((boxes[idx].astype(np.float32), scores[idx].astype(np.float32)))
        return out

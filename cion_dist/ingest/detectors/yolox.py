"""YOLOX person detection through onnxruntime, for any YOLOX export (nano to x, any input size).

The exported model takes letterboxed BGR images (0-255, pad value 114, image in the top-left corner) and returns
the raw head: per anchor point ``(dx, dy, log w, log h, objectness, C class probabilities)`` over strides 8, 16
and 32. Decoding follows the YOLOX paper (Ge et al., 2021): centre = (raw + grid) * stride, size = exp(raw) *
stride, score = objectness * class probability. Person is COCO class 0. The input size and whether the batch axis
is dynamic are read from the model (``onnx_model.resolve_input``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from cion_dist.errors import ConfigError
from cion_dist.ingest.boxes import clip_boxes, nms
from cion_dist.ingest.detectors.base import Detections, empty_detection
from cion_dist.ingest.detectors.onnx_model import (
    fetch_model,
    open_session,
    resolve_input,
    run_batched,
)

PERSON_CLASS = 0
STRIDES = (8, 16, 32)

__all__ = ["YoloxDetector", "anchor_grid", "decode_head", "letterbox", "fetch_model"]


def letterbox(image_bgr: np.ndarray, size, pad: int = 114) -> tuple[np.ndarray, float]:
    """Resize keeping aspect into a ``size`` (int or (h, w)) canvas of ``pad``; returns (CHW float32, scale)."""
    th, tw = (size, size) if np.isscalar(size) else size
    h, w = image_bgr.shape[:2]
    r = min(th / h, tw / w)
    nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
    canvas = np.full((th, tw, 3), pad, dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), r


def anchor_grid(size, strides=STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """(grid xy ``[A, 2]``, stride ``[A, 1]``) in the order the YOLOX head emits its anchors; ``size`` int or (h, w)."""
    h, w = (size, size) if np.isscalar(size) else size
    grids, steps = [], []
    for s in strides:
        ny, nx = h // s, w // s
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        steps.append(np.full((ny * nx, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode_head(
    raw: np.ndarray,
    grid: np.ndarray,
    stride: np.ndarray,
    scale: float,
    score_threshold: float,
    nms_threshold: float,
    width: int,
    height: int,
    class_id: int = PERSON_CLASS,
):
    """Raw head output ``[A, 5 + C]`` -> person (boxes ``[n, 4]`` in original pixels, scores ``[n]``)."""
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(f"head has {raw.shape[0]} anchors, grid {grid.shape[0]}: input size mismatch")
    scores = raw[:, 4] * raw[:, 5 + class_id]
    keep = scores >= score_threshold
    if not keep.any():
        return empty_detection()
    r, sc = raw[keep], scores[keep]
    centre = (r[:, :2] + grid[keep]) * stride[keep]
    size = np.exp(np.clip(r[:, 2:4], -20, 20)) * stride[keep]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1) / scale
    boxes = clip_boxes(boxes, width, height)
    idx = nms(boxes, sc, nms_threshold)
    return boxes[idx].astype(np.float32), sc[idx].astype(np.float32)


class YoloxDetector:
    """Stateless: any images, any sizes, in any order (so it can be tiled)."""

    def __init__(
        self,
        model_path: str,
        input_size: Optional[int] = None,
        score_threshold: float = 0.35,
        nms_threshold: float = 0.45,
        num_gpus: float = 0,
        threads: int = 1,
        batch_size: int = 8,
    ):
        self.session = open_session(model_path, num_gpus, threads)
        inp = self.session.get_inputs()[0]
        self.spec = resolve_input(list(inp.shape), inp.name, input_size)
        self.size = (self.spec.height, self.spec.width)
        self.grid, self.stride = anchor_grid(self.size)
        outs = self.session.get_outputs()[0].shape
        if len(outs) == 3 and isinstance(outs[1], int) and outs[1] != len(self.grid):
            raise ConfigError(
                f"ingest.detector.model_uri: {model_path} emits {outs[1]} anchors, a YOLOX head at "
                f"{self.size[1]}x{self.size[0]} has {len(self.grid)}: not a raw YOLOX export"
            )
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg, storage=None) -> "YoloxDetector":
        if not cfg.model_uri:
            raise ConfigError("ingest.detector.model_uri: the yolox detector needs an ONNX model path or s3:// URI")
        return cls(
            fetch_model(cfg.model_uri, storage),
            cfg.input_size,
            cfg.score_threshold,
            cfg.nms_threshold,
            cfg.num_gpus,
            cfg.threads,
            cfg.batch_size,
        )

    def detect(self, frames: Sequence[np.ndarray]) -> Detections:
        """Images go through in model calls of ``batch_size`` (1 for a fixed batch axis); only one call's
        letterboxed tensors exist at a time, so a chunk of many frames (or tiles) stays small in memory."""
        step = self.spec.max_batch or self.batch_size
        out: Detections = []
        for start in range(0, len(frames), step):
            group = frames[start : start + step]
            prepared = [letterbox(np.ascontiguousarray(rgb[:, :, ::-1]), self.size) for rgb in group]
            raw = run_batched(self.session, self.spec, np.stack([t for t, _ in prepared]), step)
            out.extend(
                decode_head(
                    raw[i],
                    self.grid,
                    self.stride,
                    scale,
                    self.score_threshold,
                    self.nms_threshold,
                    rgb.shape[1],
                    rgb.shape[0],
                )
                for i, ((_, scale), rgb) in enumerate(zip(prepared, group))
            )
        return out

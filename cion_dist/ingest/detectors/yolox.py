"""YOLOX person detection through onnxruntime.

The exported model takes one letterboxed BGR image (0-255, pad value 114, image in the top-left corner) and returns
the raw head: per anchor point ``(dx, dy, log w, log h, objectness, 80 class probabilities)`` over strides 8, 16
and 32. Decoding follows the YOLOX paper (Ge et al., 2021): centre = (raw + grid) * stride, size = exp(raw) *
stride, score = objectness * class probability. Person is COCO class 0.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

import cv2
import numpy as np

from cion_dist.errors import ConfigError
from cion_dist.ingest.boxes import clip_boxes, nms
from cion_dist.ingest.detectors.base import Detections, empty_detection

PERSON_CLASS = 0
STRIDES = (8, 16, 32)


def letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize keeping aspect into a ``size x size`` canvas of 114; returns (CHW float32 tensor, scale)."""
    h, w = image_bgr.shape[:2]
    r = min(size / h, size / w)
    nh, nw = int(round(h * r)), int(round(w * r))
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), r


def anchor_grid(size: int, strides=STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """(grid xy ``[A, 2]``, stride ``[A, 1]``) in the order the YOLOX head emits its anchors."""
    grids, steps = [], []
    for s in strides:
        n = size // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        steps.append(np.full((n * n, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode_head(raw: np.ndarray, grid: np.ndarray, stride: np.ndarray, scale: float, score_threshold: float,
                nms_threshold: float, width: int, height: int, class_id: int = PERSON_CLASS):
    """Raw head output ``[A, 5 + C]`` -> person (boxes ``[n, 4]`` in original pixels, scores ``[n]``)."""
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(f"head has {raw.shape[0]} anchors, grid {grid.shape[0]}: input size mismatch")
    centre = (raw[:, :2] + grid) * stride
    size = np.exp(np.clip(raw[:, 2:4], -20, 20)) * stride
    scores = raw[:, 4] * raw[:, 5 + class_id]
    keep = scores >= score_threshold
    if not keep.any():
        return empty_detection()
    c, s, sc = centre[keep], size[keep], scores[keep]
    boxes = np.concatenate([c - s / 2, c + s / 2], axis=1) / scale
    boxes = clip_boxes(boxes, width, height)
    idx = nms(boxes, sc, nms_threshold)
    return boxes[idx].astype(np.float32), sc[idx].astype(np.float32)


def _providers(num_gpus: float) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if num_gpus > 0 and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def fetch_model(uri: str, storage=None) -> str:
    """A local path for a model given as a path or an s3:// URI (downloaded once into the temp folder)."""
    from cion_dist.storage.fs import is_s3, read_bytes, sha256_bytes

    if not is_s3(uri):
        if not os.path.exists(uri):
            raise ConfigError(f"ingest.detector.model_uri: model file not found: {uri}")
        return uri
    data = read_bytes(uri, storage)
    local = os.path.join(tempfile.gettempdir(), f"cion-model-{sha256_bytes(data)[:16]}.onnx")
    if not os.path.exists(local):
        tmp = f"{local}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, local)
    return local


class YoloxDetector:
    def __init__(self, model_path: str, input_size: int = 416, score_threshold: float = 0.35,
                 nms_threshold: float = 0.45, num_gpus: float = 0, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_path, sess_options=opts, providers=_providers(num_gpus))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        fixed = inp.shape[2] if isinstance(inp.shape[2], int) else None
        self.size = fixed or input_size
        self.grid, self.stride = anchor_grid(self.size)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    @classmethod
    def from_config(cls, cfg, storage=None) -> "YoloxDetector":
        if not cfg.model_uri:
            raise ConfigError("ingest.detector.model_uri: the yolox detector needs an ONNX model path or s3:// URI")
        return cls(fetch_model(cfg.model_uri, storage), cfg.input_size, cfg.score_threshold, cfg.nms_threshold,
                   cfg.num_gpus, cfg.threads)

    def detect(self, frames: np.ndarray) -> Detections:
        out: Detections = []
        for rgb in frames:
            h, w = rgb.shape[:2]
            tensor, scale = letterbox(np.ascontiguousarray(rgb[:, :, ::-1]), self.size)
            raw = self.session.run(None, {self.input_name: tensor[None]})[0][0]
            out.append(decode_head(raw, self.grid, self.stride, scale, self.score_threshold, self.nms_threshold, w, h))
        return out

"""An onnxruntime session plus what its image input accepts, read from the model itself.

Shared by ONNX detectors (YOLOX today; an RT-DETR head would reuse it): the input's batch and spatial axes are
either fixed numbers or symbolic (dynamic). A fixed spatial size wins over a configured one, with a warning, so a
416 export is never fed 640 images; a dynamic size takes the configured one. A fixed batch of 1 means images go
through one per call; a dynamic batch takes up to ``batch_size`` images per call.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

from cion_dist.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    name: str
    height: int
    width: int
    max_batch: Optional[int]  # None = dynamic batch axis


def _fixed(dim) -> Optional[int]:
    return int(dim) if isinstance(dim, (int, np.integer)) and int(dim) > 0 else None


def resolve_input(
    shape: list, name: str, configured: Optional[int], what: str = "ingest.detector.input_size"
) -> InputSpec:
    """Input spec from an NCHW input shape as onnxruntime reports it (ints or symbolic names)."""
    if len(shape) != 4:
        raise ConfigError(f"{what}: the model's input {name!r} has shape {shape}, expected [batch, 3, height, width]")
    h, w = _fixed(shape[2]), _fixed(shape[3])
    if h is not None and w is not None:
        if configured is not None and (configured, configured) != (h, w):
            log.warning("%s=%s overridden: the model's input %r is fixed at %dx%d", what, configured, name, w, h)
    else:
        size = configured or 640
        if configured is None:
            log.info("%s not set and the model's input %r is dynamic: using %d", what, name, size)
        h, w = h or size, w or size
    return InputSpec(name=name, height=h, width=w, max_batch=_fixed(shape[0]))


def providers(num_gpus: float) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if num_gpus > 0 and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(model_path: str, num_gpus: float = 0, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, sess_options=opts, providers=providers(num_gpus))


def run_batched(session, spec: InputSpec, tensors: np.ndarray, batch_size: int) -> np.ndarray:
    """First output for ``tensors`` ``[N, 3, H, W]``, in calls of ``batch_size`` (1 when the batch axis is fixed)."""
    step = spec.max_batch if spec.max_batch is not None else max(1, batch_size)
    outs = [session.run(None, {spec.name: tensors[i : i + step]})[0] for i in range(0, len(tensors), step)]
    return np.concatenate(outs) if outs else np.zeros((0,))


def fetch_model(uri: str, storage=None, what: str = "ingest.detector.model_uri") -> str:
    """A local path for a model given as a path or an s3:// URI (downloaded once into the temp folder)."""
    from cion_dist.storage.fs import is_s3, read_bytes, sha256_bytes

    if not is_s3(uri):
        if not os.path.exists(uri):
            raise ConfigError(f"{what}: model file not found: {uri}")
        return uri
    data = read_bytes(uri, storage)
    local = os.path.join(tempfile.gettempdir(), f"cion-model-{sha256_bytes(data)[:16]}.onnx")
    if not os.path.exists(local):
        tmp = f"{local}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, local)
    return local

"""Embedders behind one call: RGB uint8 crops -> float32 [n, d] L2-normalised features.

``build_embedder`` picks one from ``embed.backbone``: an ONNX re-ID model through onnxruntime, a torch backbone
loaded by ``cion_dist.models.backbone_io`` (fed with the input size and normalisation its export records), or the
weight-free stripe colour descriptor. All of them run in fixed-size
mini-batches, so memory stays bounded whatever the caller hands in.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional, Protocol, Sequence

import numpy as np

from cion_dist.embed.config import EmbedConfig, HandcraftedConfig
from cion_dist.embed.handcrafted import descriptor_dim, stripe_histograms
from cion_dist.embed.preprocess import (
    Images,
    as_image_list,
    resize_batch,
    to_imagenet_nchw,
)
from cion_dist.errors import ConfigError, DataError
from cion_dist.images import IMAGENET_MEAN, IMAGENET_STD
from cion_dist.storage.fs import Storage
from cion_dist.vectors import l2_normalise

if TYPE_CHECKING:  # torch is imported only where a torch backbone is built
    from cion_dist.models.backbone_io import LoadedBackbone, Preprocess

log = logging.getLogger(__name__)


class Embedder(Protocol):
    name: str
    dim: int

    def __call__(self, images: Images) -> np.ndarray: ...


def _batched(images: Images, batch_size: int, fn) -> np.ndarray:
    ims = as_image_list(images)
    outs = [fn(ims[i : i + batch_size]) for i in range(0, len(ims), batch_size)]
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), dtype=np.float32)


class HandcraftedEmbedder:
    """Stripe HSV + Lab histograms (see ``cion_dist.embed.handcrafted``)."""

    def __init__(self, cfg: Optional[HandcraftedConfig] = None, batch_size: int = 256):
        cfg = cfg or HandcraftedConfig()
        self.kw = dict(
            stripes=cfg.stripes,
            hsv_bins=tuple(cfg.hsv_bins),
            lab_bins=tuple(cfg.lab_bins),
            centre_sigma=cfg.centre_sigma,
            balance=cfg.balance,
        )
        self.batch_size = batch_size
        self.name = (
            f"handcrafted-s{cfg.stripes}-hsv{'x'.join(map(str, cfg.hsv_bins))}-lab{'x'.join(map(str, cfg.lab_bins))}"
            f"-c{cfg.centre_sigma:g}{'-gw' if cfg.balance else ''}"
        )
        self.dim = descriptor_dim(cfg.stripes, tuple(cfg.hsv_bins), tuple(cfg.lab_bins))

    def __call__(self, images: Images) -> np.ndarray:
        out = _batched(images, self.batch_size, lambda b: stripe_histograms(b, **self.kw))
        return out if len(out) else np.zeros((0, self.dim), dtype=np.float32)


def _triple(value, key: str, where: str) -> tuple[float, float, float]:
    vals = [float(v) for v in (value.replace("[", "").replace("]", "").split(",") if isinstance(value, str) else value)]
    if len(vals) != 3:
        raise ConfigError(f"{where}: {key} must be three numbers (RGB, 0-1 scale), got {value!r}")
    return tuple(vals)


def normalisation(session, mean, std, where: str) -> tuple[tuple, tuple]:
    """(mean, std) for the model's RGB 0-1 input: given values, else the model's ``mean`` / ``std`` metadata
    (comma-separated or JSON lists), else ImageNet's."""
    meta = session.get_modelmeta().custom_metadata_map or {}
    mean = mean if mean is not None else meta.get("mean")
    std = std if std is not None else meta.get("std")
    return (
        _triple(mean, "mean", where) if mean is not None else tuple(IMAGENET_MEAN),
        _triple(std, "std", where) if std is not None else tuple(IMAGENET_STD),
    )


class OnnxEmbedder:
    """An ONNX re-ID model (input RGB NCHW normalised by mean/std, output [n, d]) run by onnxruntime.

    Input size: fixed axes of the model win; dynamic ones take ``height`` / ``width``. Normalisation: ``mean`` /
    ``std`` given, else the model's metadata, else ImageNet (what OSNet and torchvision backbones use). The embed
    stage and the evaluate stage (``evaluate.model=<file>.onnx``) both run re-ID ONNX models through this class.
    """

    def __init__(
        self,
        path: str,
        height: int = 256,
        width: int = 128,
        batch_size: int = 64,
        threads: Optional[int] = None,
        use_gpu: bool = False,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ):
        import onnxruntime as ort

        self._args = (path, height, width, batch_size, threads, use_gpu, mean, std)

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if use_gpu:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            else:
                log.warning("embed.num_gpus > 0 but this onnxruntime has no CUDA provider; running on CPU")
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise DataError(f"embed.model: {path} is not a loadable ONNX model ({e})") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        # a model with a fixed input size dictates it; dynamic axes fall back to the configured size
        self.height = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else height
        self.width = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else width
        self.batch_size = batch_size
        self.providers = self.session.get_providers()
        self.mean, self.std = normalisation(self.session, mean, std, path)
        self.name = f"onnx:{os.path.basename(path)}"
        out_shape = self.session.get_outputs()[0].shape
        if len(out_shape) == 2 and isinstance(out_shape[1], int):
            self.dim = int(out_shape[1])
        else:
            self.dim = int(self._run(np.zeros((1, self.height, self.width, 3), np.uint8)).shape[1])

    def __reduce__(self):
        """Pickles as its arguments: an onnxruntime session cannot travel, so a Ray actor rebuilds it."""
        return (type(self), self._args)

    def _run(self, ims) -> np.ndarray:
        x = to_imagenet_nchw(resize_batch(ims, self.height, self.width), self.mean, self.std)
        (y,) = self.session.run(None, {self.input_name: x})[:1]
        return l2_normalise(np.asarray(y).reshape(len(x), -1))

    def __call__(self, images: Images) -> np.ndarray:
        out = _batched(images, self.batch_size, self._run)
        return out if len(out) else np.zeros((0, self.dim), dtype=np.float32)


class TorchEmbedder:
    """A loaded backbone (``cion_dist.models.backbone_io``) fed as ``preprocess`` says; on GPU it runs in fp16
    (autocast), on CPU in fp32. Build it with ``build_embedder`` so the export's recorded input size and
    normalisation apply unless the user set others."""

    def __init__(
        self,
        backbone: LoadedBackbone,
        preprocess: Preprocess,
        batch_size: int = 64,
        threads: Optional[int] = None,
        use_gpu: bool = False,
    ):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.model = backbone.module.eval()
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if use_gpu and self.device.type == "cpu":
            log.warning("embed.num_gpus > 0 but torch sees no CUDA device; running on CPU")
        self.model.to(self.device)
        self.fp16 = self.device.type == "cuda"
        self.preprocess = preprocess
        self.height, self.width = preprocess.input_size
        self.mean, self.std = preprocess.mean, preprocess.std
        self.batch_size = batch_size
        probe = np.zeros((self.height, self.width, 3), np.uint8)
        self.dim = int(getattr(self.model, "embed_dim", 0)) or int(self._run([probe]).shape[1])
        self.name = f"torch:{backbone.architecture}"

    def _run(self, ims) -> np.ndarray:
        import torch

        x = torch.from_numpy(to_imagenet_nchw(resize_batch(ims, self.height, self.width), self.mean, self.std))
        x = x.to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            y = self.model(x)
        return l2_normalise(y.float().cpu().numpy().reshape(len(ims), -1))

    def __call__(self, images: Images) -> np.ndarray:
        out = _batched(images, self.batch_size, self._run)
        return out if len(out) else np.zeros((0, self.dim), dtype=np.float32)


def build_embedder(
    cfg: EmbedConfig,
    storage: Optional[Storage] = None,
    tracking_uri: Optional[str] = None,
    registry_uri: Optional[str] = None,
) -> Embedder:
    """The embedder ``cfg.backbone`` names, with its model/weights fetched to local files."""
    threads = cfg.threads or max(1, int(cfg.num_cpus))
    use_gpu = cfg.num_gpus > 0
    if cfg.backbone == "handcrafted":
        return HandcraftedEmbedder(cfg.handcrafted, batch_size=max(cfg.batch_size, 64))
    from cion_dist.models.backbone_io import fetch, load_backbone, preprocess_for_config

    if cfg.backbone == "onnx":
        uri = cfg.model or cfg.weights
        if not uri:
            raise ConfigError("embed.model: the onnx backbone needs an ONNX file (local path or s3:// URI)")
        local = fetch(uri, storage, tracking_uri, registry_uri, where="embed.model").path
        if os.path.isdir(local):
            found = sorted(os.path.join(r, f) for r, _d, fs in os.walk(local) for f in fs if f.endswith(".onnx"))
            if not found:
                raise DataError(f"embed.model: {uri} holds no .onnx file")
            local = found[0]
        return OnnxEmbedder(local, cfg.height, cfg.width, cfg.batch_size, threads, use_gpu)
    if cfg.backbone == "torch":
        if not cfg.weights and not cfg.model:
            raise ConfigError(
                "embed.model: set the torch architecture (e.g. resnet50_ibn_a) or give weights with a backbone.json"
            )
        backbone = load_backbone(
            cfg.weights or f"init:{cfg.model}",
            architecture=cfg.model or None,
            storage=storage,
            tracking_uri=tracking_uri,
            registry_uri=registry_uri,
            where="embed.weights",
            architecture_key="embed.model",
        )
        preprocess = preprocess_for_config(backbone.preprocess, cfg, "embed", backbone.uri)
        return TorchEmbedder(backbone, preprocess, cfg.batch_size, threads, use_gpu)
    raise ConfigError(f"embed.backbone: unknown backbone {cfg.backbone!r}")

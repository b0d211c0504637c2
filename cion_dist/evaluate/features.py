"""Query/gallery feature extraction: decode, resize, normalise, embed, optional flip average.

The input size and normalisation are the loaded backbone's (``cion_dist.models.backbone_io.Preprocess``, resolved
by the evaluate stage); the defaults here, 256x128 and ImageNet, only serve callers that name none.

Two drivers share one batch function: in-process for small sets, and Ray Data batch inference (``map_batches``
with a pool of actors that each hold the model) for large ones. Rows keep their index so the output order is the
input order whatever order Ray returns batches in.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
import torch

from cion_dist.errors import DataError
from cion_dist.images import IMAGENET_MEAN, IMAGENET_STD, decode_image
from cion_dist.storage.fs import Storage, read_bytes


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_tensor(
    images: Sequence[np.ndarray], height: int = 256, width: int = 128, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> torch.Tensor:
    """``[B, 3, H, W]`` float tensor: bilinear resize, scale to [0, 1], normalise by ``mean`` / ``std``."""
    import cv2

    out = np.empty((len(images), height, width, 3), dtype=np.float32)
    for i, im in enumerate(images):
        if im.shape[0] != height or im.shape[1] != width:
            im = cv2.resize(im, (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = im
    out = (out / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_images(uris: Sequence[str], storage: Optional[Storage] = None, threads: int = 2) -> list[np.ndarray]:
    st = storage or Storage()

    def one(u: str) -> np.ndarray:
        return decode_image(read_bytes(u, st), u)

    if threads <= 1 or len(uris) <= 1:
        return [one(u) for u in uris]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, uris))


def embed_images(embedder, images: Sequence[np.ndarray], flip: bool = True) -> np.ndarray:
    """Features from an embed-stage embedder (RGB uint8 crops in, its own resize and normalisation); with
    ``flip`` the mean of the image's and its mirror's features."""
    f = embedder(images)
    if flip:
        f = (f + embedder([np.ascontiguousarray(im[:, ::-1]) for im in images])) / 2
    return np.asarray(f, dtype=np.float32)


def is_embedder(model) -> bool:
    return not isinstance(model, torch.nn.Module) and callable(model)


@torch.no_grad()
def embed_tensor(model: torch.nn.Module, x: torch.Tensor, flip: bool = True) -> np.ndarray:
    """Features of a preprocessed batch; with ``flip`` the mean of the image's and its mirror's features."""
    dev = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    x = x.to(dev, non_blocking=True)
    f = model(x)
    if flip:
        f = (f + model(torch.flip(x, dims=[3]))) / 2
    return f.float().cpu().numpy()


def extract_local(
    model: torch.nn.Module,
    uris: Sequence[str],
    storage: Optional[Storage] = None,
    *,
    batch_size: int = 64,
    flip: bool = True,
    height: int = 256,
    width: int = 128,
    device: str = "auto",
    threads: int = 2,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> np.ndarray:
    """In-process extraction, ``[N, D]`` float32 in the order of ``uris``; ``model`` is a torch module or an
    embed-stage embedder (``is_embedder``)."""
    onnx = is_embedder(model)
    if not onnx:
        model = model.to(resolve_device(device)).eval()
    feats = []
    for s in range(0, len(uris), batch_size):
        imgs = load_images(uris[s : s + batch_size], storage, threads)
        feats.append(
            embed_images(model, imgs, flip)
            if onnx
            else embed_tensor(model, to_tensor(imgs, height, width, mean, std), flip)
        )
    if not feats:
        return np.zeros((0, int(getattr(model, "embed_dim", getattr(model, "dim", 0)))), dtype=np.float32)
    return np.concatenate(feats).astype(np.float32, copy=False)


class _EmbedActor:
    """A Ray Data actor: holds the model once, turns batches of ``{idx, uri}`` rows into ``{idx, feat}``."""

    def __init__(self, model, storage: Storage, flip: bool, height: int, width: int, device: str, mean=None, std=None):
        import ray

        torch.set_num_threads(1)
        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        self.embedder = is_embedder(model)
        self.model = model if self.embedder else model.to(resolve_device(device)).eval()
        self.storage, self.flip, self.height, self.width = storage, flip, height, width
        self.mean = IMAGENET_MEAN if mean is None else mean
        self.std = IMAGENET_STD if std is None else std

    def __call__(self, batch: dict) -> dict:
        imgs = load_images(list(batch["uri"]), self.storage, threads=2)
        if self.embedder:
            feats = embed_images(self.model, imgs, self.flip)
        else:
            feats = embed_tensor(self.model, to_tensor(imgs, self.height, self.width, self.mean, self.std), self.flip)
        return {"idx": np.asarray(batch["idx"]), "feat": feats}


def extract_ray(
    model: torch.nn.Module,
    uris: Sequence[str],
    storage: Optional[Storage] = None,
    *,
    batch_size: int = 64,
    flip: bool = True,
    height: int = 256,
    width: int = 128,
    device: str = "auto",
    num_actors: int = 2,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> np.ndarray:
    """Ray Data batch inference over an actor pool; ``[N, D]`` float32 in the order of ``uris``."""
    import ray

    st = storage or Storage()
    gpus = 1 if resolve_device(device).type == "cuda" else 0
    model_ref = ray.put(model if is_embedder(model) else model.cpu().eval())  # an embedder pickles as its arguments
    ds = ray.data.from_items([{"idx": i, "uri": u} for i, u in enumerate(uris)])
    out = ds.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={
            "model": model_ref,
            "storage": st,
            "flip": flip,
            "height": height,
            "width": width,
            "device": "cuda" if gpus else "cpu",
            "mean": tuple(float(v) for v in mean),
            "std": tuple(float(v) for v in std),
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=num_actors,
        num_gpus=gpus,
    )
    idx_parts, feat_parts = [], []
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        idx_parts.append(batch["idx"])
        feat_parts.append(np.stack(list(batch["feat"])) if batch["feat"].dtype == object else batch["feat"])
    if not idx_parts:
        return np.zeros((0, int(getattr(model, "embed_dim", getattr(model, "dim", 0)))), dtype=np.float32)
    idx = np.concatenate(idx_parts)
    feats = np.concatenate(feat_parts).astype(np.float32, copy=False)
    if len(idx) != len(uris) or not np.array_equal(np.sort(idx), np.arange(len(uris))):
        raise DataError(f"Ray extraction returned {len(idx)} rows for {len(uris)} images")
    res = np.empty_like(feats)
    res[idx] = feats
    return res

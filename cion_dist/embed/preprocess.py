"""Pure image helpers shared by every embedder: resize and the ImageNet tensor layout (decoding: cion_dist.images)."""

from __future__ import annotations

from typing import Sequence, Union

import cv2
import numpy as np

from cion_dist.images import IMAGENET_MEAN, IMAGENET_STD

Images = Union[np.ndarray, Sequence[np.ndarray]]


def as_image_list(images: Images) -> list[np.ndarray]:
    """A uint8 batch [n, h, w, 3] or a list of RGB uint8 arrays -> list of [h, w, 3] uint8 arrays."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a batch [n, h, w, 3], got shape {images.shape}")
        return list(images)
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[-1] != 3 or im.dtype != np.uint8:
            raise ValueError(f"image {i}: expected RGB uint8 [h, w, 3], got {im.dtype} {im.shape}")
        out.append(im)
    return out


def resize_batch(images: Images, height: int, width: int) -> np.ndarray:
    """Resize every image to (height, width) (bilinear) -> uint8 [n, height, width, 3]."""
    ims = as_image_list(images)
    out = np.empty((len(ims), height, width, 3), dtype=np.uint8)
    for i, im in enumerate(ims):
        out[i] = (
            im if im.shape[:2] == (height, width) else cv2.resize(im, (width, height), interpolation=cv2.INTER_LINEAR)
        )
    return out


def to_imagenet_nchw(batch: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 RGB [n, h, w, 3] -> float32 [n, 3, h, w] normalised with (by default ImageNet) mean/std on 0-1."""
    x = batch.astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

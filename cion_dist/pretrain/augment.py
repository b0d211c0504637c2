"""Person-shaped multi-crop augmentation (docs/method.md section 4.2) with PIL and numpy only.

Two global crops (256x128, scale 0.8-1, aspect w/h 0.4-0.6) and N local crops (128x64, scale 0.05-0.8); each gets
horizontal flip, colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1; p=0.8, random order) and
grayscale (p=0.2); then Gaussian blur with p=1.0 (global 1), 0.1 + solarize p=0.2 (global 2), 0.5 (local).
Crops leave as uint8 ``[3, H, W]`` arrays, 4x smaller than floats on the way to the trainer; ``normalize`` turns
a batch into ImageNet-normalised floats on the training device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from cion_dist.images import IMAGENET_MEAN, IMAGENET_STD, decode_image


@dataclass(frozen=True)
class MultiCropSpec:
    global_size: tuple[int, int] = (256, 128)  # (height, width)
    local_size: tuple[int, int] = (128, 64)
    local_crops: int = 8
    global_scale: tuple[float, float] = (0.8, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.8)
    ratio: tuple[float, float] = (0.4, 0.6)  # width / height; (0.25, 0.4) suits 384x128

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops


def random_resized_crop(img: Image.Image, size: tuple[int, int], scale, ratio, rng: np.random.Generator) -> Image.Image:
    """Crop a random area fraction ``scale`` with aspect ``ratio`` (w/h, log-uniform) and resize bicubically."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            break
    else:  # fall back to the whole image, trimmed to the nearest allowed aspect
        aspect = min(max(w / h, ratio[0]), ratio[1])
        cw, ch = min(w, int(round(h * aspect))), min(h, int(round(w / aspect)))
        top, left = (h - ch) // 2, (w - cw) // 2
    return img.resize((size[1], size[0]), Image.BICUBIC, box=(left, top, left + cw, top + ch))


def _adjust_hue(img: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(img.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def color_jitter(img: Image.Image, rng: np.random.Generator, b=0.4, c=0.4, s=0.2, h=0.1) -> Image.Image:
    for op in rng.permutation(4):
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(1 - b, 1 + b))
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(rng.uniform(1 - c, 1 + c))
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(rng.uniform(1 - s, 1 + s))
        else:
            img = _adjust_hue(img, rng.uniform(-h, h))
    return img


def flip_and_color(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.8:
        img = color_jitter(img, rng)
    if rng.random() < 0.2:
        img = img.convert("L").convert("RGB")
    return img


def maybe_blur(img: Image.Image, p: float, rng: np.random.Generator) -> Image.Image:
    if rng.random() < p:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    return img


def _chw(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def multi_crop(img: Image.Image, spec: MultiCropSpec, rng: np.random.Generator) -> list[np.ndarray]:
    """The ``2 + N`` crops of one image as uint8 ``[3, H, W]`` arrays (globals first)."""
    img = img.convert("RGB")
    g1 = maybe_blur(
        flip_and_color(random_resized_crop(img, spec.global_size, spec.global_scale, spec.ratio, rng), rng), 1.0, rng
    )
    g2 = maybe_blur(
        flip_and_color(random_resized_crop(img, spec.global_size, spec.global_scale, spec.ratio, rng), rng), 0.1, rng
    )
    if rng.random() < 0.2:
        g2 = ImageOps.solarize(g2, threshold=128)
    crops = [_chw(g1), _chw(g2)]
    for _ in range(spec.local_crops):
        loc = random_resized_crop(img, spec.local_size, spec.local_scale, spec.ratio, rng)
        crops.append(_chw(maybe_blur(flip_and_color(loc, rng), 0.5, rng)))
    return crops


def decode(jpeg: bytes, where: str = "") -> Image.Image:
    """Encoded bytes -> RGB PIL image (``DataError`` naming ``where`` for bytes that are not an image)."""
    return Image.fromarray(decode_image(jpeg, where))


def crop_batch(jpegs: list[bytes], spec: MultiCropSpec, seed: int, names: list[str] | None = None) -> list[np.ndarray]:
    """Multi-crop a batch of encoded images: one uint8 array ``[B, 3, H, W]`` per view, views in crop order.

    ``seed`` fixes every random draw, so a batch is reproducible from (seed, epoch, step, rank).
    """
    rng = np.random.default_rng(seed)
    per_image = [multi_crop(decode(j, names[i] if names else f"#{i}"), spec, rng) for i, j in enumerate(jpegs)]
    return [np.stack([crops[v] for crops in per_image]) for v in range(spec.ncrops)]


def normalize(batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> ImageNet-normalised floats (do it on the training device)."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1) * 255
    return ((batch.float() - mean) / std).to(dtype)

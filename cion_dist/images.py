"""Image bytes <-> RGB arrays, and the ImageNet statistics every backbone here is normalised with. Pure (no IO).

One decoder with one failure contract: empty or undecodable bytes raise ``DataError`` naming the image, so every
stage reports a bad crop the same way and a caller that tolerates bad crops catches that one error.
"""

from __future__ import annotations

import cv2
import numpy as np

from cion_dist.errors import DataError

# ImageNet statistics (RGB, 0-1 scale): what OSNet and torchvision-style backbones were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_image(data: bytes | None, where: str = "") -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 ``[h, w, 3]``; ``DataError`` naming ``where`` when the bytes are empty or not an
    image."""
    what = f"image {where}" if where else "image"
    if not data:
        raise DataError(f"{what} is empty (0 bytes)")
    name = f"cannot decode {what}"
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise DataError(f"{name}: {str(e).strip().splitlines()[-1]}") from None
    if bgr is None or bgr.size == 0:
        raise DataError(f"{name}: {len(data)} bytes that are not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 ``[h, w, 3]`` -> JPEG bytes."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()

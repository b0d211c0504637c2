"""Cutting person crops out of frames (JPEG encoding: ``cion_dist.images``)."""

from __future__ import annotations

from typing import Optional

import numpy as np


def crop_box(box: np.ndarray, width: int, height: int, margin: float = 0.0) -> Optional[tuple[int, int, int, int]]:
    """Integer pixel window ``(x1, y1, x2, y2)`` for a box grown by ``margin`` on each side, or None if empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    ix1, iy1 = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    ix2, iy2 = min(width, int(np.ceil(x2 + mx))), min(height, int(np.ceil(y2 + my)))
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    return ix1, iy1, ix2, iy2

"""Row-wise L2 normalisation: the embed stage's output contract and the correlate stage's cosine geometry both
rest on it, so it is defined once."""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Unit-length rows (or a unit vector for 1-D input) in float32; an all-zero row stays zero rather than NaN."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)

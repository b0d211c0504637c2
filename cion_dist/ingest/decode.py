"""Decoding a clip held in memory with decord: which frames to sample, then frames in bounded chunks."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from cion_dist.errors import DataError


def sample_indices(
    num_frames: int, fps: float, sample_fps: Optional[float] = None, every_n: int = 1, max_frames: Optional[int] = None
) -> np.ndarray:
    """Frame indices to decode: at ``sample_fps`` (nearest source frame per tick) or every ``every_n``-th frame.

    A rate at or above the source rate keeps every frame. ``max_frames`` truncates the sampled list.
    """
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if sample_fps and fps > 0 and sample_fps < fps:
        step = fps / sample_fps
        idx = np.unique(np.floor(np.arange(0, num_frames, step) + 1e-6).astype(np.int64))
        idx = idx[idx < num_frames]
    else:
        idx = np.arange(0, num_frames, max(1, every_n), dtype=np.int64)
    if max_frames is not None:
        idx = idx[:max_frames]
    return idx


def resized_shape(width: int, height: int, resize_width: Optional[int]) -> tuple[int, int]:
    """(width, height) after resizing to ``resize_width`` with the aspect kept (even height for codecs)."""
    if not resize_width or resize_width == width:
        return width, height
    h = max(2, int(round(height * resize_width / width / 2)) * 2)
    return resize_width, h


@dataclass
class ClipVideo:
    """An opened clip: frame count, rate, decoded size, and the source size (boxes are reported in source pixels)."""

    reader: object
    num_frames: int
    fps: float
    width: int
    height: int
    source_width: int = 0
    source_height: int = 0

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy) that map decoded pixels back to source pixels."""
        sx = self.source_width / self.width if self.width else 1.0
        sy = self.source_height / self.height if self.height else 1.0
        return sx, sy


def open_clip(data: bytes, resize_width: Optional[int] = None, name: str = "<clip>") -> ClipVideo:
    """Open encoded video bytes with decord; empty or undecodable bytes raise a ``DataError`` naming the clip."""
    if not data:
        raise DataError(f"{name}: clip is empty (0 bytes)")
    import decord

    try:
        probe = decord.VideoReader(io.BytesIO(data), num_threads=1)
        h0, w0 = probe[0].shape[:2] if len(probe) else (0, 0)
        if resize_width and resize_width != w0:
            w, h = resized_shape(w0, h0, resize_width)
            reader = decord.VideoReader(io.BytesIO(data), width=w, height=h, num_threads=1)
        else:
            reader, w, h = probe, w0, h0
        n = len(reader)
        fps = float(reader.get_avg_fps() or 0.0)
    except DataError:
        raise
    except Exception as e:  # decord raises its own error types for corrupt streams
        raise DataError(f"{name}: cannot decode video ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if n == 0:
        raise DataError(f"{name}: video has no frames")
    return ClipVideo(reader, n, fps, int(w), int(h), int(w0), int(h0))


def iter_chunks(
    clip: ClipVideo, indices: np.ndarray, chunk_frames: int, name: str = "<clip>"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame indices, frames ``[n, H, W, 3]`` RGB uint8) for at most ``chunk_frames`` frames at a time."""
    for start in range(0, len(indices), chunk_frames):
        idx = indices[start : start + chunk_frames]
        try:
            frames = clip.reader.get_batch(idx.tolist()).asnumpy()
        except Exception as e:
            raise DataError(
                f"{name}: decoding frames {int(idx[0])}..{int(idx[-1])} failed ({type(e).__name__})"
            ) from None
        yield idx, frames

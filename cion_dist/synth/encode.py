"""Frames to an in-memory MP4: H.264 (libx264, yuv420p) through PyAV, MPEG-4 Part 2 where libx264 is missing."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

from cion_dist.errors import ConfigError


def video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class Mp4Writer:
    """Streams RGB frames into an MP4 held in memory; ``finish()`` returns its bytes.

    One encoder thread keeps output bytes identical across runs and machines with the same libraries.
    """

    def __init__(self, width: int, height: int, fps: int, crf: int = 20):
        if width % 2 or height % 2:
            raise ConfigError(f"synth.width and synth.height must be even for yuv420p video, got {width}x{height}")
        self._buf = io.BytesIO()
        self._box = av.open(self._buf, mode="w", format="mp4")
        self.codec = video_codec()
        opts = {"preset": "veryfast", "crf": str(crf)} if self.codec == "libx264" else {}
        self._stream = self._box.add_stream(self.codec, rate=fps, options=opts)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = Fraction(1, fps)
        self._stream.codec_context.thread_count = 1
        if self.codec == "mpeg4":
            self._stream.codec_context.bit_rate = 4_000_000
        self._n = 0

    def add(self, frame: np.ndarray) -> None:
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self._n
        self._n += 1
        for packet in self._stream.encode(vf):
            self._box.mux(packet)

    def finish(self) -> bytes:
        for packet in self._stream.encode():
            self._box.mux(packet)
        self._box.close()
        return self._buf.getvalue()

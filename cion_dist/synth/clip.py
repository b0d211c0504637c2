"""One clip, frame by frame: people drawn in depth order over the camera's scene, with their ground truth.

Visibility is the fraction of a person's whole silhouette (alpha mass, including any part beyond the frame
border) that is inside the frame and not covered by people nearer the camera. Nearer means lower feet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cion_dist.synth.appearance import Camera
from cion_dist.synth.render import SensorNoise, SpriteBank, composite, light_sprite, paste_box
from cion_dist.synth.scenario import Walk, walk_state


@dataclass(frozen=True)
class BoxRecord:
    """Ground truth of one person in one frame; box corners in pixels, clipped to the frame."""

    frame_index: int
    identity_id: int
    x1: float
    y1: float
    x2: float
    y2: float
    visibility: float


def render_clip(
    walks: list[Walk], bank: SpriteBank, cam: Camera, background: np.ndarray, frames: int, noise: SensorNoise
) -> Iterator[tuple[np.ndarray, list[BoxRecord]]]:
    """Yield (uint8 RGB frame, ground-truth rows of that frame) for ``frames`` frames."""
    height, width = background.shape[:2]
    for f in range(frames):
        states = [s for s in (walk_state(w, f, cam, width, height) for w in walks) if s is not None]
        states.sort(key=lambda s: (s.foot_y, s.identity_id))  # far to near
        sprites = [light_sprite(bank.scaled(s.identity_id, s.pose, s.h, s.facing_right), cam) for s in states]
        cover = np.zeros((height, width), dtype=np.float32)
        vis = [0.0] * len(states)
        for k in range(len(states) - 1, -1, -1):  # near to far: what is in front is already in `cover`
            s, a = states[k], sprites[k][..., 3]
            total = float(a.sum())
            sl = paste_box(s.x1, s.y1, s.w, s.h, width, height)
            if sl is None or total <= 0:
                continue
            fr, fc, sr, sc = sl
            part = a[sr, sc]
            vis[k] = float((part * (1.0 - cover[fr, fc])).sum()) / total
            cover[fr, fc] = 1.0 - (1.0 - cover[fr, fc]) * (1.0 - part)
        frame = background.copy()
        rows = []
        for s, spr, v in zip(states, sprites, vis):
            composite(frame, spr, s.x1, s.y1)
            rows.append(
                BoxRecord(
                    f,
                    s.identity_id,
                    float(max(0, s.x1)),
                    float(max(0, s.y1)),
                    float(min(width, s.x1 + s.w)),
                    float(min(height, s.y1 + s.h)),
                    round(min(1.0, max(0.0, v)), 4),
                )
            )
        yield noise.apply(frame), rows

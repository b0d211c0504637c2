"""Who walks where and when: identity-to-clip assignment and walking paths (pure geometry, no drawing).

A clip's people enter through the left or right border at staggered times, walk on straight or gently curved
paths across the ground (half of them each way, at different depths, so they cross and occlude one another) and
leave through the opposite border. Person height follows the camera's perspective from the foot row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from cion_dist.synth.appearance import Camera
from cion_dist.synth.render import POSES

MIN_HEIGHT = 12  # pixels; smaller people are not drawn and not in the ground truth


@dataclass(frozen=True)
class Walk:
    """One person's pass through one clip: progress 0 at ``entry`` (outside a border), 1 at entry + duration."""

    identity_id: int
    start_x: float
    end_x: float
    start_y: float  # foot row at progress 0
    end_y: float
    bend: float  # foot-row offset at mid path (a gentle curve)
    entry: float  # frame index (may be negative: already walking when the clip starts)
    duration: float  # frames
    gait: float  # walking poses advanced per frame
    gait_phase: float


@dataclass(frozen=True)
class PersonState:
    """Where one person is in one frame; the box is (x1, y1, w, h) in whole pixels, possibly beyond the frame."""

    identity_id: int
    x1: int
    y1: int
    w: int
    h: int
    foot_y: float
    pose: int
    facing_right: bool


def assign_identities(
    identities: list[int], clip_cameras: list[int], per_clip: int, rng: np.random.Generator, attempts: int = 64
) -> list[list[int]]:
    """People of each clip: the least used identities first, preferring those not yet seen by the clip's camera.

    This spreads every identity over several clips and cameras, which is what cross-video correlation must undo.
    A greedy pass can corner itself (the last clips only have identities their camera already saw), so a few
    random tie-breaks are tried and the one leaving the fewest single-camera identities is kept.
    """
    per_clip = min(per_clip, len(identities))
    best, best_bad = None, None
    for _ in range(attempts):
        cast = _greedy_cast(identities, clip_cameras, per_clip, rng)
        cams: dict[int, set[int]] = {i: set() for i in identities}
        uses = {i: 0 for i in identities}
        for cam, chosen in zip(clip_cameras, cast):
            for i in chosen:
                cams[i].add(cam)
                uses[i] += 1
        bad = sum(1 for i in identities if uses[i] >= 2 and len(cams[i]) < 2)
        if best_bad is None or bad < best_bad:
            best, best_bad = cast, bad
        if bad == 0 or len(set(clip_cameras)) < 2:
            break
    return best


def _greedy_cast(
    identities: list[int], clip_cameras: list[int], per_clip: int, rng: np.random.Generator
) -> list[list[int]]:
    usage = {i: 0 for i in identities}
    seen: dict[int, set[int]] = {i: set() for i in identities}
    out = []
    for cam in clip_cameras:
        tie = rng.random(len(identities))
        order = sorted(range(len(identities)), key=lambda k: (usage[identities[k]], cam in seen[identities[k]], tie[k]))
        chosen = sorted(identities[k] for k in order[:per_clip])
        for i in chosen:
            usage[i] += 1
            seen[i].add(cam)
        out.append(chosen)
    return out


def plan_walks(
    identity_ids: list[int], cam: Camera, width: int, height: int, frames: int, fps: int, rng: np.random.Generator
) -> list[Walk]:
    """Walks of one clip, with entry times spread over the clip so that everybody is seen for a while."""
    n = len(identity_ids)
    directions = np.array([1 if k % 2 == 0 else -1 for k in range(n)])
    rng.shuffle(directions)
    slots = rng.permutation(n)
    top, bottom = cam.ground_top * height, 0.97 * height
    walks = []
    for k, pid in enumerate(identity_ids):
        duration = frames * rng.uniform(0.55, 0.95)
        lo, hi = -0.35 * duration, frames - 0.45 * duration
        entry = lo + (slots[k] + rng.uniform(0.1, 0.9)) / n * (hi - lo)
        y0 = rng.uniform(top, bottom)
        y1 = float(np.clip(y0 + rng.uniform(-0.12, 0.12) * height, top, bottom))
        half0 = cam.person_height(y0, height) / 4.0 + 2.0
        half1 = cam.person_height(y1, height) / 4.0 + 2.0
        if directions[k] > 0:
            x0, x1 = -half0, width + half1
        else:
            x0, x1 = width + half0, -half1
        walks.append(
            Walk(
                identity_id=int(pid),
                start_x=float(x0),
                end_x=float(x1),
                start_y=float(y0),
                end_y=y1,
                bend=float(rng.uniform(-0.04, 0.04) * height),
                entry=float(entry),
                duration=float(duration),
                gait=POSES * rng.uniform(0.8, 1.1) / fps,
                gait_phase=float(rng.uniform(0, POSES)),
            )
        )
    return walks


def walk_state(walk: Walk, frame: int, cam: Camera, width: int, height: int) -> Optional[PersonState]:
    """The person's box and pose at ``frame``, or None when off screen or too small."""
    p = (frame - walk.entry) / walk.duration
    if p < 0.0 or p > 1.0:
        return None
    cx = walk.start_x + (walk.end_x - walk.start_x) * p
    foot = walk.start_y + (walk.end_y - walk.start_y) * p + walk.bend * math.sin(math.pi * p)
    foot = min(max(foot, cam.ground_top * height), float(height))
    h = int(round(cam.person_height(foot, height)))
    if h < MIN_HEIGHT:
        return None
    w = h // 2
    x1, y1 = int(round(cx - w / 2.0)), int(round(foot - h))
    if x1 + w <= 0 or x1 >= width or y1 + h <= 0 or y1 >= height:
        return None
    pose = int(math.floor(walk.gait * (frame - walk.entry) + walk.gait_phase)) % POSES
    return PersonState(walk.identity_id, x1, y1, w, h, foot, pose, walk.end_x > walk.start_x)

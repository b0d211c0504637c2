"""A Market-1501-layout re-ID benchmark of held-out synthetic identities (never seen in any clip).

Layout: ``bounding_box_train/``, ``bounding_box_test/`` (gallery) and ``query/`` with JPEG crops named
``PPPP_cCsS_FFFFFF_NN.jpg`` (person id, 1-based camera, sequence, frame, index) as in Market-1501 (Zheng et al.,
ICCV 2015). Half the held-out identities are for training, half for testing; each test identity has one query
per camera, the rest of its crops are gallery, and the gallery also holds distractors (id ``0000``: badly framed
crops) and junk (id ``-1``: background only), which the Market protocol ignores or counts as wrong.

``BenchmarkStyle`` makes the crops harder than the cameras alone do: a per-crop lighting change (time of day), people
farther away (smaller, so upsampled and blurred in the 128x64 crop) and partial occlusion by another person walking
in front or by a static object. All off by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from cion_dist.errors import DataError
from cion_dist.images import encode_jpeg
from cion_dist.synth.appearance import Appearance, Camera
from cion_dist.synth.render import POSES, SensorNoise, SpriteBank, composite, light_sprite

CROP_H, CROP_W = 128, 64  # Market-1501 crop size
SPLITS = ("bounding_box_train", "bounding_box_test", "query")
FILENAME_RE = re.compile(r"^(-1|\d{4})_c(\d+)s(\d+)_(\d{6})_(\d{2})\.jpg$")


def market_filename(pid: int, camera: int, frame: int, index: int, sequence: int = 1) -> str:
    """``camera`` is 1-based; pid -1 is junk, 0 a distractor."""
    p = "-1" if pid < 0 else f"{pid:04d}"
    return f"{p}_c{camera}s{sequence}_{frame:06d}_{index:02d}.jpg"


def parse_market_filename(name: str) -> tuple[int, int, int, int, int]:
    """(pid, camera, sequence, frame, index) of a Market-style file name."""
    m = FILENAME_RE.match(name.rsplit("/", 1)[-1])
    if m is None:
        raise DataError(f"{name!r} is not a Market-1501 style name PPPP_cCsS_FFFFFF_NN.jpg")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5))


def _jpeg(rgb: np.ndarray) -> bytes:
    return encode_jpeg(rgb, 92)


def _crop(frame: np.ndarray, x1: float, y1: float, w: float, h: float) -> np.ndarray:
    H, W = frame.shape[:2]
    a, b = int(np.clip(round(x1), 0, W - 2)), int(np.clip(round(y1), 0, H - 2))
    c, d = int(np.clip(round(x1 + w), a + 2, W)), int(np.clip(round(y1 + h), b + 2, H))
    return cv2.resize(frame[b:d, a:c], (CROP_W, CROP_H), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class BenchmarkStyle:
    light_jitter: float = 0.0  # per-crop brightness factor drawn from 1 +- this
    far: float = 0.0  # feet may reach this fraction of the way from the walking area's top up to the horizon
    occlusion: float = 0.0  # probability that something stands in front of the person


def _lit(cam: Camera, factor: float) -> Camera:
    if factor == 1.0:
        return cam
    from dataclasses import replace

    return replace(cam, gain=tuple(g * factor for g in cam.gain))


def _person_frame(
    bank: SpriteBank,
    pid: int,
    cam: Camera,
    background: np.ndarray,
    rng: np.random.Generator,
    noise: SensorNoise,
    style: BenchmarkStyle = BenchmarkStyle(),
    others: tuple[int, ...] = (),
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A frame with one person at a random place in the camera's walking area, and the person's box."""
    H, W = background.shape[:2]
    top = cam.ground_top * H
    if style.far > 0:
        top -= style.far * (top - cam.horizon * H)
    foot = rng.uniform(top, 0.97 * H)
    h = max(16, int(round(cam.person_height(foot, H))))
    w = h // 2
    x1 = int(round(rng.uniform(0.1 * W, 0.9 * W - w)))
    y1 = int(round(foot - h))
    spr = bank.scaled(pid, int(rng.integers(POSES)), h, bool(rng.random() < 0.5))
    light = 1.0 + rng.uniform(-style.light_jitter, style.light_jitter) if style.light_jitter > 0 else 1.0
    frame = background.copy()
    composite(frame, light_sprite(spr, _lit(cam, light)), x1, y1)
    if style.occlusion > 0 and rng.random() < style.occlusion:
        _occlude(frame, bank, cam, light, (x1, y1, w, h), rng, others)
    return noise.apply(frame), (x1, y1, w, h)


def _occlude(
    frame: np.ndarray,
    bank: SpriteBank,
    cam: Camera,
    light: float,
    box: tuple[int, int, int, int],
    rng: np.random.Generator,
    others: tuple[int, ...],
) -> None:
    """Hide 20-50 % of the person's width: another person a little nearer, or a post / bin in the scene colour."""
    x1, y1, w, h = box
    side = 1 if rng.random() < 0.5 else -1
    if others and rng.random() < 0.6:
        oh = int(round(h * rng.uniform(1.02, 1.15)))
        ox = int(round(x1 + side * w * rng.uniform(0.5, 0.8)))
        spr = bank.scaled(
            int(others[int(rng.integers(len(others)))]), int(rng.integers(POSES)), oh, bool(rng.random() < 0.5)
        )
        composite(frame, light_sprite(spr, _lit(cam, light)), ox, y1 + h - oh + int(0.03 * h))
        return
    col = tuple(float(c) for c in np.clip(rng.uniform(40, 200, size=3) * np.asarray(cam.gain) * light, 0, 255))
    if rng.random() < 0.5:  # a post in front of one side
        px = int(round(x1 + (w * rng.uniform(0.0, 0.3) if side < 0 else w * rng.uniform(0.55, 0.8))))
        cv2.rectangle(frame, (px, y1 - h // 4), (px + max(2, int(w * rng.uniform(0.2, 0.4))), y1 + h), col, -1)
    else:  # a bin or a bench hiding the legs
        cv2.rectangle(
            frame, (x1 - w // 4, y1 + int(h * rng.uniform(0.55, 0.75))), (x1 + w + w // 4, y1 + h + 2), col, -1
        )


def benchmark_files(
    people: list[Appearance],
    cameras: list[Camera],
    backgrounds: list[np.ndarray],
    images_per_camera: int,
    rng: np.random.Generator,
    style: BenchmarkStyle = BenchmarkStyle(),
) -> dict[str, bytes]:
    """Relative path (``<split>/<name>.jpg``) -> JPEG bytes for the whole benchmark."""
    if not people:
        return {}
    bank = SpriteBank(people)
    H, W = backgrounds[0].shape[:2]
    noise = SensorNoise(rng, W, H)
    frame_no = {c.index: int(rng.integers(1, 500)) for c in cameras}
    n_train = len(people) // 2
    train_ids = {p.identity_id for p in people[:n_train]}
    files: dict[str, bytes] = {}

    def next_frame(ci: int) -> int:
        frame_no[ci] += int(rng.integers(3, 40))
        return frame_no[ci]

    all_ids = tuple(p.identity_id for p in people)
    for app in people:
        others = tuple(i for i in all_ids if i != app.identity_id)
        for cam, bg in zip(cameras, backgrounds):
            for j in range(images_per_camera):
                frame, (x1, y1, w, h) = _person_frame(bank, app.identity_id, cam, bg, rng, noise, style, others)
                # detector-like framing: small shifts and scale changes of the box
                crop = _crop(
                    frame,
                    x1 + rng.uniform(-0.07, 0.07) * w,
                    y1 + rng.uniform(-0.04, 0.04) * h,
                    w * rng.uniform(0.95, 1.15),
                    h * rng.uniform(0.97, 1.06),
                )
                if app.identity_id in train_ids:
                    split = "bounding_box_train"
                else:
                    split = "query" if j == 0 else "bounding_box_test"
                name = market_filename(app.identity_id, cam.index + 1, next_frame(cam.index), j + 1)
                files[f"{split}/{name}"] = _jpeg(crop)
    # distractors (0000): a fragment of a test person; junk (-1): background only
    test_people = [p for p in people if p.identity_id not in train_ids] or people
    for k in range(max(2, len(cameras))):
        cam = cameras[k % len(cameras)]
        bg = backgrounds[k % len(cameras)]
        app = test_people[int(rng.integers(len(test_people)))]
        frame, (x1, y1, w, h) = _person_frame(bank, app.identity_id, cam, bg, rng, noise)
        if k % 2 == 0:
            crop = _crop(frame, x1 - 0.2 * w, y1 + 0.45 * h, 1.4 * w, 0.7 * h)  # legs and ground
        else:
            crop = _crop(frame, x1 + 0.45 * w, y1 - 0.1 * h, 1.3 * w, 0.8 * h)  # half a person, offset
        files[f"bounding_box_test/{market_filename(0, cam.index + 1, next_frame(cam.index), 1)}"] = _jpeg(crop)
        fh = int(cam.person_height(0.8 * H, H))
        jx = rng.uniform(0, max(1.0, W - fh / 2))
        crop = _crop(noise.apply(bg.copy()), jx, 0.8 * H - fh, fh / 2, fh)
        files[f"bounding_box_test/{market_filename(-1, cam.index + 1, next_frame(cam.index), 1)}"] = _jpeg(crop)
    return files

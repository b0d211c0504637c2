"""A tiny Market-1501-layout benchmark drawn in code: each person has a top and a bottom colour, and people share
colours with others in swapped order (red/blue vs blue/red), so a feature has to keep *where* a colour is, not
only how much of it there is. Cameras change the background and the lighting."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

PALETTE = np.array([[220, 40, 40], [40, 60, 220], [40, 180, 60], [230, 210, 40], [150, 60, 180], [240, 240, 240]])


def person_image(pid: int, cam: int, k: int, rng: np.random.Generator, h: int = 64, w: int = 32) -> np.ndarray:
    """RGB uint8: camera-tinted noisy background, a torso in the top colour, legs in the bottom colour."""
    n = len(PALETTE)
    top, bottom = PALETTE[pid % n], PALETTE[(pid // n + pid) % n]
    bg = np.clip(rng.normal(90 + 30 * cam, 25, size=(h, w, 3)), 0, 255)
    img = bg.copy()
    x0 = int(rng.integers(5, 9))
    y0 = int(rng.integers(2, 6))
    xw = w - 2 * x0
    mid = y0 + (h - y0) // 2
    img[y0 + 6 : mid, x0 : x0 + xw] = top
    img[mid : h - 2, x0 + 2 : x0 + xw - 2] = bottom
    img[y0 : y0 + 6, x0 + 4 : x0 + xw - 4] = (200, 160, 130)  # head
    gain = 0.8 + 0.15 * cam + rng.normal(0, 0.03)
    img = np.clip(img * gain + rng.normal(0, 12, size=img.shape), 0, 255)
    return img.astype(np.uint8)


def write_market(
    root: Path,
    train_ids=range(1, 13),
    test_ids=range(13, 25),
    cams: int = 3,
    per_cam: int = 2,
    seed: int = 0,
    extras: bool = True,
) -> Path:
    """Write ``bounding_box_train``, ``bounding_box_test`` and ``query`` folders; returns ``root``.

    Test identities get one query image per camera and ``per_cam`` gallery images per camera. With ``extras``,
    junk (-1) and distractor (0000) images and a ``Thumbs.db`` are added, as in the real benchmark."""
    rng = np.random.default_rng(seed)
    dirs = {d: root / d for d in ("bounding_box_train", "bounding_box_test", "query")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)

    def save(folder: str, pid: int, cam: int, frame: int, img: np.ndarray) -> None:
        name = f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg" if pid >= 0 else f"-1_c{cam + 1}s1_{frame:06d}_00.jpg"
        cv2.imwrite(str(dirs[folder] / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

    frame = 0
    for pid in train_ids:
        for cam in range(cams):
            for k in range(per_cam):
                frame += 1
                save("bounding_box_train", pid, cam, frame, person_image(pid, cam, k, rng))
    for pid in test_ids:
        for cam in range(cams):
            frame += 1
            save("query", pid, cam, frame, person_image(pid, cam, 0, rng))
            for k in range(per_cam):
                frame += 1
                save("bounding_box_test", pid, cam, frame, person_image(pid, cam, k + 1, rng))
    if extras:
        for cam in range(cams):
            frame += 1
            save("bounding_box_test", -1, cam, frame, person_image(99, cam, 0, rng))
            frame += 1
            save("bounding_box_test", 0, cam, frame, person_image(98, cam, 0, rng))
            frame += 1
            save("bounding_box_train", -1, cam, frame, person_image(97, cam, 0, rng))
        (dirs["bounding_box_test"] / "Thumbs.db").write_bytes(b"\0" * 16)
    return root

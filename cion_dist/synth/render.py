"""Drawing: person sprites, camera backgrounds and alpha compositing (numpy + OpenCV, no IO).

A person is drawn once per walking pose at twice a canonical size and reduced with area averaging, which gives
anti-aliased edges. Sprites carry premultiplied colour plus alpha in one float32 RGBA array, so resizing and
compositing stay exact at soft edges. The body layout below (fractions of the person box, width = height / 2) is
what ground-truth boxes enclose and what tests sample: the torso interior is rows ``TORSO_ROWS`` and columns
``TORSO_COLS``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from cion_dist.synth.appearance import Appearance, Camera

SPRITE_H = 192  # canonical sprite height in pixels (width is half)
POSES = 8  # walking-cycle phases

HEAD_CENTRE, HEAD_AXES = (0.5, 0.085), (0.13, 0.075)  # (x of width, y of height), (half-width of w, half-height of h)
TORSO_ROWS, TORSO_COLS = (0.16, 0.54), (0.24, 0.76)
HIP_ROWS, HIP_COLS = (0.52, 0.62), (0.29, 0.71)
FOOT_ROW = 0.955


def _pt(x: float, y: float, w: int, h: int) -> tuple[int, int]:
    return int(round(x * w)), int(round(y * h))


def _torso_fill(app: Appearance, th: int, tw: int) -> np.ndarray:
    """The torso's pattern as an RGB patch of th x tw pixels; each pattern covers half of it with each colour."""
    c1 = np.asarray(app.upper, dtype=np.float32)
    c2 = np.asarray(app.upper2, dtype=np.float32)
    patch = np.empty((th, tw, 3), dtype=np.float32)
    patch[:] = c1
    if app.pattern == "hstripes":
        band = (np.arange(th) * (2 * app.stripes) // th) % 2 == 1
        patch[band] = c2
    elif app.pattern == "vstripes":
        band = (np.arange(tw) * (2 * app.stripes) // tw) % 2 == 1
        patch[:, band] = c2
    elif app.pattern == "twotone":
        patch[:, tw // 2 :] = c2
    elif app.pattern == "checks":  # an even number of columns: every row is half one colour, half the other
        cols = (np.arange(tw) * (2 * app.stripes) // tw) % 2
        cell = max(1, tw // (2 * app.stripes))
        rows = (np.arange(th) // cell) % 2
        patch[(rows[:, None] ^ cols[None, :]) == 1] = c2
    return patch


def _badge(rgb: np.ndarray, app: Appearance, w: int, h: int) -> None:
    """A small shape on the chest (same place on every pose); drawn into the colour only (the torso is opaque)."""
    if app.badge == "none":
        return
    col = tuple(int(round(c)) for c in app.badge_colour)
    cx, cy, r = int(0.5 * w), int(0.30 * h), max(2, int(0.09 * w))
    if app.badge == "circle":
        cv2.circle(rgb, (cx, cy), r, col, -1, cv2.LINE_AA)
    elif app.badge == "square":
        cv2.rectangle(rgb, (cx - r, cy - r), (cx + r, cy + r), col, -1)
    elif app.badge == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(rgb, [pts], col, cv2.LINE_AA)
    elif app.badge == "bar":
        cv2.rectangle(rgb, (int(0.26 * w), cy - r // 3), (int(0.74 * w), cy + r // 3), col, -1)


def draw_person(app: Appearance, pose: int, height: int = SPRITE_H) -> np.ndarray:
    """Person facing right in walking phase ``pose``: float32 (height, height // 2, 4), premultiplied RGB + alpha."""
    s = 2  # draw at twice the size, then area-average down
    h, w = height * s, (height // 2) * s
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    alpha = np.zeros((h, w), dtype=np.uint8)
    phase = 2.0 * math.pi * (pose % POSES) / POSES
    swing = math.sin(phase)

    def line(p, q, thick, colour):
        cv2.line(rgb, p, q, tuple(int(round(c)) for c in colour), thick, cv2.LINE_AA)
        cv2.line(alpha, p, q, 255, thick, cv2.LINE_AA)

    def ellipse(centre, axes, colour, start=0, end=360):
        cv2.ellipse(rgb, centre, axes, 0, start, end, tuple(int(round(c)) for c in colour), -1, cv2.LINE_AA)
        cv2.ellipse(alpha, centre, axes, 0, start, end, 255, -1, cv2.LINE_AA)

    # legs: the far leg first, feet swinging opposite ways
    leg_t = max(2, int(0.15 * w))
    for hip_x, sign in ((0.58, -1.0), (0.42, 1.0)):
        foot_x = hip_x + sign * 0.13 * swing
        hip, foot = _pt(hip_x, HIP_ROWS[0] + 0.04, w, h), _pt(foot_x, FOOT_ROW - 0.01, w, h)
        line(hip, foot, leg_t, app.lower)
        ellipse(_pt(foot_x + 0.04, FOOT_ROW + 0.012, w, h), (max(1, int(0.09 * w)), max(1, int(0.022 * h))), app.shoes)
    # hips and trousers' top
    cv2.rectangle(
        rgb,
        _pt(HIP_COLS[0], HIP_ROWS[0], w, h),
        _pt(HIP_COLS[1], HIP_ROWS[1], w, h),
        tuple(int(round(c)) for c in app.lower),
        -1,
    )
    cv2.rectangle(alpha, _pt(HIP_COLS[0], HIP_ROWS[0], w, h), _pt(HIP_COLS[1], HIP_ROWS[1], w, h), 255, -1)
    # torso with its pattern, shoulders rounded
    (x0, y0), (x1, y1) = _pt(TORSO_COLS[0], TORSO_ROWS[0], w, h), _pt(TORSO_COLS[1], TORSO_ROWS[1], w, h)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    r = max(1, int(0.08 * w))
    cv2.rectangle(mask, (r, 0), (x1 - x0 - 1 - r, y1 - y0 - 1), 255, -1)
    cv2.rectangle(mask, (0, r), (x1 - x0 - 1, y1 - y0 - 1), 255, -1)
    cv2.circle(mask, (r, r), r, 255, -1, cv2.LINE_AA)
    cv2.circle(mask, (x1 - x0 - 1 - r, r), r, 255, -1, cv2.LINE_AA)
    m = mask.astype(np.float32)[..., None] / 255.0
    region = rgb[y0:y1, x0:x1].astype(np.float32)
    rgb[y0:y1, x0:x1] = np.round(_torso_fill(app, y1 - y0, x1 - x0) * m + region * (1 - m)).astype(np.uint8)
    alpha[y0:y1, x0:x1] = np.maximum(alpha[y0:y1, x0:x1], mask)
    # arms: sleeves in the main upper colour, swinging against the legs
    arm_t = max(2, int(0.10 * w))
    for sh_x, sign in ((0.20, 1.0), (0.80, -1.0)):
        hand = _pt(sh_x - 0.025 * sign + 0.035 * swing * sign, 0.50, w, h)
        line(_pt(sh_x, 0.19, w, h), hand, arm_t, app.upper)
        ellipse(hand, (max(1, arm_t // 2), max(1, arm_t // 2)), app.skin)
    # neck, head, hair on the top and back of the head
    cv2.rectangle(rgb, _pt(0.44, 0.13, w, h), _pt(0.56, 0.17, w, h), tuple(int(round(c)) for c in app.skin), -1)
    cv2.rectangle(alpha, _pt(0.44, 0.13, w, h), _pt(0.56, 0.17, w, h), 255, -1)
    centre = _pt(*HEAD_CENTRE, w, h)
    axes = (int(HEAD_AXES[0] * w), int(HEAD_AXES[1] * h))
    if app.hair_style == "long":  # hair down the back of the neck, drawn behind the face
        ellipse((centre[0] - int(0.07 * w), centre[1] + int(0.05 * h)), (axes[0], int(axes[1] * 1.3)), app.hair)
    ellipse(centre, axes, app.skin)
    ellipse((centre[0] - int(0.02 * w), centre[1] - int(0.01 * h)), axes, app.hair, 140, 360)
    if app.hair_style == "cap":  # a brim in the badge colour
        ellipse(
            (centre[0] + int(0.04 * w), centre[1] - int(0.04 * h)),
            (int(axes[0] * 1.25), max(1, axes[1] // 3)),
            app.badge_colour,
            180,
            360,
        )
    _badge(rgb, app, w, h)
    if app.bag == "shoulder":  # strap across the torso, bag at the far hip
        bag_col = tuple(int(round(c)) for c in app.bag_colour)
        cv2.line(rgb, _pt(0.30, 0.17, w, h), _pt(0.70, 0.50, w, h), bag_col, max(2, int(0.05 * w)), cv2.LINE_AA)
        ellipse(_pt(0.74, 0.53, w, h), (int(0.13 * w), int(0.05 * h)), app.bag_colour)
    elif app.bag == "backpack":  # a block on the back (left of a person facing right), straps over the shoulder
        bag_col = tuple(int(round(c)) for c in app.bag_colour)
        (bx0, by0), (bx1, by1) = _pt(0.06, 0.20, w, h), _pt(0.30, 0.46, w, h)
        cv2.rectangle(rgb, (bx0, by0), (bx1, by1), bag_col, -1)
        cv2.rectangle(alpha, (bx0, by0), (bx1, by1), 255, -1)
        cv2.line(rgb, _pt(0.30, 0.18, w, h), _pt(0.36, 0.42, w, h), bag_col, max(2, int(0.04 * w)), cv2.LINE_AA)
    out = np.dstack([rgb.astype(np.float32), alpha.astype(np.float32) / 255.0])
    # rgb was drawn over black, so it already is colour premultiplied by coverage
    return cv2.resize(out, (w // s, h // s), interpolation=cv2.INTER_AREA)


class SpriteBank:
    """Canonical sprites per (identity, pose), drawn on first use."""

    def __init__(self, appearances: list[Appearance]):
        self._apps = {a.identity_id: a for a in appearances}
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def get(self, identity_id: int, pose: int) -> np.ndarray:
        key = (identity_id, pose % POSES)
        if key not in self._cache:
            self._cache[key] = draw_person(self._apps[identity_id], key[1])
        return self._cache[key]

    def scaled(self, identity_id: int, pose: int, height: int, facing_right: bool) -> np.ndarray:
        """Sprite resized to ``height`` x ``height // 2`` (premultiplied RGBA), mirrored when walking left."""
        src = self.get(identity_id, pose)
        width = max(1, height // 2)
        interp = cv2.INTER_AREA if height < src.shape[0] else cv2.INTER_LINEAR
        out = cv2.resize(src, (width, height), interpolation=interp)
        return out if facing_right else out[:, ::-1]


def light_sprite(rgba: np.ndarray, cam: Camera) -> np.ndarray:
    """Apply the camera's affine lighting to premultiplied colour (the offset scales with coverage)."""
    out = rgba.copy()
    out[..., :3] = rgba[..., :3] * np.asarray(cam.gain, dtype=np.float32) + cam.offset * rgba[..., 3:4]
    return out


def paste_box(x1: int, y1: int, w: int, h: int, width: int, height: int):
    """Slices (frame rows, frame cols, sprite rows, sprite cols) of a box clipped to the frame, or None if outside."""
    fx0, fy0, fx1, fy1 = max(0, x1), max(0, y1), min(width, x1 + w), min(height, y1 + h)
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    return (slice(fy0, fy1), slice(fx0, fx1), slice(fy0 - y1, fy1 - y1), slice(fx0 - x1, fx1 - x1))


def composite(frame: np.ndarray, rgba: np.ndarray, x1: int, y1: int) -> None:
    """Alpha-composite a premultiplied sprite onto a uint8 RGB frame in place at top-left (x1, y1)."""
    sl = paste_box(x1, y1, rgba.shape[1], rgba.shape[0], frame.shape[1], frame.shape[0])
    if sl is None:
        return
    fr, fc, sr, sc = sl
    spr = rgba[sr, sc]
    roi = frame[fr, fc].astype(np.float32)
    out = spr[..., :3] + roi * (1.0 - spr[..., 3:4])
    frame[fr, fc] = np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def camera_background(cam: Camera, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """The static scene of one camera before lighting: float32 RGB (height, width, 3).

    Above the ground line there are buildings with windows (style 0), a hedge with trees (style 1) or a fence
    (style 2); the ground carries a large-scale texture and perspective lines, different per camera.
    """
    img = np.zeros((height, width, 3), dtype=np.float32)
    ground_y = int((cam.ground_top - 0.07) * height)
    wall = np.array([rng.uniform(90, 200), rng.uniform(90, 200), rng.uniform(90, 200)], dtype=np.float32)
    img[:ground_y] = wall
    if cam.style == 0:
        x = 0
        while x < width:
            bw = int(rng.uniform(0.12, 0.3) * width)
            top = int(rng.uniform(0.0, 0.5) * ground_y)
            col = tuple(float(c) for c in rng.uniform(60, 210, size=3))
            cv2.rectangle(img, (x, top), (x + bw, ground_y), col, -1)
            win = tuple(float(c) for c in rng.uniform(20, 120, size=3))
            step = max(6, bw // 5)
            for wx in range(x + step // 2, x + bw - step // 2, step):
                for wy in range(top + step // 2, ground_y - step // 2, step):
                    cv2.rectangle(img, (wx, wy), (wx + step // 3, wy + step // 2), win, -1)
            x += bw + int(rng.uniform(0, 0.05) * width)
    elif cam.style == 1:
        for _ in range(max(4, width // 60)):
            cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0.1, 0.8) * ground_y)
            r = int(rng.uniform(0.05, 0.12) * height)
            col = (float(rng.uniform(20, 80)), float(rng.uniform(80, 160)), float(rng.uniform(20, 70)))
            cv2.circle(img, (cx, cy), r, col, -1, cv2.LINE_AA)
            cv2.rectangle(img, (cx - r // 6, cy), (cx + r // 6, ground_y), (70.0, 50.0, 30.0), -1)
    else:
        step = max(8, int(rng.uniform(0.03, 0.07) * width))
        post = tuple(float(c) for c in rng.uniform(40, 160, size=3))
        for x in range(0, width, step):
            cv2.rectangle(img, (x, int(0.35 * ground_y)), (x + max(2, step // 4), ground_y), post, -1)
        cv2.rectangle(img, (0, int(0.35 * ground_y)), (width, int(0.42 * ground_y)), post, -1)
    ground = np.array([rng.uniform(70, 170), rng.uniform(70, 170), rng.uniform(60, 150)], dtype=np.float32)
    img[ground_y:] = ground
    vx, vy = rng.uniform(0.2, 0.8) * width, cam.horizon * height
    line_col = tuple(float(c) for c in np.clip(ground + rng.uniform(-45, 45, size=3), 0, 255))
    for k in range(-6, 13):
        bx = k * width / 6.0
        # clip each converging line to the ground
        t = (ground_y - vy) / (height - vy)
        cv2.line(img, (int(vx + (bx - vx) * t), ground_y), (int(bx), height), line_col, 2, cv2.LINE_AA)
    img += _smooth_noise(rng, width, height, 24)[..., None] * rng.uniform(6, 14)
    img += _smooth_noise(rng, width, height, 4)[..., None] * 4.0
    return img


def lit_background(cam: Camera, scene: np.ndarray) -> np.ndarray:
    return np.clip(scene * np.asarray(cam.gain, dtype=np.float32) + cam.offset + 0.5, 0, 255).astype(np.uint8)


class SensorNoise:
    """Mild per-frame noise: the difference of two fields picked from a small bank (cheap, deterministic)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, bank: int = 4, amplitude: int = 4):
        self._rng = rng
        self._fields = [rng.integers(0, amplitude, size=(height, width, 3), dtype=np.uint8) for _ in range(bank)]

    def apply(self, frame: np.ndarray) -> np.ndarray:
        i, j = self._rng.integers(len(self._fields), size=2)
        return cv2.subtract(cv2.add(frame, self._fields[i]), self._fields[j])

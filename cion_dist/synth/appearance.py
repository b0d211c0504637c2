"""Who the synthetic people are and what each camera looks like: pure sampling, no drawing, no IO.

Each identity gets clothing colours and a torso pattern; a fraction of identities copy another identity's outfit
with a small colour shift and a different pattern, so the corpus holds hard negatives (similar but different
people). With ``texture_look_alikes`` the copy keeps the colour content of every row of the torso (vertical stripes,
two halves and checks all hold both colours on each row), so a colour histogram over horizontal stripes cannot tell
the two apart; with ``details`` people also carry a chest badge (shape and colour), a bag and a hair style, small
parts that only a model looking at shape sees. Each camera gets a horizon, a perspective scale and a lighting
transform (per-channel gain and offset)
applied to everything it sees. All draws come from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field, replace

import numpy as np

PATTERNS = ("solid", "hstripes", "vstripes", "twotone")
# patterns whose every torso row holds both colours half and half: per-row colour statistics cannot separate them
ROW_BALANCED = ("vstripes", "twotone", "checks")
BADGES = ("none", "circle", "square", "triangle", "bar")
BAGS = ("none", "shoulder", "backpack")
HAIR = ("short", "long", "cap")

RGB = tuple  # (r, g, b) floats in 0..255


@dataclass(frozen=True)
class Appearance:
    """Clothing and body of one identity. Colours are RGB floats in 0..255."""

    identity_id: int
    skin: RGB
    hair: RGB
    upper: RGB
    upper2: RGB
    lower: RGB
    shoes: RGB
    pattern: str
    stripes: int  # stripe pairs across the torso for the striped patterns
    similar_to: int = 0  # identity whose outfit this one imitates (0: none)
    badge: str = "none"  # chest badge shape (BADGES)
    badge_colour: RGB = (255.0, 255.0, 255.0)
    bag: str = "none"  # BAGS
    bag_colour: RGB = (60.0, 40.0, 30.0)
    hair_style: str = "short"  # HAIR

    def upper_mean(self) -> np.ndarray:
        """Mean colour of the torso before lighting: every pattern splits the torso half and half."""
        if self.pattern == "solid":
            return np.asarray(self.upper, dtype=np.float64)
        return 0.5 * (np.asarray(self.upper, dtype=np.float64) + np.asarray(self.upper2, dtype=np.float64))

    def to_record(self) -> dict:
        return {
            "identity_id": self.identity_id,
            "pattern": self.pattern,
            "stripes": self.stripes,
            "similar_to": self.similar_to,
            "badge": self.badge,
            "bag": self.bag,
            "hair_style": self.hair_style,
            **{
                f"{k}_{c}": float(getattr(self, k)[i])
                for k in ("skin", "hair", "upper", "upper2", "lower", "shoes", "badge_colour", "bag_colour")
                for i, c in enumerate("rgb")
            },
        }


@dataclass(frozen=True)
class Camera:
    """Viewpoint and lighting of one camera; positions are fractions of the frame height."""

    index: int
    horizon: float  # image row (fraction of height) where person height would shrink to zero
    near_height: float  # person height (fraction of frame height) with feet on the bottom row
    ground_top: float  # highest foot row (fraction) of walking paths
    gain: tuple = field(default=(1.0, 1.0, 1.0))  # per-channel multiplier (brightness x colour cast)
    offset: float = 0.0
    style: int = 0  # background style variant

    @property
    def name(self) -> str:
        return f"cam{self.index}"

    def person_height(self, foot_y: float, frame_height: int) -> float:
        """Perspective: height grows linearly with the distance of the feet below the horizon."""
        horizon = self.horizon * frame_height
        slope = self.near_height * frame_height / (frame_height - horizon)
        return max(0.0, (foot_y - horizon) * slope)

    def light(self, rgb) -> np.ndarray:
        """What the camera records for a scene colour (before clipping)."""
        return np.asarray(rgb, dtype=np.float64) * np.asarray(self.gain) + self.offset


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (r * 255.0, g * 255.0, b * 255.0)


def random_colour(rng: np.random.Generator) -> RGB:
    """A clothing colour: mostly saturated hues, sometimes a neutral (black, grey, white)."""
    if rng.random() < 0.2:
        v = rng.uniform(0.12, 0.92)
        tint = rng.uniform(-0.04, 0.04, size=3)
        return tuple(float(np.clip(v + t, 0, 1) * 255.0) for t in tint)
    return _hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.35, 0.95))


def _jitter(rgb: RGB, rng: np.random.Generator, amount: float) -> RGB:
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0, 255)) for c in rgb)


def _outfit_vector(a: Appearance) -> np.ndarray:
    return np.concatenate([a.upper_mean(), np.asarray(a.lower)])


def _details(rng: np.random.Generator) -> dict:
    return {
        "badge": BADGES[int(rng.integers(len(BADGES)))],
        "badge_colour": random_colour(rng),
        "bag": BAGS[int(rng.integers(len(BAGS)))],
        "bag_colour": _hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.7)),
        "hair_style": HAIR[int(rng.integers(len(HAIR)))],
    }


def _texture_look_alike(
    pid: int, base: Appearance, skin: RGB, hair: RGB, shoes: RGB, rng: np.random.Generator
) -> Appearance:
    """A copy of ``base``'s colours (small shifts) in another row-balanced pattern, with its own details."""
    others = [p for p in ROW_BALANCED if p != base.pattern]
    upper2 = base.upper2 if base.pattern != "solid" else _jitter(base.upper, rng, 60.0)
    return Appearance(
        pid,
        skin,
        hair,
        _jitter(base.upper, rng, 8.0),
        _jitter(upper2, rng, 8.0),
        _jitter(base.lower, rng, 8.0),
        shoes,
        others[int(rng.integers(len(others)))],
        int(rng.integers(3, 6)),
        similar_to=base.identity_id,
        **_details(rng),
    )


def sample_appearances(
    n: int,
    rng: np.random.Generator,
    first_id: int = 1,
    hard_negative_fraction: float = 0.25,
    min_distance: float = 70.0,
    texture_look_alikes: bool = False,
    details: bool = False,
) -> list[Appearance]:
    """``n`` identities numbered from ``first_id``; about ``hard_negative_fraction`` of them imitate another one.

    Independent identities are kept at least ``min_distance`` apart (RGB distance of torso-mean and trouser colours)
    from every identity drawn before them, as far as a bounded number of draws allows. ``texture_look_alikes`` and
    ``details`` (see the module docstring) draw from the same generator after the standard draws of each person,
    so the standard corpus of a seed is unchanged when both are off.
    """
    people: list[Appearance] = []
    for k in range(n):
        pid = first_id + k
        skin = _hsv(rng.uniform(0.03, 0.10), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
        hair = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.6))
        shoes = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.5))
        if people and rng.random() < hard_negative_fraction:
            base = people[int(rng.integers(len(people)))]
            if texture_look_alikes:
                people.append(_texture_look_alike(pid, base, skin, hair, shoes, rng))
                continue
            others = [p for p in PATTERNS if p != base.pattern]
            pattern = others[int(rng.integers(len(others)))]
            upper = _jitter(base.upper, rng, 14.0)
            # a solid original becomes two shades of its colour, so the torso mean stays close
            upper2 = _jitter(base.upper2, rng, 14.0) if base.pattern != "solid" else _jitter(base.upper, rng, 45.0)
            people.append(
                Appearance(
                    pid,
                    skin,
                    hair,
                    upper,
                    upper2,
                    _jitter(base.lower, rng, 14.0),
                    shoes,
                    pattern,
                    int(rng.integers(3, 6)),
                    similar_to=base.identity_id,
                )
            )
            continue
        best, best_d = None, -1.0
        for _ in range(60):
            cand = Appearance(
                pid,
                skin,
                hair,
                random_colour(rng),
                random_colour(rng),
                random_colour(rng),
                shoes,
                PATTERNS[int(rng.integers(len(PATTERNS)))],
                int(rng.integers(3, 6)),
            )
            d = min((float(np.linalg.norm(_outfit_vector(cand) - _outfit_vector(p))) for p in people), default=1e9)
            if d > best_d:
                best, best_d = cand, d
            if d >= min_distance:
                break
        if texture_look_alikes and best.pattern not in ROW_BALANCED and rng.random() < 0.5:
            best = replace(best, pattern=ROW_BALANCED[int(rng.integers(len(ROW_BALANCED)))])
        if details:
            best = replace(best, **_details(rng))
        people.append(best)
    return people


def sample_cameras(n: int, rng: np.random.Generator) -> list[Camera]:
    """``n`` cameras with different horizons, scales and lighting (warm, cool, dim, bright)."""
    cams = []
    for i in range(n):
        brightness = rng.uniform(0.72, 1.15)
        cast = 1.0 + rng.uniform(-0.12, 0.12, size=3)
        cams.append(
            Camera(
                index=i,
                horizon=float(rng.uniform(0.18, 0.32)),
                near_height=float(rng.uniform(0.50, 0.62)),
                ground_top=float(rng.uniform(0.55, 0.62)),
                gain=tuple(float(g) for g in brightness * cast),
                offset=float(rng.uniform(-10.0, 12.0)),
                style=i % 3,
            )
        )
    return cams


def recorded_torso_colour(app: Appearance, cam: Camera) -> np.ndarray:
    """Mean torso colour as ``cam`` records it: each pattern half lit and clipped separately."""
    halves = [app.upper] if app.pattern == "solid" else [app.upper, app.upper2]
    return np.mean([np.clip(cam.light(c), 0, 255) for c in halves], axis=0)

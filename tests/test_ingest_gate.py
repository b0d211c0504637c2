"""Crop quality gate on synthetic boxes and frames: each reason fires where it should, tallies add up."""

from __future__ import annotations

import numpy as np
import pytest

from cion_dist.ingest.clip import tracklets_to_table
from cion_dist.ingest.config import GateConfig
from cion_dist.ingest.gate import (
    REASONS,
    GateTally,
    assess,
    covered_fraction,
    sharpness,
)
from cion_dist.ingest.tracker import Tracklet

W, H = 640, 360


def person(x, y, h=120, aspect=2.5):
    return [x, y, x + h / aspect, y + h]


def test_each_reason_on_synthetic_boxes():
    boxes = np.array(
        [
            person(100, 100),  # clean
            person(0, 100),  # left border
            person(300, 240),  # feet at the bottom edge (y2 = 360)
            [400, 100, 520, 220],  # 120 x 120: two people wide
            [200, 200, 200 + 90, 320],  # h / w 1.33: not upright
            [560, 20, 570, 110],  # h / w 9: a pole
            person(105, 130, h=80),  # inside the first person's box (which it covers < half of)
            person(250, 50, h=30),  # tiny
        ],
        float,
    )
    reasons = assess(boxes, W, H, GateConfig(border_margin=0.005))
    assert reasons == ["", "border", "border", "two_person", "aspect", "aspect", "overlap", "tiny"]
    assert assess(boxes, W, H, GateConfig())[1:3] == ["", ""]  # the border check is opt-in
    off = assess(boxes, W, H, GateConfig(enabled=False))
    assert off == [""] * len(boxes)


def test_overlap_marks_both_boxes_of_a_pair_and_ignores_weak_coverers():
    a, b = person(100, 100), person(110, 100)  # two boxes on almost the same place: both crops hold two people
    assert assess(np.array([a, b]), W, H, GateConfig()) == ["overlap", "overlap"]
    frac = covered_fraction(np.array([a, b, person(400, 100)]))
    assert frac[0] == pytest.approx((48 - 10) / 48) and frac[2] == 0.0
    # a low-score box does not cover anybody
    assert assess(np.array([a, b]), W, H, GateConfig(), scores=np.array([0.9, 0.1])) == ["", "overlap"]


def test_tiny_is_measured_in_source_pixels():
    box = np.array([person(100, 100, h=30)])
    assert assess(box, W, H, GateConfig(min_height=40)) == ["tiny"]
    assert assess(box, W, H, GateConfig(min_height=40), scale=(2.0, 2.0)) == [""]  # decoded at half size


def test_blur_needs_pixels_and_drops_a_smeared_crop():
    rng = np.random.default_rng(0)
    frame = np.full((H, W, 3), 90, np.uint8)
    frame[100:220, 100:148] = rng.integers(0, 255, (120, 48, 3), dtype=np.uint8)  # textured person
    frame[100:220, 300:348] = 120  # flat smear
    boxes = np.array([[100, 100, 148, 220], [300, 100, 348, 220]], float)
    assert sharpness(frame[100:220, 100:148]) > 1000 and sharpness(frame[100:220, 300:348]) == 0.0
    assert assess(boxes, W, H, GateConfig(), frame=frame) == ["", "blur"]
    assert assess(boxes, W, H, GateConfig(min_sharpness=0), frame=frame) == ["", ""]


def test_tally_counts_reasons_over_tracked_detections_and_describes_kept_crops():
    # tracklet A: 4 clean boxes + 1 border-cut (dropped); tracklet B: 3 boxes, 2 two-person (dropped) -> too short
    a = Tracklet(track_id=1)
    for f in range(5):
        (
            a.frames.append(f),
            a.boxes.append(np.array(person(100 + f, 100) if f < 4 else person(0, 100))),
            a.scores.append(0.9),
            a.detections.append(0),
        )
    b = Tracklet(track_id=2)
    for f in range(3):
        (
            b.frames.append(f),
            b.boxes.append(np.array([400, 100, 520, 220] if f else person(300, 50))),
            b.scores.append(0.9),
            b.detections.append(1),
        )
    gated = {(4, 0): "border", (1, 1): "two_person", (2, 1): "two_person"}
    crops = {(f, 0): b"j" for f in range(4)} | {(0, 1): b"j"}
    tally = GateTally()
    table = tracklets_to_table("v", [a, b], crops, 10.0, (1.0, 1.0), 24, 3, gated, tally, (W, H))
    assert table.num_rows == 4 and len(set(table.column("tracklet_id").to_pylist())) == 1
    assert tally.considered == 8 and tally.kept == 4
    assert tally.dropped["border"] == 1 and tally.dropped["two_person"] == 2
    assert sum(tally.dropped.values()) == 3 and sum(tally.flagged.values()) == 0
    s = tally.summary()
    assert s["gate_kept_fraction"] == 0.5 and s["gate_kept_edge_touch_fraction"] == 0.0
    assert s["gate_kept_aspect_histogram"]["2.5-3"] == 4
    both = GateTally.merged([tally.to_dict(), tally])
    assert (
        both.considered == 16
        and both.dropped["two_person"] == 4
        and both.kept_aspect == [2 * v for v in tally.kept_aspect]
    )
    assert set(both.dropped) == set(REASONS)


def test_flag_mode_keeps_crops_and_counts_them():
    a = Tracklet(track_id=1)
    for f in range(3):
        a.frames.append(f), a.boxes.append(np.array(person(0, 100))), a.scores.append(0.9), a.detections.append(0)
    tally = GateTally()
    table = tracklets_to_table(
        "v",
        [a],
        {(f, 0): b"j" for f in range(3)},
        10.0,
        (1.0, 1.0),
        24,
        3,
        {(f, 0): "border" for f in range(3)},
        tally,
        (W, H),
    )
    assert table.num_rows == 3 and tally.flagged["border"] == 3 and tally.dropped["border"] == 0
    assert tally.summary()["gate_kept_edge_touch_fraction"] == 1.0


def test_gate_config_validation():
    with pytest.raises(ValueError, match="min_aspect"):
        GateConfig(min_aspect=4, max_aspect=3)

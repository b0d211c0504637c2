"""The pure tracker and box helpers on hand-made boxes."""

from __future__ import annotations

import numpy as np
import pytest

from cion_dist.ingest.boxes import iou_matrix, nms
from cion_dist.ingest.tracker import ByteTracker, track_sequence


def person(cx, cy, w=20.0, h=50.0):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def ids_by_frame(tracklets):
    """{frame: {track_id: box}}"""
    out: dict = {}
    for t in tracklets:
        for f, b in zip(t.frames, t.boxes):
            out.setdefault(f, {})[t.track_id] = b
    return out


def test_iou_and_nms():
    a = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], dtype=float)
    iou = iou_matrix(a, a)
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[0, 2] == 0.0
    keep = nms(a, np.array([0.9, 0.8, 0.7]), 0.3)
    assert keep.tolist() == [0, 2]
    assert nms(a, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 1, 2]
    assert iou_matrix(np.zeros((0, 4)), a).shape == (0, 3)


def test_two_walkers_keep_their_ids():
    dets, frames = [], []
    for f in range(30):
        boxes = [person(20 + 4 * f, 100), person(200, 60 + 3 * f)]
        dets.append((np.array(boxes), np.array([0.9, 0.8])))
        frames.append(f)
    tracks = track_sequence(dets, frames, min_length=3)
    assert len(tracks) == 2
    assert all(len(t) == 30 for t in tracks)
    xs = np.stack(tracks[0].boxes)[:, 0]
    assert np.all(np.diff(xs) > 0) or np.all(np.diff(np.stack(tracks[1].boxes)[:, 0]) > 0)


def test_crossing_people_keep_ids():
    """Two people walk towards each other along one line and pass through each other's box."""
    dets, frames = [], []
    for f in range(40):
        a = person(40 + 5 * f, 100)  # left -> right
        b = person(240 - 5 * f, 104)  # right -> left
        order = [a, b] if f % 2 == 0 else [b, a]  # detector output order must not matter
        dets.append((np.array(order), np.array([0.9, 0.9])))
        frames.append(f)
    tracks = track_sequence(dets, frames, min_length=3)
    assert len(tracks) == 2
    for t in tracks:
        assert len(t) == 40
        x = np.stack(t.boxes)[:, 0]
        direction = np.sign(np.diff(x))
        assert np.all(direction == direction[0]), "a track switched person at the crossing"


def test_gap_is_bridged_within_max_age():
    dets, frames = [], []
    for f in range(30):
        if 10 <= f < 15:  # person missed for 5 frames
            dets.append((np.zeros((0, 4)), np.zeros(0)))
        else:
            dets.append((np.array([person(50 + 3 * f, 80)]), np.array([0.9])))
        frames.append(f)
    tracks = track_sequence(dets, frames, max_age=8, min_length=3)
    assert len(tracks) == 1
    assert len(tracks[0]) == 25
    assert tracks[0].frames[9:11] == [9, 15]
    # with a short memory the same gap splits the person into two tracklets
    split = track_sequence(dets, frames, max_age=2, min_length=3)
    assert len(split) == 2


def test_low_score_detections_extend_but_never_start_tracks():
    dets, frames = [], []
    for f in range(20):
        score = 0.9 if f < 8 else 0.3  # occluded: detector is less sure
        boxes = [person(50 + 2 * f, 80), person(300, 300)]
        dets.append((np.array(boxes), np.array([score, 0.3])))
        frames.append(f)
    tracks = track_sequence(dets, frames, high_threshold=0.5, low_threshold=0.1, min_length=3)
    assert len(tracks) == 1  # the always-low box at (300, 300) never becomes a track
    assert len(tracks[0]) == 20


def test_short_and_spurious_tracks_are_dropped():
    dets = [
        (np.array([person(10, 10)]), np.array([0.9])) if f == 3 else (np.zeros((0, 4)), np.zeros(0)) for f in range(10)
    ]
    assert track_sequence(dets, list(range(10)), min_length=1) == []  # a one-frame blip is never confirmed
    dets = [
        (np.array([person(10 + f, 10)]), np.array([0.9])) if f < 3 else (np.zeros((0, 4)), np.zeros(0))
        for f in range(10)
    ]
    assert len(track_sequence(dets, list(range(10)), min_length=3)) == 1
    assert track_sequence(dets, list(range(10)), min_length=4) == []


def _meet_and_part(tracker, with_features):
    """A and B walk together, stand on the same spot for 10 frames, then each walks back the way it came."""
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=8), rng.normal(size=8)
    fa, fb = fa / np.linalg.norm(fa), fb / np.linalg.norm(fb)
    truth = {}
    for f in range(40):
        step = min(f, 15) - max(0, f - 25)  # 0..15, hold, back to 0
        xa, xb = 40 + 4 * step, 160 - 4 * step
        boxes = np.array([person(xa, 100), person(xb, 100)])
        feats = np.stack([fa, fb])
        perm = [1, 0] if f % 2 else [0, 1]
        tracker.update(f, boxes[perm], np.array([0.9, 0.9]), feats[perm] if with_features else None)
        truth[f] = (xa, xb)
    return tracker.finish(), truth


def _pure(tracks, truth):
    """Every tracklet follows one person (frames where both stand on one spot say nothing)."""
    for t in tracks:
        sides = {
            0 if abs((b[0] + b[2]) / 2 - truth[f][0]) < 1e-6 else 1
            for f, b in zip(t.frames, t.boxes)
            if truth[f][0] != truth[f][1]
        }
        if len(sides) != 1:
            return False
    return True


def test_appearance_keeps_ids_when_people_meet_and_part():
    tracks, truth = _meet_and_part(ByteTracker(min_length=3), with_features=True)
    assert len(tracks) == 2 and all(len(t) == 40 for t in tracks)
    assert _pure(tracks, truth)
    # boxes alone cannot tell who is who after standing on one spot
    tracks, truth = _meet_and_part(ByteTracker(min_length=3), with_features=False)
    assert not _pure(tracks, truth)


def test_empty_frames_with_features():
    tr = ByteTracker(min_length=2)
    f = np.ones((1, 4)) / 2
    tr.update(0, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)))
    for i in range(1, 4):
        tr.update(i, np.array([person(10 + i, 10)]), np.array([0.9]), f)
    tr.update(4, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)))
    assert [len(t) for t in tr.finish()] == [3]


def test_mismatched_inputs_raise():
    tr = ByteTracker()
    with pytest.raises(ValueError, match="frame 0"):
        tr.update(0, np.zeros((2, 4)), np.zeros(3))

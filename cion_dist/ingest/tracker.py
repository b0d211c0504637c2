"""A compact ByteTrack-style multi-person tracker. Pure: boxes in, tracklets out; no video, no IO.

Each frame: predict every track with its Kalman filter; match confident detections to all live tracks by IoU
(Hungarian assignment); then match the remaining low-score detections to tracks still unmatched, which keeps a
partly occluded person on their track (the ByteTrack idea, Zhang et al., ECCV 2022); unmatched confident
detections start tentative tracks, confirmed after ``min_hits`` consecutive matches. A track missed for more
than ``max_age`` processed frames ends, so a short gap is bridged under the same id. Optional per-detection
appearance vectors (e.g. colour histograms) break ties between overlapping people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

from cion_dist.ingest.boxes import as_boxes, iou_matrix
from cion_dist.ingest.motion import BoxKalman


@dataclass
class Tracklet:
    """One person's run of detections: frame indices, boxes ``[n, 4]``, scores, and which detection of its frame
    each observation was (so callers can find the crop they cut for it)."""

    track_id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class _Track:
    track_id: int
    kf: BoxKalman
    tracklet: Tracklet
    hits: int = 1
    missed: int = 0
    confirmed: bool = False
    feature: Optional[np.ndarray] = None


class ByteTracker:
    """Feed ``update`` frame by frame in order; ``finish`` returns the tracklets that pass the length filter."""

    def __init__(
        self,
        high_threshold: float = 0.5,
        low_threshold: float = 0.1,
        match_iou: float = 0.3,
        max_age: int = 10,
        min_length: int = 3,
        min_hits: int = 2,
        appearance_weight: float = 0.5,
        feature_momentum: float = 0.8,
    ):
        self.high, self.low, self.match_iou = high_threshold, low_threshold, match_iou
        self.max_age, self.min_length, self.min_hits = max_age, min_length, min_hits
        self.appearance_weight, self.feature_momentum = appearance_weight, feature_momentum
        self._live: list[_Track] = []
        self._done: list[Tracklet] = []
        self._next_id = 0

    @classmethod
    def from_config(cls, cfg) -> "ByteTracker":
        return cls(
            cfg.high_threshold,
            cfg.low_threshold,
            cfg.match_iou,
            cfg.max_age,
            cfg.min_length,
            cfg.min_hits,
            cfg.appearance_weight,
        )

    def _cost(self, tracks: list[_Track], boxes: np.ndarray, feats: Optional[np.ndarray]) -> np.ndarray:
        """1 - IoU, blended with appearance distance where both sides have features; IoU below the gate is +inf."""
        if not tracks or len(boxes) == 0:
            return np.zeros((len(tracks), len(boxes)))
        pred = np.stack([t.kf.box() for t in tracks])
        iou = iou_matrix(pred, boxes)
        cost = 1.0 - iou
        if feats is not None and self.appearance_weight > 0:
            for i, t in enumerate(tracks):
                if t.feature is not None:
                    dist = 0.5 * np.linalg.norm(feats - t.feature[None], axis=1)  # unit vectors: in [0, 1]
                    cost[i] = (1 - self.appearance_weight) * cost[i] + self.appearance_weight * dist
        cost[iou < self.match_iou] = np.inf
        return cost

    @staticmethod
    def _assign(cost: np.ndarray) -> list[tuple[int, int]]:
        if cost.size == 0:
            return []
        finite = np.isfinite(cost)
        if not finite.any():
            return []
        big = np.where(finite, cost, 1e6)
        rows, cols = linear_sum_assignment(big)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if finite[r, c]]

    def _extend(self, t: _Track, frame: int, d: int, box: np.ndarray, score: float, feat: Optional[np.ndarray]) -> None:
        t.kf.update(box)
        t.tracklet.detections.append(int(d))
        t.tracklet.frames.append(int(frame))
        t.tracklet.boxes.append(np.asarray(box, dtype=np.float64))
        t.tracklet.scores.append(float(score))
        t.hits += 1
        t.missed = 0
        if t.hits >= self.min_hits:
            t.confirmed = True
        if feat is not None:
            if t.feature is None:
                t.feature = feat
            else:
                f = self.feature_momentum * t.feature + (1 - self.feature_momentum) * feat
                t.feature = f / max(np.linalg.norm(f), 1e-12)

    def update(self, frame: int, boxes, scores, features: Optional[np.ndarray] = None) -> None:
        """Advance one processed frame with its detections (``boxes [n, 4]``, ``scores [n]``, optional unit
        ``features [n, d]``)."""
        boxes = as_boxes(boxes)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"frame {frame}: {len(boxes)} boxes but {len(scores)} scores")
        feats = None
        if features is not None:
            feats = np.asarray(features, dtype=np.float64)
            feats = feats.reshape(len(boxes), -1) if len(boxes) else np.zeros((0, max(1, feats.shape[-1])))
        for t in self._live:
            t.kf.predict()

        high = np.flatnonzero(scores >= self.high)
        low = np.flatnonzero((scores >= self.low) & (scores < self.high))
        confirmed = [t for t in self._live if t.confirmed]
        tentative = [t for t in self._live if not t.confirmed]

        def sub(idx):
            return boxes[idx], (None if feats is None else feats[idx])

        # 1. confident detections vs confirmed tracks (tracked or recently lost)
        b, f = sub(high)
        pairs = self._assign(self._cost(confirmed, b, f))
        matched_t, used = set(), set()
        for ti, di in pairs:
            d = high[di]
            self._extend(confirmed[ti], frame, d, boxes[d], scores[d], None if feats is None else feats[d])
            matched_t.add(id(confirmed[ti]))
            used.add(int(d))
        # 2. low-score detections vs confirmed tracks seen in the previous frame and still unmatched
        rest = [t for t in confirmed if id(t) not in matched_t and t.missed == 0]
        b, f = sub(low)
        for ti, di in self._assign(self._cost(rest, b, f)):
            d = low[di]
            self._extend(rest[ti], frame, d, boxes[d], scores[d], None if feats is None else feats[d])
            matched_t.add(id(rest[ti]))
        # 3. remaining confident detections vs tentative tracks
        remaining = np.array([d for d in high if int(d) not in used], dtype=np.int64)
        b, f = sub(remaining)
        for ti, di in self._assign(self._cost(tentative, b, f)):
            d = remaining[di]
            self._extend(tentative[ti], frame, d, boxes[d], scores[d], None if feats is None else feats[d])
            matched_t.add(id(tentative[ti]))
            used.add(int(d))

        survivors: list[_Track] = []
        for t in self._live:
            if id(t) in matched_t:
                survivors.append(t)
                continue
            t.missed += 1
            if not t.confirmed or t.missed > self.max_age:
                self._retire(t)
            else:
                survivors.append(t)
        # 4. unmatched confident detections start tentative tracks
        for d in high:
            if int(d) in used:
                continue
            tr = Tracklet(self._next_id, [int(frame)], [boxes[d].copy()], [float(scores[d])], [int(d)])
            t = _Track(
                self._next_id,
                BoxKalman(boxes[d]),
                tr,
                confirmed=self.min_hits <= 1,
                feature=None if feats is None else feats[d],
            )
            self._next_id += 1
            survivors.append(t)
        self._live = survivors

    def _retire(self, t: _Track) -> None:
        if t.confirmed and len(t.tracklet) >= self.min_length:
            self._done.append(t.tracklet)

    def finish(self) -> list[Tracklet]:
        """End every live track; tracklets ordered by first frame, then id."""
        for t in self._live:
            self._retire(t)
        self._live = []
        done = sorted(self._done, key=lambda tr: (tr.frames[0], tr.track_id))
        self._done = []
        return done


def track_sequence(detections, frames, cfg=None, features=None, **kwargs) -> list[Tracklet]:
    """Track a whole sequence at once: ``detections[i] = (boxes, scores)`` for processed frame ``frames[i]``."""
    tracker = ByteTracker.from_config(cfg) if cfg is not None else ByteTracker(**kwargs)
    for i, (frame, (b, s)) in enumerate(zip(frames, detections)):
        tracker.update(frame, b, s, None if features is None else features[i])
    return tracker.finish()

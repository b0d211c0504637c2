"""Tracking metrics (motmetrics) on hand-made ground truth and predictions."""

from __future__ import annotations

import pandas as pd
import pytest

from cion_dist.ingest.tracking_eval import evaluate_tracks


def _gt(frames=10):
    rows = []
    for f in range(frames):
        rows.append(("v", f, 1, 10 + 5 * f, 10, 30 + 5 * f, 60, 1.0))
        rows.append(("v", f, 2, 200 - 5 * f, 10, 220 - 5 * f, 60, 1.0))
    return pd.DataFrame(rows, columns=["video_id", "frame_index", "identity_id", "x1", "y1", "x2", "y2", "visibility"])


def _pred(gt, ids):
    p = gt.rename(columns={"identity_id": "tracklet_id"}).drop(columns=["visibility"])
    p["tracklet_id"] = [ids(f, i) for f, i in zip(p.frame_index, p.tracklet_id)]
    return p


def test_perfect_tracks():
    gt = _gt()
    m = evaluate_tracks(gt, _pred(gt, lambda f, i: f"v/t{i}"))
    assert m["mota"] == pytest.approx(1.0) and m["idf1"] == pytest.approx(1.0)
    assert m["num_switches"] == 0 and m["motp"] == pytest.approx(1.0)


def test_swapped_ids_halfway():
    gt = _gt()
    m = evaluate_tracks(gt, _pred(gt, lambda f, i: f"v/t{i if f < 5 else 3 - i}"))
    assert m["num_switches"] == 2
    assert m["idf1"] == pytest.approx(0.5)
    assert m["mota"] == pytest.approx(1 - 2 / 20)


def test_misses_false_alarms_and_hidden_people():
    gt = _gt()
    gt.loc[(gt.identity_id == 2) & (gt.frame_index >= 8), "visibility"] = 0.1  # hidden at the end
    pred = _pred(gt, lambda f, i: f"v/t{i}")
    pred = pred[~((pred.tracklet_id == "v/t1") & (pred.frame_index < 2))]  # person 1 found late
    extra = pd.DataFrame([("v", 0, "v/t9", 400, 10, 420, 60)], columns=pred.columns)
    m = evaluate_tracks(gt, pd.concat([pred, extra]), min_visibility=0.3)
    assert m["num_misses"] == 2 and m["num_false_positives"] == 1
    assert m["num_objects"] == 18  # the 2 hidden boxes are not counted, nor is finding them
    assert m["mota"] == pytest.approx(1 - 3 / 18)

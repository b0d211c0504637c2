"""Tracking quality of an ingest run against ground truth: MOTA, IDF1, ID switches (py-motmetrics).

Per clip, every ground-truth frame is compared with the tracklet boxes ingest kept for it (IoU distance, match
below 1 - ``iou_threshold``); clips are accumulated separately and summarised together. Only frames ingest
actually sampled are scored (``frames="sampled"``), so sub-sampling does not count as misses. Ground-truth boxes
below ``min_visibility`` are left out, as people nearly hidden cannot be expected of a detector, and boxes that
found such a person are not counted against the tracker either.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput


def _iou_distance(gt: np.ndarray, hyp: np.ndarray, max_d: float) -> np.ndarray:
    from cion_dist.ingest.boxes import iou_matrix

    d = 1.0 - iou_matrix(gt, hyp)
    d[d > max_d] = np.nan
    return d


def drop_ignored(pred, gt, ignored, iou_threshold: float):
    """Remove predicted boxes that cover an ignored (barely visible) person better than any counted one, as
    MOTChallenge does with its distractors: finding a hidden person is neither a hit nor a false alarm."""
    from cion_dist.ingest.boxes import iou_matrix

    if ignored.empty or pred.empty:
        return pred
    cols = ["x1", "y1", "x2", "y2"]
    ig = {k: x[cols].to_numpy(np.float64) for k, x in ignored.groupby(["video_id", "frame_index"])}
    kept = {k: x[cols].to_numpy(np.float64) for k, x in gt.groupby(["video_id", "frame_index"])}
    drop = np.zeros(len(pred), bool)
    boxes = pred[cols].to_numpy(np.float64)
    for i, key in enumerate(zip(pred["video_id"], pred["frame_index"])):
        if key not in ig:
            continue
        best_ignored = iou_matrix(boxes[i : i + 1], ig[key]).max()
        best_kept = iou_matrix(boxes[i : i + 1], kept[key]).max() if key in kept else 0.0
        drop[i] = best_ignored >= iou_threshold and best_ignored > best_kept
    return pred[~drop]


def evaluate_tracks(gt, pred, iou_threshold: float = 0.5, min_visibility: float = 0.0, frames=None) -> dict:
    """Metrics from two pandas frames.

    ``gt``: ``video_id, frame_index, identity_id, x1, y1, x2, y2[, visibility]``;
    ``pred``: ``video_id, frame_index, tracklet_id, x1, y1, x2, y2``. ``frames`` maps video_id -> frame indices to
    score (default: every frame that has a prediction or ground truth, per clip).
    """
    import motmetrics as mm

    ignored = gt.iloc[0:0]
    if "visibility" in gt.columns and min_visibility > 0:
        ignored = gt[gt["visibility"] < min_visibility]
        gt = gt[gt["visibility"] >= min_visibility]
    pred = drop_ignored(pred, gt, ignored, iou_threshold)
    accs, names = [], []
    videos = sorted(set(gt["video_id"]).union(pred["video_id"]))
    gt_groups = {k: g for k, g in gt.groupby("video_id")}
    pr_groups = {k: g for k, g in pred.groupby("video_id")}
    cols = ["x1", "y1", "x2", "y2"]
    for v in videos:
        g = gt_groups.get(v, gt.iloc[0:0])
        p = pr_groups.get(v, pred.iloc[0:0])
        if frames is not None and v in frames:
            keep = np.asarray(sorted(frames[v]))
        else:
            keep = np.union1d(g["frame_index"].to_numpy(), p["frame_index"].to_numpy())
        g = g[g["frame_index"].isin(keep)]
        p = p[p["frame_index"].isin(keep)]
        gf = {k: x for k, x in g.groupby("frame_index")}
        pf = {k: x for k, x in p.groupby("frame_index")}
        hyp_ids = {t: i for i, t in enumerate(sorted(set(p["tracklet_id"])))}  # motmetrics wants numeric ids
        acc = mm.MOTAccumulator(auto_id=False)
        for f in keep.tolist():
            gg, pp = gf.get(f), pf.get(f)
            gid = [] if gg is None else gg["identity_id"].tolist()
            pid = [] if pp is None else [hyp_ids[t] for t in pp["tracklet_id"]]
            gb = np.zeros((0, 4)) if gg is None else gg[cols].to_numpy(np.float64)
            pb = np.zeros((0, 4)) if pp is None else pp[cols].to_numpy(np.float64)
            acc.update(gid, pid, _iou_distance(gb, pb, 1.0 - iou_threshold), frameid=int(f))
        accs.append(acc)
        names.append(str(v))
    mh = mm.metrics.create()
    metrics = [
        "mota",
        "motp",
        "idf1",
        "idp",
        "idr",
        "num_switches",
        "num_false_positives",
        "num_misses",
        "num_objects",
        "num_unique_objects",
        "precision",
        "recall",
    ]
    summary = mh.compute_many(accs, metrics=metrics, names=names, generate_overall=True)
    overall = summary.loc["OVERALL"]
    out = {m: float(overall[m]) for m in metrics}
    for m in ("num_switches", "num_false_positives", "num_misses", "num_objects", "num_unique_objects"):
        out[m] = int(overall[m])
    out["motp"] = float(1.0 - out["motp"]) if np.isfinite(out["motp"]) else float("nan")  # mean IoU of matches
    out["per_video"] = {
        n: {
            "mota": float(summary.loc[n, "mota"]),
            "idf1": float(summary.loc[n, "idf1"]),
            "num_switches": int(summary.loc[n, "num_switches"]),
        }
        for n in names
    }
    out["videos"] = len(names)
    return out


def read_ingest_boxes(ingest_uri: str, storage: Optional[Storage] = None):
    """The ingest output's boxes as a pandas frame ``video_id, frame_index, tracklet_id, x1, y1, x2, y2``."""
    import pandas as pd

    out = StageOutput(str(ingest_uri).rstrip("/"), storage or Storage())
    table = out.read(columns=["video_id", "frame_index", "tracklet_id", "bbox"])
    boxes = np.asarray(table.column("bbox").to_pylist(), dtype=np.float64).reshape(-1, 4)
    return pd.DataFrame(
        {
            "video_id": table.column("video_id").to_pylist(),
            "frame_index": table.column("frame_index").to_numpy(),
            "tracklet_id": table.column("tracklet_id").to_pylist(),
            "x1": boxes[:, 0],
            "y1": boxes[:, 1],
            "x2": boxes[:, 2],
            "y2": boxes[:, 3],
        }
    )


def sampled_frames(ingest_uri: str, storage: Optional[Storage] = None) -> Optional[dict]:
    """video_id -> frame indices ingest decoded, rebuilt from each part's clip metadata and the run's sampling
    settings (``_SUCCESS.json``); None when the run does not record them."""
    from cion_dist.ingest.decode import sample_indices
    from cion_dist.ingest.parts import part_clip_info

    out = StageOutput(str(ingest_uri).rstrip("/"), storage or Storage())
    if not out.is_complete():
        return None
    cfg = out.success().get("config", {})
    frames = {}
    for video_id, (n, fps, _) in part_clip_info(out).items():
        frames[video_id] = sample_indices(
            n, fps, cfg.get("sample_fps"), cfg.get("every_n", 1), cfg.get("max_frames")
        ).tolist()
    return frames or None


def evaluate_ingest_tracking(
    ingest_uri: str,
    gt_uri: str,
    storage: Optional[Storage] = None,
    iou_threshold: float = 0.5,
    min_visibility: float = 0.3,
) -> dict:
    """MOTA, IDF1, ID switches (and more) of an ingest run against a synthetic corpus's ground truth."""
    from cion_dist.synth.groundtruth import read_ground_truth

    st = storage or Storage()
    pred = read_ingest_boxes(ingest_uri, st)
    gt = read_ground_truth(gt_uri, st)
    videos = set(pred["video_id"])
    frames = sampled_frames(ingest_uri, st)
    if frames is not None:
        videos |= set(frames)
    gt = gt[gt["video_id"].isin(videos)] if videos else gt
    if gt.empty:
        raise DataError(f"ground truth {gt_uri} has no rows for the clips of {ingest_uri}")
    result = evaluate_tracks(gt, pred, iou_threshold=iou_threshold, min_visibility=min_visibility, frames=frames)
    result.update(
        {
            "ingest_uri": str(ingest_uri),
            "gt_uri": str(gt_uri),
            "iou_threshold": iou_threshold,
            "min_visibility": min_visibility,
        }
    )
    return result

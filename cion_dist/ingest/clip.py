"""One clip, start to end: read its bytes, decode in chunks, detect, track, cut crops, build the output table.

``ingest_clip`` is the body of one Ray task but needs no Ray: it takes the bytes' URI and the stage config and
returns the crops table plus counters. Frames never outlive their chunk; only JPEG crops of detections are kept
until the tracker decides which detections form tracklets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from cion_dist.images import encode_jpeg
from cion_dist.ingest.appearance import box_histograms
from cion_dist.ingest.crops import crop_box
from cion_dist.ingest.decode import iter_chunks, open_clip, sample_indices
from cion_dist.ingest.detectors import make_detector
from cion_dist.ingest.gate import EDGE_TOUCH, GateTally, assess
from cion_dist.ingest.schema import CROPS, clip_metadata, image_key, tracklet_key
from cion_dist.ingest.tracker import ByteTracker, Tracklet
from cion_dist.storage.fs import Storage, read_bytes


@dataclass
class ClipResult:
    table: pa.Table
    frames: int = 0
    detections: int = 0
    seconds: float = 0.0
    gate: dict = field(default_factory=dict)  # GateTally.to_dict()


def tracklets_to_table(
    video_id: str,
    tracklets: list[Tracklet],
    crops: dict,
    fps: float,
    scale: tuple[float, float],
    min_crop_height: int,
    min_length: int,
    gated: Optional[dict] = None,
    tally: Optional[GateTally] = None,
    frame_size: tuple[int, int] = (0, 0),
    edge_margin: float = 0.01,
) -> pa.Table:
    """Rows for tracklets whose crops are tall enough; tracklets left with fewer than ``min_length`` are dropped.

    ``crops[(frame, detection)]`` holds the JPEG; boxes are mapped back to source pixels by ``scale`` (sx, sy).
    ``gated[(frame, detection)]`` is the quality gate's reason for a detection (dropped ones have no crop,
    flagged ones do); ``tally`` counts them over tracked detections and describes the kept rows.
    """
    cols: dict[str, list] = {name: [] for name in CROPS.names}
    gated = gated or {}
    n = 0
    sx, sy = scale
    for t in tracklets:
        tall = [i for i, b in enumerate(t.boxes) if (b[3] - b[1]) * sy >= min_crop_height]
        keep = [i for i in tall if (t.frames[i], t.detections[i]) in crops]
        if tally is not None:
            for i in tall:
                reason = gated.get((t.frames[i], t.detections[i]))
                tally.considered += 1
                if reason:
                    (tally.flagged if (t.frames[i], t.detections[i]) in crops else tally.dropped)[reason] += 1
        if len(keep) < min_length:
            continue
        if tally is not None:
            for i in keep:
                tally.add_kept(t.boxes[i], frame_size[0], frame_size[1], edge_margin)
        tid = tracklet_key(video_id, n)
        n += 1
        for i in keep:
            f = t.frames[i]
            x1, y1, x2, y2 = t.boxes[i]
            cols["image_id"].append(image_key(tid, f))
            cols["video_id"].append(video_id)
            cols["tracklet_id"].append(tid)
            cols["frame_index"].append(int(f))
            cols["timestamp_s"].append(float(f) / fps if fps > 0 else 0.0)
            cols["bbox"].append([x1 * sx, y1 * sy, x2 * sx, y2 * sy])
            cols["score"].append(float(t.scores[i]))
            cols["jpeg"].append(crops[(f, t.detections[i])])
    return pa.table(cols, schema=CROPS)


def frame_range(num_frames: int, fps: float, start_s: Optional[float], end_s: Optional[float]) -> tuple[int, int]:
    """Source frames ``[lo, hi)`` of a manifest segment (seconds into the file); the whole clip without one."""
    lo = 0 if start_s is None or fps <= 0 else min(num_frames, max(0, int(round(start_s * fps))))
    hi = num_frames if end_s is None or fps <= 0 else min(num_frames, max(lo, int(round(end_s * fps))))
    return lo, hi


def ingest_clip(
    video_id: str,
    uri: str,
    cfg,
    storage: Optional[Storage] = None,
    detector=None,
    start_s: Optional[float] = None,
    end_s: Optional[float] = None,
) -> ClipResult:
    """Decode, detect and track one clip (or the ``[start_s, end_s)`` segment of it, seconds into the file: only
    that range is decoded; frame indices stay those of the file); raises ``DataError`` for a missing, empty or
    undecodable clip."""
    t0 = time.perf_counter()
    data = read_bytes(uri, storage)
    clip = open_clip(data, cfg.resize_width, name=f"{video_id} ({uri})")
    del data
    lo, hi = frame_range(clip.num_frames, clip.fps, start_s, end_s)
    indices = lo + sample_indices(hi - lo, clip.fps, cfg.sample_fps, cfg.every_n, cfg.max_frames)
    detector = detector or make_detector(cfg.detector, storage)
    tracker = ByteTracker.from_config(cfg.tracker)
    use_appearance = cfg.tracker.appearance_weight > 0
    min_h = cfg.min_crop_height / clip.scale[1]  # in decoded pixels
    crops: dict[tuple[int, int], bytes] = {}
    gated: dict[tuple[int, int], str] = {}  # quality gate's reason per detection that failed it
    drop_gated = cfg.gate.action == "drop"
    frames = detections = 0
    it = iter_chunks(clip, indices, cfg.chunk_frames, name=f"{video_id} ({uri})")
    while True:
        chunk = next(it, None)
        if chunk is None:
            break
        idx, batch = chunk
        dets = detector.detect(batch)
        for f, frame, (boxes, scores) in zip(idx.tolist(), batch, dets):
            keep = scores >= cfg.tracker.low_threshold
            boxes, scores = boxes[keep], scores[keep]
            feats = box_histograms(frame, boxes) if use_appearance else None
            tracker.update(f, boxes, scores, feats)
            reasons = assess(boxes, clip.width, clip.height, cfg.gate, clip.scale, frame, scores)
            for d, box in enumerate(boxes):
                if box[3] - box[1] < min_h:
                    continue
                if reasons[d]:
                    gated[(f, d)] = reasons[d]
                    if drop_gated:
                        continue
                win = crop_box(box, clip.width, clip.height, cfg.crop_margin)
                if win is not None:
                    x1, y1, x2, y2 = win
                    crops[(f, d)] = encode_jpeg(frame[y1:y2, x1:x2], cfg.jpeg_quality)
            detections += len(boxes)
        frames += len(idx)
        del batch
    tracklets = tracker.finish()
    tally = GateTally()
    table = tracklets_to_table(
        video_id,
        tracklets,
        crops,
        clip.fps,
        clip.scale,
        cfg.min_crop_height,
        cfg.tracker.min_length,
        gated,
        tally,
        (clip.width, clip.height),
        EDGE_TOUCH,
    )
    table = table.replace_schema_metadata(clip_metadata(video_id, clip.num_frames, clip.fps, frames))
    return ClipResult(
        table,
        frames,
        detections,
        time.perf_counter() - t0,
        tally.to_dict(),
    )

"""Read a synthetic corpus's ground truth back (for tracking evaluation and correlation quality figures)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage, join
from cion_dist.storage.stage_io import read_table

GT_COLUMNS = ("video_id", "frame_index", "identity_id", "x1", "y1", "x2", "y2", "visibility")


def ground_truth_uri(uri: str, storage: Optional[Storage] = None) -> str:
    """Accept the corpus folder, its ``gt/`` folder or the ``gt.parquet`` file itself."""
    st = storage or Storage()
    u = str(uri).rstrip("/")
    if u.endswith(".parquet"):
        return u
    fs, path = st.fs(u)
    if fs.exists(path.rstrip("/") + "/gt/gt.parquet"):
        return join(u, "gt", "gt.parquet")
    if fs.exists(path.rstrip("/") + "/gt.parquet"):
        return join(u, "gt.parquet")
    raise DataError(f"no ground truth under {uri}: expected gt/gt.parquet (is this a synthetic corpus?)")


def read_ground_truth(uri: str, storage: Optional[Storage] = None) -> pd.DataFrame:
    """Boxes of every person in every frame: ``video_id, frame_index, identity_id, x1, y1, x2, y2, visibility``.

    Frame indices are 0-based (decoder order); boxes are in pixels, clipped to the frame; visibility is the
    fraction of the silhouette that is in the frame and not hidden by nearer people.
    """
    st = storage or Storage()
    path = ground_truth_uri(uri, st)
    df = read_table(path, st).to_pandas()
    missing = [c for c in GT_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: ground truth lacks column(s) {', '.join(missing)}")
    return df


def read_identities(uri: str, storage: Optional[Storage] = None) -> pd.DataFrame:
    """Each identity's outfit (colours, pattern, the identity it imitates) and whether it is held out."""
    st = storage or Storage()
    gt = ground_truth_uri(uri, st)
    return read_table(gt.rsplit("/", 1)[0] + "/identities.parquet", st).to_pandas()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4); corners x1, y1, x2, y2."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def label_boxes(boxes: pd.DataFrame, gt: pd.DataFrame, min_iou: float = 0.5) -> np.ndarray:
    """The true identity of each detected box, or -1: one-to-one per frame, highest IoU first, IoU >= ``min_iou``.

    ``boxes`` and ``gt`` both need ``video_id, frame_index, x1, y1, x2, y2``; ``gt`` also ``identity_id``.
    """
    out = np.full(len(boxes), -1, dtype=np.int64)
    if len(boxes) == 0 or len(gt) == 0:
        return out
    cols = ["x1", "y1", "x2", "y2"]
    truth = {
        k: (g[cols].to_numpy(np.float64), g["identity_id"].to_numpy(np.int64))
        for k, g in gt.groupby(["video_id", "frame_index"], sort=False)
    }
    pos = np.arange(len(boxes))
    for key, idx in boxes.groupby(["video_id", "frame_index"], sort=False).indices.items():
        if key not in truth:
            continue
        gb, gid = truth[key]
        iou = _iou(boxes.iloc[idx][cols].to_numpy(np.float64), gb)
        taken_d, taken_g = set(), set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            d, g = divmod(int(flat), iou.shape[1])
            if iou[d, g] < min_iou:
                break
            if d in taken_d or g in taken_g:
                continue
            taken_d.add(d)
            taken_g.add(g)
            out[pos[idx[d]]] = gid[g]
    return out


def crop_identities(ingest_uri: str, gt_uri: str, storage: Optional[Storage] = None, min_iou: float = 0.5) -> pa.Table:
    """``image_id, identity_id`` for every crop of an ingest run that overlaps a ground-truth person.

    This is the ground-truth file the correlate stage scores its identities against (``correlate.ground_truth``).
    """
    from cion_dist.storage.stage_io import StageOutput

    st = storage or Storage()
    run = StageOutput(str(ingest_uri).rstrip("/"), st)
    t = run.read(columns=["image_id", "video_id", "frame_index", "bbox"])
    bbox = np.asarray(t.column("bbox").to_pylist(), dtype=np.float64).reshape(-1, 4)
    boxes = pd.DataFrame(
        {
            "video_id": t.column("video_id").to_pylist(),
            "frame_index": t.column("frame_index").to_numpy(),
            "x1": bbox[:, 0],
            "y1": bbox[:, 1],
            "x2": bbox[:, 2],
            "y2": bbox[:, 3],
        }
    )
    ident = label_boxes(boxes, read_ground_truth(gt_uri, st), min_iou)
    keep = ident >= 0
    image_id = t.column("image_id").to_pylist()
    return pa.table(
        {"image_id": [image_id[i] for i in np.flatnonzero(keep)], "identity_id": pa.array(ident[keep], pa.int64())}
    )

"""Read the embed stage's output (and an optional ground truth) into arrays, checking what correlate relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, read_table

REQUIRED = ("image_id", "tracklet_id", "video_id", "embedding")
ORDER_COLUMNS = ("source", "start_time")


@dataclass
class EmbeddingSet:
    """Images sorted by video order (source, start time, video id), then by their original row order."""

    image_id: np.ndarray
    video_id: np.ndarray  # str
    tracklet_id: pa.Array  # original values, carried to the output unchanged
    tracklet_key: np.ndarray  # str "video\x1ftracklet", unique per tracklet across videos
    x: np.ndarray  # (n, dim) float32, L2-normalised
    videos: list[str]  # video ids in manifest order
    video_rank: np.ndarray  # position of each image's video in ``videos``
    frame: Optional[np.ndarray] = None  # frame index per image when the embed table carries ``frame_index``

    def __len__(self) -> int:
        return len(self.image_id)


def order_key(row: dict) -> tuple:
    """Sort key of one video: source, then start time (missing values last), compared as values, not text."""
    key: list = []
    for c in ORDER_COLUMNS:
        val = row.get(c)
        key += [val is None, val if val is not None else 0]
    return tuple(key)


def video_ranks(video_id: np.ndarray, videos: list[str]) -> np.ndarray:
    """Position in ``videos`` of each image's video (int64 per image)."""
    rank_of = {v: i for i, v in enumerate(videos)}
    return np.fromiter((rank_of[v] for v in video_id.tolist()), dtype=np.int64, count=len(video_id))


def embeddings_from_table(table: pa.Table, where: str) -> EmbeddingSet:
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} (have {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise DataError(f"{where}: no embeddings")
    for c in ("image_id", "video_id", "tracklet_id", "embedding"):
        nulls = table.column(c).null_count
        if nulls:
            bad = pc.indices_nonzero(pc.is_null(table.column(c))).to_pylist()[0]
            raise DataError(f"{where}: column {c} has {nulls} null value(s), first at row {bad}")
    emb = table.column("embedding").combine_chunks()
    if pa.types.is_fixed_size_list(emb.type):
        dim = emb.type.list_size
        flat = emb.flatten()
    else:
        lens = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
        dim = int(lens[0])
        bad = np.flatnonzero(lens != dim)
        if len(bad):
            raise DataError(
                f"{where}: embedding length {int(lens[bad[0]])} at row {int(bad[0])} "
                f"(image_id {table.column('image_id')[int(bad[0])].as_py()}) differs from {dim}"
            )
        flat = pc.list_flatten(emb)
    x = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise DataError(
            f"{where}: non-finite embedding at row {row} (image_id {table.column('image_id')[row].as_py()})"
        )
    norms = np.linalg.norm(x, axis=1)
    if (norms < 1e-6).any():
        row = int(np.flatnonzero(norms < 1e-6)[0])
        raise DataError(f"{where}: zero embedding at row {row} (image_id {table.column('image_id')[row].as_py()})")
    x /= norms[:, None]

    video = np.asarray(table.column("video_id").cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    image_id = np.asarray(table.column("image_id").cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    if len(np.unique(image_id)) != len(image_id):
        u, c = np.unique(image_id, return_counts=True)
        raise DataError(f"{where}: image_id {u[c > 1][0]!r} appears {int(c[c > 1][0])} times")
    trk = table.column("tracklet_id").combine_chunks()
    trk_str = np.asarray(trk.cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)

    first: dict[str, int] = {}
    for i, v in enumerate(video):
        first.setdefault(v, i)
    present = [c for c in ORDER_COLUMNS if c in table.column_names]
    vals = {c: table.column(c).take(pa.array(list(first.values()))).to_pylist() for c in present}
    rows = {v: {c: vals[c][k] for c in present} for k, v in enumerate(first)}
    keyed = sorted(first, key=lambda v: (*order_key(rows[v]), v))
    video_rank = video_ranks(video, keyed)
    order = np.argsort(video_rank, kind="stable")
    frame = None
    if "frame_index" in table.column_names and table.column("frame_index").null_count == 0:
        frame = table.column("frame_index").to_numpy(zero_copy_only=False).astype(np.int64)[order]
    return EmbeddingSet(
        image_id=image_id[order],
        video_id=video[order],
        tracklet_id=trk.take(pa.array(order)),
        tracklet_key=np.char.add(np.char.add(video[order], "\x1f"), trk_str[order]),
        x=x[order],
        videos=keyed,
        video_rank=video_rank[order],
        frame=frame,
    )


def load_embeddings(embed_out: StageOutput) -> EmbeddingSet:
    table = embed_out.read()
    return embeddings_from_table(table, embed_out.uri)


def load_ground_truth(uri: str, image_id: np.ndarray, storage: Storage) -> tuple[np.ndarray, np.ndarray]:
    """(row positions in ``image_id`` that have a label, their true identity labels) from a Parquet file/folder.

    The file needs ``image_id`` and ``identity_id``; images absent from it are left out of the quality table.
    """
    t = read_table(uri, storage)
    for c in ("image_id", "identity_id"):
        if c not in t.column_names:
            raise DataError(f"{uri}: ground truth needs columns image_id, identity_id (missing {c})")
    gid = np.asarray(t.column("image_id").cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    glab = np.asarray(t.column("identity_id").cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    lut = dict(zip(gid.tolist(), glab.tolist()))
    rows = np.array([i for i, v in enumerate(image_id.tolist()) if v in lut], dtype=np.int64)
    if len(rows) == 0:
        raise DataError(f"{uri}: no image_id of the ground truth matches the embeddings")
    labels = np.unique(np.array([lut[image_id[i]] for i in rows]), return_inverse=True)[1]
    return rows, labels.astype(np.int64)

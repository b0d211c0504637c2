"""One ingest part in, one embedding part out: decode the crops, embed them, keep the row keys.

No Ray here: the actor pool in ``cion_dist.embed.pool`` calls ``embed_part`` once per ingest file, and tests call
it directly. Rows are read in record batches, so a large part never sits decoded in memory all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist.embed.embedders import Embedder
from cion_dist.errors import DataError
from cion_dist.images import decode_image
from cion_dist.storage.fs import Storage

KEY_COLUMNS = ["image_id", "tracklet_id", "video_id", "frame_index"]
READ_COLUMNS = KEY_COLUMNS + ["jpeg"]
DIM_KEY = b"cion.embedding_dim"
BACKBONE_KEY = b"cion.backbone"


@dataclass
class PartResult:
    table: pa.Table  # image_id, tracklet_id, video_id, frame_index, embedding
    bad: pa.Table  # image_id, reason: crops skipped under on_bad_image="skip"


def embedding_array(features: np.ndarray, dtype: str = "float32") -> pa.ListArray:
    """[n, d] -> Arrow list<float32> (or list<float16>: half the bytes on disk and in transit, ample for unit
    vectors compared by cosine) with n entries of d values (zero-copy offsets)."""
    np_type, pa_type = (np.float16, pa.float16()) if dtype == "float16" else (np.float32, pa.float32())
    features = np.ascontiguousarray(features, dtype=np_type)
    n, d = features.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32) if n else np.zeros(1, np.int32), pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(features.reshape(-1), pa_type))


def embed_batches(
    batches: Iterable[pa.RecordBatch],
    embedder: Embedder,
    source: str,
    on_bad_image: str = "fail",
    dtype: str = "float32",
    decode_pool=None,
) -> PartResult:
    """Embed every row of ``batches`` (ingest columns); undecodable crops fail or are set aside by policy.

    ``decode_pool`` (a ``concurrent.futures`` executor) decodes a batch's JPEGs in parallel threads (OpenCV
    releases the GIL), so decoding the next batch is not serialised behind one core.
    """
    keys: list[pa.Table] = []
    feats: list[np.ndarray] = []
    bad_ids: list[str] = []
    bad_reasons: list[str] = []
    key_schema = None
    for batch in batches:
        missing = [c for c in READ_COLUMNS if c not in batch.schema.names]
        if missing:
            raise DataError(f"{source}: ingest rows lack column(s) {', '.join(missing)}")
        key_schema = key_schema or batch.select(KEY_COLUMNS).schema
        ids = batch.column("image_id").to_pylist()
        images, keep = [], []
        blobs = batch.column("jpeg").to_pylist()
        decoded = decode_pool.map(_decode, blobs, ids) if decode_pool is not None else map(_decode, blobs, ids)
        for i, (rgb, reason) in enumerate(decoded):
            if reason is not None:
                if on_bad_image == "fail":
                    raise DataError(f"{source}: {reason} (set embed.on_bad_image=skip to skip such crops)")
                bad_ids.append(str(ids[i]))
                bad_reasons.append(reason)
                continue
            images.append(rgb)
            keep.append(i)
        if not keep:
            continue
        tbl = pa.Table.from_batches([batch.select(KEY_COLUMNS)])
        keys.append(tbl if len(keep) == batch.num_rows else tbl.take(pa.array(keep, pa.int64())))
        feats.append(embedder(images))
    dim = int(embedder.dim)
    meta = {DIM_KEY: str(dim).encode(), BACKBONE_KEY: str(embedder.name).encode()}
    if keys:
        key_table = pa.concat_tables(keys)
        features = np.concatenate(feats, axis=0)
    else:
        key_table = None
        features = np.zeros((0, dim), dtype=np.float32)
    if features.shape[1] != dim:
        raise DataError(f"{source}: embedder {embedder.name} returned width {features.shape[1]}, expected {dim}")
    if key_table is None:
        empty = key_schema or pa.schema([(c, pa.string()) for c in KEY_COLUMNS[:3]] + [("frame_index", pa.int64())])
        table = empty.empty_table()
    else:
        table = key_table
    table = table.append_column("embedding", embedding_array(features, dtype)).replace_schema_metadata(meta)
    bad = pa.table({"image_id": pa.array(bad_ids, pa.string()), "reason": pa.array(bad_reasons, pa.string())})
    return PartResult(table=table, bad=bad)


def _decode(blob, image_id) -> tuple:
    """(RGB crop, None), or (None, why it is unusable) for a crop the policy may skip."""
    try:
        rgb = decode_image(blob, f"image_id {image_id!r}")
    except DataError as e:
        return None, str(e)
    if min(rgb.shape[:2]) < 2:
        return None, f"image_id {image_id!r}: crop of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small to embed"
    return rgb, None


def read_group_batches(
    uris: list[str], storage: Storage, rows_per_batch: int, read_pool=None, ahead: int = 0
) -> Iterable[pa.RecordBatch]:
    """Record batches of exactly ``rows_per_batch`` rows (the last may be short) over several ingest parts in turn,
    so a model call gets a full batch however small each part is.

    With ``read_pool`` (an executor) and ``ahead`` > 0, up to ``ahead`` whole parts are read concurrently ahead of
    the one being consumed, still yielded in order: on an object store a part of ~20 crops costs a few round
    trips, and read one after another they, not the model, bound the actor. Memory: ``ahead`` parts.
    """
    if read_pool is None or ahead <= 0:
        parts = (read_batches(u, storage, rows_per_batch) for u in uris)
    else:
        parts = _read_ahead(uris, storage, read_pool, ahead)
    pending: list[pa.RecordBatch] = []
    n = 0
    for batches in parts:
        for b in batches:
            pending.append(b.replace_schema_metadata(None))
            n += b.num_rows
            while n >= rows_per_batch:
                t = pa.Table.from_batches(pending).combine_chunks()
                yield t.slice(0, rows_per_batch).to_batches()[0]
                rest = t.slice(rows_per_batch)
                pending = rest.to_batches() if rest.num_rows else []
                n = rest.num_rows
    if n:
        t = pa.Table.from_batches(pending).combine_chunks()
        yield from t.to_batches()


def _read_ahead(uris: list[str], storage: Storage, pool, ahead: int) -> Iterable[list[pa.RecordBatch]]:
    """Each part's record batches, in order, with up to ``ahead`` reads in flight."""
    from collections import deque

    def whole(uri: str) -> list[pa.RecordBatch]:
        return list(read_batches(uri, storage, 1 << 16))

    queue: deque = deque()
    try:
        for uri in uris:
            queue.append(pool.submit(whole, uri))
            if len(queue) > ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
    finally:  # a failed part stops the unit: drop the reads still queued
        for f in queue:
            f.cancel()


def read_batches(uri: str, storage: Storage, rows_per_batch: int) -> Iterable[pa.RecordBatch]:
    """Record batches of the ingest columns the embed stage needs, read straight from a local or s3:// file."""
    fs, path = storage.pyarrow(uri)
    try:
        f = fs.open_input_file(path)
        pf = pq.ParquetFile(f)
    except Exception as e:  # noqa: BLE001 - name the file whatever pyarrow raised
        raise DataError(f"cannot read ingest Parquet file {uri}: {e}") from e
    missing = [c for c in READ_COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise DataError(f"{uri}: ingest rows lack column(s) {', '.join(missing)}")
    with f:
        yield from pf.iter_batches(batch_size=rows_per_batch, columns=READ_COLUMNS)


def embeddings_matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column of an embed output as float32 [n, d]."""
    col = table.column("embedding").combine_chunks()
    n = len(col)
    if n == 0:
        return np.zeros((0, int(table.schema.metadata.get(DIM_KEY, b"0")) if table.schema.metadata else 0), np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1)

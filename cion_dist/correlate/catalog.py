"""What the correlate driver knows of the embeddings without holding them: videos, their order, where they lie.

The driver reads only the ``video_id`` and ``tracklet_id`` columns of each embed part (and ``source`` /
``start_time`` where a part carries them) and keeps, per video, the part files holding its rows, its image and
tracklet counts, and its place in the corpus order. Vectors are read by the Ray tasks that need them, one group of
videos at a time (``load_videos``), so the driver's memory grows with the number of videos and with a few bytes
per image, never with the embedding width.

Corpus order (the order level 3's sliding windows follow) is source, then start time, then video id. It comes from
the manifest reached through the stage lineage (embed -> ingest -> manifest, each recorded in ``_SUCCESS.json``),
else from ``source`` / ``start_time`` columns of the embed table, else from the video id alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cion_dist.correlate.inputs import ORDER_COLUMNS, REQUIRED, EmbeddingSet, embeddings_from_table
from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, read_table

log = logging.getLogger(__name__)


@dataclass
class VideoCatalog:
    """Videos in corpus order with the part files holding each; images of a video are numbered in part order,
    then row order, and the corpus numbers images video after video (``bounds``)."""

    videos: list[str]
    parts: list[list[str]]  # per video, part URIs (sorted) that hold its rows
    images: np.ndarray  # images per video
    tracklets: np.ndarray  # distinct tracklets per video
    order_source: str  # where the video order came from: manifest, columns or video_id

    @property
    def bounds(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.images)]).astype(np.int64)

    @property
    def n_images(self) -> int:
        return int(self.images.sum())

    def video_rank(self) -> np.ndarray:
        """The video position of every image of the corpus (an int32 per image)."""
        return np.repeat(np.arange(len(self.videos), dtype=np.int32), self.images)

    def items(self, ranks: Iterable[int]) -> list[tuple[int, str, list[str]]]:
        """(rank, video id, parts) for the given video ranks: what a task needs to load those videos."""
        return [(int(v), self.videos[v], self.parts[v]) for v in ranks]


def order_key(row: dict) -> tuple:
    """Sort key of one video: source, then start time (missing values last), compared as values, not text."""
    key: list = []
    for c in ORDER_COLUMNS:
        val = row.get(c)
        key += [val is None, val if val is not None else 0]
    return tuple(key)


def manifest_order(embed_out: StageOutput) -> Optional[dict[str, tuple]]:
    """Order keys per video from the manifest the embeddings descend from, or None where lineage does not lead
    to a manifest with ``source`` or ``start_time``."""
    st = embed_out.storage
    try:
        ingest = next(i for i in embed_out.success().get("inputs", []) if i.get("stage") == "ingest")
        rec = StageOutput(ingest["uri"], st).success()
        manifest = next(i for i in rec.get("inputs", []) if i.get("stage") == "manifest")
        uri = manifest["uri"]
    except (StopIteration, KeyError, FileNotFoundError, DataError, OSError):
        return None
    try:
        table = read_table(uri, st)
    except (DataError, FileNotFoundError, OSError) as e:
        log.warning("correlate: manifest %s named by the ingest run is unreadable (%s); videos keep id order", uri, e)
        return None
    cols = [c for c in ORDER_COLUMNS if c in table.column_names]
    if not cols or "video_id" not in table.column_names:
        return None
    rows = table.select(["video_id", *cols]).to_pylist()
    return {str(r["video_id"]): order_key(r) for r in rows}


def _part_schema(uri: str, storage: Storage) -> pa.Schema:
    fs, path = storage.pyarrow(uri)
    try:
        with fs.open_input_file(path) as f:
            return pq.read_schema(f)
    except Exception as e:  # noqa: BLE001 - name the file whatever pyarrow raised
        raise DataError(f"cannot read Parquet file {uri}: {e}") from e


def scan_embeddings(embed_out: StageOutput) -> VideoCatalog:
    """Build the catalogue from the parts' key columns; checks the columns correlate needs exist in every part."""
    st = embed_out.storage
    files = embed_out.files()
    if not files:
        raise DataError(f"no Parquet files in {embed_out.uri}")
    parts: dict[str, list[str]] = {}
    images: dict[str, int] = {}
    tracklets: dict[str, int] = {}
    column_keys: dict[str, tuple] = {}
    for uri in files:
        schema = _part_schema(uri, st)
        missing = [c for c in REQUIRED if c not in schema.names]
        if missing:
            raise DataError(f"{uri}: missing column(s) {', '.join(missing)} (have {', '.join(schema.names)})")
        order_cols = [c for c in ORDER_COLUMNS if c in schema.names]
        t = read_table(uri, st, columns=["video_id", "tracklet_id", *order_cols])
        if t.num_rows == 0:
            continue
        for c in ("video_id", "tracklet_id"):
            if t.column(c).null_count:
                bad = pc.indices_nonzero(pc.is_null(t.column(c))).to_pylist()[0]
                raise DataError(f"{uri}: column {c} has {t.column(c).null_count} null value(s), first at row {bad}")
        t = t.set_column(0, "video_id", t.column("video_id").cast(pa.string()))
        t = t.set_column(1, "tracklet_id", t.column("tracklet_id").cast(pa.string()))
        g = t.group_by("video_id").aggregate([("tracklet_id", "count"), ("tracklet_id", "count_distinct")])
        for v, n, k in zip(g.column("video_id").to_pylist(), g.column("tracklet_id_count").to_pylist(),
                           g.column("tracklet_id_count_distinct").to_pylist()):
            parts.setdefault(v, []).append(uri)
            images[v] = images.get(v, 0) + int(n)
            tracklets[v] = tracklets.get(v, 0) + int(k)  # tracklet ids do not span parts of one video in practice
        if order_cols:
            first = t.group_by("video_id", use_threads=False).aggregate([(c, "first") for c in order_cols])
            for row in first.to_pylist():
                column_keys.setdefault(row["video_id"], order_key({c: row.get(f"{c}_first") for c in order_cols}))
    if not images:
        raise DataError(f"{embed_out.uri}: no embeddings")

    keys = manifest_order(embed_out)
    source = "manifest"
    if keys is None or not set(images) <= set(keys):
        keys, source = (column_keys, "columns") if column_keys else ({}, "video_id")
    videos = sorted(images, key=lambda v: (*keys.get(v, ()), v))
    return VideoCatalog(
        videos=videos,
        parts=[parts[v] for v in videos],
        images=np.array([images[v] for v in videos], dtype=np.int64),
        tracklets=np.array([tracklets[v] for v in videos], dtype=np.int64),
        order_source=source,
    )


def load_videos(items: list[tuple[int, str, list[str]]], storage: Storage) -> Iterator[tuple[int, str, EmbeddingSet]]:
    """(rank, video id, that video's images) for each item, reading every part file once.

    Each part is checked as a whole (so an error names the row of the file), then cut into its videos; a video
    spread over several parts is joined in part order. Used inside Ray tasks.
    """
    cache: dict[str, EmbeddingSet] = {}
    need: dict[str, int] = {}
    for _, _, uris in items:
        for u in uris:
            need[u] = need.get(u, 0) + 1
    for rank, video, uris in items:
        pieces = []
        for u in uris:
            if u not in cache:
                cache[u] = embeddings_from_table(read_table(u, storage), u)
            data = cache[u]
            pieces.append(select(data, np.flatnonzero(data.video_id == video)))
            need[u] -= 1
            if need[u] == 0:
                del cache[u]
        yield rank, video, pieces[0] if len(pieces) == 1 else concat(pieces)


def load_all(items: list[tuple[int, str, list[str]]], storage: Storage) -> EmbeddingSet:
    """The images of every given video as one set, in the order of ``items``."""
    return concat([data for _, _, data in load_videos(items, storage)])


def select(data: EmbeddingSet, rows: np.ndarray) -> EmbeddingSet:
    """The rows ``rows`` of ``data`` (one video's, in their order)."""
    return EmbeddingSet(
        image_id=data.image_id[rows], video_id=data.video_id[rows], tracklet_id=data.tracklet_id.take(pa.array(rows)),
        tracklet_key=data.tracklet_key[rows], x=data.x[rows], videos=list(dict.fromkeys(data.video_id[rows].tolist())),
        video_rank=np.zeros(len(rows), dtype=np.int64), frame=None if data.frame is None else data.frame[rows],
    )


def concat(pieces: list[EmbeddingSet]) -> EmbeddingSet:
    frames = [p.frame for p in pieces]
    return EmbeddingSet(
        image_id=np.concatenate([p.image_id for p in pieces]),
        video_id=np.concatenate([p.video_id for p in pieces]),
        tracklet_id=pa.concat_arrays([p.tracklet_id for p in pieces]),
        tracklet_key=np.concatenate([p.tracklet_key for p in pieces]),
        x=np.concatenate([p.x for p in pieces]),
        videos=list(dict.fromkeys(v for p in pieces for v in p.videos)),
        video_rank=np.zeros(sum(len(p) for p in pieces), dtype=np.int64),
        frame=None if any(f is None for f in frames) else np.concatenate(frames),
    )


def load_keys(video: str, uris: list[str], storage: Storage) -> pa.Table:
    """``image_id, tracklet_id, video_id`` of one video's rows, in the order ``load_videos`` numbers them."""
    tables = []
    for u in uris:
        t = read_table(u, storage, columns=["image_id", "tracklet_id", "video_id"])
        tables.append(t.filter(pc.equal(t.column("video_id").cast(pa.string()), video)))
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

"""What the correlate driver knows of the embeddings without holding them: videos, their order, where they lie.

Ray tasks read only the ``video_id`` and ``tracklet_id`` columns of each embed part (and ``source`` /
``start_time`` where a part carries them) and report per-video counts; the driver keeps, in numpy arrays, per
video the part files holding its rows, its image and tracklet counts, and its place in the corpus order. Vectors
are read by the Ray tasks that need them, one group of
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

from cion_dist.correlate.inputs import ORDER_COLUMNS, REQUIRED, EmbeddingSet, embeddings_from_table, video_ranks
from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, read_table

log = logging.getLogger(__name__)


@dataclass
class VideoCatalog:
    """Videos in corpus order with the part files holding each; images of a video are numbered in part order,
    then row order, and the corpus numbers images video after video (``bounds``).

    Compact: numpy arrays, not per-video Python objects. Per video about 8 (CSR pointer) + 4 (part index) + 16
    (image and tracklet counts) bytes plus its id string; per part file its URI.
    """

    videos: np.ndarray  # video ids (object array of str), corpus order
    part_uris: np.ndarray  # distinct part URIs (object array of str), sorted
    part_ptr: np.ndarray  # int64 (videos + 1): video v's parts are part_idx[part_ptr[v]:part_ptr[v + 1]]
    part_idx: np.ndarray  # int32 indices into part_uris, ascending per video
    images: np.ndarray  # images per video
    tracklets: np.ndarray  # distinct tracklets per video
    order_source: str  # where the video order came from: manifest, columns or video_id

    @property
    def bounds(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.images)]).astype(np.int64)

    @property
    def n_images(self) -> int:
        return int(self.images.sum())

    def parts(self, v: int) -> list[str]:
        return self.part_uris[self.part_idx[self.part_ptr[v] : self.part_ptr[v + 1]]].tolist()

    def video_rank(self) -> np.ndarray:
        """The video position of every image of the corpus (an int32 per image)."""
        return np.repeat(np.arange(len(self.videos), dtype=np.int32), self.images)

    def items(self, ranks: Iterable[int]) -> list[tuple[int, str, list[str]]]:
        """(rank, video id, parts) for the given video ranks: what a task needs to load those videos."""
        return [(int(v), str(self.videos[v]), self.parts(int(v))) for v in ranks]


def _manifest_uri(embed_out: StageOutput) -> Optional[str]:
    """The manifest the embeddings descend from (embed -> ingest -> manifest), or None."""
    st = embed_out.storage
    try:
        ingest = next(i for i in embed_out.success().get("inputs", []) if i.get("stage") == "ingest")
        rec = StageOutput(ingest["uri"], st).success()
        return next(i for i in rec.get("inputs", []) if i.get("stage") == "manifest")["uri"]
    except (StopIteration, KeyError, FileNotFoundError, DataError, OSError):
        return None


def manifest_order(embed_out: StageOutput) -> Optional[pa.Table]:
    """``video_id`` and order columns from the manifest the embeddings descend from, or None where lineage does not
    lead to a manifest with ``source`` or ``start_time``."""
    uri = _manifest_uri(embed_out)
    if uri is None:
        return None
    try:
        try:
            table = read_table(uri, embed_out.storage, columns=["video_id", *ORDER_COLUMNS])
        except DataError:  # an order column is absent: read what there is
            table = read_table(uri, embed_out.storage)
    except (DataError, FileNotFoundError, OSError) as e:
        log.warning("correlate: manifest %s named by the ingest run is unreadable (%s); videos keep id order", uri, e)
        return None
    cols = [c for c in ORDER_COLUMNS if c in table.column_names]
    if not cols or "video_id" not in table.column_names:
        return None
    table = table.select(["video_id", *cols])
    return table.set_column(0, "video_id", table.column("video_id").cast(pa.string()))


def _part_schema(uri: str, storage: Storage) -> pa.Schema:
    fs, path = storage.pyarrow(uri)
    try:
        with fs.open_input_file(path) as f:
            return pq.read_schema(f)
    except Exception as e:  # noqa: BLE001 - name the file whatever pyarrow raised
        raise DataError(f"cannot read Parquet file {uri}: {e}") from e


def scan_part(uri: str, part: int, storage: Storage) -> Optional[pa.Table]:
    """One row per video of one part: ``video_id, part, images, tracklets`` and the first ``source`` /
    ``start_time`` where the part has them. Checks the columns correlate needs. Reads only the key columns."""
    st = storage
    fs, path = st.pyarrow(uri)
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            missing = [c for c in REQUIRED if c not in names]
            if missing:
                raise DataError(f"{uri}: missing column(s) {', '.join(missing)} (have {', '.join(names)})")
            order_cols = [c for c in ORDER_COLUMNS if c in names]
            t = pf.read(columns=["video_id", "tracklet_id", *order_cols])
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - name the file whatever pyarrow raised
        raise DataError(f"cannot read Parquet file {uri}: {e}") from e
    if t.num_rows == 0:
        return None
    for c in ("video_id", "tracklet_id"):
        if t.column(c).null_count:
            bad = pc.indices_nonzero(pc.is_null(t.column(c))).to_pylist()[0]
            raise DataError(f"{uri}: column {c} has {t.column(c).null_count} null value(s), first at row {bad}")
    t = t.set_column(0, "video_id", t.column("video_id").cast(pa.string()))
    t = t.set_column(1, "tracklet_id", t.column("tracklet_id").cast(pa.string()))
    aggs = [("tracklet_id", "count"), ("tracklet_id", "count_distinct")] + [(c, "first") for c in order_cols]
    g = t.group_by("video_id", use_threads=False).aggregate(aggs)
    cols = {
        "video_id": g.column("video_id"),
        "part": pa.array(np.full(g.num_rows, part, np.int32)),
        "images": g.column("tracklet_id_count").cast(pa.int64()),
        "tracklets": g.column("tracklet_id_count_distinct").cast(pa.int64()),
    }
    for c in order_cols:
        cols[c] = g.column(f"{c}_first")
    return pa.table(cols)


def _scan_parts(chunk: list[tuple[int, str]], storage: Storage) -> Optional[pa.Table]:
    tables = [t for t in (scan_part(u, i, storage) for i, u in chunk) if t is not None]
    return pa.concat_tables(tables, promote_options="default") if tables else None


_scan_parts_task = None


def _scan_all(files: list[str], storage: Storage, parts_per_task: int, in_flight: int) -> list[pa.Table]:
    """Per-part summaries, in Ray tasks (bounded in flight) when Ray is up, else in this process."""
    chunks = [list(enumerate(files))[i : i + parts_per_task] for i in range(0, len(files), parts_per_task)]
    import ray

    if not ray.is_initialized():
        return [t for t in (_scan_parts(c, storage) for c in chunks) if t is not None]
    global _scan_parts_task
    if _scan_parts_task is None:
        _scan_parts_task = ray.remote(_scan_parts)
    from cion_dist.correlate.tasks import bounded

    return [t for _, t in bounded((_scan_parts_task.remote(c, storage) for c in chunks), in_flight) if t is not None]


def scan_embeddings(embed_out: StageOutput, parts_per_task: int = 64, in_flight: int = 16) -> VideoCatalog:
    """Build the catalogue from the parts' key columns (one listing, then Ray tasks that read the key columns and
    report per-video counts); checks the columns correlate needs exist in every part."""
    from cion_dist.correlate.tasks import list_files

    st = embed_out.storage
    files = list_files(embed_out.uri, st)
    if not files:
        raise DataError(f"no Parquet files in {embed_out.uri}")
    tables = _scan_all(files, st, parts_per_task, in_flight)
    if not tables:
        raise DataError(f"{embed_out.uri}: no embeddings")
    per_part = pa.concat_tables(tables, promote_options="default")
    del tables
    per_part = per_part.take(pc.sort_indices(per_part, sort_keys=[("video_id", "ascending"), ("part", "ascending")]))
    vid = per_part.column("video_id").combine_chunks()
    n = len(vid)
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = pc.not_equal(vid.slice(1), vid.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(first)
    ptr = np.append(starts, n).astype(np.int64)
    # tracklet ids do not span parts of one video in practice: distinct counts add up per part
    images = np.add.reduceat(per_part.column("images").to_numpy(), starts) if n else np.zeros(0, np.int64)
    tracklets = np.add.reduceat(per_part.column("tracklets").to_numpy(), starts) if n else np.zeros(0, np.int64)
    videos = per_part.select(["video_id", *[c for c in ORDER_COLUMNS if c in per_part.column_names]]).take(
        pa.array(starts)
    )  # each video's order values from its first part
    videos = videos.append_column("row", pa.array(np.arange(len(starts), dtype=np.int64)))

    source = "video_id"
    ordered = None
    manifest = manifest_order(embed_out)
    if manifest is not None:
        joined = videos.select(["video_id", "row"]).join(manifest, "video_id", join_type="inner")
        if joined.num_rows >= len(starts) and len(pc.unique(joined.column("video_id"))) == len(starts):
            ordered, source = joined, "manifest"
    if ordered is None:
        has_cols = [c for c in ORDER_COLUMNS if c in videos.column_names]
        ordered, source = (videos, "columns") if has_cols else (videos.select(["video_id", "row"]), "video_id")
    keys = [(c, "ascending", "at_end") for c in ORDER_COLUMNS if c in ordered.column_names] + [
        ("video_id", "ascending", "at_end")
    ]
    ordered = ordered.take(pc.sort_indices(ordered, sort_keys=keys))
    if source == "manifest":  # a video listed twice in the manifest keeps its first place
        rows = ordered.column("row").to_numpy()
        _, keep = np.unique(rows, return_index=True)
        ordered = ordered.take(pa.array(np.sort(keep)))
    rank_rows = ordered.column("row").to_numpy()
    counts = np.diff(ptr)[rank_rows]
    new_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.repeat(ptr[rank_rows] - new_ptr[:-1], counts) + np.arange(new_ptr[-1])  # per-part rows, new order
    return VideoCatalog(
        videos=np.asarray(ordered.column("video_id").to_pylist(), dtype=object),
        part_uris=np.asarray(files, dtype=object),
        part_ptr=new_ptr,
        part_idx=per_part.column("part").to_numpy()[idx].astype(np.int32),
        images=images[rank_rows].astype(np.int64),
        tracklets=tracklets[rank_rows].astype(np.int64),
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
    videos = list(dict.fromkeys(data.video_id[rows].tolist()))
    return EmbeddingSet(
        image_id=data.image_id[rows],
        video_id=data.video_id[rows],
        tracklet_id=data.tracklet_id.take(pa.array(rows)),
        tracklet_key=data.tracklet_key[rows],
        x=data.x[rows],
        videos=videos,
        video_rank=video_ranks(data.video_id[rows], videos),
        frame=None if data.frame is None else data.frame[rows],
    )


def concat(pieces: list[EmbeddingSet]) -> EmbeddingSet:
    frames = [p.frame for p in pieces]
    videos = list(dict.fromkeys(v for p in pieces for v in p.videos))
    video_id = np.concatenate([p.video_id for p in pieces])
    return EmbeddingSet(
        image_id=np.concatenate([p.image_id for p in pieces]),
        video_id=video_id,
        tracklet_id=pa.concat_arrays([p.tracklet_id for p in pieces]),
        tracklet_key=np.concatenate([p.tracklet_key for p in pieces]),
        x=np.concatenate([p.x for p in pieces]),
        videos=videos,
        video_rank=video_ranks(video_id, videos),
        frame=None if any(f is None for f in frames) else np.concatenate(frames),
    )


def load_keys(video: str, uris: list[str], storage: Storage) -> pa.Table:
    """``image_id, tracklet_id, video_id`` of one video's rows, in the order ``load_videos`` numbers them."""
    tables = []
    for u in uris:
        t = read_table(u, storage, columns=["image_id", "tracklet_id", "video_id"])
        tables.append(t.filter(pc.equal(t.column("video_id").cast(pa.string()), video)))
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

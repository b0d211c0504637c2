"""Reading and checking the video manifest (``video_id, uri, source, start_time``), with a content digest."""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist.errors import DataError
from cion_dist.ingest.schema import MANIFEST_REQUIRED
from cion_dist.storage.fs import Storage, is_s3, join, read_bytes


def _manifest_files(uri: str, storage: Storage) -> list[str]:
    fs, path = storage.fs(uri)
    if not fs.exists(path):
        raise DataError(f"manifest not found: {uri} (run the synth stage or set ingest.manifest)")
    if fs.isdir(path):
        found = sorted(p for p in fs.find(path) if p.endswith(".parquet") and not p.endswith(".errors.parquet"))
        if not found:
            raise DataError(f"manifest folder {uri} holds no Parquet files")
        return [("s3://" + p) if is_s3(uri) else p for p in found]
    return [uri]


def resolve_clip_uri(clip_uri: str, manifest_uri: str) -> str:
    """Clip URIs may be absolute (path or s3://) or relative to the manifest's folder."""
    if is_s3(clip_uri) or posixpath.isabs(clip_uri) or "://" in clip_uri:
        return clip_uri
    base = manifest_uri.rstrip("/").rsplit("/", 1)[0] if not manifest_uri.endswith("/") else manifest_uri
    return join(base, clip_uri)


def check_manifest_types(table: pa.Table, uri: str) -> None:
    """``video_id``, ``uri`` and ``source`` are strings; ``start_time`` (which orders videos) is a number or a
    timestamp: a string there would sort "10" before "9", an int id would never match the parts' names."""

    def bad(col: str, want: str) -> DataError:
        return DataError(f"manifest {uri}: column {col!r} must be {want}, got {table.schema.field(col).type}")

    for col in ("video_id", "uri", "source"):
        if col in table.column_names:
            t = table.schema.field(col).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
                raise bad(col, "a string")
    if "start_time" in table.column_names:
        t = table.schema.field("start_time").type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_timestamp(t) or pa.types.is_null(t)):
            raise bad("start_time", "a number (seconds) or a timestamp")


def load_manifest(uri: str, storage: Storage | None = None) -> tuple[pa.Table, str]:
    """(manifest table with resolved clip URIs, sha256 over the manifest file bytes). Bad manifests raise
    ``DataError`` naming the file and the offending column or row."""
    st = storage or Storage()
    h = hashlib.sha256()
    tables = []
    for f in _manifest_files(uri, st):
        data = read_bytes(f, st)
        h.update(hashlib.sha256(data).digest())
        try:
            tables.append(pq.read_table(io.BytesIO(data)))
        except Exception as e:  # noqa: BLE001 - name the file whatever pyarrow raised
            raise DataError(f"manifest {f} is not a readable Parquet file ({e})") from None
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    for col in MANIFEST_REQUIRED:
        if col not in table.column_names:
            raise DataError(f"manifest {uri} lacks column {col!r} (has {table.column_names})")
    check_manifest_types(table, uri)
    if table.num_rows == 0:
        raise DataError(f"manifest {uri} has no rows: nothing to ingest")
    ids = table.column("video_id").to_pylist()
    uris = table.column("uri").to_pylist()
    seen: set = set()
    for i, (v, u) in enumerate(zip(ids, uris)):
        if not v or not u:
            raise DataError(f"manifest {uri} row {i}: empty video_id or uri")
        if v in seen:
            raise DataError(f"manifest {uri} row {i}: duplicate video_id {v!r}")
        seen.add(v)
    resolved = pa.array([resolve_clip_uri(str(u), uri) for u in uris], pa.string())
    table = table.set_column(table.column_names.index("uri"), "uri", resolved)
    return table, h.hexdigest()


@dataclass(frozen=True)
class ManifestInfo:
    uri: str
    files: list[str]
    rows: int
    digest: str
    columns: tuple = ()  # the manifest's column names (optional columns such as start_s / end_s)


def check_manifest(uri: str, storage: Storage | None = None) -> ManifestInfo:
    """What the ingest driver needs of a manifest (files, row count, content digest), checked like
    ``load_manifest`` but with Arrow kernels over the two key columns: no Python object per row is made, and
    the table is dropped once checked (the clips are read again by Ray Data, in its tasks)."""
    import pyarrow.compute as pc

    st = storage or Storage()
    h = hashlib.sha256()
    files = _manifest_files(uri, st)
    tables, columns = [], []
    for f in files:
        data = read_bytes(f, st)
        h.update(hashlib.sha256(data).digest())
        try:
            t = pq.read_table(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - name the file whatever pyarrow raised
            raise DataError(f"manifest {f} is not a readable Parquet file ({e})") from None
        del data
        for col in MANIFEST_REQUIRED:
            if col not in t.column_names:
                raise DataError(f"manifest {uri} lacks column {col!r} (has {t.column_names})")
        columns += [c for c in t.column_names if c not in columns]
        tables.append(t.select(["video_id", "uri"]))
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    del tables
    rows = table.num_rows
    for col in ("video_id", "uri"):
        c = table.column(col).cast(pa.string())
        bad = pc.or_(pc.is_null(c), pc.equal(pc.utf8_length(c), 0))
        if pc.any(bad).as_py():
            i = int(pc.index(bad, True).as_py())
            raise DataError(f"manifest {uri} row {i}: empty video_id or uri")
    ids = table.column("video_id").cast(pa.string())
    if pc.count_distinct(ids).as_py() != rows:
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        first = pc.indices_nonzero(pc.equal(ids, dup)).to_pylist()[:2]
        raise DataError(f"manifest {uri} row {first[-1]}: duplicate video_id {dup!r}")
    del table, ids
    return ManifestInfo(uri, files, rows, h.hexdigest(), tuple(columns))

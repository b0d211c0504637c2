"""Reading and checking the video manifest (``video_id, uri, source, start_time``), with a content digest."""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass

import numpy as np
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


def _file_sha256(uri: str, storage: Storage, chunk: int = 8 << 20) -> bytes:
    """sha256 of a file, read as a stream (a manifest of millions of rows is never held whole)."""
    fs, path = storage.pyarrow(uri)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.digest()


def check_manifest(uri: str, storage: Storage | None = None, batch_rows: int = 8192) -> ManifestInfo:
    """What the ingest driver needs of a manifest (files, row count, content digest), checked like
    ``load_manifest`` but streamed: each file is hashed as a stream and read in record batches of its two key
    columns, and duplicates are found among 8-byte keys of the ids (8 bytes a row, twice while sorting); the clips
    are read again by Ray Data, in its tasks."""
    import pyarrow.compute as pc

    from cion_dist.storage.listing import name_hash

    st = storage or Storage()
    h = hashlib.sha256()
    files = _manifest_files(uri, st)
    columns: list[str] = []
    keys: list = []
    rows = 0
    for f in files:
        h.update(_file_sha256(f, st))  # the same digest as load_manifest's
        fs, path = st.pyarrow(f)
        try:
            pf = pq.ParquetFile(fs.open_input_file(path), buffer_size=1 << 20)  # pages streamed, not whole columns
        except Exception as e:  # noqa: BLE001 - name the file whatever pyarrow raised
            raise DataError(f"manifest {f} is not a readable Parquet file ({e})") from None
        names = pf.schema_arrow.names
        for col in MANIFEST_REQUIRED:
            if col not in names:
                raise DataError(f"manifest {uri} lacks column {col!r} (has {names})")
        check_manifest_types(pf.schema_arrow.empty_table(), uri)
        columns += [c for c in names if c not in columns]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["video_id", "uri"], use_threads=False):
            for col in ("video_id", "uri"):
                c = batch.column(col).cast(pa.string())
                bad = pc.or_(pc.is_null(c), pc.equal(pc.utf8_length(c), 0))
                if pc.any(bad).as_py():
                    i = rows + int(pc.index(bad, True).as_py())
                    raise DataError(f"manifest {uri} row {i}: empty video_id or uri")
            keys.append(name_hash(batch.column("video_id").cast(pa.string()).to_pylist()))
            rows += batch.num_rows
    key = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)
    del keys
    twice = key[1:][key[1:] == key[:-1]]
    if len(twice):
        _raise_duplicate(files, st, np.unique(twice), uri, batch_rows)
    return ManifestInfo(uri, files, rows, h.hexdigest(), tuple(columns))


def _raise_duplicate(files: list[str], st: Storage, keys: np.ndarray, uri: str, batch_rows: int) -> None:
    """A second pass over the ids whose keys repeat: the first id seen twice, with the row of its second use."""
    from cion_dist.storage.listing import name_hash

    seen: dict[str, int] = {}
    row = 0
    for f in files:
        fs, path = st.pyarrow(f)
        pf = pq.ParquetFile(fs.open_input_file(path), buffer_size=1 << 20)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["video_id"]):
            ids = batch.column("video_id").cast(pa.string()).to_pylist()
            for j in np.flatnonzero(np.isin(name_hash(ids), keys)):
                if ids[j] in seen:
                    raise DataError(f"manifest {uri} row {row + int(j)}: duplicate video_id {ids[j]!r}")
                seen[ids[j]] = row + int(j)
            row += len(ids)
    # only 64-bit keys collided: the ids are distinct

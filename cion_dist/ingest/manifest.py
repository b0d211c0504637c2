"""Reading and checking the video manifest (``video_id, uri, source, start_time``), with a content digest."""

from __future__ import annotations

import hashlib
import io
import posixpath

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

"""One place that turns a URI into a filesystem.

Local paths and ``s3://`` URIs are handled alike: ``Storage.fs(uri)`` gives an fsspec filesystem and a path,
``Storage.pyarrow(uri)`` a pyarrow filesystem for ``pyarrow.parquet`` and Ray Data's ``filesystem=`` argument.
Endpoint, region and credentials come from the job's ``storage`` section, else from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``). Secrets stay in
``SecretStr`` fields and are never part of ``repr`` or error messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import fsspec
import pyarrow.fs as pafs

from cion_dist.config_base import StorageConfig
from cion_dist.errors import DataError


def is_s3(uri: str) -> bool:
    return str(uri).startswith(("s3://", "s3a://"))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *[str(p).strip("/") for p in parts])
    return os.path.join(uri, *[str(p) for p in parts])


def _strip_scheme(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


@dataclass
class Storage:
    """Filesystem factory bound to one storage config. Picklable, so Ray tasks and actors can carry it."""

    config: StorageConfig = field(default_factory=StorageConfig)

    def _s3_kwargs(self) -> dict[str, Any]:
        c = self.config
        # no listing cache: s3fs keeps every listed key (~1.8 KB each) for the life of the process otherwise
        kw: dict[str, Any] = {"anon": c.anon, "use_listings_cache": False}
        endpoint = c.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kw["endpoint_url"] = endpoint
        if c.access_key_id is not None:
            kw["key"] = c.access_key_id.get_secret_value()
        if c.secret_access_key is not None:
            kw["secret"] = c.secret_access_key.get_secret_value()
        # the User-Agent says who asks (a stage driver or a Ray worker), so server logs can count each side
        kw["config_kwargs"] = {"user_agent_extra": f"cion/{process_role()}"}
        if c.region:
            # s3fs/botocore read the region from the environment; client_kwargs region breaks moto bucket creation.
            kw["config_kwargs"]["region_name"] = c.region
        return kw

    def fs(self, uri: str) -> Tuple[fsspec.AbstractFileSystem, str]:
        """(fsspec filesystem, path inside it) for a URI."""
        uri = str(uri)
        if is_s3(uri):
            import s3fs

            return s3fs.S3FileSystem(**self._s3_kwargs()), _strip_scheme(uri)
        if "://" in uri and not uri.startswith("file://"):
            raise DataError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
        path = os.path.abspath(_strip_scheme(uri))
        return fsspec.filesystem("file"), path

    def pyarrow(self, uri: str) -> Tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, path) for pyarrow.parquet and Ray Data ``filesystem=``."""
        fs, path = self.fs(uri)
        if is_s3(uri):
            return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
        return pafs.LocalFileSystem(), path

    def describe(self) -> dict:
        """Settings safe to log (no secrets)."""
        c = self.config
        return {
            "endpoint_url": c.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
            "region": c.region or os.environ.get("AWS_DEFAULT_REGION"),
            "credentials": "config" if c.access_key_id else "environment",
        }


def process_role() -> str:
    """``worker`` inside a Ray worker process, else ``driver`` (Ray is only looked at when already imported)."""
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            from ray._private.worker import WORKER_MODE, global_worker

            if getattr(global_worker, "mode", None) == WORKER_MODE:
                return "worker"
        except Exception:  # noqa: BLE001 - any doubt means the calling process
            pass
    return "driver"


def exists(uri: str, storage: Optional[Storage] = None) -> bool:
    fs, path = (storage or Storage()).fs(uri)
    return fs.exists(path)


def read_bytes(uri: str, storage: Optional[Storage] = None, small: bool = False) -> bytes:
    """The whole file. ``small`` (reports, plans, markers): on S3 one GET, without the HEAD that s3fs sends
    first to split a large object into concurrent range reads."""
    fs, path = (storage or Storage()).fs(uri)
    try:
        if small and is_s3(uri):
            return fs.cat_file(path, max_concurrency=1)
        return fs.cat_file(path)
    except FileNotFoundError as e:
        raise DataError(f"file not found: {uri}") from e


def write_bytes_atomic(uri: str, data: bytes, storage: Optional[Storage] = None) -> str:
    """Write bytes so readers never see a partial file; returns the sha256 of the data."""
    return write_file(uri, data, storage).sha256


@dataclass(frozen=True)
class Written:
    """What a writer knows of a file it wrote, so nobody needs to read it back: content hash, size, and the
    fingerprint a listing shows for exactly these bytes (S3 ETag, or size and mtime of a local file)."""

    sha256: str
    size: int
    fingerprint: str


def write_file(uri: str, data: bytes, storage: Optional[Storage] = None) -> Written:
    """Write bytes atomically and describe them (``Written``).

    Local files go to a temporary name in the same folder and are renamed into place. An S3 PUT is already
    all-or-nothing, so objects are written directly, in one request; its ETag is the listing's fingerprint.
    """
    fs, path = (storage or Storage()).fs(uri)
    if is_s3(uri):
        resp = fs.pipe_file(path, data)
        etag = str(resp.get("ETag", "")) if isinstance(resp, dict) else ""
        if not etag:  # a multipart upload (over 100 MB) returns no ETag: ask for it
            etag = str(fs.info(path).get("ETag", ""))
        etag = etag.strip('"')
        return Written(sha256_bytes(data), len(data), etag)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    st = os.stat(path)
    return Written(sha256_bytes(data), len(data), f"{st.st_size}:{st.st_mtime_ns}")


def read_json(uri: str, storage: Optional[Storage] = None) -> Any:
    raw = read_bytes(uri, storage, small=True)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{uri}: not valid JSON ({e})") from e


def write_json_atomic(uri: str, obj: Any, storage: Optional[Storage] = None) -> str:
    return write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), storage)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""URIs (local paths or s3://bucket/prefix) -> filesystems usable by fsspec, pyarrow and Ray Data."""

from cion_dist.storage.fs import (
    Storage,
    exists,
    is_s3,
    join,
    read_bytes,
    read_json,
    sha256_bytes,
    write_bytes_atomic,
    write_json_atomic,
)

__all__ = [
    "Storage",
    "exists",
    "is_s3",
    "join",
    "read_bytes",
    "read_json",
    "sha256_bytes",
    "write_bytes_atomic",
    "write_json_atomic",
]

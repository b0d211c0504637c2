"""One paginated listing of a prefix: what a stage driver reads instead of probing files one by one.

On S3 a listing page holds up to 1,000 keys (one ``ListObjectsV2`` request), so knowing which of a million units
exist costs about 1,000 requests instead of a million ``HEAD``s. Entries stream page by page and are never cached
on the filesystem object (s3fs's listing cache is unbounded), so a driver holds only what it keeps of them.
Local folders are walked with ``os.scandir``. Each entry's ``fingerprint`` changes when the file is rewritten:
the S3 ETag, or size and modification time locally.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from cion_dist.storage.fs import Storage, is_s3

PAGE_SIZE = 1000


@dataclass(frozen=True)
class Entry:
    name: str  # path relative to the listed prefix, "/"-separated
    size: int
    fingerprint: str


def iter_listing(
    uri: str, storage: Optional[Storage] = None, recursive: bool = True, page_size: int = PAGE_SIZE
) -> Iterator[Entry]:
    """Every file under ``uri`` (only its direct children unless ``recursive``), streamed page by page; nothing
    when the prefix does not exist."""
    st = storage or Storage()
    fs, path = st.fs(uri)
    if is_s3(uri):
        bucket, _, key = path.partition("/")
        prefix = key.rstrip("/") + "/" if key else ""
        token = None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
            if not recursive:
                kw["Delimiter"] = "/"
            if token:
                kw["ContinuationToken"] = token
            page = fs.call_s3("list_objects_v2", **kw)
            for obj in page.get("Contents", ()):
                yield Entry(obj["Key"][len(prefix) :], int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
    base = path.rstrip(os.sep)
    if not os.path.isdir(base):
        return
    cut = len(base) + 1  # scandir's paths are the folder's path, a separator, the name: no relpath per file
    stack = [base]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if recursive:
                        stack.append(e.path)
                elif e.is_file():
                    s = e.stat()
                    rel = e.path[cut:].replace(os.sep, "/") if os.sep != "/" else e.path[cut:]
                    yield Entry(rel, int(s.st_size), local_fingerprint(s.st_size, s.st_mtime_ns))


def local_fingerprint(size: int, mtime_ns: int) -> str:
    return f"{size}:{mtime_ns}"


def name_hash(names) -> np.ndarray:
    """64-bit keys of file names (blake2b), for set operations on O(units) integer arrays instead of strings."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "little") for n in names), dtype=np.uint64
    )


def fingerprint_hash(sizes, fingerprints) -> np.ndarray:
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{s}|{f}".encode(), digest_size=8).digest(), "little")
            for s, f in zip(sizes, fingerprints)
        ),
        dtype=np.uint64,
    )


@dataclass
class ListingArrays:
    """A listing as integer arrays (16 bytes per file): name keys and fingerprint keys, sorted by name key."""

    name: np.ndarray  # uint64
    fingerprint: np.ndarray  # uint64 (``fingerprint_hash`` of size and fingerprint)

    def __len__(self) -> int:
        return len(self.name)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Index of each name key in the listing, or -1."""
        return index_in(self.name, keys)


def index_in(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each of ``keys`` in ``sorted_keys`` (sorted uint64 name keys), or -1 where it is absent."""
    if not len(sorted_keys):
        return np.full(len(keys), -1, np.int64)
    i = np.searchsorted(sorted_keys, keys).clip(0, len(sorted_keys) - 1)
    return np.where(sorted_keys[i] == keys, i, -1).astype(np.int64)


def listing_arrays(entries, keep=lambda e: True, chunk: int = 65536) -> ListingArrays:
    """Pack streamed entries into arrays chunk by chunk (no list of entries is ever held): 16 bytes a file, and
    about twice that while sorting."""
    names, fps = [], []
    buf: list[Entry] = []

    def flush():
        if buf:
            names.append(name_hash(e.name for e in buf))
            fps.append(fingerprint_hash([e.size for e in buf], [e.fingerprint for e in buf]))
            buf.clear()

    for e in entries:
        if keep(e):
            buf.append(e)
            if len(buf) >= chunk:
                flush()
    flush()
    n = np.concatenate(names) if names else np.zeros(0, np.uint64)
    names.clear()
    f = np.concatenate(fps) if fps else np.zeros(0, np.uint64)
    fps.clear()
    order = np.argsort(n, kind="stable")
    return ListingArrays(n[order], f[order])

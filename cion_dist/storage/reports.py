"""Part reports: what the writers of a stage's parts said about them, combined without reading the parts again.

Whoever writes a part knows its sha256, size and listing fingerprint (``storage.fs.Written``) and the counts a
stage sums (rows, tracklets, ...). Those facts travel back with the task results and are appended, in batches of
thousands, to report files ``<run>/_reports/report-*.parquet``. From the reports and one listing of the run
folder a driver then knows, with O(listing pages + report files) requests:

- which parts are done (listed, and reported with the same fingerprint), for resuming;
- which parts are torn or changed (listed with a fingerprint no report has), to redo them or to fail;
- the totals for ``_SUCCESS.json``, and the output digest, combined from per-part digests.

The digest is order-free: each part contributes ``sha256(name NUL sha256(part))`` read as four 64-bit words, the
words are summed modulo 2^64, and the digest is the sha256 of the part count and the four sums. An undisturbed
run and a resumed one over the same parts therefore agree, whichever task wrote what when.

Driver memory: 48 bytes per reported part (name key, fingerprint key, four digest words), plus 8 per count column.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage, Written, join, read_bytes
from cion_dist.storage.listing import fingerprint_hash, name_hash

REPORTS_DIR = "_reports"
BASE_COLUMNS = ("name", "sha256", "size", "fingerprint")


def part_record(name: str, written: Written, **counts: int) -> dict:
    """One report row: the part's name (relative to the run folder), what its writer knows, and its counts."""
    return {
        "name": name,
        "sha256": written.sha256,
        "size": int(written.size),
        "fingerprint": written.fingerprint,
        **{k: int(v) for k, v in counts.items()},
    }


def digest_words(names: Iterable[str], shas: Iterable[str]) -> np.ndarray:
    """[n, 4] uint64: each part's contribution to the order-free output digest."""
    raw = b"".join(hashlib.sha256(f"{n}\0{s}".encode()).digest() for n, s in zip(names, shas))
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 4).astype(np.uint64) if raw else np.zeros((0, 4), np.uint64)


def combine_digest(count: int, words: np.ndarray) -> str:
    """The output digest from per-part digest words (sum modulo 2^64 per word: order and grouping free)."""
    with np.errstate(over="ignore"):
        total = words.sum(axis=0, dtype=np.uint64) if len(words) else np.zeros(4, np.uint64)
    return hashlib.sha256(f"parts:{count}:".encode() + total.astype("<u8").tobytes()).hexdigest()


class ReportWriter:
    """Appends report rows and writes them as one report file per ``flush_rows`` rows or ``flush_seconds``.

    A crash loses at most the rows not yet flushed: their parts are listed without a report, so a resume redoes
    them (the work of at most ``flush_seconds``).
    """

    def __init__(self, run_uri: str, storage: Storage, flush_rows: int = 5000, flush_seconds: float = 20.0):
        self.run_uri, self.storage = run_uri, storage
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._rows: list[dict] = []
        self._last = time.monotonic()
        self.files_written = 0

    def add(self, rows: Iterable[dict]) -> None:
        self._rows.extend(rows)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._rows:
            return
        from cion_dist.storage.stage_io import write_table_atomic

        table = pa.Table.from_pylist(self._rows)
        name = f"report-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        write_table_atomic(join(self.run_uri, REPORTS_DIR, name), table, self.storage)
        self._rows.clear()
        self.files_written += 1


@dataclass
class Ledger:
    """Every report row of a run as integer arrays, one row per part name (the newest report of a name wins)."""

    name: np.ndarray  # uint64 name keys, sorted
    fingerprint: np.ndarray  # uint64
    words: np.ndarray  # [n, 4] uint64 digest words
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # int64 per count column

    def __len__(self) -> int:
        return len(self.name)

    @classmethod
    def empty(cls) -> "Ledger":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros((0, 4), np.uint64))

    @classmethod
    def load(cls, run_uri: str, report_files: Iterable[str], storage: Storage) -> "Ledger":
        """Read the named report files (names relative to ``<run>/_reports/``), oldest first."""
        names, fps, words, counts = [], [], [], {}
        for i, f in enumerate(sorted(report_files)):
            uri = join(run_uri, REPORTS_DIR, f)
            try:
                t = pq.read_table(io.BytesIO(read_bytes(uri, storage, small=True)))  # one GET
            except Exception:  # noqa: BLE001 - a torn report only costs a redo of the parts it named
                continue
            missing = [c for c in BASE_COLUMNS if c not in t.column_names]
            if missing:
                raise DataError(f"report {uri} lacks column(s) {', '.join(missing)}")
            n = t.column("name").to_pylist()
            names.append(name_hash(n))
            fps.append(fingerprint_hash(t.column("size").to_pylist(), t.column("fingerprint").to_pylist()))
            words.append(digest_words(n, t.column("sha256").to_pylist()))
            for c in t.column_names:
                if c not in BASE_COLUMNS:
                    counts.setdefault(c, [None] * i).append(
                        np.asarray(t.column(c).to_numpy(zero_copy_only=False), np.int64)
                    )
            for c in counts:
                if len(counts[c]) < len(names):
                    counts[c].append(np.zeros(t.num_rows, np.int64))
        if not names:
            return cls.empty()
        name = np.concatenate(names)
        # the newest row of each name wins: reverse, keep the first occurrence, sort by name key
        rev = np.arange(len(name))[::-1]
        _, first = np.unique(name[rev], return_index=True)
        keep = np.sort(rev[first])
        keep = keep[np.argsort(name[keep], kind="stable")]
        cnt = {}
        for c, parts in counts.items():
            parts = [p if p is not None else np.zeros(len(names[j]), np.int64) for j, p in enumerate(parts)]
            cnt[c] = np.concatenate(parts)[keep]
        return cls(name[keep], np.concatenate(fps)[keep], np.concatenate(words)[keep], cnt)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Index of each name key in the ledger, or -1."""
        if not len(self.name):
            return np.full(len(keys), -1, np.int64)
        i = np.searchsorted(self.name, keys).clip(0, len(self.name) - 1)
        return np.where(self.name[i] == keys, i, -1).astype(np.int64)


@dataclass
class PartCheck:
    """A listing checked against the ledger."""

    matched: np.ndarray  # ledger indices of listed parts whose fingerprint agrees
    changed: list[str]  # listed parts a report names with another fingerprint (rewritten or torn)
    unreported: list[str]  # listed parts no report names (written just before a crash, or by someone else)
    missing: int  # reported part names that are not listed (deleted)


def check_parts(entries, ledger: Ledger, chunk: int = 65536, keep_names: int = 100_000) -> PartCheck:
    """Stream listing entries (``listing.Entry``) against the ledger, page by page."""
    matched, changed, unreported = [], [], []
    seen = np.zeros(len(ledger), bool)
    buf: list = []

    def flush():
        if not buf:
            return
        keys = name_hash(e.name for e in buf)
        fps = fingerprint_hash([e.size for e in buf], [e.fingerprint for e in buf])
        idx = ledger.lookup(keys)
        ok = (idx >= 0) & (ledger.fingerprint[idx.clip(0)] == fps) if len(ledger) else np.zeros(len(buf), bool)
        matched.append(idx[ok])
        seen[idx[idx >= 0]] = True
        for j in np.flatnonzero(~ok):
            target = changed if idx[j] >= 0 else unreported
            if len(target) < keep_names:
                target.append(buf[j].name)
        buf.clear()

    for e in entries:
        buf.append(e)
        if len(buf) >= chunk:
            flush()
    flush()
    m = np.concatenate(matched) if matched else np.zeros(0, np.int64)
    return PartCheck(m, changed, unreported, int((~seen).sum()))

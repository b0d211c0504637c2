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

Driver memory: 18 bytes per listed part (name key, fingerprint key, two flags) and 8 per done part; the digest
words and the counts are summed as the reports stream by (``check_parts``).
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage, Written, join, read_bytes
from cion_dist.storage.listing import ListingArrays, fingerprint_hash, name_hash

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
    return digest_of_sum(count, total)


def digest_of_sum(count: int, total: np.ndarray) -> str:
    """The output digest of ``count`` parts from their digest words already summed (``combine_digest``)."""
    return hashlib.sha256(f"parts:{count}:".encode() + np.asarray(total, np.uint64).astype("<u8").tobytes()).hexdigest()


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
class PartCheck:
    """A listing of the data parts checked against the reports, with what ``_SUCCESS.json`` needs of the parts.

    Each listed part is judged by its newest report row (report files are named in time order; within a file a
    later row wins): done when that row names the listed fingerprint, changed when it names another one (rewritten
    or torn), unreported when no row names the part.
    """

    done: np.ndarray  # sorted uint64 name keys of the done parts
    words: np.ndarray  # [4] uint64: the done parts' digest words summed modulo 2^64
    totals: dict[str, int]  # report count columns summed over the done parts
    changed: list[str]  # listed parts whose newest report names another fingerprint (at most keep_names)
    unreported: np.ndarray  # sorted uint64 name keys of listed parts no report names
    missing: int  # reported part names that are not listed (deleted)


def check_parts(
    listing: ListingArrays, run_uri: str, report_files: Iterable[str], storage: Storage, keep_names: int = 100_000
) -> PartCheck:
    """Stream the report files (names relative to ``<run>/_reports/``), newest first, against a listing.

    Driver memory: the listing's 16 bytes per part, two flags per part, 8 bytes per done part, and one report
    file at a time; the digest words and counts are summed as the reports stream by, never kept per part.
    """
    n = len(listing)
    seen = np.zeros(n, bool)  # judged by its newest report row
    ok = np.zeros(n, bool)
    total = np.zeros(4, np.uint64)
    totals: dict[str, int] = {}
    changed: list[str] = []
    missing: list[np.ndarray] = []
    for f in sorted(report_files, reverse=True):
        uri = join(run_uri, REPORTS_DIR, f)
        try:
            t = pq.read_table(io.BytesIO(read_bytes(uri, storage, small=True)))  # one GET
        except Exception:  # noqa: BLE001 - a torn report only costs a redo of the parts it named
            continue
        absent = [c for c in BASE_COLUMNS if c not in t.column_names]
        if absent:
            raise DataError(f"report {uri} lacks column(s) {', '.join(absent)}")
        t = t.take(pa.array(np.arange(t.num_rows)[::-1]))  # a later row of a name wins over an earlier one
        names = t.column("name").to_pylist()
        keys = name_hash(names)
        idx = listing.lookup(keys)
        first = np.zeros(len(keys), bool)
        first[np.unique(keys, return_index=True)[1]] = True
        listed = idx >= 0
        missing.append(keys[~listed & first])
        judge = listed & first
        judge[judge] = ~seen[idx[judge]]
        seen[idx[judge]] = True
        fps = fingerprint_hash(t.column("size").to_pylist(), t.column("fingerprint").to_pylist())
        good = judge.copy()
        good[judge] = listing.fingerprint[idx[judge]] == fps[judge]
        ok[idx[good]] = True
        for j in np.flatnonzero(judge & ~good)[: max(0, keep_names - len(changed))]:
            changed.append(names[j])
        g = np.flatnonzero(good)
        if len(g):
            shas = t.column("sha256").to_pylist()
            with np.errstate(over="ignore"):
                total += digest_words([names[j] for j in g], [shas[j] for j in g]).sum(axis=0, dtype=np.uint64)
            for c in t.column_names:
                if c not in BASE_COLUMNS:
                    v = np.asarray(t.column(c).to_numpy(zero_copy_only=False), np.int64)
                    totals[c] = totals.get(c, 0) + int(v[g].sum())
    gone = np.unique(np.concatenate(missing)) if missing else np.zeros(0, np.uint64)  # a name counts once
    return PartCheck(listing.name[ok], total, totals, changed, listing.name[~seen], int(len(gone)))

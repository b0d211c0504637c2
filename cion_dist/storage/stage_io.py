"""Stage outputs: ``<output>/<stage>/<run_id>/part-<unit>.parquet`` files, then ``_SUCCESS.json`` last.

Each unit of work (a clip, a video, a window, a shard) is written as one Parquet file under a name derived from
the unit's key, atomically. A rerun lists the folder once (``existing_units``; never one probe per unit) and skips
units whose file exists, and a stage is complete only once ``_SUCCESS.json`` (row counts, input URIs with digests,
resolved config, package version, digest of the outputs) is written. What the writers of the parts reported
(``storage.reports``) gives the digest and the counts without reading a part back, and shows torn or changed ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist import __version__
from cion_dist.errors import DataError
from cion_dist.storage.fs import (
    Storage,
    Written,
    join,
    read_bytes,
    read_json,
    sha256_bytes,
    write_bytes_atomic,
    write_file,
    write_json_atomic,
)
from cion_dist.storage.listing import Entry, index_in, iter_listing, listing_arrays, name_hash
from cion_dist.storage.reports import (
    REPORTS_DIR,
    PartCheck,
    ReportWriter,
    check_parts,
    digest_of_sum,
    digest_words,
)

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS.json"
_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def unit_filename(unit: str, prefix: str = "part") -> str:
    """A file name for a unit key: readable, filesystem-safe and unique per key (short hash suffix)."""
    safe = _SAFE.sub("_", str(unit))[:80]
    h = hashlib.sha1(str(unit).encode()).hexdigest()[:8]
    return f"{prefix}-{safe}-{h}.parquet"


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_table_atomic(uri: str, table: pa.Table, storage: Optional[Storage] = None) -> str:
    """Write one Parquet file atomically; returns the sha256 of its bytes."""
    return write_bytes_atomic(uri, table_to_parquet_bytes(table), storage)


def read_table(uri: str, storage: Optional[Storage] = None, columns: Optional[list[str]] = None) -> pa.Table:
    """Read one Parquet file or every ``*.parquet`` under a folder into one table."""
    st = storage or Storage()
    fs, path = st.fs(uri)
    if not path.endswith(".parquet") and fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
        if not files:
            raise DataError(f"no Parquet files under {uri}")
    else:
        files = [path]
    tables = []
    for p in files:
        try:
            with fs.open(p, "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        except Exception as e:  # noqa: BLE001 - name the file whatever pyarrow raised
            raise DataError(f"cannot read Parquet file {p}: {e}") from e
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def stage_dir(output: str, stage: str, run_id: str) -> str:
    return join(output, stage, run_id)


@dataclass
class StageOutput:
    """The output folder of one stage run."""

    uri: str
    storage: Storage = field(default_factory=Storage)

    @classmethod
    def create(cls, output: str, stage: str, run_id: str, storage: Optional[Storage] = None) -> "StageOutput":
        return cls(stage_dir(output, stage, run_id), storage or Storage())

    @property
    def success_uri(self) -> str:
        return join(self.uri, SUCCESS)

    def is_complete(self) -> bool:
        fs, path = self.storage.fs(self.success_uri)
        return fs.exists(path)

    def success(self) -> dict:
        return read_json(self.success_uri, self.storage)

    def unit_uri(self, unit: str, prefix: str = "part", subdir: str = "") -> str:
        base = join(self.uri, subdir) if subdir else self.uri
        return join(base, unit_filename(unit, prefix))

    def has_unit(self, unit: str, prefix: str = "part", subdir: str = "") -> bool:
        """One probe for one unit; to know which of many units exist, use ``existing_units`` (one listing)."""
        fs, path = self.storage.fs(self.unit_uri(unit, prefix, subdir))
        return fs.exists(path)

    def listing(self, subdir: str = "", recursive: bool = False) -> Iterator[Entry]:
        """Files of this run folder (or a sub-folder), streamed from one paginated listing."""
        return iter_listing(join(self.uri, subdir) if subdir else self.uri, self.storage, recursive=recursive)

    def existing_units(self, subdir: str = "", prefix: str = "part") -> set[str]:
        """File names (``unit_filename(unit, prefix)``) of the units written in ``subdir``, from one listing."""
        head = f"{prefix}-"
        return {e.name for e in self.listing(subdir) if e.name.startswith(head) and e.name.endswith(".parquet")}

    def pending_units(self, units: Iterable[str], subdir: str = "", prefix: str = "part") -> list[str]:
        """The units whose file is not written yet, in the order given (one listing, then a set difference)."""
        have = self.existing_units(subdir, prefix)
        return [u for u in units if unit_filename(u, prefix) not in have]

    def write_unit(self, unit: str, table: pa.Table, prefix: str = "part", subdir: str = "") -> Written:
        """Write one unit's table atomically; returns what was written (sha256, size, listing fingerprint)."""
        return write_file(self.unit_uri(unit, prefix, subdir), table_to_parquet_bytes(table), self.storage)

    def write_reported_unit(self, unit: str, table: pa.Table, **counts: int) -> Written:
        """Write a top-level part from the driver itself and report it at once (a stage's few driver-written parts)."""
        from cion_dist.storage.reports import part_record

        written = self.write_unit(unit, table)
        w = self.report_writer()
        w.add([part_record(unit_filename(unit), written, rows=table.num_rows, **counts)])
        w.flush()
        return written

    def files(self, subdir: str = "") -> list[str]:
        """Parquet files of this output (optionally of a sub-folder; never of deeper folders), sorted, as URIs."""
        base = join(self.uri, subdir) if subdir else self.uri
        return sorted(join(base, e.name) for e in self.listing(subdir) if e.name.endswith(".parquet"))

    def read(self, subdir: str = "", columns: Optional[list[str]] = None) -> pa.Table:
        files = self.files(subdir)
        if not files:
            raise DataError(f"no Parquet files in {join(self.uri, subdir) if subdir else self.uri}")
        tables = [read_table(f, self.storage, columns) for f in files]
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    # ------------------------------------------------------------ part reports

    def report_writer(self, **kwargs: Any) -> ReportWriter:
        return ReportWriter(self.uri, self.storage, **kwargs)

    def check_parts(self) -> PartCheck:
        """The top-level data parts, one listing, checked against the reports (one listing of ``_reports/`` and
        one read per report file): which are done, changed or unreported, and the done ones' digest and totals."""
        reports = [e.name for e in self.listing(REPORTS_DIR) if e.name.endswith(".parquet")]
        listed = listing_arrays(e for e in self.listing() if e.name.endswith(".parquet"))
        return check_parts(listed, self.uri, reports, self.storage)

    def part_names(self, keys: np.ndarray, most: Optional[int] = None) -> list[str]:
        """Names of the top-level parts whose name key is in ``keys`` (sorted uint64; at most ``most``), from one
        more listing: what a check keeps of unreported parts is their keys only."""
        out: list[str] = []
        if not len(keys):
            return out
        for e in self.listing():
            if e.name.endswith(".parquet") and index_in(keys, name_hash([e.name]))[0] >= 0:
                out.append(e.name)
                if most is not None and len(out) >= most:
                    break
        return sorted(out)

    def combine(self, hash_unreported: bool = True, checked: Optional[PartCheck] = None) -> "PartsSummary":
        """Digest and totals of the data parts from their reports and one listing, never re-reading reported parts.

        A part whose listing fingerprint differs from its newest report (rewritten, or torn) is an error naming the
        part; reports of parts that are gone are not counted (``verify`` compares the digest, which changes). Parts
        no report names (a stage whose writers do not report yet, or the last parts before a crash) are read and
        hashed here, with a warning, unless ``hash_unreported`` is false (then they are an error too). ``checked``
        reuses a ``check_parts`` made at the start of a run that then wrote nothing (a resume that found every part
        done): one listing instead of two.
        """
        chk = checked if checked is not None else self.check_parts()
        if chk.changed:
            raise DataError(
                f"{self.uri}: {len(chk.changed)} part(s) changed after they were written (size or "
                f"fingerprint differs from the writer's report), e.g. {sorted(chk.changed)[:3]}; rerun the stage "
                f"to redo them"
            )
        if chk.missing:  # stale reports: a part lost and not rewritten (its unit failed on the redo)
            log.info("%s: %d reported part(s) are not in the folder; they are not counted", self.uri, chk.missing)
        total = chk.words.copy()
        extra = 0
        if len(chk.unreported):
            if not hash_unreported:
                names = self.part_names(chk.unreported, most=3)
                raise DataError(f"{self.uri}: {len(chk.unreported)} part(s) have no report, e.g. {names}")
            names = self.part_names(chk.unreported)  # every one: each is read back and hashed
            log.warning("%s: %d part(s) without a report are read back to hash them", self.uri, len(names))
            shas = [sha256_bytes(read_bytes(join(self.uri, n), self.storage)) for n in names]
            with np.errstate(over="ignore"):
                total += digest_words(names, shas).sum(axis=0, dtype=np.uint64)
            extra = len(names)
        n = len(chk.done) + extra
        return PartsSummary(digest_of_sum(n, total), n, dict(chk.totals), extra)

    def verify(self) -> dict:
        """Check a complete output against ``_SUCCESS.json``: raises ``DataError`` naming a changed or missing part."""
        rec = self.success()
        parts = self.combine(hash_unreported=True)
        if parts.count != rec.get("parts", parts.count):
            raise DataError(
                f"{self.uri}: {parts.count} parts, _SUCCESS.json recorded {rec.get('parts')}: a part was "
                f"added or removed"
            )
        if parts.digest != rec.get("digest"):
            raise DataError(
                f"{self.uri}: parts digest {parts.digest[:12]} differs from _SUCCESS.json's "
                f"{str(rec.get('digest'))[:12]}: a part was changed, added or removed"
            )
        return rec

    def finalize(
        self,
        *,
        stage: str,
        rows: dict[str, int],
        inputs: Iterable[dict[str, Any]] = (),
        config: Optional[dict] = None,
        summary: Optional[dict] = None,
        parts: Optional["PartsSummary"] = None,
    ) -> dict:
        """Write ``_SUCCESS.json`` last: after it exists, readers may trust every file of this run.

        ``parts`` is the result of ``combine()`` when the caller already made it (for its totals).
        """
        parts = parts or self.combine()
        record = {
            "stage": stage,
            "uri": self.uri,
            "rows": rows,
            "inputs": list(inputs),
            "config": config or {},
            "summary": summary or {},
            "digest": parts.digest,
            "parts": parts.count,
            "package_version": __version__,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(self.success_uri, record, self.storage)
        return record


@dataclass
class PartsSummary:
    digest: str
    count: int  # data parts
    totals: dict[str, int]  # report count columns summed over the parts
    unreported: int = 0  # parts that had to be read back to hash them


def resolve_input(uri: Optional[str], output: str, stage: str, storage: Optional[Storage] = None) -> StageOutput:
    """The completed output a stage reads: an explicit run folder, or the newest complete run of ``stage``.

    ``uri`` may be a run folder (``.../embed/<run_id>``) or ``None``/``"latest"`` to pick the newest complete run
    under ``<output>/<stage>/``. Incomplete runs (no ``_SUCCESS.json``) are never read.
    """
    st = storage or Storage()
    if uri and uri != "latest":
        out = StageOutput(str(uri).rstrip("/"), st)
        if not out.is_complete():
            raise DataError(f"input {uri} is not a complete {stage} output (no {SUCCESS}); run the {stage} stage first")
        return out
    base = join(output, stage)
    fs, path = st.fs(base)
    if not fs.exists(path):
        raise DataError(f"no {stage} output under {base}; run the {stage} stage first or set its input URI")
    best = None
    for d in fs.ls(path, detail=False):
        cand = StageOutput(("s3://" + d) if base.startswith("s3") else d, st)
        if cand.is_complete():
            rec = cand.success()
            key = rec.get("finished_at", "")
            if best is None or key > best[0]:
                best = (key, cand)
    if best is None:
        raise DataError(f"no complete {stage} run under {base} (none has {SUCCESS})")
    return best[1]


def input_record(out: StageOutput) -> dict:
    """What a downstream stage records of an input: URI, digest and run id (for lineage)."""
    rec = out.success()
    return {
        "uri": out.uri,
        "stage": rec.get("stage"),
        "digest": rec.get("digest"),
        "mlflow_run_id": rec.get("summary", {}).get("mlflow_run_id"),
    }


def dumps_config(cfg: Any) -> dict:
    """JSON-safe config echo (pydantic SecretStr renders masked)."""
    if hasattr(cfg, "model_dump"):
        return json.loads(cfg.model_dump_json())
    return dict(cfg)

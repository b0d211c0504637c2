"""Stage outputs: ``<output>/<stage>/<run_id>/part-<unit>.parquet`` files, then ``_SUCCESS.json`` last.

Each unit of work (a clip, a video, a window, a shard) is written as one Parquet file under a name derived from
the unit's key, atomically. A rerun therefore skips units whose file exists and rewrites nothing twice, and a
stage is complete only once ``_SUCCESS.json`` (row counts, input URIs with digests, resolved config, package
version, content digest of the outputs) is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist import __version__
from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage, join, read_bytes, read_json, write_bytes_atomic, write_json_atomic

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
    if fs.isdir(path):
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
        fs, path = self.storage.fs(self.unit_uri(unit, prefix, subdir))
        return fs.exists(path)

    def write_unit(self, unit: str, table: pa.Table, prefix: str = "part", subdir: str = "") -> str:
        return write_table_atomic(self.unit_uri(unit, prefix, subdir), table, self.storage)

    def files(self, subdir: str = "") -> list[str]:
        """Parquet files of this output (optionally of a sub-folder), sorted, as URIs."""
        base = join(self.uri, subdir) if subdir else self.uri
        fs, path = self.storage.fs(base)
        if not fs.exists(path):
            return []
        found = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
        if subdir == "":
            # top-level data only: sub-folders hold side tables (errors, summaries)
            found = [p for p in found if p.rsplit("/", 1)[0].rstrip("/") == path.rstrip("/")]
        scheme = "s3://" if base.startswith("s3") else ""
        return [scheme + p for p in found]

    def read(self, subdir: str = "", columns: Optional[list[str]] = None) -> pa.Table:
        files = self.files(subdir)
        if not files:
            raise DataError(f"no Parquet files in {join(self.uri, subdir) if subdir else self.uri}")
        tables = [read_table(f, self.storage, columns) for f in files]
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    def content_digest(self, subdir: str = "") -> str:
        """sha256 over the sorted (name, sha256 of bytes) of every Parquet file: an explicit content digest."""
        h = hashlib.sha256()
        for f in self.files(subdir):
            h.update(f.rsplit("/", 1)[-1].encode())
            h.update(hashlib.sha256(read_bytes(f, self.storage)).hexdigest().encode())
        return h.hexdigest()

    def finalize(
        self,
        *,
        stage: str,
        rows: dict[str, int],
        inputs: Iterable[dict[str, Any]] = (),
        config: Optional[dict] = None,
        summary: Optional[dict] = None,
    ) -> dict:
        """Write ``_SUCCESS.json`` last: after it exists, readers may trust every file of this run."""
        record = {
            "stage": stage,
            "uri": self.uri,
            "rows": rows,
            "inputs": list(inputs),
            "config": config or {},
            "summary": summary or {},
            "digest": self.content_digest(),
            "package_version": __version__,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(self.success_uri, record, self.storage)
        return record


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
    return {"uri": out.uri, "stage": rec.get("stage"), "digest": rec.get("digest"), "mlflow_run_id": rec.get("summary", {}).get("mlflow_run_id")}


def dumps_config(cfg: Any) -> dict:
    """JSON-safe config echo (pydantic SecretStr renders masked)."""
    if hasattr(cfg, "model_dump"):
        return json.loads(cfg.model_dump_json())
    return dict(cfg)

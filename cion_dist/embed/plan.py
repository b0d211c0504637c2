"""Embed units: groups of whole ingest parts holding about ``crops_per_unit`` crops each, planned as Parquet.

One ingest part per clip holds ~20 crops; embedding each on its own spends most of an actor's time on per-part
reads, writes and calls. A unit here bundles consecutive rows of one ingest report file (so grouping needs no
shuffle and no list of every part on the driver) until it holds ``crops_per_unit`` crops, and becomes one embed
output part. The plan is written under ``<embed run>/_plan/`` (one file per ingest report file, one row per unit:
``unit, parts, crops``) and read back by Ray Data, so the driver holds one report file at a time plus an 8-byte
key and a flag per ingest part (to keep only rows of parts listed as reported, and the newest row of a part redone). The
grouping is a pure function of the ingest output, so a resumed run plans the same units.

An ingest output without part reports (written by an older version) is planned from one listing of its parts
instead, ``parts_per_unit`` parts to a unit.
"""

from __future__ import annotations

import io
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist.storage.fs import read_bytes
from cion_dist.storage.listing import index_in, name_hash
from cion_dist.storage.reports import REPORTS_DIR
from cion_dist.storage.stage_io import StageOutput, join, write_table_atomic

PLAN_DIR = "_plan"
PLAN_SCHEMA = pa.schema([("unit", pa.string()), ("parts", pa.list_(pa.string())), ("crops", pa.int64())])


def group_rows(names: list[str], crops: list[int], stem: str, crops_per_unit: int) -> pa.Table:
    """Consecutive parts cut into units of at least ``crops_per_unit`` crops (the last may hold fewer)."""
    units, parts, counts = [], [], []
    cur, n = [], 0
    for name, c in zip(names, crops):
        cur.append(name)
        n += int(c)
        if n >= crops_per_unit:
            units.append(f"{stem}-{len(units):05d}")
            parts.append(cur)
            counts.append(n)
            cur, n = [], 0
    if cur:
        units.append(f"{stem}-{len(units):05d}")
        parts.append(cur)
        counts.append(n)
    return pa.table(
        [pa.array(units, pa.string()), pa.array(parts, pa.list_(pa.string())), pa.array(counts, pa.int64())],
        schema=PLAN_SCHEMA,
    )


def write_plan(
    ingest: StageOutput, out: StageOutput, crops_per_unit: int, parts_per_unit: int
) -> tuple[list[str], int]:
    """Write the unit plan; returns (plan file URIs, number of units). Rewriting it gives the same plan."""
    plan_dir = join(out.uri, PLAN_DIR)
    reports = sorted(e.name for e in ingest.listing(REPORTS_DIR) if e.name.endswith(".parquet"))
    files, units = [], 0
    if not reports:
        names = sorted(e.name for e in ingest.listing() if e.name.endswith(".parquet"))
        t = group_rows(names, [1] * len(names), "l", parts_per_unit)
        uri = join(plan_dir, "plan-listing.parquet")
        write_table_atomic(uri, t, out.storage)
        return [uri], t.num_rows
    valid = ingest.check_parts().done  # parts listed as their newest report says (8 bytes a part)
    taken = np.zeros(len(valid), bool)  # planned already, from a newer report
    for rep in reversed(reports):  # newest first: a part redone later is planned from its newest report only
        raw = read_bytes(join(ingest.uri, REPORTS_DIR, rep), ingest.storage, small=True)  # one GET a report file
        t = pq.read_table(io.BytesIO(raw), columns=["name", "crops"])
        names = t.column("name").to_pylist()
        crops = t.column("crops").to_pylist()
        keys = name_hash(names)
        i = index_in(valid, keys)
        keep = np.zeros(len(keys), bool)
        for j in np.flatnonzero(i >= 0)[::-1]:  # the last row of a name in a file is its newest
            if not taken[i[j]]:
                taken[i[j]] = keep[j] = True
        stem = posixpath.splitext(rep)[0].replace("report-", "r")
        plan = group_rows(
            [n for n, k in zip(names, keep) if k], [c for c, k in zip(crops, keep) if k], stem, crops_per_unit
        )
        uri = join(plan_dir, f"plan-{stem}.parquet")
        write_table_atomic(uri, plan, out.storage)
        files.append(uri)
        units += plan.num_rows
    return files, units

"""Planning a stage over many units without per-unit storage requests on the driver.

What is done comes from one listing of the output folder checked against the part reports (``storage.reports``):
a uint64 key per done part (8 bytes a unit, after 18 bytes a listed part while checking). What is to do comes
from a Ray Data read of a unit table (a manifest, the previous stage's reports) filtered in its tasks by that key
set: an anti-join that never brings the unit rows to the driver. Torn or changed parts are not in the done set,
so they are redone.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from cion_dist.storage.listing import index_in, name_hash
from cion_dist.storage.reports import PartCheck
from cion_dist.storage.stage_io import StageOutput, unit_filename


def done_parts(out: StageOutput) -> PartCheck:
    """The check of the output folder (``check.done``: sorted name keys of the parts done): one listing of the
    folder and of its reports. When nothing is left to do, pass it to ``StageOutput.combine(checked=...)``."""
    return out.check_parts()


def blocks_for(pending: int, concurrency: int, per_worker: int = 8, most: int = 4096) -> int:
    """Blocks to split pending units into: several per worker (balance), never more than units or ``most``."""
    return int(max(1, min(pending, concurrency * per_worker, most)))


def not_done(
    batch: pa.Table, key_column: str, done, to_name: Callable[[str], str] = unit_filename, invert: bool = False
) -> pa.Table:
    """Rows of ``batch`` whose unit (``to_name(batch[key_column])``) is not in ``done`` (a sorted uint64 array or an
    object ref to one); with ``invert``, the rows whose unit is in it."""
    if not isinstance(done, np.ndarray):
        import ray

        done = ray.get(done)
    keys = name_hash(to_name(str(v)) for v in batch.column(key_column).to_pylist())
    keep = index_in(done, keys) < 0
    return batch.filter(pa.array(~keep if invert else keep))

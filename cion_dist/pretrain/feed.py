"""P x K multi-crop batches for one training worker.

The sampler fixes which rows form each step's batch; the multi-crop of a batch is then made either in Ray Data
tasks on CPU workers (``ray_data``: one block per step, order preserved, ``prefetch_batches`` steps ahead, so the
training process only decodes nothing and copies uint8 arrays) or inline in the training process (``worker``).
Both give the same crops: the random seed of a step is derived from (seed, epoch, step, rank).

The encoded images travel as one Arrow table (``image_id, identity_id, jpeg``) in the object store, shared
zero-copy by every task on a node. That bounds the corpus by object-store memory; a larger corpus wants the rows
read per step from Parquet instead.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from cion_dist.pretrain.augment import MultiCropSpec, crop_batch

_TABLES: dict = {}


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])


def _table(ref) -> pa.Table:
    if isinstance(ref, pa.Table):
        return ref
    key = ref.hex() if hasattr(ref, "hex") else id(ref)
    if key not in _TABLES:
        import ray

        _TABLES.clear()
        _TABLES[key] = ray.get(ref)
    return _TABLES[key]


def make_views(table: pa.Table, rows: np.ndarray, spec: MultiCropSpec, seed: int) -> list[np.ndarray]:
    sub = table.take(pa.array(rows, type=pa.int64()))
    return crop_batch(sub.column("jpeg").to_pylist(), spec, seed, [str(x) for x in sub.column("image_id").to_pylist()])


def _augment_row(row: dict, table_ref, spec: MultiCropSpec) -> dict:
    views = make_views(_table(table_ref), row["rows"], spec, int(row["seed"]))
    out = {"step": row["step"]}
    out.update({f"v{i}": v for i, v in enumerate(views)})
    return out


def iterate_steps(table_ref, batches: list[np.ndarray], first_step: int, spec: MultiCropSpec, seed: int, epoch: int,
                  rank: int, mode: str = "ray_data", prefetch: int = 2) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Yield ``(step_in_epoch, views)`` for the given per-step row batches, starting at ``first_step``."""
    items = [
        {"step": first_step + i, "rows": np.asarray(b, dtype=np.int64), "seed": step_seed(seed, epoch, first_step + i, rank)}
        for i, b in enumerate(batches)
    ]
    if not items:
        return
    if mode == "worker":
        table = _table(table_ref)
        for it in items:
            yield it["step"], make_views(table, it["rows"], spec, it["seed"])
        return
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_augment_row, fn_kwargs={"table_ref": table_ref, "spec": spec}, num_cpus=1)
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=prefetch):
        n = len([k for k in batch if k.startswith("v")])
        yield int(batch["step"][0]), [batch[f"v{i}"][0] for i in range(n)]

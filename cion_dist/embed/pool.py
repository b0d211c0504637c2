"""Ray glue: an actor pool (Ray Data ``map_batches``) where each actor holds one embedder and owns whole parts.

A unit of work is one ingest Parquet file. The actor that embeds it also writes the matching embed part,
atomically, so a crash loses only the parts in flight; a rerun lists what is written and sends the rest. Work
crosses the object store as file URIs, never as pixels or features, so the driver stays small at any scale.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from cion_dist.embed.config import EmbedConfig
from cion_dist.embed.parts import embed_batches, read_batches
from cion_dist.errors import CionError, ConfigError, DataError
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput

ERRORS_SUBDIR = "errors"


class EmbedPartsActor:
    """Callable class for ``map_batches``: builds the embedder once, then embeds and writes one part per row."""

    def __init__(self, cfg: EmbedConfig, storage: Storage, out_uri: str, tracking_uri: Optional[str] = None,
                 registry_uri: Optional[str] = None):
        from cion_dist.embed.embedders import build_embedder

        self.cfg = cfg
        self.storage = storage
        self.out = StageOutput(out_uri, storage)
        self.embedder, self.error = None, ""
        try:
            self.embedder = build_embedder(cfg, storage, tracking_uri, registry_uri)
        except CionError as e:
            # reported per unit as data: Ray's wrappers keep only the text of a remote traceback
            self.error = f"{type(e).__name__}: {e}"

    def __call__(self, batch: dict) -> dict:
        results: dict[str, list] = {k: [] for k in ("unit", "rows", "bad", "dim", "backbone", "seconds", "error")}
        for unit, path in zip(batch["unit"], batch["path"]):
            unit, path = str(unit), str(path)
            t0 = time.perf_counter()
            rows = bad = dim = 0
            error = self.error
            if not error:
                try:
                    rows, bad, dim = self._embed_one(unit, path)
                except CionError as e:
                    error = f"{type(e).__name__}: {e}"
            results["unit"].append(unit)
            results["rows"].append(rows)
            results["bad"].append(bad)
            results["dim"].append(dim)
            results["backbone"].append(self.embedder.name if self.embedder is not None else "")
            results["seconds"].append(time.perf_counter() - t0)
            results["error"].append(error)
        return {k: np.asarray(v) for k, v in results.items()}

    def _embed_one(self, unit: str, path: str) -> tuple[int, int, int]:
        part = embed_batches(read_batches(path, self.storage, self.cfg.batch_size * 4), self.embedder, path,
                             self.cfg.on_bad_image, self.cfg.dtype)
        if part.bad.num_rows:
            self.out.write_unit(unit, part.bad, subdir=ERRORS_SUBDIR)
        # the data part is written last: its presence marks the unit done
        self.out.write_unit(unit, part.table)
        return part.table.num_rows, part.bad.num_rows, int(self.embedder.dim)


def embed_parts(pending: list[tuple[str, str]], out: StageOutput, cfg: EmbedConfig, storage: Storage,
                tracking_uri: Optional[str] = None, registry_uri: Optional[str] = None) -> list[dict]:
    """Embed ``(unit, ingest file URI)`` pairs on a pool of ``cfg.concurrency`` actors; returns one dict per unit."""
    import ray

    if not pending:
        return []
    items = [{"unit": u, "path": p} for u, p in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        EmbedPartsActor,
        fn_constructor_kwargs={
            "cfg": cfg,
            "storage": storage,
            "out_uri": out.uri,
            "tracking_uri": tracking_uri,
            "registry_uri": registry_uri,
        },
        batch_size=1,
        batch_format="numpy",
        # one file in flight per actor: an actor is busy with a whole part, queueing more only unbalances the pool
        compute=ray.data.ActorPoolStrategy(size=min(cfg.concurrency, len(items)), max_tasks_in_flight_per_actor=1),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus if cfg.num_gpus > 0 else None,
        # Ray Data hands its actors their constructor through the object store, which an actor restart cannot
        # rely on; a lost actor fails the stage instead, and the rerun skips the parts already written
        max_restarts=0,
    )
    done = ds.take_all()
    failed = [d for d in done if d["error"]]
    if failed:
        first = str(failed[0]["error"])
        kind, _, msg = first.partition(": ")
        more = f" (and {len(failed) - 1} more part(s) failed; parts that succeeded are kept for the rerun)" if len(failed) > 1 else ""
        raise (ConfigError if kind == "ConfigError" else DataError)(msg + more)
    return done

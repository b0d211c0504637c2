"""Ray glue: an actor pool (Ray Data ``map_batches``) where each actor holds one embedder and owns whole units.

A unit is a group of ingest parts holding a few thousand crops (``cion_dist.embed.plan``). The actor reads them in
order, several ahead of the model on I/O threads (``embed.read_ahead``), decodes JPEGs on a thread pool, embeds
full batches of ``batch_size`` crops per model call, and writes one embed part per unit, atomically, so a crash
loses only the units in flight. Work crosses the object store as part names, never as pixels or features, and each
result row carries the written part's report (sha256, size, fingerprint, counts) so the driver never reads a part
back.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from cion_dist.embed.config import EmbedConfig
from cion_dist.embed.parts import embed_batches, read_group_batches
from cion_dist.errors import CionError, ConfigError, DataError
from cion_dist.storage.fs import Storage, join
from cion_dist.storage.stage_io import StageOutput, unit_filename

ERRORS_SUBDIR = "errors"
RESULT_FIELDS = ("unit", "name", "sha256", "size", "fingerprint", "rows", "bad", "dim", "backbone", "seconds", "error")


class EmbedUnitsActor:
    """Callable class for ``map_batches``: builds the embedder once, then embeds and writes one part per unit."""

    def __init__(
        self,
        cfg: EmbedConfig,
        storage: Storage,
        out_uri: str,
        ingest_uri: str,
        tracking_uri: Optional[str] = None,
        registry_uri: Optional[str] = None,
    ):
        from cion_dist.embed.embedders import build_embedder

        self.cfg = cfg
        self.storage = storage
        self.out = StageOutput(out_uri, storage)
        self.ingest_uri = ingest_uri
        self.decode_pool = ThreadPoolExecutor(max(1, int(cfg.threads or cfg.num_cpus or 1)))
        self.read_pool = ThreadPoolExecutor(cfg.read_ahead) if cfg.read_ahead > 0 else None
        self.embedder, self.error = None, ""
        try:
            self.embedder = build_embedder(cfg, storage, tracking_uri, registry_uri)
        except CionError as e:
            # reported per unit as data: Ray's wrappers keep only the text of a remote traceback
            self.error = f"{type(e).__name__}: {e}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        results: dict[str, list] = {k: [] for k in RESULT_FIELDS}
        for row in batch.select(["unit", "parts"]).to_pylist():
            unit, parts = str(row["unit"]), [str(p) for p in row["parts"]]
            t0 = time.perf_counter()
            rows = bad = dim = 0
            written = None
            error = self.error
            if not error:
                try:
                    rows, bad, dim, written = self._embed_one(unit, parts)
                except CionError as e:
                    error = f"{type(e).__name__}: {e}"
            results["unit"].append(unit)
            results["name"].append(unit_filename(unit))
            results["sha256"].append(written.sha256 if written else "")
            results["size"].append(written.size if written else 0)
            results["fingerprint"].append(written.fingerprint if written else "")
            results["rows"].append(rows)
            results["bad"].append(bad)
            results["dim"].append(dim)
            results["backbone"].append(self.embedder.name if self.embedder is not None else "")
            results["seconds"].append(time.perf_counter() - t0)
            results["error"].append(error)
        return pa.table(
            {
                k: np.asarray(v)
                if k not in ("unit", "name", "sha256", "fingerprint", "backbone", "error")
                else pa.array(v, pa.string())
                for k, v in results.items()
            }
        )

    def _embed_one(self, unit: str, parts: list[str]):
        uris = [join(self.ingest_uri, p) for p in parts]
        source = f"ingest part(s) {uris[0]}" + (f" .. {parts[-1]} ({len(parts)} parts)" if len(parts) > 1 else "")
        part = embed_batches(
            read_group_batches(uris, self.storage, self.cfg.batch_size, self.read_pool, self.cfg.read_ahead),
            self.embedder,
            source,
            self.cfg.on_bad_image,
            self.cfg.dtype,
            decode_pool=self.decode_pool,
        )
        if part.bad.num_rows:
            self.out.write_unit(unit, part.bad, subdir=ERRORS_SUBDIR)
        # the data part is written last: its presence (with its report) marks the unit done
        written = self.out.write_unit(unit, part.table)
        return part.table.num_rows, part.bad.num_rows, int(self.embedder.dim), written


def embed_units(
    plan_files: list[str],
    done_keys,
    n_pending: int,
    out: StageOutput,
    ingest_uri: str,
    cfg: EmbedConfig,
    storage: Storage,
    tracking_uri: Optional[str] = None,
    registry_uri: Optional[str] = None,
) -> dict:
    """Embed the planned units not done yet on a pool of ``cfg.concurrency`` actors; returns sums of the results.

    The plan is read by Ray Data (``read_parquet``), done units are dropped in its tasks, and results stream back
    in batches: their reports go to ``_reports/``, the driver keeps sums only.
    """
    import ray

    from cion_dist.stage.plan import blocks_for, not_done

    fs, _ = storage.pyarrow(plan_files[0])
    paths = [storage.pyarrow(f)[1] for f in plan_files]
    size = max(1, min(cfg.concurrency, n_pending))
    # planning ops are light: small CPU shares, so a pool holding every CPU cannot starve them
    ds = ray.data.read_parquet(paths, filesystem=fs, num_cpus=0.25)
    ds = ds.map_batches(
        not_done,
        fn_kwargs={"key_column": "unit", "done": ray.put(done_keys)},
        batch_format="pyarrow",
        batch_size=65536,
        num_cpus=0.25,
    )
    ds = ds.repartition(blocks_for(n_pending, size, per_worker=4))
    ds = ds.map_batches(
        EmbedUnitsActor,
        fn_constructor_kwargs={
            "cfg": cfg,
            "storage": storage,
            "out_uri": out.uri,
            "ingest_uri": ingest_uri,
            "tracking_uri": tracking_uri,
            "registry_uri": registry_uri,
        },
        batch_size=1,  # one unit (thousands of crops) per call
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus if cfg.num_gpus > 0 else None,
        # Ray Data hands its actors their constructor through the object store, which an actor restart cannot
        # rely on; a lost actor fails the stage instead, and the rerun skips the parts already written
        max_restarts=0,
    )
    sums = {"units": 0, "rows": 0, "bad": 0, "dim": 0, "backbone": ""}
    failed: list[str] = []
    reports = out.report_writer()
    for batch in ds.iter_batches(batch_size=256, batch_format="pyarrow"):
        err = batch.column("error").to_pylist()
        failed += [e for e in err if e][: max(0, 5 - len(failed))] if any(err) else []
        sums.setdefault("failed", 0)
        sums["failed"] += sum(1 for e in err if e)
        ok = batch.filter(pa.compute.equal(batch.column("error"), ""))
        if ok.num_rows:
            sums["units"] += ok.num_rows
            sums["rows"] += int(pa.compute.sum(ok.column("rows")).as_py())
            sums["bad"] += int(pa.compute.sum(ok.column("bad")).as_py())
            sums["dim"] = sums["dim"] or int(ok.column("dim")[0].as_py())
            sums["backbone"] = sums["backbone"] or ok.column("backbone")[0].as_py()
            reports.add(ok.select(["name", "sha256", "size", "fingerprint", "rows", "bad", "dim"]).to_pylist())
    reports.flush()
    if failed:
        kind, _, msg = str(failed[0]).partition(": ")
        n = sums["failed"]
        more = f" (and {n - 1} more unit(s) failed; units that succeeded are kept for the rerun)" if n > 1 else ""
        raise (ConfigError if kind == "ConfigError" else DataError)(msg + more)
    return sums

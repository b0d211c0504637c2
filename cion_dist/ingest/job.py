"""The ingest stage: manifest of clips -> ``<output>/ingest/<run_id>/part-<video_id>.parquet`` person crops.

Ray Data reads the manifest, drops clips whose part is done (one listing of the output, checked against the part
reports), and runs one call per clip, at most ``concurrency`` at a time (CPU tasks, or actors holding
``detector.num_gpus`` GPUs each). Parts are written by the workers, which report each part's sha256, size and
counts; the driver appends the reports to ``_reports/``, writes the errors table (``errors/``), checks
``max_error_fraction``, and writes ``_SUCCESS.json`` last with totals and digest combined from the reports. The
run id depends on the stage config and the manifest's content digest, so a rerun lands in the same folder and only
ingests clips that have no sound part yet.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from cion_dist.config.job import Job
from cion_dist.errors import DataError
from cion_dist.ingest.manifest import ManifestInfo, check_manifest
from cion_dist.ingest.schema import ERRORS
from cion_dist.ingest.worker import ClipWorker, ingest_row
from cion_dist.stage import IngestResult, StageRun, locked_stage
from cion_dist.stage.plan import blocks_for, done_parts, not_done
from cion_dist.storage.fs import Storage, join
from cion_dist.storage.listing import name_hash
from cion_dist.storage.stage_io import StageOutput

log = logging.getLogger(__name__)

ERRORS_SUBDIR = "errors"


def manifest_uri_for(job: Job) -> str:
    return job.ingest.manifest or join(job.output, "corpus", "manifest.parquet")


@locked_stage("ingest")
def run(job: Job) -> IngestResult:
    cfg = job.ingest
    storage = Storage(job.storage)
    manifest_uri = manifest_uri_for(job)
    manifest = check_manifest(manifest_uri, storage)
    st = StageRun(
        job, "ingest", cfg, [{"uri": manifest_uri, "stage": "manifest", "digest": manifest.digest}], storage=storage
    )
    if (done := st.completed()) is not None:
        return IngestResult.from_record(done, skipped=True)
    out = st.out

    chk = done_parts(out)
    done_keys = chk.done
    n_pending = manifest.rows - len(done_keys)
    log.info(
        "ingest: %d clips in %s, %d done, %d to process (%d torn or unreported parts redone) -> %s",
        manifest.rows,
        manifest_uri,
        len(done_keys),
        n_pending,
        len(chk.changed) + len(chk.unreported),
        out.uri,
    )

    with st.tracking():
        t0 = time.perf_counter()
        stats = ClipStats()
        if n_pending > 0:
            from cion_dist.raycluster import ensure_ray

            ensure_ray(job.ray)
            run_clips(job, manifest, done_keys, n_pending, out, storage, stats)
            # a clip task lost with its node can finish its write after the retry reported the part: redo those
            after = done_parts(out)
            if after.changed:
                log.warning(
                    "ingest: %d part(s) changed after their report (a lost task's late write); redoing them",
                    len(after.changed),
                )
                again = np.sort(name_hash(after.changed))
                run_clips(job, manifest, again, len(after.changed), out, storage, stats, only=True)
        wall = time.perf_counter() - t0
        stats.errors.sort(key=lambda e: str(e["video_id"]))
        write_errors(out, stats.errors)
        if manifest.rows and len(stats.errors) / manifest.rows > cfg.max_error_fraction:
            names = ", ".join(f"{e['video_id']} ({e['reason']})" for e in stats.errors[:5])
            raise DataError(
                f"ingest: {len(stats.errors)} of {manifest.rows} clips failed, more than "
                f"max_error_fraction={cfg.max_error_fraction}: {names}"
            )
        # a resume that found every part done wrote none: the start's check stands
        parts = out.combine(checked=chk if n_pending <= 0 and not chk.changed else None)
        crops, tracklets = parts.totals.get("crops", 0), parts.totals.get("tracklets", 0)
        summary = {
            "clips": manifest.rows,
            "clips_ingested_now": stats.done,
            "clips_resumed": len(done_keys),  # written by an earlier attempt of this run and kept
            "frames_decoded": stats.frames,
            "detections": stats.detections,
            "frames_per_s": round(stats.frames / wall, 2) if wall > 0 and stats.frames else 0.0,
            "clips_per_s": round(stats.done / wall, 3) if wall > 0 and stats.done else 0.0,
            "seconds": round(wall, 2),
            "detector": cfg.detector.kind,
            "manifest_uri": manifest_uri,
        }
        summary.update(stats.gate_figures())
        if len(done_keys):
            summary["notes"] = [
                f"resumed: {len(done_keys)} of {manifest.rows} clips were written by an earlier "
                f"attempt and kept; {stats.done} were ingested now, and the rates count these"
            ]
        rows = {"crops": crops, "tracklets": tracklets, "clips": manifest.rows, "errors": len(stats.errors)}
        log.info(
            "ingest: %d clips (%d now), %d frames decoded, %d crops, %d tracklets, %d errors, %.1f frames/s",
            manifest.rows,
            stats.done,
            stats.frames,
            crops,
            tracklets,
            len(stats.errors),
            summary["frames_per_s"],
        )
        st.log_metrics(
            {
                **rows,
                "frames_decoded": stats.frames,
                "frames_per_s": summary["frames_per_s"],
                **{k: float(v) for k, v in summary.items() if k.startswith("gate_") and isinstance(v, (int, float))},
            }
        )
        record = st.finalize(rows, summary, parts=parts)
    return IngestResult.from_record(record)


class ClipStats:
    """What the driver keeps of the clip results streaming back: sums, and the (few) error rows."""

    def __init__(self):
        from cion_dist.ingest.gate import GateTally

        self.done = self.frames = self.detections = 0
        self.errors: list[dict] = []
        self.gate = GateTally()  # the quality gate over the clips ingested in this attempt

    def add(self, batch: pa.Table) -> list[dict]:
        """Fold one batch of results in; returns the report rows of the parts it wrote."""
        status = batch.column("status").to_pylist()
        self.frames += int(pa.compute.sum(batch.column("frames")).as_py() or 0)
        self.detections += int(pa.compute.sum(batch.column("detections")).as_py() or 0)
        done = batch.filter(pa.compute.equal(batch.column("status"), "done"))
        self.done += done.num_rows
        tallies = [json.loads(g) for g in done.column("gate").to_pylist() if g]
        if tallies:
            self.gate = type(self.gate).merged([self.gate, *tallies])
        if "error" in status:
            err = batch.filter(pa.compute.equal(batch.column("status"), "error"))
            self.errors += err.select([c for c in ERRORS.names]).to_pylist()
        return done.select(["name", "sha256", "size", "fingerprint", "crops", "tracklets"]).to_pylist()

    def gate_figures(self) -> dict:
        """The quality gate's figures (logged, and kept in the summary) over the clips ingested in this attempt."""
        figures = self.gate.summary()
        dropped = {k[len("gate_dropped_") :]: v for k, v in figures.items() if k.startswith("gate_dropped_") and v}
        log.info(
            "ingest gate: %d of %d tracked crops kept (%.1f%%), dropped %s; kept crops touching an edge %.1f%%, "
            "height/width histogram %s",
            figures["gate_kept"],
            figures["gate_considered"],
            100 * figures["gate_kept_fraction"],
            dropped or "none",
            100 * figures["gate_kept_edge_touch_fraction"],
            figures["gate_kept_aspect_histogram"],
        )
        return figures


def run_clips(
    job: Job,
    manifest: "ManifestInfo",
    done_keys,
    n_pending: int,
    out: StageOutput,
    storage: Storage,
    stats: ClipStats,
    only: bool = False,
) -> None:
    """Ray Data over the manifest (``read_parquet``), clips with a done part dropped in its tasks, one call per clip;
    with ``only``, ``done_keys`` names the clips to run instead.

    Results stream back in batches: sums are kept, report rows go to ``_reports/`` in batches of thousands, so
    the driver holds neither the manifest nor a row per clip.
    """
    import ray

    cfg = job.ingest
    fs, _ = storage.pyarrow(manifest.files[0])
    paths = [storage.pyarrow(f)[1] for f in manifest.files]
    size = max(1, min(cfg.concurrency, n_pending))
    cols = ["video_id", "uri"] + [c for c in ("start_s", "end_s") if c in manifest.columns]  # segments of a video
    # planning ops are light: small CPU shares, so a pool holding every CPU cannot starve them
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=cols, num_cpus=0.25)
    ds = ds.map_batches(
        not_done,
        fn_kwargs={"key_column": "video_id", "done": ray.put(done_keys), "invert": only},
        batch_format="pyarrow",
        batch_size=65536,
        num_cpus=0.25,
    )
    # several small blocks per worker: each task ingests its block's clips one after another
    ds = ds.repartition(blocks_for(n_pending, size))
    kwargs = {"cfg": cfg, "storage": storage, "out_uri": out.uri, "manifest_uri": manifest.uri}
    if cfg.detector.num_gpus > 0:
        ds = ds.map(
            ClipWorker,
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=1,
            num_gpus=cfg.detector.num_gpus,
        )
    else:
        ds = ds.map(ingest_row, fn_kwargs=kwargs, compute=ray.data.TaskPoolStrategy(size=size), num_cpus=1)
    reports = out.report_writer()
    for batch in ds.iter_batches(batch_size=1000, batch_format="pyarrow"):
        reports.add(stats.add(batch))
    reports.flush()


def write_errors(out: StageOutput, errors: list[dict]) -> None:
    errors = sorted(errors, key=lambda e: str(e["video_id"]))
    cols = {name: [str(e[name]) for e in errors] for name in ERRORS.names}
    out.write_unit("errors", pa.table(cols, schema=ERRORS), subdir=ERRORS_SUBDIR)

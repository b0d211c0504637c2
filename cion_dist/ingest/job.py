"""The ingest stage: manifest of clips -> ``<output>/ingest/<run_id>/part-<video_id>.parquet`` person crops.

Ray Data takes the manifest's pending rows and runs one call per clip, at most ``concurrency`` at a time (CPU tasks, or
actors holding ``detector.num_gpus`` GPUs each). Parts are written by the workers; the driver then writes the errors
table (``errors/``), checks ``max_error_fraction``, and writes ``_SUCCESS.json`` last. The run id depends on the
stage config and the manifest's content digest, so a rerun lands in the same folder and only ingests clips
that have no part yet.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist.config.job import Job
from cion_dist.errors import DataError
from cion_dist.ingest.manifest import load_manifest
from cion_dist.ingest.schema import ERRORS, read_clip_metadata
from cion_dist.ingest.worker import ClipWorker, ingest_row
from cion_dist.pipeline.result import StageResult
from cion_dist.pipeline.runid import derive_run_id
from cion_dist.storage.fs import Storage, join
from cion_dist.storage.stage_io import StageOutput, dumps_config

log = logging.getLogger(__name__)

ERRORS_SUBDIR = "errors"
_NOT_IN_RUN_ID = ("concurrency", "max_error_fraction")
_DETECTOR_NOT_IN_RUN_ID = ("num_gpus", "threads")


def manifest_uri_for(job: Job) -> str:
    return job.ingest.manifest or join(job.output, "corpus", "manifest.parquet")


def run_id_config(cfg) -> dict:
    """The settings that change the output: resources (concurrency, GPUs, threads) and the error limit do not."""
    d = cfg.model_dump(mode="json")
    for k in _NOT_IN_RUN_ID:
        d.pop(k, None)
    for k in _DETECTOR_NOT_IN_RUN_ID:
        d["detector"].pop(k, None)
    d.pop("manifest", None)  # the manifest's digest stands for it
    return d


def run(job: Job) -> StageResult:
    cfg = job.ingest
    storage = Storage(job.storage)
    manifest_uri = manifest_uri_for(job)
    manifest, digest = load_manifest(manifest_uri, storage)
    in_rec = {"uri": manifest_uri, "stage": "manifest", "digest": digest}
    run_id = derive_run_id("ingest", run_id_config(cfg), digest, job.run_id)
    out = StageOutput.create(job.output, "ingest", run_id, storage)
    if out.is_complete():
        log.info("ingest output %s is already complete", out.uri)
        return StageResult.from_record("ingest", out.uri, out.success())

    video_ids = manifest.column("video_id").to_pylist()
    pending = {v for v in video_ids if not out.has_unit(v)}
    log.info("ingest: %d clips in %s, %d to process -> %s", len(video_ids), manifest_uri, len(pending), out.uri)

    from cion_dist.tracking.mlflow_run import stage_run

    with stage_run(job, "ingest", params={"ingest": dumps_config(cfg), "run_id": run_id}, inputs=(in_rec,)) as mlrun:
        if pending:
            from cion_dist.raycluster import ensure_ray

            ensure_ray(job.ray)
        t0 = time.perf_counter()
        stats = run_clips(job, manifest, manifest_uri, pending, out, storage) if pending else []
        wall = time.perf_counter() - t0
        errors = [s for s in stats if s["status"] == "error"]
        write_errors(out, errors)
        if video_ids and len(errors) / len(video_ids) > cfg.max_error_fraction:
            names = ", ".join(f"{e['video_id']} ({e['reason']})" for e in errors[:5])
            raise DataError(f"ingest: {len(errors)} of {len(video_ids)} clips failed, more than "
                            f"max_error_fraction={cfg.max_error_fraction}: {names}")
        crops, tracklets, clips_with_rows = count_output(out)
        frames = int(sum(s["frames"] for s in stats))
        done = [s for s in stats if s["status"] == "done"]
        summary = {
            "clips": len(video_ids),
            "clips_ingested_now": len(done),
            "clips_resumed": len(video_ids) - len(pending),  # written by an earlier attempt of this run
            "frames_decoded": frames,
            "detections": int(sum(s["detections"] for s in stats)),
            "frames_per_s": round(frames / wall, 2) if wall > 0 and frames else 0.0,
            "clips_per_s": round(len(done) / wall, 3) if wall > 0 and done else 0.0,
            "seconds": round(wall, 2),
            "detector": cfg.detector.kind,
            "manifest_uri": manifest_uri,
            "mlflow_run_id": mlrun.info.run_id if mlrun is not None else None,
        }
        if len(pending) < len(video_ids):
            summary["notes"] = [f"resumed: {len(video_ids) - len(pending)} of {len(video_ids)} clips were written by "
                                f"an earlier attempt and kept; {len(done)} were ingested now, and the rates count these"]
        rows = {"crops": crops, "tracklets": tracklets, "clips": len(video_ids), "errors": len(errors)}
        log.info("ingest: %d clips (%d now), %d frames decoded, %d crops, %d tracklets, %d errors, %.1f frames/s",
                 len(video_ids), len(done), frames, crops, tracklets, len(errors), summary["frames_per_s"])
        if mlrun is not None:
            import mlflow

            mlflow.log_metrics({**{k: float(v) for k, v in rows.items()}, "frames_decoded": frames,
                                "frames_per_s": summary["frames_per_s"]})
        record = out.finalize(stage="ingest", rows=rows, inputs=[in_rec], config=dumps_config(cfg), summary=summary)
        if mlrun is not None:
            from cion_dist.tracking.lineage import log_output

            log_output(out.uri, record["digest"], run_id=mlrun.info.run_id)
    return StageResult("ingest", out.uri, rows=rows, summary=summary, mlflow_run_id=summary["mlflow_run_id"])


def run_clips(job: Job, manifest: pa.Table, manifest_uri: str, pending: set, out: StageOutput,
              storage: Storage) -> list[dict]:
    """Ray Data over the manifest rows still to do, one block per clip; returns one stats row per clip.

    The manifest is already read on the driver (for its digest and checks), and it is small (one row per clip),
    so its pending rows go to Ray Data directly, one block each: no second read and no shuffle to split it.
    """
    import ray

    cfg = job.ingest
    rows = [r for r in manifest.select(["video_id", "uri"]).to_pylist() if r["video_id"] in pending]
    rows.sort(key=lambda r: r["video_id"])
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    kwargs = {"cfg": cfg, "storage": storage, "out_uri": out.uri, "manifest_uri": manifest_uri}
    size = min(cfg.concurrency, len(rows))
    if cfg.detector.num_gpus > 0:
        ds = ds.map(ClipWorker, fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=size),
                    num_cpus=1, num_gpus=cfg.detector.num_gpus)
    else:
        ds = ds.map(ingest_row, fn_kwargs=kwargs, compute=ray.data.TaskPoolStrategy(size=size), num_cpus=1)
    return sorted(ds.take_all(), key=lambda s: s["video_id"])


def write_errors(out: StageOutput, errors: list[dict]) -> None:
    cols = {name: [str(e[name]) for e in errors] for name in ERRORS.names}
    out.write_unit("errors", pa.table(cols, schema=ERRORS), subdir=ERRORS_SUBDIR)


def part_clip_info(out: StageOutput) -> dict[str, tuple[int, float, int]]:
    """video_id -> (source frames, fps, frames decoded) from the footers of the parts written so far."""
    info = {}
    for uri in out.files():
        fs, path = out.storage.pyarrow(uri)
        with fs.open_input_file(path) as f:
            meta = read_clip_metadata(pq.ParquetFile(f).schema_arrow.metadata)
        if meta is not None:
            info[meta[0]] = meta[1:]
    return info


def count_output(out: StageOutput) -> tuple[int, int, int]:
    """(crops, tracklets, clips with at least one crop) over every part written so far."""
    crops = tracklets = clips = 0
    for uri in out.files():
        fs, path = out.storage.pyarrow(uri)
        with fs.open_input_file(path) as f:
            t = pq.read_table(f, columns=["tracklet_id"])
        crops += t.num_rows
        n = len(set(t.column("tracklet_id").to_pylist()))
        tracklets += n
        clips += 1 if t.num_rows else 0
    return crops, tracklets, clips

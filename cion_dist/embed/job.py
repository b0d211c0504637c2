"""The embed stage: ingest crops -> ``<output>/embed/<run_id>/part-*.parquet`` of L2-normalised features.

Output rows: ``image_id, tracklet_id, video_id, frame_index, embedding`` (list<float32> of length d, unit norm),
one part per unit (whole ingest parts grouped to ``crops_per_unit`` crops, ``cion_dist.embed.plan``), written by
the actor that embedded it in batches of ``batch_size`` crops per model call. Crops whose JPEG does not decode
either stop the run with a ``DataError`` naming the file and image_id (``embed.on_bad_image: fail``, the default)
or are left
out and listed (image_id, reason) under ``errors/`` and counted in ``_SUCCESS.json`` (``skip``). A rerun of the
same config on the same input returns at once when ``_SUCCESS.json`` exists, else embeds only units without a
sound part (one listing of the output checked against the part reports; no probe per unit).
"""

from __future__ import annotations

import logging
import time

import pyarrow.parquet as pq

from cion_dist.config.job import Job
from cion_dist.embed.parts import BACKBONE_KEY, DIM_KEY
from cion_dist.embed.plan import write_plan
from cion_dist.embed.pool import embed_units
from cion_dist.errors import DataError
from cion_dist.stage import EmbedResult, StageRun, locked_stage
from cion_dist.stage.plan import done_parts
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, input_record, resolve_input

log = logging.getLogger(__name__)


@locked_stage("embed")
def run(job: Job) -> EmbedResult:
    cfg = job.embed
    storage = Storage(job.storage)
    ingest = resolve_input(cfg.input, job.output, "ingest", storage)
    st = StageRun(job, "embed", cfg, [input_record(ingest)], storage=storage)
    if (done_record := st.completed()) is not None:
        return EmbedResult.from_record(done_record, skipped=True)
    out = st.out

    plan_files, n_units = write_plan(ingest, out, cfg.crops_per_unit, cfg.parts_per_unit)
    if not n_units:
        raise DataError(f"ingest output {ingest.uri} has no Parquet parts")
    chk = done_parts(out)
    done_keys = chk.done
    n_pending = n_units - len(done_keys)
    log.info(
        "embed: %d units planned from %s, %d done, %d to embed (%d torn or unreported redone) -> %s",
        n_units,
        ingest.uri,
        len(done_keys),
        n_pending,
        len(chk.changed) + len(chk.unreported),
        out.uri,
    )

    tracking_uri = _weights_tracking_uri(job)
    with st.tracking():
        now, seconds = {"units": 0, "rows": 0}, 0.0
        if n_pending > 0:
            from cion_dist.raycluster import ensure_ray

            ensure_ray(job.ray)
            t0 = time.perf_counter()  # actor start-up (model load) included, Ray start-up not
            now = embed_units(
                plan_files, done_keys, n_pending, out, ingest.uri, cfg, storage, tracking_uri, job.mlflow.registry_uri
            )
            seconds = time.perf_counter() - t0
        # a resume that found every unit done wrote none: the start's check stands
        parts = out.combine(checked=chk if n_pending <= 0 and not chk.changed else None)
        rows, bad = parts.totals.get("rows", 0), parts.totals.get("bad", 0)
        dim, backbone = _part_meta(out, now)
        if parts.count and parts.totals.get("dim", dim * parts.count) != dim * parts.count:
            raise DataError(f"{out.uri}: parts of different embedding widths; remove the run folder and rerun")
        summary = {
            "embedding_dim": dim,
            "backbone": backbone,
            "units": n_units,
            "units_embedded_now": now["units"],
            "crops_per_s": round(now["rows"] / seconds, 2) if seconds > 0 and now["rows"] else 0.0,
        }
        row_counts = {"embeddings": rows, "bad_images": bad}
        st.log_metrics(
            {"embeddings": rows, "bad_images": bad, "embedding_dim": dim, "crops_per_s": summary["crops_per_s"]}
        )
        record = st.finalize(row_counts, summary, parts=parts)
    return EmbedResult.from_record(record)


def _part_meta(out: StageOutput, now: dict) -> tuple[int, str]:
    """Embedding width and backbone: from this run's results, else from one part's footer (one read)."""
    if now.get("dim"):
        return int(now["dim"]), str(now.get("backbone", ""))
    files = out.files()
    if not files:
        return 0, ""
    fs, path = out.storage.pyarrow(files[0])
    with fs.open_input_file(path) as f:
        kv = pq.ParquetFile(f).metadata.metadata or {}
    return int(kv.get(DIM_KEY, b"0")), kv.get(BACKBONE_KEY, b"").decode()


def _weights_tracking_uri(job: Job):
    """Only ``models:/`` and ``runs:/`` weights need the MLflow store; resolve it once on the driver."""
    ref = job.embed.weights or job.embed.model or ""
    if ref.startswith(("models:/", "runs:/")):
        from cion_dist.mlflow_io.mlflow_run import tracking_uri_for

        return tracking_uri_for(job)
    return None

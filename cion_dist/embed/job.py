"""The embed stage: ingest crops -> ``<output>/embed/<run_id>/part-*.parquet`` of L2-normalised features.

Output rows: ``image_id, tracklet_id, video_id, frame_index, embedding`` (list<float32> of length d, unit norm),
one part per ingest part, written by the actor that embedded it. Crops whose JPEG does not decode either stop the
run with a ``DataError`` naming the file and image_id (``embed.on_bad_image: fail``, the default) or are left
out and listed (image_id, reason) under ``errors/`` and counted in ``_SUCCESS.json`` (``skip``). A rerun of the
same config on the same input returns at once when ``_SUCCESS.json`` exists, else embeds only missing parts.
"""

from __future__ import annotations

import logging
import posixpath
import time

import pyarrow.parquet as pq

from cion_dist.config.job import Job
from cion_dist.embed.parts import BACKBONE_KEY, DIM_KEY
from cion_dist.embed.pool import ERRORS_SUBDIR, embed_parts
from cion_dist.errors import DataError
from cion_dist.stage import EmbedResult, StageRun
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, input_record, resolve_input

log = logging.getLogger(__name__)

def unit_of(path: str) -> str:
    """The unit key of an ingest part: its file name without ``.parquet``."""
    return posixpath.basename(path)[: -len(".parquet")]


def run(job: Job) -> EmbedResult:
    cfg = job.embed
    storage = Storage(job.storage)
    ingest = resolve_input(cfg.input, job.output, "ingest", storage)
    st = StageRun(job, "embed", cfg, [input_record(ingest)], storage=storage)
    if (done_record := st.completed()) is not None:
        return EmbedResult.from_record(done_record, skipped=True)
    out = st.out

    files = ingest.files()
    if not files:
        raise DataError(f"ingest output {ingest.uri} has no Parquet parts")
    units = [(unit_of(f), f) for f in files]
    pending = [(u, f) for u, f in units if not out.has_unit(u)]
    log.info("embed: %d ingest parts, %d to embed -> %s", len(units), len(pending), out.uri)

    tracking_uri = _weights_tracking_uri(job)
    with st.tracking():
        done, seconds = [], 0.0
        if pending:
            from cion_dist.raycluster import ensure_ray

            ensure_ray(job.ray)
            t0 = time.perf_counter()  # actor start-up (model load) included, Ray start-up not
            done = embed_parts(pending, out, cfg, storage, tracking_uri, job.mlflow.registry_uri)
            seconds = time.perf_counter() - t0
        rows, dim, backbone = _count_rows(out)
        bad = _count_bad(out)
        embedded_now = int(sum(int(d["rows"]) for d in done))
        summary = {
            "embedding_dim": dim,
            "backbone": backbone,
            "parts": len(units),
            "parts_embedded_now": len(done),
            "crops_per_s": round(embedded_now / seconds, 2) if seconds > 0 and embedded_now else 0.0,
        }
        row_counts = {"embeddings": rows, "bad_images": bad}
        st.log_metrics({"embeddings": rows, "bad_images": bad, "embedding_dim": dim,
                        "crops_per_s": summary["crops_per_s"]})
        record = st.finalize(row_counts, summary)
    return EmbedResult.from_record(record)


def _weights_tracking_uri(job: Job):
    """Only ``models:/`` and ``runs:/`` weights need the MLflow store; resolve it once on the driver."""
    ref = job.embed.weights or job.embed.model or ""
    if ref.startswith(("models:/", "runs:/")):
        from cion_dist.tracking.mlflow_run import tracking_uri_for

        return tracking_uri_for(job)
    return None


def _count_rows(out: StageOutput) -> tuple[int, int, str]:
    """Rows over every part (from Parquet footers) and the embedding width / backbone they record."""
    total, dim, backbone = 0, 0, ""
    for uri in out.files():
        fs, path = out.storage.pyarrow(uri)
        with fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
        total += md.num_rows
        kv = md.metadata or {}
        d = int(kv.get(DIM_KEY, b"0"))
        b = kv.get(BACKBONE_KEY, b"").decode()
        if dim and d and d != dim:
            raise DataError(f"{uri}: embedding width {d} differs from other parts ({dim}); remove the run folder and rerun")
        dim, backbone = dim or d, backbone or b
    return total, dim, backbone


def _count_bad(out: StageOutput) -> int:
    total = 0
    for uri in out.files(ERRORS_SUBDIR):
        fs, path = out.storage.pyarrow(uri)
        with fs.open_input_file(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total

"""MLflow glue shared by every stage: where the store is, one run per stage, inputs and outputs as lineage tags."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from typing import Any, Iterator, Optional

from cion_dist.errors import CionError
from cion_dist.redact import redact_obj, redact_text
from cion_dist.storage.fs import is_s3

log = logging.getLogger(__name__)

LINEAGE_PREFIX = "cion.input"
# a tracking server that does not answer fails in seconds, not after MLflow's default ~4 minutes of retries
HTTP_TIMEOUT_S = 10
HTTP_MAX_RETRIES = 1


def local_store_dir() -> str:
    """Where runs of jobs whose output is not a local folder keep their sqlite store: ``$CION_HOME/mlflow``
    (``CION_HOME`` defaults to ``~/.cion``), never the working directory."""
    return os.path.join(os.path.expanduser(os.environ.get("CION_HOME") or "~/.cion"), "mlflow")


def tracking_uri_for(job) -> str:
    """Config, then MLFLOW_TRACKING_URI, then a sqlite store beside a local output (``local_store_dir`` for S3)."""
    if job.mlflow.tracking_uri:
        return job.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    out = job.output[len("file://") :] if job.output.startswith("file://") else job.output
    base = local_store_dir() if is_s3(job.output) else os.path.abspath(out)
    os.makedirs(base, exist_ok=True)
    return f"sqlite:///{os.path.join(base, 'mlflow.db')}"


def _http_limits() -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_MAX_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialise the first use of a local sqlite store across processes: MLflow creates and migrates the schema
    on first access, and two processes doing that at once collide (``alembic_version``)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = uri[len("sqlite:///") :]
    os.makedirs(os.path.dirname(os.path.abspath(db)) or ".", exist_ok=True)
    with open(db + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def configure(job) -> str:
    """Point mlflow at the job's store and experiment; returns the tracking URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri_for(job)
    if uri.startswith(("http://", "https://")):
        _http_limits()
    if redact_text(uri) != uri:
        # MLflow prints "View run ... at: <tracking URI>" to stdout, credentials included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    if job.mlflow.registry_uri:
        mlflow.set_registry_uri(job.mlflow.registry_uri)
    try:
        with _store_lock(uri):
            if mlflow.get_experiment_by_name(job.mlflow.experiment) is None:
                artifact_location = None
                if uri.startswith("sqlite:///"):
                    # artifacts beside the sqlite store, never in whatever the working directory happens to be
                    db_dir = os.path.dirname(uri[len("sqlite:///") :]) or "."
                    artifact_location = "file://" + os.path.join(os.path.abspath(db_dir), "mlartifacts")
                mlflow.create_experiment(job.mlflow.experiment, artifact_location=artifact_location)
            mlflow.set_experiment(job.mlflow.experiment)
    except MlflowException as e:
        first = str(e.message if hasattr(e, "message") else e).strip().splitlines()
        raise CionError(
            f"MLflow at {redact_text(uri)} failed: {redact_text(first[0] if first else type(e).__name__)}; "
            "check mlflow.tracking_uri / MLFLOW_TRACKING_URI, or set mlflow.enabled=false"
        ) from None
    except OSError as e:
        raise CionError(
            f"MLflow at {redact_text(uri)} is unreachable ({type(e).__name__}: {redact_text(e)}); "
            "check mlflow.tracking_uri / MLFLOW_TRACKING_URI, or set mlflow.enabled=false"
        ) from None
    return uri


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b.c": "value"} with values as strings (MLflow params), secrets masked."""
    if not prefix:
        d = redact_obj(d)
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = str(d)[:6000]
    return out


def fail_interrupted(experiment_id: str, stage: str, stage_run_id: str, output: str, by: str) -> list[str]:
    """Mark FAILED the earlier MLflow runs of this stage, run id and output that are still RUNNING; returns their ids.

    Only called while this process holds the output lock: no other run of that output can be at work, so a
    RUNNING one is what a driver killed by SIGKILL (or lost with its machine) left. Each gets the tag
    ``cion.interrupted`` saying which later run found it, and ``cion.interrupted_by`` with that run's id.
    """
    import time

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    # run ids and outputs are compared here, not quoted into the filter (a job's own run_id may hold any character)
    query = f"tags.`cion.stage` = '{stage}' and attributes.status = 'RUNNING'"
    found = []
    for r in client.search_runs([experiment_id], filter_string=query, max_results=1000):
        tags = r.data.tags
        if r.info.run_id == by or tags.get("cion.run_id") != stage_run_id or tags.get("cion.output") != output:
            continue
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.set_tag(
            r.info.run_id,
            "cion.interrupted",
            f"found RUNNING at {at} by run {by} of the same stage and run id, which holds the output lock: "
            "its driver was killed or lost before it could end the run",
        )
        client.set_tag(r.info.run_id, "cion.interrupted_by", by)
        client.set_terminated(r.info.run_id, status="FAILED")
        found.append(r.info.run_id)
    return found


@contextlib.contextmanager
def stage_run(
    job,
    stage: str,
    params: Optional[dict] = None,
    inputs: tuple = (),
    run_name: Optional[str] = None,
    stage_run_id: Optional[str] = None,
) -> Iterator[Optional[Any]]:
    """An MLflow run for one stage, with the resolved (secret-free) config as params and inputs as lineage tags.

    Each input is a dict ``{"uri", "digest", "stage", "mlflow_run_id"}`` (see ``stage_io.input_record``); it is
    also logged as an MLflow dataset input carrying that explicit digest (``mlflow_io.lineage.log_inputs``).
    Record what the stage wrote with ``mlflow_io.lineage.log_output(uri, digest)`` inside the block.
    With ``stage_run_id`` (the stage's run id) the run is tagged ``cion.run_id`` and ``cion.output``, and, when this
    process holds the output lock, earlier runs of it left RUNNING are marked FAILED (``fail_interrupted``).
    Yields the active ``mlflow.ActiveRun`` or ``None`` when tracking is disabled.
    """
    if not job.mlflow.enabled:
        yield None
        return
    import mlflow

    from cion_dist.lock import holds

    configure(job)
    output = redact_text(job.output)
    tags = {"cion.stage": stage, "cion.job": job.name}
    if stage_run_id:
        tags.update({"cion.run_id": stage_run_id, "cion.output": output})
    for i, rec in enumerate(inputs):
        for key in ("uri", "digest", "stage", "mlflow_run_id"):
            if rec.get(key):
                tags[f"{LINEAGE_PREFIX}.{i}.{key}"] = redact_text(rec[key])
    with mlflow.start_run(run_name=run_name or stage, tags=tags) as run:
        from cion_dist.mlflow_io.lineage import log_inputs

        if stage_run_id and holds(job):
            try:
                stale = fail_interrupted(run.info.experiment_id, stage, stage_run_id, output, run.info.run_id)
            except Exception as e:  # noqa: BLE001 - bookkeeping of old runs never stops this one
                log.warning("could not check for interrupted %s runs: %s", stage, redact_text(e))
            else:
                if stale:
                    log.warning(
                        "%s: marked FAILED %d earlier run(s) of run id %s left RUNNING by a killed driver: %s",
                        stage,
                        len(stale),
                        stage_run_id,
                        ", ".join(stale),
                    )
                    mlflow.set_tag("cion.after_interrupted", ",".join(stale))
        log_inputs(inputs, run.info.run_id)
        if params:
            flat = flatten(params)
            items = list(flat.items())
            for j in range(0, len(items), 100):
                mlflow.log_params(dict(items[j : j + 100]))
        yield run

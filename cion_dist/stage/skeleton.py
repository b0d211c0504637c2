"""The part every stage run shares, written once: run id, output folder, early exit, MLflow run, finalize, lineage.

A stage's ``run(job)`` is wrapped in ``locked_stage`` (the whole run holds the output lock, whoever calls it),
reads its inputs, then::

    st = StageRun(job, "embed", job.embed, inputs=[input_record(ingest)])
    if (done := st.completed()) is not None:
        return EmbedResult.from_record(done, skipped=True)
    with st.tracking():
        ...                                   # the stage's own work, writing under st.out
        st.log_metrics({...})
        record = st.finalize(rows, summary)   # _SUCCESS.json last, then the output on the MLflow run
    return EmbedResult.from_record(record)

A feature that concerns every stage (an output lock, a timing, a new lineage field) goes here, not into five
``job.py`` files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from cion_dist.stage.runid import derive_run_id
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, dumps_config

log = logging.getLogger(__name__)

R = TypeVar("R")


def locked_stage(stage: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a stage's ``run(job)`` so the whole run holds ``<output>/_LOCK.json``: input checks, planning and
    work alike, whether the runner, the demo or a plain Python call starts it. Re-entrant, so a pipeline holding
    the lock around its stages runs each inside its hold; a second process gets ``OutputBusy`` at once."""

    def wrap(run: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(run)
        def locked(job, *args: Any, **kwargs: Any) -> R:
            from cion_dist.lock import output_lock

            with output_lock(job, stage):
                return run(job, *args, **kwargs)

        return locked

    return wrap


class StageRun:
    """One run of one stage on given inputs.

    ``inputs`` are lineage records (``{"uri", "digest", "stage", "mlflow_run_id"}``); their digests, joined, are
    the input part of the run id unless ``input_digest`` is given. ``writes_output=False`` (promote) skips the
    output folder: only the MLflow run and its lineage remain.
    """

    def __init__(
        self,
        job,
        stage: str,
        cfg,
        inputs: Sequence[dict] = (),
        *,
        input_digest: Optional[str] = None,
        storage: Optional[Storage] = None,
        writes_output: bool = True,
    ):
        self.job, self.stage, self.cfg = job, stage, cfg
        self.inputs = [dict(r) for r in inputs]
        self.storage = storage or Storage(job.storage)
        digest = input_digest if input_digest is not None else ":".join(str(r.get("digest") or "") for r in self.inputs)
        self.run_id = derive_run_id(stage, cfg, digest, job.run_id)
        self.out: Optional[StageOutput] = (
            StageOutput.create(job.output, stage, self.run_id, self.storage) if writes_output else None
        )
        self.mlrun = None

    @property
    def uri(self) -> str:
        return self.out.uri if self.out is not None else ""

    @property
    def mlflow_run_id(self) -> Optional[str]:
        return self.mlrun.info.run_id if self.mlrun is not None else None

    def completed(self) -> Optional[dict]:
        """The ``_SUCCESS.json`` record when this run's output is already complete (nothing to do), else None."""
        if self.out is None or not self.out.is_complete():
            return None
        log.info("%s output %s is already complete", self.stage, self.out.uri)
        return self.out.success()

    @contextlib.contextmanager
    def tracking(self, params: Optional[dict] = None) -> Iterator["StageRun"]:
        """The stage's MLflow run (none when MLflow is disabled): config and run id as params, inputs as lineage.

        Held under the output lock (re-entered when ``locked_stage`` holds it already), so no other run of this
        output is at work while the MLflow run is open, and an earlier run of this stage and run id still RUNNING
        in MLflow is one whose driver was killed: it is marked FAILED (``mlflow_run.fail_interrupted``).
        """
        from cion_dist.lock import output_lock
        from cion_dist.mlflow_io.mlflow_run import stage_run

        p = {self.stage: dumps_config(self.cfg), "run_id": self.run_id, **(params or {})}
        with output_lock(self.job, self.stage):
            with stage_run(
                self.job, self.stage, params=p, inputs=tuple(self.inputs), stage_run_id=self.run_id
            ) as mlrun:
                self.mlrun = mlrun
                yield self

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Numeric, finite entries of ``metrics`` on the stage's MLflow run (no-op without one)."""
        if self.mlrun is None:
            return
        import mlflow

        clean = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        if clean:
            mlflow.log_metrics(clean)

    def finalize(self, rows: dict[str, int], summary: dict, **finalize_kwargs: Any) -> dict:
        """Write ``_SUCCESS.json`` last and record the output on the MLflow run; returns the record.

        Without an output folder (promote) the record is built but nothing is written.
        """
        summary = {**summary, "mlflow_run_id": self.mlflow_run_id}
        if self.out is None:
            return {"stage": self.stage, "uri": "", "rows": rows, "inputs": self.inputs, "summary": summary}
        record = self.out.finalize(
            stage=self.stage,
            rows=rows,
            inputs=self.inputs,
            config=dumps_config(self.cfg),
            summary=summary,
            **finalize_kwargs,
        )
        if self.mlrun is not None:
            from cion_dist.mlflow_io.lineage import log_output

            log_output(self.out.uri, record["digest"], run_id=self.mlflow_run_id)
        return record


def write_figures(out, figures: dict, to_mlflow: bool) -> list:
    """PNG figures (name -> bytes) under ``<run>/plots/``, also logged as the MLflow run's ``plots/`` artifacts;
    returns their URIs. Shared by every stage that draws."""
    import os
    import tempfile

    from cion_dist.storage.fs import join, write_bytes_atomic

    uris = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in figures.items():
            uri = join(out.uri, "plots", name)
            write_bytes_atomic(uri, png, out.storage)
            uris.append(uri)
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(png)
        if to_mlflow and figures:
            import mlflow

            mlflow.log_artifacts(tmp, artifact_path="plots")
    return uris

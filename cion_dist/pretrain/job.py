"""The pretrain stage: identity-labelled crops -> Ray Train + DeepSpeed self-distillation -> exported backbone.

Inputs: the correlate output (``image_id, identity_id``; rows with ``identity_id < 0`` were dropped as noise) and
the ingest crops (``image_id, jpeg``), found through the correlate run's lineage (correlate -> embed -> ingest) or
named by ``pretrain.crops``. Before training they are joined, by Ray tasks, into the identity-sharded labelled set
``<output>/labelled/<run_id>/`` (``cion_dist.pretrain.labelled``), which the workers stream by shard
(``cion_dist.pretrain.stream``). Output folder ``<output>/pretrain/<run_id>/``: ``train/`` (Ray Train checkpoints with
DeepSpeed shards; a rerun of the same run id resumes from the newest), ``model/`` (the teacher backbone as
``backbone.safetensors`` + ``backbone.json``), ``_SUCCESS.json``. MLflow: resolved config as params, per-step
metrics from rank 0, the input datasets (``stage_run``), the ``model/`` folder as artifacts, registered as a new
version of
``pretrain.model_name`` (a plain artifact folder, not an MLflow flavour: ``cion_dist.models.backbone_io`` writes,
logs and registers it, and ``load_backbone`` reads it back from ``models:/<name>/<version>``).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import pyarrow as pa
import torch

from cion_dist.config.job import Job
from cion_dist.errors import DataError
from cion_dist.models.backbone_io import (
    BACKBONE_DIR,
    Preprocess,
    backbone_state,
    export_files,
    log_backbone,
    register_backbone,
    write_export,
)
from cion_dist.stage import PretrainResult, StageRun, locked_stage
from cion_dist.stage.runid import derive_run_id
from cion_dist.storage.fs import Storage, is_s3, join
from cion_dist.storage.stage_io import StageOutput, input_record, resolve_input

log = logging.getLogger(__name__)
STAGE = "pretrain"
WORKER_FIGURES = (
    "images_per_s_mean",
    "data_wait_fraction_mean",
    "teacher_mb",
    "peak_rss_mb_max_worker",
    "rss_mb_max_worker",
)


# ---------------------------------------------------------------- inputs


def find_crops(corr: StageOutput, explicit: Optional[str], storage: Storage) -> StageOutput:
    """The ingest output with the jpeg column: named explicitly, or two lineage hops up from correlate."""
    if explicit:
        return resolve_input(explicit, "", "ingest", storage)
    frontier, seen = [corr], set()
    for _ in range(3):
        nxt = []
        for out in frontier:
            for rec in out.success().get("inputs", []):
                uri = rec.get("uri")
                if not uri or uri in seen:
                    continue
                seen.add(uri)
                cand = StageOutput(uri, storage)
                if not cand.is_complete():
                    continue
                if rec.get("stage") == "ingest" or cand.success().get("stage") == "ingest":
                    return cand
                nxt.append(cand)
        frontier = nxt
    raise DataError(f"cannot find the ingest crops behind {corr.uri} through its inputs; set pretrain.crops")


def labelled_set(job: Job, corr: StageOutput, crops: StageOutput) -> StageOutput:
    """The identity-sharded labelled set of ``corr`` x ``crops`` (``cion_dist.pretrain.labelled``), written by Ray
    tasks under ``<output>/labelled/<run_id>/`` unless a complete one exists; the driver reads key columns only."""
    from cion_dist.pretrain import labelled
    from cion_dist.pretrain.stream import min_ids_per_shard
    from cion_dist.raycluster import ensure_ray

    cfg = job.pretrain
    seed = cfg.seed if cfg.seed is not None else job.seed
    layout = {
        "world": cfg.num_workers,
        "shard_images": cfg.shard_images,
        "min_ids_per_shard": min_ids_per_shard(cfg),
        "seed": seed,
    }
    digest = f"{input_record(corr)['digest']}:{input_record(crops)['digest']}"
    run_id = derive_run_id(labelled.STAGE, layout, digest)
    ensure_ray(job.ray)
    return labelled.build(corr, crops, job.output, run_id, config=layout, **layout)


# ---------------------------------------------------------------- training


def run_plan(job: Job, data: StageOutput):
    """Shards per rank and every epoch's length; data errors (too few identities for a batch) raised here, on
    the driver, before any worker starts."""
    from cion_dist.pretrain.labelled import read_index, shard_files
    from cion_dist.pretrain.stream import RunPlan

    cfg = job.pretrain
    seed = cfg.seed if cfg.seed is not None else job.seed
    plan = RunPlan.build(
        read_index(data),
        shard_files(data),
        cfg.num_workers,
        cfg.batch_size_per_worker,
        seed,
        cfg.epochs,
        cfg.gradual_epochs,
        cfg.gradual_instances,
        cfg.steps_per_task,
    )
    plan.check()
    return plan


def fit(job: Job, data, storage_path: str, name: str, tracking: Optional[dict] = None):
    """Run the Ray Train job over a labelled set (its ``StageOutput``, or an in-memory ``image_id, identity_id,
    jpeg`` table written to one under ``storage_path`` first); returns the ``ray.train.Result``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cion_dist.pretrain import hooks
    from cion_dist.pretrain.augment import MultiCropSpec
    from cion_dist.pretrain.stream import DATASET, feed_for_table, ingest_config, make_cursor, work_items
    from cion_dist.pretrain.train_loop import train_loop_per_worker
    from cion_dist.raycluster import ensure_ray

    cfg = job.pretrain
    seed = cfg.seed if cfg.seed is not None else job.seed
    ensure_ray(job.ray)
    if isinstance(data, pa.Table):
        data = feed_for_table(
            data,
            output=join(storage_path, "data"),
            world=cfg.num_workers,
            batch=cfg.batch_size_per_worker,
            seed=seed,
            cfg=cfg,
        )
    plan = run_plan(job, data)
    epoch_steps = [plan.epoch_steps(e) for e in range(cfg.epochs)]
    cursor = make_cursor()
    items, bounds = work_items(plan, cfg.epochs)
    spec = MultiCropSpec(tuple(cfg.image_size), tuple(cfg.local_size), cfg.local_crops)
    fs = None
    path = storage_path
    if is_s3(storage_path):
        fs, path = Storage(job.storage).pyarrow(storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "pretrain": cfg.model_dump(mode="json"),
            "seed": seed,
            "epoch_steps": epoch_steps,
            "epoch_k": plan.ks,
            "cursor": cursor,
            "mlflow": tracking,
            # measurement / fault drills installed by benchmarks and tests; none in production
            "hooks": hooks.current(),
        },
        # the trainer's dataset is the run's (epoch, shard) work list; the ingest config gives each rank its own
        # items, mapped to one stream of multi-crop batches over that rank's shards only
        datasets={DATASET: items},
        dataset_config=ingest_config(
            plan, bounds, spec=spec, augment=cfg.augment_in == "ray_data", cursor=cursor, storage=data.storage
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    try:
        result = trainer.fit()
    finally:
        ray.kill(cursor)
    if result.error is None and (result.metrics or {}).get("fatal_error"):
        raise DataError(result.metrics["fatal_error"])  # the workers stopped on it; no retry could help
    return result


def export_teacher(result, job: Job, out: StageOutput) -> tuple[str, dict[str, bytes]]:
    """Write the final teacher backbone to ``<run>/model/``, recording the crop size and the normalisation it was
    trained with; returns (folder URI, files)."""
    from cion_dist.images import IMAGENET_MEAN, IMAGENET_STD
    from cion_dist.models.factory import build_backbone
    from cion_dist.pretrain.train_loop import TEACHER_FILE

    if result.checkpoint is None:
        raise DataError("training finished without a checkpoint to export")
    with result.checkpoint.as_directory() as d:
        blob = torch.load(os.path.join(d, TEACHER_FILE), map_location="cpu", weights_only=True)
    state = backbone_state(blob["teacher"])
    cfg = job.pretrain
    embed_dim = build_backbone(cfg.backbone, **cfg.backbone_kwargs).embed_dim
    preprocess = Preprocess(tuple(cfg.image_size), IMAGENET_MEAN, IMAGENET_STD)  # what augment.normalize applies
    files = export_files(state, cfg.backbone, embed_dim, cfg.backbone_kwargs, preprocess)
    return write_export(files, join(out.uri, BACKBONE_DIR), out.storage), files


def publish_model(files: dict[str, bytes], cfg, run) -> str:
    """Log ``model/`` as artifacts of the stage's MLflow run and, with ``pretrain.register_model``, register it
    as a new version of ``pretrain.model_name``; returns the model URI."""
    log_backbone(files)
    if not cfg.register_model:
        return f"runs:/{run.info.run_id}/{BACKBONE_DIR}"
    mv = register_backbone(run.info.run_id, cfg.model_name, tags={"architecture": cfg.backbone})
    return f"models:/{cfg.model_name}/{mv.version}"


def _uri(path: str, storage_path: str) -> str:
    return f"s3://{path.lstrip('/')}" if is_s3(storage_path) and not is_s3(path) else path


# ---------------------------------------------------------------- the stage


def write_plots(out: StageOutput, tracking: dict) -> list[str]:
    """Loss and health curves from the run's step metrics, as PNGs under ``<run>/plots/`` and MLflow artifacts."""
    from cion_dist.pretrain.plots import metric_history, pretrain_figures
    from cion_dist.stage.skeleton import write_figures

    figures = pretrain_figures(metric_history(tracking["tracking_uri"], tracking["run_id"]))
    return write_figures(out, figures, to_mlflow=True)


@locked_stage(STAGE)
def run(job: Job) -> PretrainResult:
    cfg = job.pretrain
    storage = Storage(job.storage)
    corr = resolve_input(cfg.input, job.output, "correlate", storage)
    crops = find_crops(corr, cfg.crops, storage)
    st = StageRun(job, STAGE, cfg, [input_record(corr), input_record(crops)], storage=storage)
    if (done := st.completed()) is not None:
        return PretrainResult.from_record(done, skipped=True)
    out = st.out

    data = labelled_set(job, corr, crops)
    counts = data.success()["rows"]
    n_images, n_ids = int(counts["images"]), int(counts["identities"])
    run_plan(job, data)  # data errors stop the stage here, before MLflow and Ray Train start
    storage_path = cfg.storage_path or join(out.uri, "train")
    params = {
        "seed": job.seed,
        "images": n_images,
        "identities": n_ids,
        "storage_path": storage_path,
        "labelled": data.uri,
    }
    with st.tracking(params=params) as run_:
        mlrun = run_.mlrun
        tracking, plots = None, []
        if mlrun is not None:
            import mlflow

            tracking = {"tracking_uri": mlflow.get_tracking_uri(), "run_id": mlrun.info.run_id}
        result = fit(job, data, storage_path, st.run_id, tracking)
        if result.error is not None:
            raise result.error
        metrics = dict(result.metrics or {})
        folder, files = export_teacher(result, job, out)
        model_uri = folder
        st.log_metrics(
            {
                "final_loss": metrics.get("last_loss", float("nan")),
                "first_loss": metrics.get("first_loss", float("nan")),
            }
        )
        # the last report's throughput and per-worker memory, measured in the workers
        st.log_metrics(
            {
                k: v
                for k, v in metrics.items()
                if k in WORKER_FIGURES or (k.startswith("student_") and k.endswith("_mb"))
            }
        )
        if mlrun is not None:
            model_uri = publish_model(files, cfg, mlrun)
            plots = write_plots(out, tracking)
    summary = {
        "model_uri": model_uri,
        "model_folder": folder,
        "checkpoint": _uri(result.checkpoint.path, storage_path) if result.checkpoint is not None else None,
        "first_loss": metrics.get("first_loss"),
        "final_loss": metrics.get("last_loss"),
        "steps": int(metrics.get("global_step", 0)),
        "epochs": cfg.epochs,
        "resumed_from_step": metrics.get("resumed_from_step"),
        "plots": plots,
        "labelled": data.uri,
        "health_verdict": metrics.get("health_verdict"),  # cion_dist.pretrain.health: learning or which collapse
        "health": f"{metrics.get('health_verdict')}: {metrics.get('health_reason')}",
    }
    log.log(
        logging.INFO if summary["health_verdict"] == "learning" else logging.WARNING,
        "pretrain health: %s",
        summary["health"],
    )
    rows = {"images": n_images, "identities": n_ids, "steps": summary["steps"]}
    return PretrainResult.from_record(st.finalize(rows, summary))

"""The pretrain stage: identity-labelled crops -> Ray Train + DeepSpeed self-distillation -> exported backbone.

Inputs: the correlate output (``image_id, identity_id``; rows with ``identity_id < 0`` were dropped as noise) and
the ingest crops (``image_id, jpeg``), found through the correlate run's lineage (correlate -> embed -> ingest) or
named by ``pretrain.crops``. Output folder ``<output>/pretrain/<run_id>/``: ``train/`` (Ray Train checkpoints with
DeepSpeed shards; a rerun of the same run id resumes from the newest), ``model/`` (the teacher backbone as
``backbone.safetensors`` + ``backbone.json``), ``_SUCCESS.json``. MLflow: resolved config as params, per-step
metrics from rank 0, the input datasets (``stage_run``), the ``model/`` folder as artifacts, registered as a new version of
``pretrain.model_name`` (a plain artifact folder, not an MLflow flavour: ``cion_dist.models.export.load_exported``
reads it back from ``models:/<name>/<version>``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cion_dist.config.job import Job
from cion_dist.errors import DataError
from cion_dist.models.export import backbone_state, export_files
from cion_dist.stage import PretrainResult, StageRun
from cion_dist.storage.fs import Storage, is_s3, join, write_bytes_atomic
from cion_dist.storage.stage_io import StageOutput, input_record, resolve_input

log = logging.getLogger(__name__)
STAGE = "pretrain"
WORKER_FIGURES = ("images_per_s_mean", "data_wait_fraction_mean", "teacher_mb", "peak_rss_mb_max_worker",
                  "rss_mb_max_worker")


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


def labelled_crops(corr: StageOutput, crops: StageOutput) -> pa.Table:
    """``image_id, identity_id, jpeg`` for every kept image (identity_id >= 0), sorted by identity."""
    ids = corr.read(columns=["image_id", "identity_id"])
    ids = ids.filter(pc.greater_equal(ids["identity_id"], 0))
    if ids.num_rows == 0:
        raise DataError(f"{corr.uri}: no image has an identity (identity_id >= 0)")
    imgs = crops.read(columns=["image_id", "jpeg"])
    joined = ids.join(imgs, "image_id", join_type="inner")
    if joined.num_rows != ids.num_rows:
        have = set(imgs["image_id"].to_pylist())
        missing = [i for i in ids["image_id"].to_pylist() if i not in have]
        raise DataError(
            f"{len(missing)} images of {corr.uri} have no crop in {crops.uri} (e.g. image_id {missing[:3]})"
        )
    joined = joined.sort_by([("identity_id", "ascending"), ("image_id", "ascending")])
    return joined.select(["image_id", "identity_id", "jpeg"]).combine_chunks()


# ---------------------------------------------------------------- training


def fit(job: Job, table: pa.Table, storage_path: str, name: str, tracking: Optional[dict] = None):
    """Run the Ray Train job over the labelled crops; returns the ``ray.train.Result``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cion_dist.pretrain.train_loop import train_loop_per_worker
    from cion_dist.raycluster import ensure_ray

    cfg = job.pretrain
    ensure_ray(job.ray)
    table_ref = ray.put(table)
    labels = table["identity_id"].to_numpy()
    fs = None
    path = storage_path
    if is_s3(storage_path):
        fs, path = Storage(job.storage).pyarrow(storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "pretrain": cfg.model_dump(mode="json"),
            "seed": cfg.seed if cfg.seed is not None else job.seed,
            "labels": labels,
            "table_ref": table_ref,
            "mlflow": tracking,
        },
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
    return trainer.fit()


def export_teacher(result, job: Job, out: StageOutput) -> tuple[str, dict[str, bytes]]:
    """Write the final teacher backbone to ``<run>/model/``; returns (folder URI, files)."""
    from cion_dist.models.factory import build_backbone
    from cion_dist.pretrain.train_loop import TEACHER_FILE

    if result.checkpoint is None:
        raise DataError("training finished without a checkpoint to export")
    with result.checkpoint.as_directory() as d:
        blob = torch.load(os.path.join(d, TEACHER_FILE), map_location="cpu", weights_only=True)
    state = backbone_state(blob["teacher"])
    cfg = job.pretrain
    embed_dim = build_backbone(cfg.backbone, **cfg.backbone_kwargs).embed_dim
    files = export_files(state, cfg.backbone, embed_dim, cfg.backbone_kwargs, tuple(cfg.image_size))
    folder = join(out.uri, "model")
    for fname, data in files.items():
        write_bytes_atomic(join(folder, fname), data, out.storage)
    return folder, files


def _log_model(files: dict[str, bytes], cfg, run) -> Optional[str]:
    """Log ``model/`` as run artifacts and register it as a new version; returns the model URI."""
    import mlflow
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        for fname, data in files.items():
            with open(os.path.join(tmp, fname), "wb") as f:
                f.write(data)
        mlflow.log_artifacts(tmp, artifact_path="model")
    uri = f"runs:/{run.info.run_id}/model"
    if not cfg.register_model:
        return uri
    client = MlflowClient()
    try:
        client.get_registered_model(cfg.model_name)
    except Exception:  # noqa: BLE001 - mlflow raises MlflowException(RESOURCE_DOES_NOT_EXIST)
        client.create_registered_model(cfg.model_name, description="CION-pretrained person re-ID backbones")
    mv = client.create_model_version(cfg.model_name, source=mlflow.get_artifact_uri("model"), run_id=run.info.run_id,
                                     tags={"architecture": cfg.backbone})
    return f"models:/{cfg.model_name}/{mv.version}"


def _uri(path: str, storage_path: str) -> str:
    return f"s3://{path.lstrip('/')}" if is_s3(storage_path) and not is_s3(path) else path


# ---------------------------------------------------------------- the stage


def write_plots(out: StageOutput, tracking: dict) -> list[str]:
    """Loss and health curves from the run's step metrics, as PNGs under ``<run>/plots/`` and MLflow artifacts."""
    import mlflow

    from cion_dist.pretrain.plots import metric_history, pretrain_figures

    uris = []
    figures = pretrain_figures(metric_history(tracking["tracking_uri"], tracking["run_id"]))
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in figures.items():
            uri = join(out.uri, "plots", name)
            write_bytes_atomic(uri, png, out.storage)
            uris.append(uri)
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(png)
        mlflow.log_artifacts(tmp, artifact_path="plots")
    return uris


def run(job: Job) -> PretrainResult:
    cfg = job.pretrain
    storage = Storage(job.storage)
    corr = resolve_input(cfg.input, job.output, "correlate", storage)
    crops = find_crops(corr, cfg.crops, storage)
    st = StageRun(job, STAGE, cfg, [input_record(corr), input_record(crops)], storage=storage)
    if (done := st.completed()) is not None:
        return PretrainResult.from_record(done, skipped=True)
    out = st.out

    table = labelled_crops(corr, crops)
    n_ids = len(np.unique(table["identity_id"].to_numpy()))
    storage_path = cfg.storage_path or join(out.uri, "train")
    params = {"seed": job.seed, "images": table.num_rows, "identities": n_ids, "storage_path": storage_path}
    with st.tracking(params=params) as run_:
        mlrun = run_.mlrun
        tracking, plots = None, []
        if mlrun is not None:
            import mlflow

            tracking = {"tracking_uri": mlflow.get_tracking_uri(), "run_id": mlrun.info.run_id}
        result = fit(job, table, storage_path, st.run_id, tracking)
        if result.error is not None:
            raise result.error
        metrics = dict(result.metrics or {})
        folder, files = export_teacher(result, job, out)
        model_uri = folder
        st.log_metrics({"final_loss": metrics.get("last_loss", float("nan")),
                        "first_loss": metrics.get("first_loss", float("nan"))})
        # the last report's throughput and per-worker memory, measured in the workers
        st.log_metrics({k: v for k, v in metrics.items() if k in WORKER_FIGURES or
                        (k.startswith("student_") and k.endswith("_mb"))})
        if mlrun is not None:
            model_uri = _log_model(files, cfg, mlrun) or folder
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
    }
    rows = {"images": table.num_rows, "identities": n_ids, "steps": summary["steps"]}
    return PretrainResult.from_record(st.finalize(rows, summary))

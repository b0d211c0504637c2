"""The evaluate stage: re-ID metrics of one backbone on one benchmark, logged to MLflow against the model.

Reads the dataset (Market-1501 / MSMT17 / list), loads the model (any source ``cion_dist.models.backbone_io``
reads, an ONNX re-ID model, or the newest pretrain run) with the input size and normalisation it was exported
with (``evaluate.height`` / ``width`` / ``mean`` / ``std`` win only when set explicitly), optionally fine-tunes
it (``protocol: finetune``), extracts query and gallery features (in-process or Ray Data), computes CMC / mAP /
mINP (optionally after k-reciprocal re-ranking), and records the result three ways: a one-row Parquet +
``_SUCCESS.json`` under ``<output>/evaluate/<run_id>/`` (a rerun with the same model, dataset and settings is
skipped), an MLflow run (metrics, dataset digest, lineage inputs), and tags on the registered model version keyed
by its evaluation settings (what ``promote`` compares).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import pyarrow as pa

from cion_dist.config.job import Job
from cion_dist.errors import ConfigError, DataError
from cion_dist.evaluate.datasets import ReidDataset, load_dataset, pids_cams
from cion_dist.evaluate.features import extract_local, extract_ray
from cion_dist.evaluate.metrics import METRICS, ReidMetrics, evaluate_distances, evaluate_features
from cion_dist.models.backbone_io import LoadedBackbone, Preprocess, fetch, load_backbone, preprocess_for_config
from cion_dist.stage import EvaluateResult, StageRun, locked_stage
from cion_dist.storage.fs import Storage, join

log = logging.getLogger(__name__)
STAGE = "evaluate"


def dataset_root(job: Job) -> str:
    return job.evaluate.dataset or join(job.output, "corpus", "market")


@dataclass
class OnnxModel:
    """An ONNX re-ID model run through the embed stage's ``OnnxEmbedder`` (its own input size and normalisation),
    so a pretrained backbone can be compared with a model users already know on the same benchmark."""

    embedder: object
    uri: str
    weights_digest: str
    name: Optional[str] = None
    version: Optional[str] = None
    run_id: Optional[str] = None

    @property
    def architecture(self) -> str:
        return self.embedder.name

    @property
    def embed_dim(self) -> int:
        return int(self.embedder.dim)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess((self.embedder.height, self.embedder.width), self.embedder.mean, self.embedder.std)

    def record(self) -> dict:
        return {"uri": self.uri, "digest": self.weights_digest, "stage": "model", "mlflow_run_id": self.run_id}


Model = Union[LoadedBackbone, OnnxModel]


def load_onnx(
    uri: str, storage: Optional[Storage] = None, height=256, width=128, mean=None, std=None, batch_size=64
) -> OnnxModel:
    """An ONNX re-ID model file (path or s3://): input size from the model's fixed axes (else ``height`` /
    ``width``), normalisation from ``mean`` / ``std``, else the model's metadata, else ImageNet."""
    from cion_dist.embed.embedders import OnnxEmbedder

    local = fetch(uri, storage, where="evaluate.model").path
    embedder = OnnxEmbedder(local, height, width, batch_size, mean=mean, std=std)
    with open(local, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return OnnxModel(embedder, uri, digest)


def resolve_model(
    spec: Optional[str],
    *,
    experiment: str,
    storage: Optional[Storage] = None,
    architecture: Optional[str] = None,
    mlflow_enabled: bool = True,
    onnx: Optional[dict] = None,
) -> Model:
    """The model ``evaluate.model`` names: ``*.onnx`` through ``load_onnx`` (``onnx`` holds its height, width,
    mean, std), nothing = the newest finished pretrain run of ``experiment``, anything else ``load_backbone``."""
    if spec is not None and spec.lower().endswith(".onnx"):
        return load_onnx(spec, storage, **(onnx or {}))
    if spec is None or spec.startswith(("models:/", "runs:/")):
        if not mlflow_enabled:
            raise ConfigError(
                "evaluate.model needs MLflow (models:/, runs:/ or newest pretrain) but mlflow.enabled is false"
            )
        if spec is None:
            from cion_dist.mlflow_io.registry import newest_stage_model_uri

            spec = newest_stage_model_uri(experiment, "pretrain")
    return load_backbone(
        spec,
        architecture=architecture,
        storage=storage,
        where="evaluate.model",
        architecture_key="evaluate.architecture",
    )


def model_preprocess(cfg, model: Model) -> Preprocess:
    """How evaluation feeds ``model``: an ONNX model's own; a backbone's export record unless the user set
    ``evaluate.height`` / ``width`` / ``mean`` / ``std`` explicitly (then with a warning where they differ)."""
    if isinstance(model, OnnxModel):
        return model.preprocess
    return preprocess_for_config(model.preprocess, cfg, "evaluate", model.uri)


def extract(job: Job, model, uris: list[str], storage: Storage, preprocess: Optional[Preprocess] = None) -> np.ndarray:
    cfg = job.evaluate
    pp = preprocess or Preprocess((cfg.height, cfg.width))
    use_ray = cfg.extraction == "ray" or (cfg.extraction == "auto" and len(uris) >= cfg.ray_min_images)
    kw = dict(batch_size=cfg.batch_size, flip=cfg.flip, device=cfg.device, **pp.feed_kwargs())
    if use_ray:
        from cion_dist.raycluster import ensure_ray

        ensure_ray(job.ray)
        return extract_ray(model, uris, storage, num_actors=cfg.num_actors, **kw)
    return extract_local(model, uris, storage, **kw)


def score(job: Job, ds: ReidDataset, qf: np.ndarray, gf: np.ndarray) -> ReidMetrics:
    cfg = job.evaluate
    qp, qc = pids_cams(ds.query)
    gp, gc = pids_cams(ds.gallery)
    if cfg.rerank:
        from cion_dist.evaluate.rerank import k_reciprocal_distances

        qn = qf / np.maximum(np.linalg.norm(qf, axis=1, keepdims=True), 1e-12)
        gn = gf / np.maximum(np.linalg.norm(gf, axis=1, keepdims=True), 1e-12)
        dist = k_reciprocal_distances(qn, gn, cfg.rerank_k1, cfg.rerank_k2, cfg.rerank_lambda)
        return evaluate_distances(dist, qp, gp, qc, gc, max_rank=cfg.max_rank)
    return evaluate_features(
        qf, gf, qp, gp, qc, gc, metric=cfg.metric, max_rank=cfg.max_rank, chunk_size=cfg.chunk_size
    )


def _summary(metrics: ReidMetrics, digest: str, model_uri: str, extra: dict) -> dict:
    s = {k: float(getattr(metrics, k)) for k in METRICS}
    s.update(
        num_queries=metrics.num_queries,
        num_valid_queries=metrics.num_valid,
        num_skipped_queries=metrics.num_skipped,
        dataset_digest=digest,
        model_uri=model_uri,
    )
    s.update(extra)
    return s


@locked_stage(STAGE)
def run(job: Job) -> EvaluateResult:
    from cion_dist.mlflow_io.mlflow_run import configure

    cfg = job.evaluate
    storage = Storage(job.storage)
    root = dataset_root(job)
    ds = load_dataset(root, cfg.dataset_format, storage, cfg.keep_distractors)
    digest = ds.digest()
    if job.mlflow.enabled:
        configure(job)
    model = resolve_model(
        cfg.model,
        experiment=job.mlflow.experiment,
        storage=storage,
        architecture=cfg.architecture,
        mlflow_enabled=job.mlflow.enabled,
        onnx={"height": cfg.height, "width": cfg.width, "mean": cfg.mean, "std": cfg.std, "batch_size": cfg.batch_size},
    )
    if isinstance(model, OnnxModel) and cfg.protocol == "finetune":
        raise ConfigError(
            f"evaluate.protocol=finetune needs a torch backbone; {model.uri} is an ONNX model (use protocol: frozen)"
        )
    dataset_rec = {"uri": root, "digest": digest, "stage": "dataset"}
    st = StageRun(
        job,
        STAGE,
        cfg,
        [dataset_rec, model.record()],
        storage=storage,
        input_digest=f"{digest}:{model.uri}:{model.weights_digest}",
    )
    if (done := st.completed()) is not None:
        return EvaluateResult.from_record(done, skipped=True, uri=model.uri)
    out = st.out

    t0 = time.time()
    pp = model_preprocess(cfg, model)
    net, extra = (model.embedder if isinstance(model, OnnxModel) else model.module), {}
    if cfg.protocol == "finetune":
        from cion_dist.evaluate.finetune import finetune

        net, extra = finetune(
            net, ds.train, cfg.finetune, storage, device=cfg.device, seed=job.seed, **pp.feed_kwargs()
        )
    t1 = time.time()
    qf = extract(job, net, [r.uri for r in ds.query], storage, pp)
    gf = extract(job, net, [r.uri for r in ds.gallery], storage, pp)
    t2 = time.time()
    metrics = score(job, ds, qf, gf)
    if metrics.num_valid == 0 or not np.isfinite(metrics.mAP):
        raise DataError(
            f"evaluate: none of the {metrics.num_queries} queries of {root} has a true match in the gallery "
            "from another camera; no metric can be computed (check the dataset layout and camera ids)"
        )
    t3 = time.time()
    extra.update(
        finetune_seconds=round(t1 - t0, 3), extract_seconds=round(t2 - t1, 3), metric_seconds=round(t3 - t2, 3)
    )
    summary = _summary(metrics, digest, model.uri, extra)
    if ds.junk:  # the protocol ignores them; say so, since the image counts then differ from the folder's
        summary["junk_images_skipped"] = ds.junk
        log.info(
            "evaluate: %d junk images (person id -1) of %s left out, as the Market-1501 protocol does", ds.junk, root
        )
    log.info("evaluate %s on %s: mAP %.4f rank1 %.4f", model.uri, root, metrics.mAP, metrics.rank1)

    mlflow_run_id = None
    params = {
        "dataset": {"root": root, "format": ds.name, **ds.counts()},
        "model": {"uri": model.uri, "architecture": model.architecture, "embed_dim": model.embed_dim},
        "preprocess": {"input_size": list(pp.input_size), "mean": list(pp.mean), "std": list(pp.std)},
    }
    with st.tracking(params=params):
        st.log_metrics(summary | {f"cmc_{i + 1}": c for i, c in enumerate(metrics.cmc)})
        if st.mlrun is not None:
            import mlflow

            mlflow_run_id = st.mlflow_run_id
            mlflow.set_tags(
                {
                    "cion.eval.dataset_digest": digest,
                    "cion.eval.protocol": cfg.protocol,
                    "cion.model.uri": model.uri,
                    "cion.model.weights_digest": model.weights_digest,
                }
            )
            if model.name:
                from cion_dist import __version__
                from cion_dist.evaluate.promotion import evaluation_settings
                from cion_dist.mlflow_io.registry import record_evaluation

                mlflow.set_tags({"cion.model.name": model.name, "cion.model.version": model.version})
                record_evaluation(
                    model.name,
                    model.version,
                    cfg.protocol,
                    digest,
                    {k: summary[k] for k in METRICS},
                    run_id=mlflow_run_id,
                    settings=evaluation_settings(cfg, digest, __version__, pp),
                )
        summary["mlflow_run_id"] = mlflow_run_id
        table = pa.table({k: [v] for k, v in summary.items() if v is not None})
        out.write_reported_unit("metrics", table)
        rows = {"queries": metrics.num_queries, "gallery": len(ds.gallery)}
        record = st.finalize(rows, summary)
    return EvaluateResult.from_record(record, uri=model.uri)

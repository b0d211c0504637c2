"""Which backbone an evaluation runs: a local/s3 checkpoint, a registered ``models:/`` version, a ``runs:/`` model,
an ONNX re-ID model (``*.onnx``), or (nothing named) the newest finished pretrain run. Every torch form ends in
``build_backbone(architecture, pretrained_path=weights)`` so all architectures and checkpoint layouts load the same
way; an ONNX file runs through the embed stage's ``OnnxEmbedder``, so a pretrained backbone can be compared with
a re-ID model users already know on the same benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Optional

from torch import nn

from cion_dist.errors import ConfigError, DataError
from cion_dist.mlflow_io.registry import BACKBONE_DIR, META_FILE, WEIGHTS_FILE, download_backbone, get_version
from cion_dist.storage.fs import Storage, is_s3, join, read_bytes

CHECKPOINT_EXTS = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


@dataclass
class ResolvedModel:
    module: Optional[nn.Module]  # None for an ONNX model (``embedder`` runs it)
    uri: str  # canonical: models:/name/<number>, runs:/<id>/model, or the checkpoint URI
    architecture: str
    embed_dim: int
    weights_digest: str
    name: Optional[str] = None  # registered model name and version, when the model is registered
    version: Optional[str] = None
    run_id: Optional[str] = None  # the run that produced the weights
    embedder: Optional[object] = None  # an embed-stage embedder (uint8 RGB crops -> features) instead of a module

    def record(self) -> dict:
        """Input record for lineage (see ``stage_run``)."""
        return {"uri": self.uri, "digest": self.weights_digest, "stage": "model", "mlflow_run_id": self.run_id}


def _meta_from(uri: str, storage: Storage) -> Optional[dict]:
    try:
        raw = read_bytes(uri, storage)
    except DataError:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{uri}: not valid JSON ({e})") from e


def _split(uri: str) -> tuple[str, str]:
    if is_s3(uri):
        return posixpath.split(uri.rstrip("/"))
    return os.path.split(uri.rstrip("/"))


def load_checkpoint(uri: str, storage: Optional[Storage] = None, architecture: Optional[str] = None) -> ResolvedModel:
    """A folder with ``backbone.safetensors`` + ``backbone.json``, a weights file (description beside it as
    ``backbone.json`` or ``<stem>.json``), or a ``backbone.json`` file. ``architecture`` overrides/replaces the
    description for bare checkpoints (e.g. a CION ``checkpoint.pth`` with a ``teacher`` state dict)."""
    from cion_dist.models.factory import build_backbone

    st = storage or Storage()
    fs, path = st.fs(uri)
    if not fs.exists(path):
        raise DataError(f"model checkpoint not found: {uri}")
    if fs.isdir(path) and not any(fs.exists(st.fs(join(uri, f))[1]) for f in (META_FILE, WEIGHTS_FILE)):
        # a stage output or run folder: the consolidated backbone sits somewhere below it
        found = sorted((p for p in fs.find(path) if p.endswith("/" + META_FILE)), key=lambda p: (p.count("/"), p))
        if not found:
            raise DataError(f"{uri}: no {META_FILE} in the folder or below it")
        uri = ("s3://" + found[0].rsplit("/", 1)[0]) if is_s3(uri) else found[0].rsplit("/", 1)[0]
        path = st.fs(uri)[1]
    if fs.isdir(path):
        folder, weights = uri.rstrip("/"), join(uri, WEIGHTS_FILE)
        meta = _meta_from(join(uri, META_FILE), st)
        if not fs.exists(st.fs(weights)[1]):
            raise DataError(f"{uri}: no {WEIGHTS_FILE} in the model folder")
    elif uri.endswith(".json"):
        meta = _meta_from(uri, st)
        folder = _split(uri)[0]
        weights = join(folder, (meta or {}).get("weights", WEIGHTS_FILE))
    elif uri.lower().endswith(CHECKPOINT_EXTS):
        folder, fname = _split(uri)
        weights = uri
        meta = _meta_from(join(folder, os.path.splitext(fname)[0] + ".json"), st) or _meta_from(
            join(folder, META_FILE), st
        )
    else:
        raise DataError(
            f"{uri}: not a model folder, backbone.json, checkpoint ({', '.join(CHECKPOINT_EXTS)}) or ONNX model (.onnx)"
        )
    arch = architecture or (meta or {}).get("architecture")
    if not arch:
        raise ConfigError(f"{uri}: no {META_FILE} names the architecture; set evaluate.architecture")
    kwargs = dict((meta or {}).get("kwargs") or {})
    module = build_backbone(arch, pretrained_path=weights, **kwargs)
    digest = hashlib.sha256(read_bytes(weights, st)).hexdigest()
    embed_dim = int(getattr(module, "embed_dim", (meta or {}).get("embed_dim", 0)))
    if meta and meta.get("embed_dim") and int(meta["embed_dim"]) != embed_dim:
        raise DataError(f"{uri}: {META_FILE} says embed_dim {meta['embed_dim']} but {arch} produces {embed_dim}")
    return ResolvedModel(module.eval(), uri, arch, embed_dim, digest)


def load_onnx(
    uri: str,
    storage: Optional[Storage] = None,
    height: int = 256,
    width: int = 128,
    mean=None,
    std=None,
    batch_size: int = 64,
) -> ResolvedModel:
    """An ONNX re-ID model file (path or s3://): input size from the model's fixed axes (else ``height`` /
    ``width``), normalisation from ``mean`` / ``std``, else the model's metadata, else ImageNet."""
    from cion_dist.embed.embedders import OnnxEmbedder
    from cion_dist.embed.weights import resolve_weights

    try:
        local = resolve_weights(uri, storage)
    except DataError as e:
        raise DataError(f"evaluate.model: ONNX model not found: {uri} ({e})") from e
    embedder = OnnxEmbedder(local, height, width, batch_size, mean=mean, std=std)
    with open(local, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return ResolvedModel(
        module=None,
        uri=uri,
        architecture=embedder.name,
        embed_dim=embedder.dim,
        weights_digest=digest,
        embedder=embedder,
    )


def load_registered(uri: str, architecture: Optional[str] = None) -> ResolvedModel:
    """A ``models:/name/<version|latest>`` or ``models:/name@alias`` backbone (mlflow must be configured)."""
    mv = get_version(uri)
    folder = download_backbone(mv)
    res = load_checkpoint(folder, Storage(), architecture)
    res.uri, res.name, res.version, res.run_id = f"models:/{mv.name}/{mv.version}", mv.name, str(mv.version), mv.run_id
    return res


def load_run_model(uri: str, architecture: Optional[str] = None) -> ResolvedModel:
    """``runs:/<run_id>[/<path>]``: the backbone artifacts a run logged (default path ``model``)."""
    import tempfile

    import mlflow

    from cion_dist.mlflow_io.registry import find_backbone_dir

    rest = uri[len("runs:/") :]
    run_id, _, sub = rest.partition("/")
    sub = sub or BACKBONE_DIR
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=sub, dst_path=tempfile.mkdtemp(prefix="cion-model-")
        )
    except Exception as e:  # noqa: BLE001 - mlflow raises several types for a missing run/path
        raise DataError(f"cannot download {uri}: {e}") from None
    folder = find_backbone_dir(local)
    if folder is None:
        raise DataError(f"{uri}: no {META_FILE} among the run's artifacts")
    res = load_checkpoint(folder, Storage(), architecture)
    res.uri, res.run_id = f"runs:/{run_id}/{sub}", run_id
    found = _registered_for_run(run_id)
    if found is not None:
        res.uri, res.name, res.version = f"models:/{found.name}/{found.version}", found.name, str(found.version)
    return res


def _registered_for_run(run_id: str):
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def newest_pretrain_uri(experiment: str) -> str:
    """``models:/`` of the newest finished pretrain run's registered version, else ``runs:/<id>/model``."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="tags.`cion.stage` = 'pretrain' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise DataError(f"no finished pretrain run in MLflow experiment {experiment!r}; set evaluate.model")
    rid = runs[0].info.run_id
    mv = _registered_for_run(rid)
    return f"models:/{mv.name}/{mv.version}" if mv is not None else f"runs:/{rid}/{BACKBONE_DIR}"


def resolve_model(
    spec: Optional[str],
    *,
    experiment: str,
    storage: Optional[Storage] = None,
    architecture: Optional[str] = None,
    mlflow_enabled: bool = True,
    onnx: Optional[dict] = None,
) -> ResolvedModel:
    """Load the backbone ``spec`` names (see module docstring); ``init:<architecture>`` is a seeded random init,
    the 'before pretraining' reference; ``onnx`` (height, width, mean, std) applies to ``*.onnx`` models."""
    if spec is not None and spec.startswith("init:"):
        return random_init(spec[len("init:") :])
    if spec is not None and spec.lower().endswith(".onnx"):
        return load_onnx(spec, storage, **(onnx or {}))
    if spec is None or spec.startswith(("models:/", "runs:/")):
        if not mlflow_enabled:
            raise ConfigError(
                "evaluate.model needs MLflow (models:/, runs:/ or newest pretrain) but mlflow.enabled is false"
            )
        spec = spec or newest_pretrain_uri(experiment)
        if spec.startswith("models:/"):
            return load_registered(spec, architecture)
        return load_run_model(spec, architecture)
    return load_checkpoint(spec, storage, architecture)


def random_init(architecture: str, seed: int = 0) -> ResolvedModel:
    """A randomly initialised backbone (fixed seed), so 'before' and 'after' pretraining compare like with like."""
    import torch

    from cion_dist.models.factory import build_backbone

    if not architecture:
        raise ConfigError("evaluate.model init:<architecture> needs an architecture name, e.g. init:resnet18")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = build_backbone(architecture)
    spec = f"init:{architecture}"
    return ResolvedModel(
        module=module,
        uri=spec,
        architecture=architecture,
        embed_dim=int(module.embed_dim),
        weights_digest=hashlib.sha256(f"{spec}:seed{seed}".encode()).hexdigest(),
    )

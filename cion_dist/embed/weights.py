"""Find backbone weights wherever they live: a local path, an s3:// URI, or an MLflow model / run URI.

Layout expected of a pretrained backbone (what the pretrain stage logs as the MLflow artifact folder ``model/``
and registers, so ``models:/<name>@<alias>`` or ``runs:/<run_id>/model`` resolves to it)::

    model/
      backbone.safetensors   # the teacher backbone's state_dict (pooled-feature backbone, no projection head)
      backbone.json          # {"architecture": "resnet50_ibn_a", "embed_dim": 2048, ...}

A bare ``.safetensors`` or torch checkpoint file also works; its architecture then comes from ``embed.model``
(or a ``backbone.json`` beside it).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

from cion_dist.errors import ConfigError, DataError
from cion_dist.storage.fs import Storage, is_s3

WEIGHTS_FILE = "backbone.safetensors"
SPEC_FILE = "backbone.json"
_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def resolve_weights(
    uri: str, storage: Optional[Storage] = None, tracking_uri: Optional[str] = None, registry_uri: Optional[str] = None
) -> str:
    """A local path (file or folder) holding the weights that ``uri`` names, downloading when needed.

    MLflow URIs resolve against ``tracking_uri`` (else the process-wide one) and ``registry_uri`` (else the
    tracking store) without changing the process-wide settings.
    """
    if not uri:
        raise ConfigError("embed.weights: empty weights URI")
    uri = str(uri)
    if uri.startswith(_MLFLOW_SCHEMES):
        return _download_mlflow(uri, tracking_uri, registry_uri)
    if is_s3(uri):
        return _download_s3(uri, storage or Storage())
    path = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
    if not os.path.exists(path):
        raise DataError(f"embed.weights: {uri} does not exist")
    return path


def _download_mlflow(uri: str, tracking_uri: Optional[str], registry_uri: Optional[str]) -> str:
    """Download through explicit stores, leaving the process-wide MLflow URIs untouched.

    ``models:/name@alias`` and ``models:/name/version`` are looked up with a client bound to the registry, then
    the version's source (``runs:/...`` or an artifact URI) is downloaded from the tracking store.
    """
    import mlflow

    store = tracking_uri or mlflow.get_tracking_uri()
    registry = registry_uri or store
    dst = tempfile.mkdtemp(prefix="cion-weights-")
    try:
        source = uri
        if uri.startswith("models:/"):
            source = _model_version_source(uri, mlflow.MlflowClient(tracking_uri=store, registry_uri=registry))
        return mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=dst, tracking_uri=store, registry_uri=registry
        )
    except Exception as e:  # noqa: BLE001 - mlflow raises MlflowException, OSError, ... for a bad URI
        raise DataError(f"embed.weights: cannot download {uri} from MLflow ({store}): {e}") from e


def _model_version_source(uri: str, client) -> str:
    ref = uri[len("models:/") :].strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        mv = client.get_model_version(name, version)
    else:
        return uri  # a logged-model id (models:/m-...): mlflow resolves it from the tracking store
    return mv.source


def _download_s3(uri: str, storage: Storage) -> str:
    fs, path = storage.fs(uri)
    if not fs.exists(path):
        raise DataError(f"embed.weights: {uri} does not exist")
    dst = tempfile.mkdtemp(prefix="cion-weights-")
    if fs.isdir(path):
        local = os.path.join(dst, os.path.basename(path.rstrip("/")) or "weights")
        for src in fs.find(path):
            rel = os.path.relpath(src, path)
            os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
            fs.get(src, os.path.join(local, rel))
        return local
    local = os.path.join(dst, os.path.basename(path))
    fs.get(path, local)
    return local


@dataclass(frozen=True)
class BackboneSpec:
    """What to build and how to feed it: architecture, weights file (None = random init), builder keyword
    arguments, and the input size / normalisation recorded at export (None = the embed config's / ImageNet)."""

    architecture: str
    weights_file: Optional[str]
    kwargs: dict = field(default_factory=dict)
    input_size: Optional[tuple[int, int]] = None
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None


def backbone_spec(local: Optional[str], model: str = "") -> BackboneSpec:
    """Architecture + weights file from a resolved local path and the configured ``embed.model``.

    ``embed.model`` wins when set; otherwise ``backbone.json`` (in the folder, or beside the file) names it.
    """
    weights_file, spec_file = None, None
    if local:
        if os.path.isdir(local):
            weights_file = _find(local, WEIGHTS_FILE) or _find_any_checkpoint(local)
            spec_file = _find(local, SPEC_FILE)
            if weights_file is None:
                raise DataError(f"embed.weights: {local} holds no {WEIGHTS_FILE} (nor any .safetensors/.pt file)")
        else:
            weights_file = local
            beside = os.path.join(os.path.dirname(local), SPEC_FILE)
            spec_file = beside if os.path.exists(beside) else None
    meta: dict = {}
    if spec_file:
        try:
            with open(spec_file, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{spec_file}: not valid JSON ({e})") from e
        if not isinstance(meta, dict):
            raise DataError(f"{spec_file}: expected a JSON object")
    arch = model or meta.get("architecture") or meta.get("arch") or ""
    if not arch and spec_file:
        raise DataError(f"{spec_file}: no 'architecture' key naming the backbone")
    if not arch:
        raise ConfigError(
            "embed.model: set the torch architecture (e.g. resnet50_ibn_a) or give weights with a backbone.json"
        )
    same_arch = not model or model == meta.get("architecture")  # export details only describe their own network
    size = meta.get("input_size") if same_arch else None
    return BackboneSpec(
        architecture=arch,
        weights_file=weights_file,
        kwargs=dict(meta.get("kwargs") or {}) if same_arch else {},
        input_size=(int(size[0]), int(size[1])) if size else None,
        mean=tuple(meta["mean"]) if same_arch and meta.get("mean") else None,
        std=tuple(meta["std"]) if same_arch and meta.get("std") else None,
    )


def _find(folder: str, name: str) -> Optional[str]:
    for root, _dirs, files in os.walk(folder):
        if name in files:
            return os.path.join(root, name)
    return None


def _find_any_checkpoint(folder: str) -> Optional[str]:
    for root, _dirs, files in os.walk(folder):
        for f in sorted(files):
            if f.endswith((".safetensors", ".pt", ".pth")):
                return os.path.join(root, f)
    return None

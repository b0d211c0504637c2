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
from dataclasses import dataclass
from typing import Optional

from cion_dist.errors import ConfigError, DataError
from cion_dist.storage.fs import Storage, is_s3

WEIGHTS_FILE = "backbone.safetensors"
SPEC_FILE = "backbone.json"
_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def resolve_weights(uri: str, storage: Optional[Storage] = None, tracking_uri: Optional[str] = None) -> str:
    """A local path (file or folder) holding the weights that ``uri`` names, downloading when needed."""
    if not uri:
        raise ConfigError("embed.weights: empty weights URI")
    uri = str(uri)
    if uri.startswith(_MLFLOW_SCHEMES):
        return _download_mlflow(uri, tracking_uri)
    if is_s3(uri):
        return _download_s3(uri, storage or Storage())
    path = os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)
    if not os.path.exists(path):
        raise DataError(f"embed.weights: {uri} does not exist")
    return path


def _download_mlflow(uri: str, tracking_uri: Optional[str]) -> str:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    dst = tempfile.mkdtemp(prefix="cion-weights-")
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst)
    except Exception as e:  # noqa: BLE001 - mlflow raises MlflowException, OSError, ... for a bad URI
        raise DataError(f"embed.weights: cannot download {uri} from MLflow ({mlflow.get_tracking_uri()}): {e}") from e


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
    """What to build: the architecture name and the local weights file (None = random init)."""

    architecture: str
    weights_file: Optional[str]


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
    arch = model
    if not arch and spec_file:
        try:
            with open(spec_file, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{spec_file}: not valid JSON ({e})") from e
        arch = meta.get("architecture") or meta.get("arch") or meta.get("name") or ""
        if not arch:
            raise DataError(f"{spec_file}: no 'architecture' key naming the backbone")
    if not arch:
        raise ConfigError("embed.model: set the torch architecture (e.g. resnet50_ibn_a) or give weights with a backbone.json")
    return BackboneSpec(architecture=arch, weights_file=weights_file)


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

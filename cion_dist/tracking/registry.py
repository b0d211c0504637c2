"""Model registry glue: backbone artifacts, ``models:/`` URIs, aliases, and evaluation results kept on versions.

A backbone travels as two artifacts under ``model/`` of the run that made it: ``backbone.safetensors`` (weights)
and ``backbone.json`` (``{"architecture", "embed_dim", "input_size"}``). Evaluations are written onto the model
version as tags keyed by protocol and dataset digest, so a promotion compares two versions on exactly the same
data: ``cion.eval.<protocol>.<digest[:16]>.<metric>``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from cion_dist.errors import ConfigError, DataError

BACKBONE_DIR = "model"
WEIGHTS_FILE = "backbone.safetensors"
META_FILE = "backbone.json"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: Optional[str] = None
    alias: Optional[str] = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version else f"models:/{self.name}@{self.alias}"


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/name/3``, ``models:/name/latest`` or ``models:/name@alias``."""
    m = _MODELS_URI.match(uri.strip())
    if not m:
        raise ConfigError(f"not a registered-model URI: {uri!r} (use models:/name/<version> or models:/name@alias)")
    return ModelRef(m.group("name"), m.group("version"), m.group("alias"))


def client(tracking_uri: Optional[str] = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri) if tracking_uri else MlflowClient()


def get_version(uri_or_ref, mlflow_client=None):
    """The ``ModelVersion`` a URI names (an alias or ``latest`` resolved to its number)."""
    from mlflow.exceptions import MlflowException

    ref = parse_model_uri(uri_or_ref) if isinstance(uri_or_ref, str) else uri_or_ref
    c = mlflow_client or client()
    try:
        if ref.alias:
            return c.get_model_version_by_alias(ref.name, ref.alias)
        if ref.version == "latest":
            versions = c.search_model_versions(f"name = '{ref.name}'")
            if not versions:
                raise DataError(f"registered model {ref.name!r} has no versions")
            return max(versions, key=lambda v: int(v.version))
        return c.get_model_version(ref.name, ref.version)
    except MlflowException as e:
        raise DataError(f"cannot resolve {ref.uri}: {e.message}") from None


def alias_version(name: str, alias: str, mlflow_client=None):
    """The version holding ``alias``, or None when no version holds it (or the model is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        return (mlflow_client or client()).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def log_backbone(model, architecture: str, input_size=(256, 128), artifact_path: str = BACKBONE_DIR,
                 kwargs: Optional[dict] = None) -> dict:
    """Write a backbone in the exported format (``cion_dist.models.export``) as artifacts of the active run;
    returns its description."""
    import mlflow

    from cion_dist.models.export import export_files

    sd = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}
    files = export_files(sd, architecture, int(getattr(model, "embed_dim")), kwargs, tuple(input_size))
    with tempfile.TemporaryDirectory() as tmp:
        for fname, data in files.items():
            with open(os.path.join(tmp, fname), "wb") as f:
                f.write(data)
        mlflow.log_artifacts(tmp, artifact_path)
    return json.loads(files[META_FILE])


def register_backbone(run_id: str, name: str, artifact_path: str = BACKBONE_DIR, mlflow_client=None,
                      tags: Optional[dict] = None):
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``; returns the ``ModelVersion``."""
    from mlflow.exceptions import MlflowException

    c = mlflow_client or client()
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name)
    run = c.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = c.create_model_version(name, source, run_id=run_id, tags=tags or {})
    for _ in range(50):
        if mv.status == "READY":
            break
        time.sleep(0.1)
        mv = c.get_model_version(name, mv.version)
    return mv


def download_backbone(version, mlflow_client=None, dst: Optional[str] = None) -> str:
    """Local folder holding ``backbone.safetensors`` and ``backbone.json`` of a model version."""
    import mlflow

    c = mlflow_client or client()
    dst = dst or tempfile.mkdtemp(prefix="cion-model-")
    tried = []
    sources = []
    try:
        sources.append(c.get_model_version_download_uri(version.name, version.version))
    except Exception:  # noqa: BLE001 - fall back to the run's artifacts
        pass
    if version.run_id:
        sources.append(f"runs:/{version.run_id}/{BACKBONE_DIR}")
    for src in sources:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=src, dst_path=dst)
        except Exception as e:  # noqa: BLE001 - try the next source, report all
            tried.append(f"{src} ({e})")
            continue
        found = find_backbone_dir(local)
        if found:
            return found
        tried.append(f"{src} (no {META_FILE})")
    raise DataError(f"models:/{version.name}/{version.version}: no backbone artifacts found; tried {'; '.join(tried)}")


def find_backbone_dir(root: str) -> Optional[str]:
    if os.path.isfile(root):
        root = os.path.dirname(root)
    for d, _, files in os.walk(root):
        if META_FILE in files:
            return d
    return None


# ---- evaluations on versions -------------------------------------------------------------------------------

def eval_prefix(protocol: str, dataset_digest: str) -> str:
    return f"cion.eval.{protocol}.{dataset_digest[:16]}"


def record_evaluation(name: str, version: str, protocol: str, dataset_digest: str, metrics: dict,
                      run_id: Optional[str] = None, mlflow_client=None) -> dict:
    """Tag a model version with its metrics on one dataset; returns the tags written."""
    c = mlflow_client or client()
    prefix = eval_prefix(protocol, dataset_digest)
    tags = {f"{prefix}.{k}": repr(float(v)) for k, v in metrics.items() if isinstance(v, (int, float))}
    tags[f"{prefix}.dataset_digest"] = dataset_digest
    tags[f"cion.eval.{protocol}.latest_digest"] = dataset_digest
    if run_id:
        tags[f"{prefix}.run_id"] = run_id
        tags["cion.eval.latest_run_id"] = run_id
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    return tags


def read_evaluation(version, protocol: str, dataset_digest: str, metric: str) -> Optional[float]:
    """A version's metric on a dataset, or None when it was never evaluated there (or the value is not finite)."""
    raw = (version.tags or {}).get(f"{eval_prefix(protocol, dataset_digest)}.{metric}")
    if raw is None:
        return None
    try:
        val = float(raw)
    except ValueError:
        return None
    return val if math.isfinite(val) else None


def latest_eval_digest(version, protocol: str) -> Optional[str]:
    return (version.tags or {}).get(f"cion.eval.{protocol}.latest_digest")

"""Model registry glue: ``models:/`` URIs, versions of a run, aliases, and evaluation results kept on versions.

The backbone artifacts themselves (names, export, logging, registering, loading) belong to
``cion_dist.models.backbone_io``. Evaluations are written onto the model
version as tags keyed by the digest of their full settings, so a promotion compares two versions measured exactly
alike: ``cion.eval.<settings key>.<metric>`` beside ``cion.eval.<settings key>.settings`` (the settings as JSON).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Optional

from cion_dist.errors import ConfigError, DataError

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


def version_for_run(run_id: str, mlflow_client=None):
    """The newest version registered from ``run_id``, or None when the run's model was never registered."""
    versions = (mlflow_client or client()).search_model_versions(f"run_id = '{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def newest_stage_model_uri(experiment: str, stage: str = "pretrain") -> str:
    """``models:/`` of the newest finished ``stage`` run's registered version, else ``runs:/<id>/model``."""
    import mlflow

    from cion_dist.models.backbone_io import BACKBONE_DIR

    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`cion.stage` = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise DataError(f"no finished {stage} run in MLflow experiment {experiment!r}; set evaluate.model")
    rid = runs[0].info.run_id
    mv = version_for_run(rid)
    return f"models:/{mv.name}/{mv.version}" if mv is not None else f"runs:/{rid}/{BACKBONE_DIR}"


# ---- evaluations on versions -------------------------------------------------------------------------------
#
# An evaluation record is keyed by the digest of its full settings (protocol, input size, flip, re-ranking,
# distance, dataset digest, code version...: ``cion_dist.evaluate.promotion.evaluation_settings``), so two
# records are compared only when every setting matches. A record, once written, is never overwritten: an
# evaluation with other settings adds a record under another key, and the champion's stays as it was.


def settings_key(settings: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_prefix(key: str) -> str:
    return f"cion.eval.{key}"


def _legacy_settings(protocol: str, dataset_digest: str) -> dict:
    return {"protocol": protocol, "dataset_digest": dataset_digest}


def record_evaluation(
    name: str,
    version: str,
    protocol: str,
    dataset_digest: str,
    metrics: dict,
    run_id: Optional[str] = None,
    mlflow_client=None,
    settings: Optional[dict] = None,
) -> dict:
    """Add an evaluation record to a model version; returns the tags written ({} when the record existed).

    Non-finite metrics are never recorded (a NaN is no result). ``settings`` defaults to protocol + dataset.
    """
    c = mlflow_client or client()
    settings = dict(settings or _legacy_settings(protocol, dataset_digest))
    settings.setdefault("protocol", protocol)
    settings.setdefault("dataset_digest", dataset_digest)
    key = settings_key(settings)
    prefix = eval_prefix(key)
    finite = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    if not finite:
        raise DataError(f"models:/{name}/{version}: no finite metric to record ({metrics}); nothing recorded")
    current = c.get_model_version(name, version).tags or {}
    tags: dict[str, str] = {}
    if f"{prefix}.settings" not in current:
        tags = {f"{prefix}.{k}": repr(v) for k, v in finite.items()}
        tags[f"{prefix}.settings"] = json.dumps(settings, sort_keys=True, default=str)
        tags[f"{prefix}.at"] = repr(time.time())
        if run_id:
            tags[f"{prefix}.run_id"] = run_id
    tags[f"cion.eval.latest.{settings['protocol']}"] = key
    if run_id:
        tags["cion.eval.latest_run_id"] = run_id
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    return tags


def evaluation_records(version) -> dict[str, dict]:
    """settings key -> {"settings": {...}, "metrics": {...}, "at": float} for every record on a version."""
    tags = version.tags or {}
    out: dict[str, dict] = {}
    for k, v in tags.items():
        if k.startswith("cion.eval.") and k.endswith(".settings"):
            key = k[len("cion.eval.") : -len(".settings")]
            try:
                settings = json.loads(v)
            except ValueError:
                continue
            prefix = eval_prefix(key) + "."
            metrics = {}
            for tk, tv in tags.items():
                if tk.startswith(prefix) and tk[len(prefix) :] not in ("settings", "at", "run_id"):
                    try:
                        metrics[tk[len(prefix) :]] = float(tv)
                    except ValueError:
                        pass
            try:
                at = float(tags.get(prefix + "at", "0"))
            except ValueError:
                at = 0.0
            out[key] = {"settings": settings, "metrics": metrics, "at": at}
    return out


def read_evaluation(version, key: str, metric: str) -> Optional[float]:
    """A version's metric in the record with settings key ``key``; None when absent or not finite."""
    raw = (version.tags or {}).get(f"{eval_prefix(key)}.{metric}")
    if raw is None:
        return None
    try:
        val = float(raw)
    except ValueError:
        return None
    return val if math.isfinite(val) else None


def latest_eval_key(version, protocol: str, dataset_digest: Optional[str] = None) -> Optional[str]:
    """The settings key of a version's newest record for a protocol (and dataset, when given)."""
    if dataset_digest is None:
        key = (version.tags or {}).get(f"cion.eval.latest.{protocol}")
        if key:
            return key
    recs = [
        (r["at"], k)
        for k, r in evaluation_records(version).items()
        if r["settings"].get("protocol") == protocol
        and (dataset_digest is None or r["settings"].get("dataset_digest") == dataset_digest)
    ]
    return max(recs)[1] if recs else None

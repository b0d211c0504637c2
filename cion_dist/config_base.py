"""Shared pieces of every job config (strict models, storage, MLflow and Ray settings): the floor that the stage
configs and the job file build on; it imports no stage."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr


def check_storage_uri(value: str, what: str) -> str:
    """A local path, ``file://`` or ``s3://`` URI; any other scheme (ftp://, gs://...) would become a local folder."""
    v = str(value).strip()
    if "://" in v and not v.startswith(("s3://", "s3a://", "file://")):
        raise ValueError(
            f"{what} has an unsupported scheme {v.split('://', 1)[0]!r}: use a local path or s3://bucket/prefix"
        )
    return value


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo in a job file never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class StorageConfig(StrictModel):
    """Object-storage access. Unset fields fall back to the standard AWS environment variables."""

    endpoint_url: Optional[str] = Field(
        None, description="S3 endpoint (e.g. http://127.0.0.1:9000); AWS_ENDPOINT_URL otherwise"
    )
    region: Optional[str] = Field(None, description="AWS region; AWS_DEFAULT_REGION / AWS_REGION otherwise")
    access_key_id: Optional[SecretStr] = None
    secret_access_key: Optional[SecretStr] = None
    anon: bool = False


class MLflowConfig(StrictModel):
    enabled: bool = True
    tracking_uri: Optional[str] = Field(
        None, description="MLflow tracking URI; MLFLOW_TRACKING_URI or sqlite:///<output>/mlflow.db otherwise"
    )
    experiment: str = "cion-dist"
    registry_uri: Optional[str] = None


class RayConfig(StrictModel):
    address: Optional[str] = Field(None, description="'auto', 'ray://host:port', or None for a local instance")
    num_cpus: Optional[int] = Field(None, ge=1, description="logical CPUs of a local instance")
    num_gpus: Optional[int] = Field(None, ge=0)
    object_store_memory: Optional[int] = Field(None, ge=78643200, description="bytes; Ray needs at least 75 MiB")
    log_to_driver: Optional[bool] = Field(
        None, description="Ray workers' own logs on the driver's console; None = only with `cion -v`"
    )


# Settings that change how a stage runs but not what it writes (resources, parallelism, error limits) and input
# URIs (whose content digest stands for them) carry this marker; the run id leaves them out, so changing one
# resumes a stage's output folder instead of starting a new one (``cion_dist.stage.runid``).
NOT_IN_RUN_ID = "cion_not_in_run_id"


def ExecutionField(default: Any = ..., **kwargs: Any) -> Any:
    """``Field`` for an execution-only setting: outputs are the same whatever its value."""
    return Field(default, json_schema_extra={NOT_IN_RUN_ID: "execution"}, **kwargs)


def InputField(default: Any = ..., **kwargs: Any) -> Any:
    """``Field`` for an input URI: the run id carries the input's content digest instead of its name."""
    return Field(default, json_schema_extra={NOT_IN_RUN_ID: "input"}, **kwargs)

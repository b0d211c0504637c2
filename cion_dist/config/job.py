"""The job file: common settings plus one section per stage. ``stage`` says which one ``cion run`` executes."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from cion_dist.config_base import MLflowConfig, RayConfig, StorageConfig, StrictModel, check_storage_uri
from cion_dist.correlate.config import CorrelateConfig
from cion_dist.embed.config import EmbedConfig
from cion_dist.evaluate.config import EvaluateConfig, PromoteConfig
from cion_dist.ingest.config import IngestConfig
from cion_dist.pretrain.config import PretrainConfig
from cion_dist.synth.config import SynthConfig

STAGES = ("ingest", "embed", "correlate", "pretrain", "evaluate", "promote")
StageName = Literal["synth", "ingest", "embed", "correlate", "pretrain", "evaluate", "promote"]


FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


class RuntimeEnvConfig(StrictModel):
    """What ``cion submit`` hands Ray's job API as the runtime environment."""

    working_dir: Optional[str] = "."
    pip: list[str] = Field(default_factory=list)
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="values like ${NAME} are read from the cluster's own environment by Ray"
    )
    forward_env: list[str] = Field(
        default_factory=lambda: list(FORWARDED_ENV),
        description="variables copied from the submitter's environment into env_vars when set (credentials)",
    )
    excludes: list[str] = Field(default_factory=lambda: [".venv", ".git", "cion-out", "mlruns", "*.db"])


class PipelineConfig(StrictModel):
    stages: list[StageName] = Field(default_factory=lambda: ["synth", *STAGES], min_length=1)
    iterations: int = Field(1, ge=1, description="repeat embed -> correlate -> pretrain with the newest checkpoint")


class Job(StrictModel):
    stage: Literal["synth", "ingest", "embed", "correlate", "pretrain", "evaluate", "promote", "pipeline"]
    name: str = "cion"
    output: str = Field("./cion-out", description="root URI: stages write <output>/<stage>/<run_id>/")
    run_id: Optional[str] = Field(None, description="None = derived from the stage config and its input digest")
    seed: int = 0
    storage: StorageConfig = StorageConfig()
    mlflow: MLflowConfig = MLflowConfig()
    ray: RayConfig = RayConfig()
    runtime_env: RuntimeEnvConfig = RuntimeEnvConfig()
    pipeline: PipelineConfig = PipelineConfig()
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    embed: EmbedConfig = EmbedConfig()
    correlate: CorrelateConfig = CorrelateConfig()
    pretrain: PretrainConfig = PretrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()

    @model_validator(mode="after")
    def _output_not_empty(self) -> "Job":
        if not self.output.strip():
            raise ValueError("output must be a local path or s3:// URI")
        check_storage_uri(self.output, "output")
        return self

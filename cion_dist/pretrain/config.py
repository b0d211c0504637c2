"""Settings of the pretrain stage: identity-guided self-distillation on Ray Train + DeepSpeed."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from cion_dist.config.base import StrictModel


class PretrainConfig(StrictModel):
    input: Optional[str] = Field(None, description="correlate run folder; None = newest complete correlate run")
    backbone: str = "resnet18"
    epochs: int = Field(4, ge=1)
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    zero_stage: int = Field(2, ge=0, le=3)

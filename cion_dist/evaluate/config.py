"""Settings of the evaluate and promote stages."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from cion_dist.config.base import StrictModel


class EvaluateConfig(StrictModel):
    dataset: str = Field("", description="re-ID dataset root (Market-1501 layout); empty = <output>/corpus/market")
    model: Optional[str] = Field(None, description="checkpoint path, models:/name@alias, or None = newest pretrain")


class PromoteConfig(StrictModel):
    model_name: str = "cion-backbone"
    metric: str = "mAP"
    margin: float = 0.0

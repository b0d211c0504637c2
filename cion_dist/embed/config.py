"""Settings of the embed stage: crops -> L2-normalised features."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from cion_dist.config.base import StrictModel


class EmbedConfig(StrictModel):
    input: Optional[str] = Field(None, description="ingest run folder; None = newest complete ingest run")
    backbone: Literal["onnx", "torch", "handcrafted"] = "handcrafted"
    model: str = Field("", description="onnx file, torch architecture name (resnet50, vit_small, timm:<name>) or empty")
    weights: Optional[str] = Field(None, description="path, s3:// URI, or models:/name@alias")
    batch_size: int = Field(64, ge=1)
    concurrency: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0)
    height: int = 256
    width: int = 128

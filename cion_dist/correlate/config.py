"""Settings of the correlate stage: CION's progressive multi-level denoising."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from cion_dist.config.base import StrictModel


class CorrelateConfig(StrictModel):
    input: Optional[str] = Field(None, description="embed run folder; None = newest complete embed run")
    radius: Optional[float] = Field(None, gt=0, description="intra-identity radius r (cosine distance); None = calibrate")
    link_distance: Optional[float] = Field(None, gt=0, description="inter-identity distance d; None = calibrate")
    window_videos: int = Field(8, ge=1)
    stride_videos: int = Field(4, ge=1)
    knn_k: int = Field(10, ge=1)
    mutual_knn: bool = False
    min_images: int = Field(4, ge=1)
    num_shards: int = Field(2, ge=1)
    index: Literal["flat", "ivf"] = "flat"

"""Settings of the synthetic person-video corpus."""

from __future__ import annotations

from pydantic import Field

from cion_dist.config.base import StrictModel


class SynthConfig(StrictModel):
    out: str = Field("", description="corpus URI (local path or s3://); empty = <output>/corpus")
    identities: int = Field(12, ge=2, description="people who walk through the videos")
    cameras: int = Field(3, ge=1)
    videos: int = Field(6, ge=1, description="clips in the manifest")
    frames: int = Field(120, ge=8, description="frames per clip")
    fps: int = Field(10, ge=1)
    width: int = Field(640, ge=64)
    height: int = Field(360, ge=64)
    people_per_video: int = Field(4, ge=1)
    benchmark_identities: int = Field(8, ge=0, description="held-out identities for the Market-1501-layout benchmark")
    benchmark_images_per_camera: int = Field(4, ge=1)
    seed: int = 0

"""Settings of the synthetic person-video corpus."""

from __future__ import annotations

from pydantic import Field, model_validator

from cion_dist.config_base import StrictModel, check_storage_uri


class SynthConfig(StrictModel):
    out: str = Field("", description="corpus URI (local path or s3://); empty = <output>/corpus")
    identities: int = Field(12, ge=2, description="people who walk through the videos")
    cameras: int = Field(3, ge=1)
    videos: int = Field(6, ge=1, description="clips in the manifest; clip i is filmed by camera i % cameras")
    frames: int = Field(120, ge=8, description="frames per clip")
    fps: int = Field(10, ge=1)
    width: int = Field(640, ge=64, description="even (yuv420p)")
    height: int = Field(360, ge=64, description="even (yuv420p)")
    people_per_video: int = Field(4, ge=1, description="capped at the number of identities")
    benchmark_identities: int = Field(
        8, ge=0, description="held-out identities for the Market-1501-layout benchmark (queries need cameras >= 2)"
    )
    benchmark_images_per_camera: int = Field(4, ge=1, description="crops per held-out identity and camera")
    # difficulty (defaults: the standard corpus)
    look_alike_fraction: float = Field(0.25, ge=0, le=1, description="identities that imitate another one's outfit")
    texture_look_alikes: bool = Field(
        False, description="look-alikes keep every torso row's colours (only texture differs): colour alone cannot tell"
    )
    details: bool = Field(False, description="chest badges, bags and hair styles that tell people apart by shape")
    benchmark_light_jitter: float = Field(0.0, ge=0, lt=1, description="per-crop brightness change 1 +- this")
    benchmark_far: float = Field(0.0, ge=0, lt=1, description="benchmark people reach this far towards the horizon")
    benchmark_occlusion: float = Field(0.0, ge=0, le=1, description="share of benchmark crops partly hidden")
    seed: int = 0

    @model_validator(mode="after")
    def _even_frame(self) -> "SynthConfig":
        check_storage_uri(self.out, "synth.out")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even for yuv420p video, got {self.width}x{self.height}")
        return self

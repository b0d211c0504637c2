"""Settings of the correlate stage: CION's progressive multi-level denoising.

Distances are cosine distances ``1 - cos(a, b)`` between L2-normalised vectors; a centroid is the normalised mean
of its members (see ``cion_dist.correlate.geometry``). ``radius`` and ``link_distance`` left at ``None`` are
calibrated from the corpus itself (``cion_dist.correlate.calibrate``).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from cion_dist.config_base import ExecutionField, InputField, StrictModel


class CalibrationConfig(StrictModel):
    """How ``r`` and ``d`` are read off the corpus when not given."""

    radius_quantile: float = Field(
        0.98,
        gt=0,
        le=1,
        description="r = this quantile of image-to-tracklet-centroid distances of images the tracker and the nearest "
        "centroid agree on (the share of a clean tracker's images level 1 keeps); capped at d",
    )
    link_neighbours: int = Field(
        2, ge=1, description="nearest centroids of other videos pooled per tracklet for the d threshold (Otsu)"
    )
    sample: int = Field(200_000, ge=100, description="at most this many images / tracklets are used")


class SwitchSplitConfig(StrictModel):
    """Level 1: cut a tracklet where its appearance switches along time (``cion_dist/correlate/switches.py``)."""

    enabled: bool = True
    factor: float = Field(1.0, gt=0, description="cut where the two sides' centroids are factor * d apart or more")
    min_segment: int = Field(4, ge=2, description="images on each side of a cut, at least")

    def spec(self):
        from cion_dist.correlate.switches import SwitchSplit

        return SwitchSplit(self.enabled, self.factor, self.min_segment)


class CorrelateConfig(StrictModel):
    input: Optional[str] = InputField(None, description="embed run folder; None = newest complete embed run")
    radius: Optional[float] = Field(
        None, gt=0, le=2, description="intra-identity radius r (cosine distance); None = calibrate"
    )
    link_distance: Optional[float] = Field(None, gt=0, le=2, description="inter-identity distance d; None = calibrate")
    window_videos: int = Field(8, ge=1, description="videos per sliding window at level 3")
    stride_videos: int = Field(4, ge=1, description="videos the window moves by; < window_videos makes windows overlap")
    whole_corpus: bool = Field(False, description="level 3 links over one whole-corpus k-NN graph instead of windows")
    knn_k: int = Field(10, ge=1, description="neighbours per identity centroid in a window's k-NN graph")
    mutual_knn: bool = Field(False, description="keep a link only when each end is in the other's k-NN list")
    exclusive_videos: bool = Field(
        True, description="level 3 never joins two level-2 identities of one video (level 2 already judged them)"
    )
    min_tracklet: int = Field(2, ge=1, description="tracklets smaller than this after level 1 are dropped")
    min_images: int = Field(4, ge=1, description="identities smaller than this after level 3 are dropped")
    num_shards: int = ExecutionField(2, ge=1, description="FAISS index shards (Ray actors, SPREAD over nodes)")
    index: Literal["flat", "ivf"] = "flat"
    ivf_nlist: int = Field(64, ge=1, description="IVF lists per shard (capped by the shard size)")
    ivf_nprobe: int = Field(8, ge=1)
    shard_cpus: float = ExecutionField(1.0, gt=0, description="CPUs reserved per index shard actor")
    videos_per_task: int = ExecutionField(8, ge=1, description="videos handled by one level 1-2 Ray task")
    windows_per_task: int = Field(
        32, ge=1, description="consecutive level-3 windows searched by one Ray task (one links file per task)"
    )
    block_videos: int = Field(
        256,
        ge=1,
        description="videos whose level-2 identity vectors share one block file (level 3 and the merge read blocks)",
    )
    tasks_in_flight: int = ExecutionField(32, ge=1, description="Ray tasks the driver keeps submitted at once per step")
    ground_truth: Optional[str] = Field(
        None, description="Parquet with image_id, identity_id: adds a quality table (CION and baselines)"
    )
    baselines: list[Literal["tracklet", "dbscan", "finch"]] = Field(
        default_factory=lambda: ["tracklet", "dbscan", "finch"], description="baselines scored beside CION"
    )
    calibration: CalibrationConfig = CalibrationConfig()
    switch_split: SwitchSplitConfig = SwitchSplitConfig()

    @model_validator(mode="after")
    def _stride_fits(self) -> "CorrelateConfig":
        if self.stride_videos > self.window_videos:
            raise ValueError("stride_videos must not exceed window_videos (windows would skip videos)")
        return self

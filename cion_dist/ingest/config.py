"""Settings of the ingest stage: manifest -> decoded frames -> detections -> tracklets -> crops."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from cion_dist.config_base import ExecutionField, InputField, StrictModel


class BackgroundConfig(StrictModel):
    """Background subtraction for static cameras: a per-pixel median background, foreground blobs as people."""

    history: int = Field(15, ge=3, description="frames the median background is estimated from")
    history_stride: int = Field(3, ge=1, description="keep every n-th processed frame for the background")
    refresh_every: int = Field(32, ge=1, description="re-estimate the background after this many frames")
    diff_threshold: int = Field(28, ge=1, le=255, description="max channel difference that counts as foreground")
    min_height_fraction: float = Field(0.08, gt=0, le=1, description="blob height / frame height, lower bound")
    max_height_fraction: float = Field(0.9, gt=0, le=1)
    min_aspect: float = Field(1.1, gt=0, description="blob height / width, lower bound (people stand upright)")
    max_aspect: float = Field(5.0, gt=0)
    min_fill: float = Field(0.3, gt=0, le=1, description="foreground pixels / box area")
    split_aspect: float = Field(2.8, ge=0, description="h / w of one person when cutting wide blobs; 0 = no cutting")


class TileConfig(StrictModel):
    """Sliced inference (neural detectors): overlapping tiles plus the whole frame, merged by NMS."""

    grid: tuple[int, int] = Field((1, 1), description="tiles across, down; (1, 1) = whole frame only")
    overlap: float = Field(0.25, ge=0, lt=0.9, description="share of a tile its neighbour also covers")
    full_frame: bool = Field(True, description="also run the whole frame (people taller than a tile)")
    edge_margin: float = Field(
        0.01,
        ge=0,
        lt=0.5,
        description="tile boxes this close to an inner tile edge "
        "(share of the tile size) are people cut by the tile and dropped",
    )

    @property
    def enabled(self) -> bool:
        return self.grid[0] * self.grid[1] > 1

    @model_validator(mode="after")
    def _positive(self) -> "TileConfig":
        if min(self.grid) < 1:
            raise ValueError(f"tiles.grid must be two positive integers, got {list(self.grid)}")
        return self


class DetectorConfig(StrictModel):
    kind: Literal["background", "yolox", "torchvision"] = "background"
    model_uri: Optional[str] = Field(None, description="ONNX / weights file (path or s3://) for neural detectors")
    score_threshold: float = Field(0.35, ge=0, le=1)
    nms_threshold: float = Field(0.45, ge=0, le=1)
    input_size: Optional[int] = Field(
        None,
        ge=32,
        description="square input for models with dynamic spatial axes; "
        "a model's fixed size wins (with a warning); None = the model's, else 640",
    )
    batch_size: int = ExecutionField(
        8, ge=1, description="images per model call where the model's batch axis is dynamic"
    )
    tiles: TileConfig = TileConfig()
    num_gpus: float = ExecutionField(0, ge=0)
    threads: int = ExecutionField(1, ge=1, description="onnxruntime intra-op threads per clip task")
    background: BackgroundConfig = BackgroundConfig()

    @model_validator(mode="after")
    def _weights_given(self) -> "DetectorConfig":
        if self.kind == "yolox" and not self.model_uri:
            raise ValueError("detector.kind yolox needs detector.model_uri (the YOLOX ONNX file, path or s3://)")
        return self

    @model_validator(mode="after")
    def _tiles_need_stateless(self) -> "DetectorConfig":
        if self.kind == "background" and self.tiles.enabled:
            raise ValueError("detector.tiles: the background detector models whole frames and cannot be tiled")
        return self


class TrackerConfig(StrictModel):
    high_threshold: float = Field(0.5, ge=0, le=1, description="detections above this start and first match tracks")
    low_threshold: float = Field(0.1, ge=0, le=1, description="detections between low and high only extend tracks")
    match_iou: float = Field(0.3, ge=0, le=1, description="minimum IoU of a predicted track box and a detection")
    max_age: int = Field(10, ge=0, description="frames a lost track is kept for re-association")
    min_length: int = Field(3, ge=1, description="tracklets shorter than this are dropped")
    min_hits: int = Field(2, ge=1, description="consecutive matches before a new track is confirmed")
    appearance_weight: float = Field(0.5, ge=0, le=1, description="share of colour-histogram distance in the cost")

    @model_validator(mode="after")
    def _ordered(self) -> "TrackerConfig":
        if self.low_threshold > self.high_threshold:
            raise ValueError("tracker.low_threshold must not exceed tracker.high_threshold")
        return self


class GateConfig(StrictModel):
    """Crop quality gate (``cion_dist/ingest/gate.py``): which tracked detections become crops."""

    enabled: bool = True
    action: Literal["drop", "flag"] = Field("drop", description="drop failing crops, or keep them and only count")
    min_height: int = Field(40, ge=1, description="crops shorter than this (source pixels) are tiny")
    border_margin: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="boxes this close to a frame edge (share of the "
        "frame's width / height) are cut by the border, e.g. 0.005; 0 = no check (default: "
        "on the synthetic pipeline it lowered CION's pairwise F, see docs/footage.md)",
    )
    min_aspect: float = Field(1.5, gt=0, description="height / width below this is not an upright person")
    max_aspect: float = Field(5.0, gt=0, description="height / width above this is not a whole person")
    two_person_aspect: float = Field(1.1, ge=0, description="height / width below this: two people side by side")
    max_overlap: float = Field(0.5, gt=0, le=1, description="share of a box another detection may cover")
    overlap_min_score: float = Field(0.3, ge=0, le=1, description="detections below this score cover nothing")
    min_sharpness: float = Field(8.0, ge=0, description="variance of the Laplacian at 128 px high; 0 = no check")

    @model_validator(mode="after")
    def _ordered(self) -> "GateConfig":
        if self.min_aspect > self.max_aspect:
            raise ValueError("gate.min_aspect must not exceed gate.max_aspect")
        return self


class IngestConfig(StrictModel):
    manifest: str = InputField("", description="manifest Parquet URI; empty = <output>/corpus/manifest.parquet")
    sample_fps: Optional[float] = Field(None, gt=0, description="decode at this rate; None = every_n")
    every_n: int = Field(1, ge=1)
    max_frames: Optional[int] = Field(None, ge=1, description="decode at most this many frames per clip (sampled)")
    resize_width: Optional[int] = Field(None, ge=16, description="decode resized to this width (aspect kept)")
    chunk_frames: int = Field(64, ge=1, description="frames decoded at once (bounds memory per clip)")
    min_crop_height: int = Field(24, ge=1)
    crop_margin: float = Field(0.0, ge=0, le=0.5, description="context added around each box, as a fraction")
    jpeg_quality: int = Field(90, ge=10, le=100)
    detector: DetectorConfig = DetectorConfig()
    tracker: TrackerConfig = TrackerConfig()
    gate: GateConfig = GateConfig()
    concurrency: int = ExecutionField(2, ge=1)
    max_error_fraction: float = ExecutionField(0.2, ge=0, le=1)

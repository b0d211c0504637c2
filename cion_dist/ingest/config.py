"""Settings of the ingest stage: manifest -> decoded frames -> detections -> tracklets -> crops."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from cion_dist.config.base import StrictModel


class DetectorConfig(StrictModel):
    kind: Literal["background", "yolox", "torchvision"] = "background"
    model_uri: Optional[str] = Field(None, description="ONNX / weights file (path or s3://) for neural detectors")
    score_threshold: float = Field(0.35, ge=0, le=1)
    nms_threshold: float = Field(0.45, ge=0, le=1)
    input_size: int = 416
    num_gpus: float = Field(0, ge=0)


class TrackerConfig(StrictModel):
    high_threshold: float = 0.5
    low_threshold: float = 0.1
    match_iou: float = 0.3
    max_age: int = Field(10, description="frames a lost track is kept for re-association")
    min_length: int = Field(3, ge=1, description="tracklets shorter than this are dropped")


class IngestConfig(StrictModel):
    manifest: str = Field("", description="manifest Parquet URI; empty = <output>/corpus/manifest.parquet")
    sample_fps: Optional[float] = Field(None, gt=0, description="decode at this rate; None = every_n")
    every_n: int = Field(1, ge=1)
    resize_width: Optional[int] = None
    chunk_frames: int = Field(64, ge=1, description="frames decoded at once (bounds memory per clip)")
    min_crop_height: int = Field(24, ge=1)
    jpeg_quality: int = Field(90, ge=10, le=100)
    detector: DetectorConfig = DetectorConfig()
    tracker: TrackerConfig = TrackerConfig()
    concurrency: int = Field(2, ge=1)
    max_error_fraction: float = Field(0.2, ge=0, le=1)

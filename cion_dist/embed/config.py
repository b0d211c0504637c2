"""Settings of the embed stage: crops -> L2-normalised features."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt, model_validator

from cion_dist.config_base import ExecutionField, InputField, StrictModel


class HandcraftedConfig(StrictModel):
    """Stripe colour histograms (HSV and Lab), a weight-free re-ID descriptor."""

    stripes: int = Field(8, ge=1, le=32, description="horizontal stripes the crop is cut into")
    hsv_bins: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (8, 4, 2), description="joint H x S x V bins per stripe"
    )
    lab_bins: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (1, 8, 8), description="joint L x a x b bins per stripe"
    )
    centre_sigma: float = Field(
        0.1, gt=0, description="column weight exp(-(x-0.5)^2/2s^2) over crop width; damps background"
    )
    balance: bool = Field(True, description="grey-world colour balance per crop: cancels a camera's colour cast")


# Measured with OSNet x0.25 (ONNX, one thread): 325 crops/s at 16 per call, 305 at 32, 263 at 256; the
# handcrafted descriptor 2520 / 2220 / 1600. A GPU wants hundreds per call to stay busy.
CPU_BATCH, GPU_BATCH = 32, 512


class EmbedConfig(StrictModel):
    input: Optional[str] = InputField(None, description="ingest run folder; None = newest complete ingest run")
    backbone: Literal["onnx", "torch", "handcrafted"] = "handcrafted"
    model: str = Field("", description="onnx file, torch architecture name (resnet50, vit_small, timm:<name>) or empty")
    weights: Optional[str] = Field(None, description="path, s3:// URI, or models:/name@alias")
    batch_size: int = ExecutionField(
        CPU_BATCH,
        ge=1,
        description=f"crops per model call; unset: {CPU_BATCH} on a CPU (a crop costs more in larger batches "
        f"there), {GPU_BATCH} when num_gpus > 0",
    )
    crops_per_unit: int = Field(
        4096,
        ge=1,
        description="crops per embed unit and output part (whole ingest parts "
        "are grouped up to this); part of the run id, since it decides the output files",
    )
    parts_per_unit: int = Field(
        64, ge=1, description="ingest parts per unit when the ingest output has no part reports (older outputs)"
    )
    concurrency: int = ExecutionField(1, ge=1, description="embedding actors")
    num_gpus: float = ExecutionField(0, ge=0, description="GPUs per actor; > 0 runs on GPU (fp16 for torch backbones)")
    num_cpus: float = ExecutionField(1, gt=0, description="CPUs reserved per actor")
    threads: Optional[int] = ExecutionField(
        None, ge=1, description="intra-op threads per actor; None = max(1, num_cpus)"
    )
    read_ahead: int = ExecutionField(
        8,
        ge=0,
        description="ingest parts an actor reads ahead of the model, on as many I/O threads (object-store "
        "latency, not CPU); 0 reads them one after another",
    )
    height: int = Field(256, ge=8, description="input height; unset = the torch export's recorded size, else this")
    width: int = Field(128, ge=8, description="input width; as height")
    on_bad_image: Literal["fail", "skip"] = Field(
        "fail", description="undecodable crop: fail naming the image_id, or skip it and record it under errors/"
    )
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="stored embedding type; float16 halves the output and what correlate reads"
    )
    handcrafted: HandcraftedConfig = HandcraftedConfig()

    @model_validator(mode="before")
    @classmethod
    def _device_batch(cls, data):
        """An unset ``batch_size`` follows the device: small on a CPU, large on a GPU."""
        if isinstance(data, dict) and data.get("batch_size") is None and (data.get("num_gpus") or 0) > 0:
            data = {**data, "batch_size": GPU_BATCH}
        return data

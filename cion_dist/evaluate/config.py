"""Settings of the evaluate and promote stages."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from cion_dist.config_base import ExecutionField, InputField, StrictModel


class FinetuneConfig(StrictModel):
    """Short BoT-style supervised fine-tune (ID loss with label smoothing + batch-hard triplet + BNNeck)."""

    iterations: int = Field(200, ge=1, description="optimizer steps on bounding_box_train")
    p: int = Field(8, ge=2, description="identities per batch")
    k: int = Field(4, ge=2, description="images per identity per batch")
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    triplet_margin: float = Field(0.3, ge=0)
    neck_feat: Literal["before", "after"] = Field("before", description="evaluate the feature before/after BNNeck")
    num_threads: int = ExecutionField(2, ge=1, description="image decoding threads")


class EvaluateConfig(StrictModel):
    dataset: str = InputField("", description="re-ID dataset root (Market-1501 layout); empty = <output>/corpus/market")
    dataset_format: Literal["auto", "market", "msmt17", "list"] = "auto"
    keep_distractors: bool = Field(True, description="Market pid 0000 stays in the gallery as negatives")
    model: Optional[str] = InputField(
        None, description="checkpoint path, models:/name@alias, an ONNX re-ID model (*.onnx), or None = newest pretrain"
    )
    mean: Optional[tuple[float, float, float]] = Field(
        None, description="input mean (RGB, 0-1); None = what the model records (backbone.json / ONNX), else ImageNet"
    )
    std: Optional[tuple[float, float, float]] = Field(None, description="input std, as mean")
    architecture: Optional[str] = Field(None, description="backbone name for a bare checkpoint without backbone.json")
    protocol: Literal["frozen", "finetune"] = "frozen"
    finetune: FinetuneConfig = FinetuneConfig()
    flip: bool = Field(True, description="average features of the image and its horizontal flip")
    batch_size: int = ExecutionField(64, ge=1)
    height: int = Field(256, ge=16, description="input height; unset = the model's recorded size, else this")
    width: int = Field(128, ge=8, description="input width; as height")
    extraction: Literal["auto", "local", "ray"] = ExecutionField(
        "auto", description="auto = Ray Data above ray_min_images"
    )
    ray_min_images: int = ExecutionField(4000, ge=0)
    num_actors: int = ExecutionField(2, ge=1, description="embedding actors in the Ray Data pool")
    device: str = Field("auto", description="auto, cpu or cuda")
    metric: Literal["cosine", "euclidean"] = "cosine"
    chunk_size: int = ExecutionField(512, ge=1, description="queries per distance block")
    rerank: bool = False
    rerank_k1: int = Field(20, ge=1)
    rerank_k2: int = Field(6, ge=1)
    rerank_lambda: float = Field(0.3, ge=0, le=1)
    max_rank: int = Field(10, ge=1)


class PromoteConfig(StrictModel):
    model_name: str = "cion-backbone"
    metric: Literal["mAP", "mINP", "rank1", "rank5", "rank10"] = "mAP"
    margin: float = Field(0.0, ge=0, description="the candidate must beat the champion by more than this")
    candidate: Optional[str] = Field(None, description="version number or models:/ URI; None = newest version")
    dataset_digest: Optional[str] = Field(None, description="None = the candidate's most recent evaluation dataset")
    protocol: Literal["frozen", "finetune"] = "frozen"
    floor: Optional[float] = Field(
        None,
        description="the candidate's metric must reach this to take the champion alias (needed for a first champion)",
    )
    allow_first_without_floor: bool = Field(
        False, description="let the first champion be crowned without a floor (any finite metric)"
    )

    @field_validator("candidate", mode="before")
    @classmethod
    def _version_number(cls, v):
        # promote.candidate=3 on the command line reads as an int in YAML
        if isinstance(v, bool):
            raise ValueError("give a version number or a models:/ URI")
        return str(v) if isinstance(v, int) else v

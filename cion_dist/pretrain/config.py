"""Settings of the pretrain stage: identity-guided self-distillation on Ray Train + DeepSpeed.

Defaults are sized for a laptop demo. The published ResNet50-IBN recipe (docs/method.md section 4) is: backbone
resnet50_ibn_a, epochs 100, batch_size_per_worker 120 on 8 workers, local_crops 8, out_dim 65536, lr 5e-4 per 256
images, warmup_epochs 10, gradual_epochs [40, 60, 80, 100] with gradual_instances [2, 4, 6, 8], precision fp16.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, PositiveInt, model_validator

from cion_dist.config_base import ExecutionField, InputField, StrictModel


class PretrainConfig(StrictModel):
    input: Optional[str] = InputField(None, description="correlate run folder; None = newest complete correlate run")
    crops: Optional[str] = InputField(
        None,
        description="ingest run folder with the jpeg column; None = follow the correlate -> embed -> ingest lineage",
    )
    # networks
    backbone: str = Field(
        "resnet18", description="factory name: resnet50_ibn_a, vit_small, resnet_tiny, timm:<name>..."
    )
    backbone_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="e.g. {stem_conv: true, drop_path_rate: 0.1}"
    )
    pretrained: Optional[str] = Field(None, description="initial backbone weights (safetensors / torch checkpoint)")
    out_dim: int = Field(4096, ge=2, description="prototypes of the head's last layer (paper: 65536)")
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    head_bn: bool = Field(False, description="BatchNorm in the head's MLP (DINO's use_bn_in_head; CION: off)")
    # data
    batch_size_per_worker: int = Field(8, ge=1, description="images per worker step; divisible by every K used")
    local_crops: int = Field(4, ge=0, description="128x64 local crops per image (paper: 8)")
    image_size: tuple[PositiveInt, PositiveInt] = (256, 128)
    local_size: tuple[PositiveInt, PositiveInt] = (128, 64)
    gradual_epochs: list[int] = Field(default_factory=lambda: [2, 4], description="K changes at these epochs")
    gradual_instances: list[int] = Field(default_factory=lambda: [2, 4], description="K (images per identity)")
    augment_in: Literal["ray_data", "worker"] = Field(
        "ray_data", description="ray_data: multi-crop runs in Ray Data tasks on CPU workers; worker: inline"
    )
    prefetch_batches: int = ExecutionField(2, ge=0, description="batches each worker holds ahead of its step")
    shard_images: int = Field(
        4096, ge=1, description="images per identity shard of the labelled set: what one Ray Data task reads"
    )
    steps_per_task: int = Field(8, ge=1, description="batches one Ray Data task makes (and holds until handed on)")
    # loss
    student_temp: float = Field(0.1, gt=0, description="softmax temperature of the student (0 divides by zero)")
    teacher_temp: float = Field(0.04, gt=0, description="softmax temperature of the teacher (sharpening; > 0)")
    center_momentum: float = Field(0.9, ge=0, le=1)
    # optimisation
    epochs: int = Field(4, ge=1)
    lr: float = Field(5e-4, gt=0, description="peak lr per 256 images (scaled by the global batch)")
    min_lr: float = 1e-6
    warmup_epochs: int = Field(1, ge=0)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = Field(0.996, ge=0, le=1)
    clip_grad: float = Field(3.0, ge=0, description="global gradient-norm clip (DeepSpeed); 0 = off")
    freeze_last_layer: int = Field(1, ge=0, description="epochs during which the head's last layer does not move")
    # distribution
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = ExecutionField(1, gt=0)
    zero_stage: int = Field(2, ge=0, le=3)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    optimizer: Literal["adamw", "deepspeed_adamw"] = Field(
        "adamw", description="adamw: torch AdamW (no compiled ops); deepspeed_adamw: FusedAdam / CPUAdam"
    )
    offload_optimizer: bool = Field(False, description="ZeRO optimizer state offload to CPU (needs deepspeed_adamw)")
    partition_teacher: bool = Field(
        True,
        description="ZeRO-3: partition the teacher like the student (1/world of its memory, EMA shard by shard, "
        "its forward gathers layers); false = a replica per rank (EMA gathers the student each step)",
    )
    comm_bucket_numel: Optional[int] = Field(
        None, ge=1, description="elements per ZeRO reduce / gather bucket; None = a quarter of the model, at most 5e8"
    )
    sync_bn: bool = Field(False, description="convert BatchNorm to SyncBatchNorm (GPU runs)")
    cpu_shm_comm: bool = ExecutionField(True, description="DeepSpeed's compiled shared-memory collectives on CPU")
    # checkpoints, fault tolerance, tracking
    storage_path: Optional[str] = Field(None, description="Ray Train storage (local or s3://); None = the run folder")
    checkpoint_every_steps: int = ExecutionField(0, ge=0, description="0 = once per epoch")
    keep_checkpoints: int = ExecutionField(2, ge=1)
    max_failures: int = ExecutionField(2, ge=0)
    seed: Optional[int] = Field(None, description="None = the job seed")
    model_name: str = Field("cion-backbone", description="MLflow registered model name")
    register_model: bool = True

    @model_validator(mode="after")
    def _check(self) -> "PretrainConfig":
        if len(self.gradual_epochs) != len(self.gradual_instances) or not self.gradual_instances:
            raise ValueError("gradual_epochs and gradual_instances must be non-empty and of equal length")
        bad = [k for k in self.gradual_instances if k < 1 or self.batch_size_per_worker % k]
        if bad:
            raise ValueError(f"batch_size_per_worker={self.batch_size_per_worker} is not divisible by K in {bad}")
        if self.precision in ("fp16", "bf16") and not self.use_gpu:
            raise ValueError(f"precision {self.precision} needs use_gpu: true (CPU workers train in fp32; use auto)")
        if self.offload_optimizer and self.optimizer != "deepspeed_adamw":
            raise ValueError("offload_optimizer needs optimizer: deepspeed_adamw (DeepSpeedCPUAdam)")
        return self

"""The student's DeepSpeed engine and the teacher's placement: the optimiser side of ``step.train_step`` in the
Ray Train workers (and in ``benchmarks/gpu_step.py`` on one rank). DeepSpeed is imported inside the functions, so
``cion_dist.pretrain.step`` and this module import without it."""

from __future__ import annotations

from typing import Any

import torch

from cion_dist.pretrain.config import PretrainConfig
from cion_dist.pretrain.loss import IdentityDINOLoss
from cion_dist.pretrain.step import StepParts, adamw, build_networks, param_groups


def resolve_precision(cfg: PretrainConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if cfg.use_gpu and torch.cuda.is_available() else "fp32"


DEEPSPEED_BUCKET_NUMEL = 500_000_000  # DeepSpeed's default reduce / all-gather bucket, in elements


def bucket_numel(cfg: PretrainConfig, n_params: int) -> int:
    """Elements per gradient-reduce and parameter-gather bucket.

    DeepSpeed's default is sized for billion-parameter models, and ZeRO-3 allocates its reduce bucket up front:
    1.9 GB of fp32 per worker for a 21M-parameter ResNet-18 with its head, ten times the model. A quarter of the
    model (at least 2^20 elements, at most the default) keeps a few buckets per step to overlap.
    """
    if cfg.comm_bucket_numel:
        return cfg.comm_bucket_numel
    return int(min(DEEPSPEED_BUCKET_NUMEL, max(2**20, n_params // 4)))


def deepspeed_config(cfg: PretrainConfig, world_size: int, n_params: int) -> dict:
    precision = resolve_precision(cfg)
    bucket = bucket_numel(cfg, n_params)
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.zero_stage == 3:
        zero.update(
            {
                "stage3_param_persistence_threshold": 0,
                "stage3_gather_16bit_weights_on_model_save": False,
                "stage3_prefetch_bucket_size": bucket,
            }
        )
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size_per_worker,
        "train_batch_size": cfg.batch_size_per_worker * world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.clip_grad,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "bf16": {"enabled": precision == "bf16"},
    }
    if cfg.optimizer == "deepspeed_adamw":
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": 0.0, "weight_decay": 0.0}}
    return ds


def place_teacher(teacher: torch.nn.Module, cfg: PretrainConfig, world_size: int, n_params: int, device):
    """``(teacher, its engine or None)``. Under ZeRO-3 the teacher is partitioned like the student (a DeepSpeed
    engine without optimizer, always fp32): a rank holds 1/world of it, the EMA runs shard by shard without
    communication, and the teacher's forward gathers its layers as the student's does. Under ZeRO 0-2 it is a
    plain replica on every rank, as under ZeRO-3 with ``partition_teacher: false`` (fewer, larger collectives: one
    gather of the student per step for the EMA). Keep the engine referenced while the teacher is in use."""
    teacher.to(device)
    if cfg.zero_stage != 3 or not cfg.partition_teacher:
        return teacher, None
    import deepspeed

    ds = deepspeed_config(cfg, world_size, n_params)
    ds.update({"fp16": {"enabled": False}, "bf16": {"enabled": False}, "gradient_clipping": 0.0})
    ds.pop("optimizer", None)
    ds["zero_optimization"].pop("offload_optimizer", None)
    engine, *_ = deepspeed.initialize(model=teacher, config=ds)
    return engine.module, engine


def _disable_cpu_shm_comm() -> None:
    """Tell DeepSpeed its shared-memory CPU collective op is unavailable, so it uses gloo as-is instead of
    compiling the op on a fresh machine (about 60 s)."""
    import deepspeed.ops as ds_ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        ds_ops.__compatible_ops__[builder.NAME] = False


def deepspeed_parts(cfg: PretrainConfig, world_size: int, seed: int, device: torch.device) -> tuple[StepParts, Any]:
    """``(StepParts with a DeepSpeed engine, the teacher's engine or None)`` for one rank (``init_distributed``
    already called). The student is built on every rank with the same seed, so ZeRO's shards agree; with the
    ``adamw`` optimiser a torch AdamW (fused on CUDA) is handed to DeepSpeed as its client optimiser."""
    import deepspeed

    student, teacher = build_networks(cfg, seed)
    n_params = sum(p.numel() for p in student.parameters())
    groups, kinds = param_groups(student)
    optimizer = adamw(groups, device) if cfg.optimizer == "adamw" else None
    engine, *_ = deepspeed.initialize(
        model=student,
        optimizer=optimizer,
        model_parameters=groups if optimizer is None else None,
        config=deepspeed_config(cfg, world_size, n_params),
    )
    teacher, teacher_engine = place_teacher(teacher, cfg, world_size, n_params, device)
    loss_fn = IdentityDINOLoss(
        cfg.out_dim, 2 + cfg.local_crops, cfg.student_temp, cfg.teacher_temp, cfg.center_momentum
    ).to(device)
    dtype = next(engine.module.parameters()).dtype
    return StepParts(engine, teacher, loss_fn, kinds, dtype), teacher_engine

"""One self-distillation training step, the same for every driver.

``train_step`` is what a Ray Train worker (``train_loop.train_loop_per_worker``), the in-process ``train`` below and
``benchmarks/gpu_step.py`` all run. It reads top to bottom as DINO's step does: hyper-parameters for this step,
teacher on the global crops, student on all crops, loss, backward, (clipped) optimiser step, EMA of the teacher,
centre update. The optimiser side is an *engine* with DeepSpeed's three calls (``engine(crops)``,
``engine.backward(loss)``, ``engine.step()`` with clipping and ``zero_grad`` inside, ``engine.optimizer``,
``engine.module``): a DeepSpeed engine in the workers, ``TorchEngine`` (plain torch, autocast) in one process.

This module imports torch and the project's pure pieces only: no Ray, DeepSpeed, FAISS, decord or MLflow, so it
runs on a box that has nothing but PyTorch.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from cion_dist.errors import DataError
from cion_dist.models.dino_head import DINOHead, MultiCropWrapper
from cion_dist.models.factory import build_backbone, load_backbone_weights
from cion_dist.pretrain.augment import normalize
from cion_dist.pretrain.ema import ema_update
from cion_dist.pretrain.loss import IdentityDINOLoss
from cion_dist.pretrain.schedules import Schedules

GROUP_KINDS = ("regularized", "not_regularized", "last_layer")
HEALTH_KEYS = ("teacher_entropy", "batch_entropy", "kl", "center_norm")


# ---------------------------------------------------------------- the step


@dataclass
class StepParts:
    """What a step trains. ``engine`` is a DeepSpeed engine or a ``TorchEngine`` around the student; ``kinds``
    names ``engine.optimizer.param_groups`` in order (``param_groups``); ``dtype`` is the student's compute
    precision (crops are normalised to it; the fp32 teacher runs under autocast to it)."""

    engine: Any
    teacher: nn.Module
    loss_fn: IdentityDINOLoss
    kinds: Sequence[str]
    dtype: torch.dtype = torch.float32
    channels_last: bool = False

    @property
    def device(self) -> torch.device:
        return self.loss_fn.center.device


def train_step(
    parts: StepParts, views: Sequence, k: int, hp: dict[str, float], freeze_last_layer: bool = False
) -> dict[str, torch.Tensor]:
    """One optimiser step on a batch of uint8 crops ``views`` (one ``[B, 3, H, W]`` array or tensor per view,
    the two global views first; ``B = P * K`` identity-major). ``hp``: ``lr``, ``wd``, ``momentum`` of this step.
    Returns detached 0-d tensors (``loss`` and ``HEALTH_KEYS``); reading them is the caller's host sync."""
    set_hyperparameters(parts.engine.optimizer, parts.kinds, hp, freeze_last_layer)
    crops = device_batches(views, parts.device, parts.dtype, parts.channels_last)  # [globals, locals]
    with torch.no_grad(), torch.autocast(parts.device.type, dtype=parts.dtype, enabled=parts.dtype != torch.float32):
        t_out = parts.teacher(crops[:1])
    s_out = parts.engine(crops)
    loss, health = parts.loss_fn.loss_and_health(s_out, t_out, k)
    parts.engine.backward(loss)
    parts.engine.step()
    ema_update(parts.teacher, parts.engine.module, hp["momentum"])
    parts.loss_fn.update_center(t_out)
    return {"loss": loss.detach(), **health}


def set_hyperparameters(optimizer, kinds: Sequence[str], hp: dict[str, float], freeze_last_layer: bool) -> None:
    """lr and weight decay of every group for this step. The frozen last layer gets lr 0 (so no step and no
    decoupled decay); the engine owns the gradients, so they are not dropped as in the reference, and AdamW's
    moments still see them."""
    for group, kind in zip(optimizer.param_groups, kinds):
        group["lr"] = 0.0 if (freeze_last_layer and kind == "last_layer") else hp["lr"]
        group["weight_decay"] = hp["wd"] if kind != "not_regularized" else 0.0


def device_batches(
    views: Sequence, device: torch.device, dtype: torch.dtype, channels_last: bool = False
) -> list[torch.Tensor]:
    """Consecutive views of one resolution as one normalised batch (view-major rows): one host-to-device copy
    and one normalisation per resolution rather than per view, and the multi-crop wrapper's concatenation of
    the views becomes a single tensor per resolution."""
    out, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and tuple(views[end].shape[-2:]) == tuple(views[start].shape[-2:]):
            end += 1
        group = views[start:end]
        if isinstance(group[0], torch.Tensor):
            batch = torch.cat(list(group)) if len(group) > 1 else group[0]
        else:  # numpy (Ray Data hands out read-only arrays; concatenate copies them once into a fresh one)
            batch = torch.from_numpy(np.concatenate([np.asarray(v) for v in group]))
        batch = normalize(batch.to(device, non_blocking=True), dtype)
        out.append(batch.contiguous(memory_format=torch.channels_last) if channels_last else batch)
        start = end
    return out


def metric_values(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's metrics as floats, in one device-to-host copy."""
    keys = list(metrics)
    vals = torch.stack([metrics[k].float().reshape(()) for k in keys]).tolist() if keys else []
    return dict(zip(keys, vals))


class NonFiniteLoss(DataError):
    """Training produced a non-finite loss or health figure: retrying cannot help, the settings or data must
    change."""


def check_finite(values: dict[str, float], step: int, hint: str = "") -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise NonFiniteLoss(
            f"pretraining diverged at global step {step}: non-finite {', '.join(bad)} ({shown}); "
            f"lower pretrain.lr or raise pretrain.teacher_temp / student_temp{hint}"
        )


# ---------------------------------------------------------------- networks and optimiser


def build_networks(cfg, seed: int) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student and teacher with identical initial weights (same seed on every rank, so ZeRO-3 shards agree)."""
    torch.manual_seed(seed)
    backbone = build_backbone(cfg.backbone, **cfg.backbone_kwargs)
    if cfg.pretrained:
        load_backbone_weights(backbone, cfg.pretrained)
    head = DINOHead(backbone.embed_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, use_bn=cfg.head_bn)
    student = MultiCropWrapper(backbone, head)
    if cfg.sync_bn and cfg.use_gpu:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return student, teacher


def param_groups(model: nn.Module) -> tuple[list[dict], list[str]]:
    """Weight decay for matrices and kernels only (not biases / norms); the head's last layer apart so it can be
    held still during the first ``freeze_last_layer`` epochs."""
    buckets: dict[str, list] = {k: [] for k in GROUP_KINDS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "last_layer" in name:
            buckets["last_layer"].append(p)
        elif name.endswith(".bias") or p.ndim == 1:
            buckets["not_regularized"].append(p)
        else:
            buckets["regularized"].append(p)
    kinds = [k for k in GROUP_KINDS if buckets[k]]
    return [{"params": buckets[k]} for k in kinds], kinds


def adamw(groups: list[dict], device: torch.device) -> torch.optim.AdamW:
    """Torch AdamW, fused (one kernel for all parameters) on CUDA."""
    return torch.optim.AdamW(groups, lr=0.0, fused=device.type == "cuda")


def build_schedules(cfg, steps_per_epoch: int, global_batch: int) -> Schedules:
    """lr (peak scaled by the global batch / 256), weight decay and teacher momentum per global step."""
    return Schedules.build(
        epochs=cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        lr=cfg.lr * global_batch / 256.0,
        min_lr=cfg.min_lr,
        warmup_epochs=cfg.warmup_epochs,
        weight_decay=cfg.weight_decay,
        weight_decay_end=cfg.weight_decay_end,
        momentum_teacher=cfg.momentum_teacher,
    )


class TorchEngine:
    """DeepSpeed's engine calls over a plain module and torch optimiser: autocast forward in ``dtype``, global
    gradient-norm clipping as DeepSpeed's ``gradient_clipping`` does, a GradScaler for fp16."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        clip_grad: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ):
        self.module, self.optimizer, self.clip_grad, self.dtype = module, optimizer, clip_grad, dtype
        self.device_type = next(module.parameters()).device.type
        self.scaler = torch.amp.GradScaler(self.device_type) if dtype == torch.float16 else None

    def __call__(self, crops):
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.module(crops)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip_grad, foreach=True)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def local_parts(
    cfg, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, channels_last: bool = False
) -> StepParts:
    """Student, teacher, loss and a ``TorchEngine`` for one process, built from a ``PretrainConfig``."""
    device = torch.device(device)
    student, teacher = build_networks(cfg, seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    student.to(device, memory_format=memory_format)
    teacher.to(device, memory_format=memory_format)
    groups, kinds = param_groups(student)
    engine = TorchEngine(student, adamw(groups, device), cfg.clip_grad, dtype)
    ncrops = 2 + cfg.local_crops
    loss_fn = IdentityDINOLoss(cfg.out_dim, ncrops, cfg.student_temp, cfg.teacher_temp, cfg.center_momentum).to(device)
    return StepParts(engine, teacher, loss_fn, kinds, dtype, channels_last)


# ---------------------------------------------------------------- the in-process driver


def instances_of(labels) -> int:
    """K of an identity-major batch: the length of every run of equal labels (all runs must be equal)."""
    labels = np.asarray(labels)
    edges = np.flatnonzero(np.diff(labels) != 0) + 1
    runs = np.diff(np.concatenate([[0], edges, [len(labels)]]))
    if len(runs) == 0 or (runs != runs[0]).any():
        raise DataError(f"batch labels are not P identities x K consecutive images (run lengths {sorted(set(runs))})")
    return int(runs[0])


@dataclass
class TrainResult:
    teacher: nn.Module  # the teacher's backbone (the model self-distillation keeps)
    history: list[dict[str, float]] = field(default_factory=list)
    parts: Optional[StepParts] = None


def train(
    cfg,
    batches: Iterable[tuple[Sequence, Any]],
    steps: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    steps_per_epoch: Optional[int] = None,
    parts: Optional[StepParts] = None,
) -> TrainResult:
    """Pretrain in this process: ``steps`` steps of ``train_step`` over ``(views, labels)`` batches (uint8 views
    as the feed makes them, labels one per image, identity-major; K is read from them). The schedules span
    ``cfg.epochs`` epochs of ``steps_per_epoch`` steps (default ``steps / cfg.epochs``), indexed by the global
    step as in the Ray Train workers; the last layer is frozen for ``cfg.freeze_last_layer`` epochs. A
    non-finite loss raises ``NonFiniteLoss`` at once. Returns the teacher backbone and the per-step history
    (loss, health, schedule values) that ``cion_dist.pretrain.health.health_verdict`` reads."""
    parts = parts or local_parts(cfg, seed, device, dtype)
    per_epoch = steps_per_epoch or max(1, steps // cfg.epochs)
    sched, history = None, []
    for step, (views, labels) in zip(range(steps), batches):
        if sched is None:  # the batch size is known from the first batch
            sched = build_schedules(cfg, per_epoch, len(labels))
        hp, epoch = sched.values(step), step // per_epoch
        k = instances_of(labels)
        values = metric_values(train_step(parts, views, k, hp, freeze_last_layer=epoch < cfg.freeze_last_layer))
        check_finite(values, step + 1, f" (epoch {epoch}, K={k}, lr={hp['lr']:.3g})")
        history.append({**values, **hp, "K": k, "epoch": epoch})
    return TrainResult(parts.teacher.backbone, history, parts)

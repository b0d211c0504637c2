"""The per-worker training loop: DeepSpeed student, EMA teacher (partitioned too under ZeRO-3), identity-guided
DINO loss.

One step reads top to bottom: schedule values for the global step, teacher on the two global crops, student on
every crop, loss, backward, (clipped) optimizer step inside DeepSpeed, EMA of the teacher, centre update.

Checkpoints: every rank calls ``engine.save_checkpoint`` into its own folder (its ZeRO shard), rank 0 adds the
teacher, the loss centre and the loop position (``state.json``), and all ranks hand their folder to
``ray.train.report``, which merges them under the run's storage path (local or s3://). A restarted worker group
reads ``ray.train.get_checkpoint()`` and continues at the same epoch, step, schedules and sampler position.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

import cion_dist.config  # noqa: F401 - load the Job model first: the stage configs are imported from it
from cion_dist.models.dino_head import DINOHead, MultiCropWrapper
from cion_dist.models.factory import build_backbone, load_backbone_weights
from cion_dist.pretrain.augment import MultiCropSpec, normalize
from cion_dist.pretrain.config import PretrainConfig
from cion_dist.pretrain.ema import ema_update, full_state, is_zero3_param, load_full_state
from cion_dist.pretrain.loss import IdentityDINOLoss
from cion_dist.pretrain.memory import module_bytes, peak_rss_mb, rss_mb, tensor_breakdown
from cion_dist.pretrain.schedules import for_epochs
from cion_dist.pretrain.stream import DATASET, worker_batches

DS_TAG = "ds"
TEACHER_FILE = "teacher.pt"
STATE_FILE = "state.json"


# ---------------------------------------------------------------- model and optimizer pieces


def build_networks(cfg: PretrainConfig, seed: int) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student and teacher with identical initial weights (same seed on every rank, so ZeRO-3 shards agree)."""
    torch.manual_seed(seed)
    backbone = build_backbone(cfg.backbone, **cfg.backbone_kwargs)
    if cfg.pretrained:
        load_backbone_weights(backbone, cfg.pretrained)
    head = DINOHead(backbone.embed_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
    student = MultiCropWrapper(backbone, head)
    if cfg.sync_bn and cfg.use_gpu:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return student, teacher


GROUP_KINDS = ("regularized", "not_regularized", "last_layer")


def param_groups(model: torch.nn.Module) -> tuple[list[dict], list[str]]:
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
        zero.update({"stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": False,
                     "stage3_prefetch_bucket_size": bucket})
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


def model_state_parts(engine) -> dict[str, list[torch.Tensor]]:
    """The student's tensors by kind, for ``tensor_breakdown``: the module's weights (this rank's partitions
    under ZeRO-3), the optimizer's moments, and the tensors the optimizer steps where they are not the weights
    (ZeRO's fp32 master partitions). Gradients and communication buckets fall under "other"."""
    weights = [p.ds_tensor if is_zero3_param(p) else p for p in engine.module.parameters()]
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    moments = [v for st in inner.state.values() for v in st.values() if torch.is_tensor(v)]
    stepped = [p for group in inner.param_groups for p in group["params"]]
    # ZeRO-1/2 and ZeRO-3 keep their fp32 partitions here; ZeRO-3 hands them to the optimizer only inside step
    for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        stepped += [t for t in getattr(engine.optimizer, attr, None) or [] if torch.is_tensor(t)]
    return {"weights": weights, "optimizer": moments, "master": stepped}


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(engine, teacher, loss_fn, state: dict, rank: int) -> str:
    """Every rank saves its DeepSpeed shard; rank 0 adds the full teacher (gathered by all ranks under ZeRO-3)."""
    path = tempfile.mkdtemp(prefix="cion-ckpt-")
    engine.save_checkpoint(path, tag=DS_TAG, client_state={"cion_state": state})
    teacher_state = full_state(teacher)  # a collective when the teacher is partitioned
    if rank == 0:
        torch.save({"teacher": teacher_state, "center": loss_fn.center.detach().cpu()}, os.path.join(path, TEACHER_FILE))
        Path(path, STATE_FILE).write_text(json.dumps(state))
    return path


def load_checkpoint(path: str, engine, teacher, loss_fn) -> dict:
    engine.load_checkpoint(path, tag=DS_TAG)
    blob = torch.load(os.path.join(path, TEACHER_FILE), map_location="cpu", weights_only=True)
    load_full_state(teacher, blob["teacher"])
    loss_fn.center.copy_(blob["center"].to(loss_fn.center.device))
    return json.loads(Path(path, STATE_FILE).read_text())


# ---------------------------------------------------------------- tracking


class _MetricsSink:
    """Rank 0 streams step metrics into the stage's MLflow run (batched, so the store sees few writes)."""

    def __init__(self, tracking: Optional[dict]):
        self.client = None
        self.buffer: list = []
        if tracking and tracking.get("run_id"):
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking["tracking_uri"])
            self.run_id = tracking["run_id"]

    def log(self, metrics: dict, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        if len(self.buffer) >= 200:
            self.flush()

    def flush(self) -> None:
        if self.client is not None and self.buffer:
            self.client.log_batch(self.run_id, metrics=self.buffer)
            self.buffer = []


# ---------------------------------------------------------------- the loop


def _mean_over_ranks(x: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _max_over_ranks(x: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class _Throughput:
    """Images/s and the fraction of step time spent waiting for data since the last report; the first step after
    a start or a report is left out (it carries start-up or checkpoint time)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.images, self.seconds, self.wait, self.skip = 0, 0.0, 0.0, True

    def add(self, images: int, seconds: float, wait: float):
        if self.skip:
            self.skip = False
            return
        self.images += images
        self.seconds += seconds
        self.wait += wait

    def summary(self) -> dict:
        if self.seconds <= 0:
            return {"images_per_s_mean": float("nan"), "data_wait_fraction_mean": float("nan")}
        return {"images_per_s_mean": self.images / self.seconds, "data_wait_fraction_mean": self.wait / self.seconds}


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    cfg = PretrainConfig(**config["pretrain"])
    seed = int(config["seed"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg.cpu_shm_comm:
        _disable_cpu_shm_comm()
    use_cuda = cfg.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")

    spec = MultiCropSpec(tuple(cfg.image_size), tuple(cfg.local_size), cfg.local_crops)
    epoch_steps = [int(n) for n in config["epoch_steps"]]  # the same on every rank, fixed by the driver's plan
    ks = [int(k) for k in config["epoch_k"]]
    global_batch = cfg.batch_size_per_worker * world
    sched = for_epochs(epoch_steps, lr=cfg.lr * global_batch / 256.0, min_lr=cfg.min_lr,
                       warmup_epochs=cfg.warmup_epochs, weight_decay=cfg.weight_decay,
                       weight_decay_end=cfg.weight_decay_end, momentum_teacher=cfg.momentum_teacher)

    student, teacher = build_networks(cfg, seed)
    n_params = sum(p.numel() for p in student.parameters())
    groups, kinds = param_groups(student)
    optimizer = torch.optim.AdamW(groups, lr=0.0) if cfg.optimizer == "adamw" else None
    engine, optimizer, _, _ = deepspeed.initialize(
        model=student, optimizer=optimizer, model_parameters=groups if optimizer is None else None,
        config=deepspeed_config(cfg, world, n_params),
    )
    teacher, _teacher_engine = place_teacher(teacher, cfg, world, n_params, device)
    loss_fn = IdentityDINOLoss(cfg.out_dim, spec.ncrops, cfg.student_temp, cfg.teacher_temp, cfg.center_momentum).to(device)
    dtype = next(engine.module.parameters()).dtype

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "first_loss": None}
    ckpt = ray.train.get_checkpoint()
    resumed_from = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(d, engine, teacher, loss_fn)
        resumed_from = state["global_step"]
    sink = _MetricsSink(config.get("mlflow") if rank == 0 else None)
    steps_this_attempt = 0
    last_loss = float("nan")

    throughput = _Throughput()

    def report(metrics_extra: dict) -> None:
        perf = throughput.summary()  # same keys on every rank: the collectives below always pair up
        perf["data_wait_fraction_mean"] = _mean_over_ranks(perf["data_wait_fraction_mean"], device)
        peak = _max_over_ranks(peak_rss_mb(), device)
        now = _max_over_ranks(rss_mb(), device)
        # measured between steps, the teacher left out: what the student's model state holds in this worker
        held = tensor_breakdown(model_state_parts(engine), exclude=[teacher, loss_fn])
        state_mb = {f"student_{k}_mb": _max_over_ranks(v / 2**20, device) for k, v in held.items()}
        state_mb["student_state_mb"] = _max_over_ranks(sum(held.values()) / 2**20, device)
        state_mb["teacher_mb"] = _max_over_ranks(module_bytes(teacher) / 2**20, device)
        path = save_checkpoint(engine, teacher, loss_fn, state, rank)
        metrics = {**state, **metrics_extra, **perf, **state_mb, "peak_rss_mb_max_worker": peak,
                   "rss_mb_max_worker": now, "last_loss": last_loss, "resumed_from_step": resumed_from,
                   "steps_this_attempt": steps_this_attempt}
        metrics = {k: v for k, v in metrics.items() if v is not None and not (isinstance(v, float) and np.isnan(v))}
        try:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)
            throughput.reset()

    shard = ray.train.get_dataset_shard(DATASET)
    stream = worker_batches(shard, config.get("cursor"), rank, state["epoch"], state["step_in_epoch"], spec,
                            cfg.augment_in == "ray_data", cfg.prefetch_batches)
    for epoch in range(state["epoch"], cfg.epochs):
        k = ks[epoch]
        start = state["step_in_epoch"] if epoch == state["epoch"] else 0
        n_steps = epoch_steps[epoch]
        t_prev = time.perf_counter()
        for step_in_epoch in range(start, n_steps):
            got_epoch, got_step, views, _ = next(stream)
            if (got_epoch, got_step) != (epoch, step_in_epoch):
                raise RuntimeError(f"rank {rank} expected batch ({epoch}, {step_in_epoch}), the stream gave "
                                   f"({got_epoch}, {got_step})")
            t_data = time.perf_counter()
            gs = state["global_step"]
            vals = sched.values(gs)
            # the frozen last layer gets lr 0 (so no step and no decoupled decay); DeepSpeed owns the gradients, so
            # they cannot be dropped as in the reference, and AdamW's moments still see them
            for group, kind in zip(engine.optimizer.param_groups, kinds):
                frozen = kind == "last_layer" and epoch < cfg.freeze_last_layer
                group["lr"] = 0.0 if frozen else vals["lr"]
                group["weight_decay"] = vals["wd"] if kind != "not_regularized" else 0.0
            crops = [normalize(torch.from_numpy(np.array(v, copy=True)).to(device, non_blocking=True), dtype) for v in views]
            # the fp32 teacher runs under autocast when the student trains in half precision
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                t_out = teacher([c.float() for c in crops[:2]]).float()
            s_out = engine(crops).float()
            loss = loss_fn(s_out, t_out, k)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at global step {gs} (epoch {epoch})")
            engine.backward(loss)
            engine.step()
            ema_update(teacher, engine.module, vals["momentum"])
            loss_fn.update_center(t_out)
            t_end = time.perf_counter()

            last_loss = _mean_over_ranks(float(loss.item()), device)
            if state["first_loss"] is None:
                state["first_loss"] = last_loss
            state["global_step"] = gs + 1
            state["epoch"], state["step_in_epoch"] = epoch, step_in_epoch + 1
            steps_this_attempt += 1
            step_time = t_end - t_prev
            throughput.add(global_batch, step_time, t_data - t_prev)
            sink.log({"loss": last_loss, "lr": vals["lr"], "wd": vals["wd"], "momentum": vals["momentum"], "K": k,
                      "epoch": epoch, "images_per_s": global_batch / max(step_time, 1e-9),
                      "data_wait_fraction": (t_data - t_prev) / max(step_time, 1e-9)}, step=gs + 1)
            t_prev = time.perf_counter()

            if cfg.fail_at_step is not None and state["global_step"] == cfg.fail_at_step and resumed_from is None and rank == 0:
                sink.flush()
                os._exit(17)  # fault drill: the process dies as a killed node would
            if step_in_epoch + 1 == n_steps:
                state["epoch"], state["step_in_epoch"] = epoch + 1, 0
                sink.flush()
                report({"K": k})
            elif cfg.checkpoint_every_steps and state["global_step"] % cfg.checkpoint_every_steps == 0:
                sink.flush()
                report({"K": k})
    sink.flush()

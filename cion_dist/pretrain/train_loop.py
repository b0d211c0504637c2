"""The per-worker training loop: DeepSpeed student, EMA teacher (partitioned too under ZeRO-3), identity-guided
DINO loss.

The step itself is ``cion_dist.pretrain.step.train_step`` (the same function the in-process driver and the GPU
benchmark run); this module is the Ray Train driver around it: data, schedules, metrics, checkpoints. Measurement
and fault drills come in only through ``cion_dist.pretrain.hooks``.

A non-finite loss (or health figure) is a property of the settings, not a crash: every rank sees it at the same
step (the figures are averaged over ranks), reports a checkpoint holding only a ``fatal.json`` marker and returns,
so Ray Train does not retry; the driver raises the marker's message as a ``DataError``. A resumed attempt that
finds the marker reports it again.

Checkpoints: every rank calls ``engine.save_checkpoint`` into its own folder (its ZeRO shard), rank 0 adds the
teacher, the loss centre and the loop position (``state.json``), and all ranks hand their folder to
``ray.train.report``, which merges them under the run's storage path (local or s3://). A restarted worker group
reads ``ray.train.get_checkpoint()`` and continues at the same epoch, step, schedules and sampler position.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from cion_dist.pretrain.augment import MultiCropSpec
from cion_dist.pretrain.config import PretrainConfig
from cion_dist.pretrain.ema import full_state, load_full_state
from cion_dist.pretrain.engine import (  # noqa: F401 - re-exported for the benchmarks and tests
    _disable_cpu_shm_comm,
    bucket_numel,
    deepspeed_config,
    deepspeed_parts,
    place_teacher,
    resolve_precision,
)
from cion_dist.pretrain.health import HealthLog, health_verdict
from cion_dist.pretrain.hooks import LoopView
from cion_dist.pretrain.schedules import for_epochs
from cion_dist.pretrain.step import (  # noqa: F401 - build_networks, param_groups re-exported
    NonFiniteLoss,
    build_networks,
    check_finite,
    metric_values,
    param_groups,
    train_step,
)
from cion_dist.pretrain.stream import DATASET, worker_batches

DS_TAG = "ds"
TEACHER_FILE = "teacher.pt"
STATE_FILE = "state.json"
FATAL_FILE = "fatal.json"


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(engine, teacher, loss_fn, state: dict, rank: int) -> str:
    """Every rank saves its DeepSpeed shard; rank 0 adds the full teacher (gathered by all ranks under ZeRO-3)."""
    path = tempfile.mkdtemp(prefix="cion-ckpt-")
    engine.save_checkpoint(path, tag=DS_TAG, client_state={"cion_state": state})
    teacher_state = full_state(teacher)  # a collective when the teacher is partitioned
    if rank == 0:
        torch.save(
            {"teacher": teacher_state, "center": loss_fn.center.detach().cpu()}, os.path.join(path, TEACHER_FILE)
        )
        Path(path, STATE_FILE).write_text(json.dumps(state))
    return path


def fatal_checkpoint(message: str) -> str:
    """A checkpoint folder holding only the fatal marker (Ray Train keeps the metrics of checkpointed reports)."""
    path = tempfile.mkdtemp(prefix="cion-fatal-")
    Path(path, FATAL_FILE).write_text(json.dumps({"error": message}))
    return path


def resume_training_state(path: str, engine, teacher, loss_fn) -> dict:
    """Restore a Ray Train checkpoint in place (DeepSpeed engine, teacher, loss centre) and return its step state;
    not a model loader (``cion_dist.models.backbone_io.load_backbone`` resolves exported backbones)."""
    if os.path.exists(os.path.join(path, FATAL_FILE)):
        return {"fatal": json.loads(Path(path, FATAL_FILE).read_text())["error"]}
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


def _mean_over_ranks(values: dict[str, float], device) -> dict[str, float]:
    """Per-key means over ranks, in one all-reduce."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / dist.get_world_size()).tolist()))


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
    hooks = list(config.get("hooks") or [])
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
    sched = for_epochs(
        epoch_steps,
        lr=cfg.lr * global_batch / 256.0,
        min_lr=cfg.min_lr,
        warmup_epochs=cfg.warmup_epochs,
        weight_decay=cfg.weight_decay,
        weight_decay_end=cfg.weight_decay_end,
        momentum_teacher=cfg.momentum_teacher,
    )

    parts, _teacher_engine = deepspeed_parts(cfg, world, seed, device)  # keep the teacher's engine referenced
    engine, teacher, loss_fn = parts.engine, parts.teacher, parts.loss_fn

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "first_loss": None}
    ckpt = ray.train.get_checkpoint()
    resumed_from = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = resume_training_state(d, engine, teacher, loss_fn)
        resumed_from = state.get("global_step")
    sink = _MetricsSink(config.get("mlflow") if rank == 0 else None)
    health = HealthLog(state.get("health"))
    steps_this_attempt = 0
    last_loss = float("nan")
    throughput = _Throughput()
    view = LoopView(rank, world, device, parts, state, resumed_from, sink.flush)

    def report(metrics_extra: dict) -> None:
        perf = throughput.summary()  # same keys on every rank: the collectives below always pair up
        perf["data_wait_fraction_mean"] = _mean_over_ranks({"w": perf["data_wait_fraction_mean"]}, device)["w"]
        extra = {k: v for h in hooks for k, v in h.at_report(view).items()}
        state["health"] = health.state()
        path = save_checkpoint(engine, teacher, loss_fn, state, rank)
        verdict, reason = health_verdict(health.history(), cfg.out_dim)
        metrics = {
            **{k: v for k, v in state.items() if k != "health"},
            **metrics_extra,
            **perf,
            **extra,
            "last_loss": last_loss,
            "resumed_from_step": resumed_from,
            "steps_this_attempt": steps_this_attempt,
            "health_verdict": verdict,
            "health_reason": reason,
        }
        metrics = {k: v for k, v in metrics.items() if v is not None and not (isinstance(v, float) and np.isnan(v))}
        try:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)
            throughput.reset()

    def report_fatal(message: str) -> None:
        sink.flush()
        path = fatal_checkpoint(message)
        try:
            ray.train.report({"fatal_error": message}, checkpoint=Checkpoint.from_directory(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)

    if "fatal" in state:
        report_fatal(state["fatal"])
        return
    shard = ray.train.get_dataset_shard(DATASET)
    stream = worker_batches(
        shard,
        config.get("cursor"),
        rank,
        state["epoch"],
        state["step_in_epoch"],
        spec,
        cfg.augment_in == "ray_data",
        cfg.prefetch_batches,
    )
    for epoch in range(state["epoch"], cfg.epochs):
        k = ks[epoch]
        start = state["step_in_epoch"] if epoch == state["epoch"] else 0
        n_steps = epoch_steps[epoch]
        t_prev = time.perf_counter()
        for step_in_epoch in range(start, n_steps):
            got_epoch, got_step, views, _ = next(stream)
            if (got_epoch, got_step) != (epoch, step_in_epoch):
                raise RuntimeError(
                    f"rank {rank} expected batch ({epoch}, {step_in_epoch}), the stream gave ({got_epoch}, {got_step})"
                )
            t_data = time.perf_counter()
            gs = state["global_step"]
            hp = sched.values(gs)
            out = train_step(parts, views, k, hp, freeze_last_layer=epoch < cfg.freeze_last_layer)
            values = _mean_over_ranks(metric_values(out), device)  # every rank sees the same figures
            t_end = time.perf_counter()
            try:
                check_finite(values, gs + 1, f" (epoch {epoch}, K={k}, lr={hp['lr']:.3g})")
            except NonFiniteLoss as e:
                report_fatal(str(e))
                return

            last_loss = values["loss"]
            if state["first_loss"] is None:
                state["first_loss"] = last_loss
            health.add(values)
            state["global_step"] = gs + 1
            state["epoch"], state["step_in_epoch"] = epoch, step_in_epoch + 1
            steps_this_attempt += 1
            step_time = t_end - t_prev
            throughput.add(global_batch, step_time, t_data - t_prev)
            sink.log(
                {
                    **values,
                    **hp,
                    "K": k,
                    "epoch": epoch,
                    "images_per_s": global_batch / max(step_time, 1e-9),
                    "data_wait_fraction": (t_data - t_prev) / max(step_time, 1e-9),
                },
                step=gs + 1,
            )
            for h in hooks:
                h.after_step(view)
            t_prev = time.perf_counter()

            if step_in_epoch + 1 == n_steps:
                state["epoch"], state["step_in_epoch"] = epoch + 1, 0
                sink.flush()
                report({"K": k})
            elif cfg.checkpoint_every_steps and state["global_step"] % cfg.checkpoint_every_steps == 0:
                sink.flush()
                report({"K": k})
    sink.flush()

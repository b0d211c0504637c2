"""The training step's speed on one accelerator: images/s, MFU and peak memory, configurations side by side.

For each backbone (default ``vit_small`` patch 16 and ``resnet50_ibn_a``, 256 x 128 person crops, 2 global + 8
local crops of 128 x 64, batch 120 images, DINO head with 65536 prototypes, bf16 on CUDA) it times:

- ``plain``: a plain PyTorch loop as the authors' code writes it (autocast, fused AdamW, global-norm clipping,
  EMA over the parameter lists, the same loss): the baseline every other row is compared with;
- ``plain+compile``: the same with the backbones ``torch.compile``d (and channels-last for ResNets);
- ``step``: the project's ``cion_dist.pretrain.step.train_step`` through ``TorchEngine`` (the in-process driver);
- ``ds0`` / ``ds2``: ``train_step`` through a DeepSpeed engine, ZeRO 0 and 2, on one rank (world size 1; NCCL on
  CUDA, gloo on CPU): what a Ray Train worker runs; skipped with a message where DeepSpeed is not installed;
- ``ds2+compile``: ZeRO 2 with compiled backbones (and channels-last for ResNets).

After each model's rows, the pieces the step changed are timed beside the way they were done before (EMA,
the student's log-softmax, crops to the device; ``pieces``).

Each configuration runs ``--warmup`` steps, then ``--steps`` timed steps (each ends with the host reading the
step's metrics, as the drivers do); the figure is the median. FLOPs are counted once per model with
``torch.utils.flop_counter`` on one eager plain step (teacher forward, student forward and backward: the same
model FLOPs for every row); MFU = FLOPs / median step time / ``--peak-tflops`` (the device's dense bf16 peak:
989 for an H100/H200 SXM). Rows print as they finish; ``--budget-s`` skips what would not fit.

Imports torch (and DeepSpeed if present) and the project's pure modules only: no Ray, FAISS, decord or MLflow.

    benchmarks/gpu_step.sh OUT_DIR 989                       # the GPU run, one script, budgeted under 8 minutes
    python benchmarks/gpu_step.py --tiny                     # CPU, seconds: tiny nets, fp32, eager compile backend
    python benchmarks/gpu_step.py --pieces-only --batch 24   # CPU: the step's pieces before/after at full widths
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ("plain", "plain+compile", "step", "ds0", "ds2", "ds2+compile")


def pretrain_config(args, backbone: str, zero_stage: int = 0):
    from cion_dist.pretrain.config import PretrainConfig

    cuda = torch.cuda.is_available()
    return PretrainConfig(
        backbone=backbone,
        out_dim=args.out_dim,
        hidden_dim=args.hidden_dim,
        bottleneck_dim=args.bottleneck_dim,
        batch_size_per_worker=args.batch,
        local_crops=args.local_crops,
        image_size=tuple(args.global_size),
        local_size=tuple(args.local_size),
        gradual_epochs=[1],
        gradual_instances=[args.k],
        zero_stage=zero_stage,
        use_gpu=cuda,
        precision="bf16" if cuda else "fp32",
        cpu_shm_comm=False,
        optimizer="adamw",
        num_workers=1,
    )


def make_views(args, device) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    shapes = [args.global_size] * 2 + [args.local_size] * args.local_crops
    return [torch.randint(0, 256, (args.batch, 3, *hw), generator=g, dtype=torch.uint8).to(device) for hw in shapes]


def compile_backbones(modules, backend: str) -> None:
    for m in modules:
        m.backbone.compile(backend=backend)  # in place: parameter names (and so the EMA's pairing) are unchanged


def uses_convs(backbone: str) -> bool:
    return backbone.startswith("resnet")


# ---------------------------------------------------------------- the configurations: each returns step()


def plain_loop(args, cfg, views, device, dtype, compiled: bool) -> Callable[[], float]:
    """The reference's way, written out: no engine, no project step."""
    from cion_dist.pretrain.augment import normalize
    from cion_dist.pretrain.loss import IdentityDINOLoss
    from cion_dist.pretrain.step import build_networks, param_groups

    cl = compiled and uses_convs(cfg.backbone)
    fmt = torch.channels_last if cl else torch.contiguous_format
    student, teacher = build_networks(cfg, 0)
    student.to(device, memory_format=fmt)
    teacher.to(device, memory_format=fmt)
    if compiled:
        compile_backbones([student, teacher], args.compile_backend)
    groups, kinds = param_groups(student)
    for grp, kind in zip(groups, kinds):
        grp["weight_decay"] = 0.0 if kind == "not_regularized" else cfg.weight_decay
    opt = torch.optim.AdamW(groups, lr=cfg.lr * args.batch / 256, fused=device.type == "cuda")
    loss_fn = IdentityDINOLoss(cfg.out_dim, 2 + cfg.local_crops, cfg.student_temp, cfg.teacher_temp).to(device)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    half = dtype != torch.float32

    def step() -> float:
        crops = [normalize(v, dtype).contiguous(memory_format=fmt) for v in views]
        with torch.autocast(device.type, dtype=dtype, enabled=half):
            with torch.no_grad():
                t_out = teacher(crops[:2])
            s_out = student(crops)
            loss = loss_fn(s_out, t_out, args.k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(s_params, cfg.clip_grad, foreach=True)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(t_params, s_params, 1 - cfg.momentum_teacher)
        loss_fn.update_center(t_out)
        return loss.item()

    return step


def project_step(args, cfg, views, device, dtype, engine: str, compiled: bool) -> Callable[[], float]:
    from cion_dist.pretrain.step import local_parts, metric_values, train_step

    cl = compiled and uses_convs(cfg.backbone)
    if engine == "torch":
        parts = local_parts(cfg, 0, device, dtype, channels_last=cl)
    else:
        from cion_dist.pretrain.engine import deepspeed_parts

        parts, teacher_engine = deepspeed_parts(cfg, 1, 0, device)
        # DeepSpeed flattens the student's weights into its buffers; channels-last inputs still select
        # channels-last convolutions
        parts.channels_last = cl
        parts.teacher.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        parts._teacher_engine = teacher_engine  # keep it alive
    if compiled:
        compile_backbones([parts.engine.module, parts.teacher], args.compile_backend)
    hp = {"lr": cfg.lr * args.batch / 256, "wd": cfg.weight_decay, "momentum": cfg.momentum_teacher}

    def step() -> float:
        return metric_values(train_step(parts, views, args.k, hp))["loss"]

    return step


def init_single_rank(device) -> str | None:
    """World size 1 for DeepSpeed; returns why not where it cannot run."""
    try:
        import deepspeed
    except ImportError:
        return "DeepSpeed is not installed"
    from cion_dist.pretrain.engine import _disable_cpu_shm_comm

    if device.type == "cpu":
        _disable_cpu_shm_comm()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
        }
    )
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", auto_mpi_discovery=False)
    return None


# ---------------------------------------------------------------- measurement


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_flops(step: Callable[[], float]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def time_steps(step: Callable[[], float], device, warmup: int, steps: int) -> tuple[list[float], float]:
    loss = float("nan")
    for _ in range(warmup):
        loss = step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()  # reads the loss on the host: a sync per step, as the drivers do
        times.append(time.perf_counter() - t0)
    return times, loss


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001 - dynamo may be unavailable on exotic builds
        pass


# ---------------------------------------------------------------- the step's pieces, before and after


def median_ms(fn: Callable[[], object], device, reps: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def peak_mib(fn: Callable[[], object], device) -> float:
    if device.type != "cuda":
        return float("nan")
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def pieces(args, backbone: str, device, dtype, reps: int) -> list[tuple]:
    """Each piece the step changed, timed beside the way it was done before, on this model's sizes:
    - EMA: a mul_ + add_ pair per parameter vs one ``torch._foreach_lerp_`` over the parameter list;
    - student log-softmax: an fp32 copy of the half-precision logits, then the temperature, then log-softmax
      vs log-softmax accumulating in fp32 from the half-precision logits (forward and backward);
    - crops to the device: one copy and normalisation per view and the wrapper's concatenation vs one per
      resolution (uint8 numpy views, as the feed delivers them)."""
    import numpy as np
    import torch.nn.functional as F

    from cion_dist.pretrain.augment import normalize
    from cion_dist.pretrain.step import build_networks, device_batches

    dtype = torch.bfloat16  # the pieces as a bf16 run meets them (CPU too: the casts only show in half precision)
    cfg = pretrain_config(args, backbone)
    student, teacher = build_networks(cfg, 0)
    student.to(device, dtype)  # a DeepSpeed bf16 student: the EMA casts its weights to the fp32 teacher's
    teacher.to(device)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())

    @torch.no_grad()
    def ema_loop():
        for t, s in zip(t_params, s_params):
            t.mul_(0.996).add_(s.detach().to(t.dtype), alpha=0.004)

    @torch.no_grad()
    def ema_foreach():
        from cion_dist.pretrain.ema import _lerp_

        _lerp_(t_params, s_params, 0.996)

    rows = [
        (
            "EMA over %d tensors" % len(t_params),
            median_ms(ema_loop, device, reps),
            median_ms(ema_foreach, device, reps),
            float("nan"),
            float("nan"),
        )
    ]
    t_params.clear()  # free the models before the next piece
    s_params.clear()
    del student, teacher
    n_rows = args.batch * (2 + args.local_crops)
    logits = torch.randn(n_rows, args.out_dim, device=device, dtype=dtype, requires_grad=True)

    def lsm_cast():
        F.log_softmax(logits.float() / 0.1, dim=-1).sum().backward()

    def lsm_fused():
        F.log_softmax(logits / 0.1, dim=-1, dtype=torch.float32).sum().backward()

    rows.append(
        (
            f"student log-softmax {n_rows} x {args.out_dim}",
            median_ms(lsm_cast, device, reps),
            median_ms(lsm_fused, device, reps),
            peak_mib(lsm_cast, device),
            peak_mib(lsm_fused, device),
        )
    )
    logits = None  # noqa: F841 - free it before the next piece
    rng = np.random.default_rng(0)
    shapes = [args.global_size] * 2 + [args.local_size] * args.local_crops
    views = [rng.integers(0, 256, (args.batch, 3, *hw), dtype=np.uint8) for hw in shapes]

    def per_view():
        crops = [
            normalize(torch.from_numpy(np.array(v, copy=True)).to(device, non_blocking=True), dtype) for v in views
        ]
        return [torch.cat(crops[:2]), torch.cat(crops[2:])]  # the multi-crop wrapper's concatenation

    def per_resolution():
        return [torch.cat([c]) for c in device_batches(views, device, dtype)]

    rows.append(
        (
            f"crops to device ({len(views)} views)",
            median_ms(per_view, device, reps),
            median_ms(per_resolution, device, reps),
            peak_mib(per_view, device),
            peak_mib(per_resolution, device),
        )
    )
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="vit_small,resnet50_ibn_a")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--batch", type=int, default=120, help="images per step (per GPU)")
    ap.add_argument("--k", type=int, default=2, help="images per identity")
    ap.add_argument("--local-crops", type=int, default=8)
    ap.add_argument("--global-size", type=int, nargs=2, default=[256, 128])
    ap.add_argument("--local-size", type=int, nargs=2, default=[128, 64])
    ap.add_argument("--out-dim", type=int, default=65536)
    ap.add_argument("--hidden-dim", type=int, default=2048)
    ap.add_argument("--bottleneck-dim", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device (H100/H200: 989)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--budget-s", type=float, default=450, help="skip configurations started after this many seconds")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--no-pieces", action="store_true", help="skip the before/after timing of the step's pieces")
    ap.add_argument("--pieces-only", action="store_true", help="only the pieces (e.g. at full sizes on a CPU)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke size: tiny nets, 64x32 crops, eager compile")
    args = ap.parse_args(argv)
    if args.tiny:
        args.models = args.models if args.models != ap.get_default("models") else "resnet_tiny,vit_micro"
        args.batch, args.local_crops, args.out_dim, args.hidden_dim, args.bottleneck_dim = 4, 2, 256, 64, 32
        args.global_size, args.local_size, args.warmup, args.steps = [64, 32], [32, 16], 1, 2
        args.compile_backend = "eager"

    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    configs = [] if args.pieces_only else args.configs.split(",")
    ds_missing = init_single_rank(device) if any(c.startswith("ds") for c in configs) else None
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"{name}, torch {torch.__version__}, {dtype}; batch {args.batch} images (K={args.k}), 2 global "
        f"{tuple(args.global_size)} + {args.local_crops} local {tuple(args.local_size)} crops, head out_dim "
        f"{args.out_dim}; median of {args.steps} steps after {args.warmup}",
        flush=True,
    )
    if ds_missing:
        print(f"ds rows skipped: {ds_missing}", flush=True)
    print(
        f"{'model':<16}{'config':<15}{'images/s':>10}{'step ms':>9}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}"
        f"{'vs plain':>9}{'loss':>9}{'build+warm s':>13}",
        flush=True,
    )
    rows = []
    for backbone in args.models.split(","):
        views = make_views(args, device) if configs else []
        cfg0 = pretrain_config(args, backbone)
        flops = count_flops(plain_loop(args, cfg0, views, device, dtype, compiled=False)) if configs else 0
        free(device)
        base_ips = None
        for config in configs:
            if time.perf_counter() - t_start > args.budget_s:
                print(f"{backbone:<16}{config:<15} skipped: past the {args.budget_s:.0f} s budget", flush=True)
                continue
            if config.startswith("ds") and ds_missing:
                continue
            compiled = config.endswith("+compile")
            t0 = time.perf_counter()
            if config.startswith("plain"):
                step = plain_loop(args, cfg0, views, device, dtype, compiled)
            elif config == "step":
                step = project_step(args, cfg0, views, device, dtype, "torch", compiled)
            else:
                cfg = pretrain_config(args, backbone, zero_stage=int(config[2]))
                step = project_step(args, cfg, views, device, dtype, "deepspeed", compiled)
            times, loss = time_steps(step, device, args.warmup, args.steps)
            warm_s = time.perf_counter() - t0 - sum(times)
            med = statistics.median(times)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            ips = args.batch / med
            base_ips = ips if config == "plain" else base_ips
            tflops = flops / med / 1e12
            mfu = tflops / args.peak_tflops if args.peak_tflops else float("nan")
            row = {
                "model": backbone,
                "config": config,
                "images_per_s": ips,
                "step_ms": med * 1e3,
                "tflops": tflops,
                "mfu": mfu,
                "peak_gib": peak,
                "vs_plain": ips / base_ips if base_ips else None,
                "loss": loss,
                "build_warm_s": warm_s,
                "flops_per_step": flops,
            }
            rows.append(row)
            vs = f"{row['vs_plain']:.2f}" if row["vs_plain"] else "-"
            print(
                f"{backbone:<16}{config:<15}{ips:>10.1f}{med * 1e3:>9.1f}{tflops:>9.3g}"
                f"{mfu:>7.1%}{peak:>10.2f}{vs:>9}{loss:>9.3f}{warm_s:>13.1f}",
                flush=True,
            )
            del step
            free(device)
        if configs:
            print(
                f"{backbone}: {flops / 1e12:.3f} TFLOP per step (torch.utils.flop_counter, one eager plain step)",
                flush=True,
            )
        if not args.no_pieces:
            print(f"  {'piece':<40}{'before ms':>10}{'after ms':>10}{'speed-up':>9}{'before MiB':>11}{'after MiB':>10}")
            for piece, before, after, mb0, mb1 in pieces(args, backbone, device, dtype, reps=max(10, args.steps)):
                print(
                    f"  {piece:<40}{before:>10.2f}{after:>10.2f}{before / after:>9.2f}{mb0:>11.0f}{mb1:>10.0f}",
                    flush=True,
                )
            free(device)
    print(
        f"total {time.perf_counter() - t_start:.0f} s; images/s counts images (each {2 + args.local_crops} crops)",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()

"""Repeated-step check that the student weights the train loop reads after ``engine.step`` are whole and settled.

A 2-worker gloo run (ZeRO 0, 2 and 3; the DINO head sizes of ``bench_pretrain.py``) reads the full student weights
after every step twice, with a pause between the reads, and folds them into a teacher EMA. Under ZeRO-3 the reads
gather the partitions, either with DeepSpeed's ``GatheredParameters`` as it is (mode ``deepspeed``) or through
``cion_dist.pretrain.ema.gathered``, which waits for the whole gather on gloo (mode ``cion``, what the train loop
uses); ZeRO 0 / 2 read the module directly in both modes. The reference is a gather one parameter at a time
(DeepSpeed's synchronous path). Per stage and mode it counts the steps where:
- unsettled: the two reads differ (something was still writing the weights);
- wrong: a read differs from the reference;
- split: the ranks' reads differ;
- non-finite: a read holds NaN or inf;
- EMA off: the teacher differs from the EMA of the reference weights by more than 1e-6.

    .venv/bin/python benchmarks/stress_collectives.py [--steps 60] [--out-dim 16384] [--stages 0,2,3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = ("unsettled", "wrong", "split", "nonfinite", "ema_off")


def _worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist

    from cion_dist.pretrain import ema
    from cion_dist.pretrain.config import PretrainConfig
    from cion_dist.pretrain.engine import _disable_cpu_shm_comm, deepspeed_config
    from cion_dist.pretrain.step import build_networks, param_groups

    _disable_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def plain_gather(params):
        z3 = [p for p in params if ema.is_zero3_param(p)]
        return deepspeed.zero.GatheredParameters(z3, modifier_rank=None) if z3 else contextlib.nullcontext()

    gather = ema.gathered if config["mode"] == "cion" else plain_gather

    @torch.no_grad()
    def read(module):
        params = dict(module.named_parameters())
        with gather(list(params.values())):
            return {n: p.detach().float().clone() for n, p in params.items()}

    @torch.no_grad()
    def reference(module):
        out = {}
        for n, p in module.named_parameters():  # one parameter per gather: DeepSpeed's synchronous path
            with plain_gather([p]):
                out[n] = p.detach().float().clone()
        return out

    metrics: dict = {}
    for stage in config["stages"]:
        cfg = PretrainConfig(
            backbone=config["backbone"],
            out_dim=config["out_dim"],
            local_crops=0,
            batch_size_per_worker=4,
            gradual_epochs=[1],
            gradual_instances=[2],
            zero_stage=stage,
        )
        student, teacher = build_networks(cfg, seed=0)
        groups, _ = param_groups(student)
        engine, *_ = deepspeed.initialize(
            model=student,
            optimizer=torch.optim.AdamW(groups, lr=config["lr"]),
            config=deepspeed_config(cfg, world, sum(p.numel() for p in student.parameters())),
        )
        counts = dict.fromkeys(KEYS, 0)
        step_s, worst_err, m = 0.0, 0.0, 0.9
        for step in range(config["steps"]):
            g = torch.Generator().manual_seed(1000 * step + rank)
            t0 = time.perf_counter()
            out = engine([torch.randn(4, 3, 128, 64, generator=g)])
            loss = torch.nn.functional.log_softmax(out / 0.1, dim=-1)[:, 0].neg().mean()
            engine.backward(loss)
            engine.step()
            step_s += time.perf_counter() - t0
            first = read(engine.module)
            time.sleep(config["pause_s"])
            second = read(engine.module)
            ref = reference(engine.module)
            flat = torch.cat([first[n].flatten() for n in ref])
            copies = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(copies, flat)
            expected = {n: m * t.detach() + (1 - m) * ref[n] for n, t in teacher.named_parameters()}
            with gather(list(engine.module.parameters())):
                s = dict(engine.module.named_parameters())
                for n, t in teacher.named_parameters():
                    t.mul_(m).add_(s[n].detach().float(), alpha=1 - m)
            err = max(float((t - expected[n]).abs().max()) for n, t in teacher.named_parameters())
            worst_err = max(worst_err, err if err == err else float("inf"))
            hits = {
                "unsettled": any(not torch.equal(first[n], second[n]) for n in ref),
                "wrong": any(not torch.equal(first[n], ref[n]) for n in ref),
                "split": any(not torch.equal(c, flat) for c in copies),
                "nonfinite": not bool(torch.isfinite(flat).all()),
                "ema_off": not err <= 1e-6,
            }
            for key, hit in hits.items():
                counts[key] += int(hit)
            with torch.no_grad():  # the next step starts from a clean teacher, so each step counts on its own
                for n, t in teacher.named_parameters():
                    t.copy_(expected[n])
        for key, c in counts.items():
            t = torch.tensor([c], dtype=torch.int64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            metrics[f"z{stage}_{key}"] = int(t.item())
        t = torch.tensor([worst_err], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        metrics[f"z{stage}_max_err"] = float(t.item())
        metrics[f"z{stage}_step_s"] = step_s / config["steps"]
        del engine, student, teacher
    with tempfile.TemporaryDirectory() as d:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def run(stages: list[int], mode: str, args) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "stages": stages,
            "steps": args.steps,
            "mode": mode,
            "backbone": args.backbone,
            "out_dim": args.out_dim,
            "lr": args.lr,
            "pause_s": args.pause,
        },
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(
            name=f"stress-{mode}-{int(time.time())}", storage_path=tempfile.mkdtemp(prefix="cion-stress-")
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet_tiny")
    ap.add_argument("--out-dim", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--stages", default="0,2,3")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pause", type=float, default=0.02, help="seconds between the two reads of the weights")
    ap.add_argument("--modes", default="deepspeed,cion")
    args = ap.parse_args()

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    stages = [int(s) for s in args.stages.split(",")]
    print(
        f"{args.backbone}, head out_dim {args.out_dim}, 2 gloo workers, {args.steps} steps per stage and mode, "
        f"{args.pause * 1000:.0f} ms between the two reads; steps with:"
    )
    print(
        f"{'mode':<11}{'stage':>6}{'unsettled':>11}{'wrong':>7}{'split':>7}{'non-finite':>12}{'EMA off':>9}"
        f"{'max EMA err':>13}{'step s':>8}"
    )
    for mode in args.modes.split(","):
        m = run(stages, mode, args)
        for s in stages:
            print(
                f"{mode:<11}{s:>6}"
                + "".join(f"{m[f'z{s}_{k}']:>{w}}" for k, w in zip(KEYS, (11, 7, 7, 12, 9)))
                + f"{m[f'z{s}_max_err']:>13.2e}{m[f'z{s}_step_s']:>8.3f}"
            )
    ray.shutdown()


if __name__ == "__main__":
    main()

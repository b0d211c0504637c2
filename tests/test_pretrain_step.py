"""The training step in one process: health figures and verdicts, the in-process driver, and the GPU benchmark's
CPU tiny mode, run with Ray, FAISS, decord and MLflow made unimportable (a box that has only PyTorch)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cion_dist.pretrain.health import DIVERGING, LEARNING, ONE, UNIFORM, WINDOW, HealthLog, health_verdict
from cion_dist.pretrain.loss import IdentityDINOLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = ("ray", "faiss", "decord", "mlflow")


def _run_blocked(code: str, blocked=BLOCK, timeout=300) -> str:
    """Run ``code`` in a fresh interpreter where importing any of ``blocked`` raises ImportError."""
    prelude = f"import sys\nfor _m in {tuple(blocked)!r}:\n    sys.modules[_m] = None\n"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


# ---------------------------------------------------------------- health figures of the loss


def test_health_kl_is_loss_less_teacher_entropy_and_matches_a_row_by_row_kl():
    g = torch.Generator().manual_seed(3)
    k, p, d, ncrops = 2, 3, 11, 4
    b = p * k
    s, t = torch.randn(ncrops * b, d, generator=g), torch.randn(2 * b, d, generator=g)
    fn = IdentityDINOLoss(d, ncrops, teacher_temp=0.5)
    fn.center.copy_(torch.randn(1, d, generator=g) * 0.1)
    loss, h = fn.loss_and_health(s, t, k)
    assert torch.equal(loss, fn(s, t, k))
    tp = torch.softmax((t - fn.center) / 0.5, -1).view(2, p, k, d)
    ls = torch.log_softmax(s / 0.1, -1).view(ncrops, p, k, d)
    kls = []
    for a in range(2):  # the loss's own weighting: 1/k for the same image, 1 for another image of the identity
        for v in range(ncrops):
            if v == a:
                continue
            for i in range(k):
                for j in range(k):
                    row_kl = (tp[a, :, i] * (tp[a, :, i].log() - ls[v, :, j])).sum(-1).mean()
                    kls.append(row_kl * (1 / k if i == j else 1.0) / (k * (k - 1) + 1))
    want = torch.stack(kls).sum() / (2 * (ncrops - 1))
    assert h["kl"].item() == pytest.approx(want.item(), rel=1e-5) and h["kl"] > 0
    ent = -(tp * tp.log()).sum(-1)
    assert h["teacher_entropy"].item() == pytest.approx(ent.mean().item(), rel=1e-6)
    mean_t = tp.reshape(-1, d).mean(0)
    assert h["batch_entropy"].item() == pytest.approx(-(mean_t * mean_t.log()).sum().item(), rel=1e-6)
    assert h["center_norm"].item() == pytest.approx(fn.center.norm().item())


# ---------------------------------------------------------------- verdicts on synthetic histories


def _history(n, teacher, batch, kl, loss):
    """n records whose figures settle from the first to the second value of each pair (exponentially, as
    training curves do)."""
    lin = lambda a, z, i: a + (z - a) * (1 - math.exp(-6 * i / (n - 1))) / (1 - math.exp(-6))  # noqa: E731
    return [
        {"teacher_entropy": lin(*teacher, i), "batch_entropy": lin(*batch, i), "kl": lin(*kl, i), "loss": lin(*loss, i)}
        for i in range(n)
    ]


D = 4096  # log D = 8.32


def test_verdicts_on_synthetic_histories():
    learning = _history(100, teacher=(7.5, 3.0), batch=(8.2, 6.5), kl=(1.0, 0.4), loss=(8.5, 3.4))
    assert health_verdict(learning, D)[0] == LEARNING
    one = _history(100, teacher=(7.5, 0.01), batch=(8.2, 0.05), kl=(1.0, 0.0), loss=(8.5, 0.02))
    verdict, reason = health_verdict(one, D)
    assert verdict == ONE and "same prototype" in reason
    uniform = _history(100, teacher=(8.20, 8.30), batch=(8.31, 8.32), kl=(0.3, 0.001), loss=(8.5, 8.3))
    verdict, reason = health_verdict(uniform, D)
    assert verdict == UNIFORM and f"uniform {math.log(D):.3f}" in reason
    rising = _history(100, teacher=(7.5, 5.0), batch=(8.2, 7.5), kl=(1.0, 6.0), loss=(8.5, 11.0))
    assert health_verdict(rising, D)[0] == DIVERGING
    nan = learning[:50] + [{**learning[50], "loss": float("nan")}] + learning[51:]
    verdict, reason = health_verdict(nan, D)
    assert verdict == DIVERGING and "record 50" in reason
    assert health_verdict([], D)[0] == "unknown"
    # the windows: only the ends count, so a collapse late in a long run shows
    late = learning[:80] + one[-20:]
    assert health_verdict(late, D)[0] == ONE


def test_health_log_keeps_the_ends_and_reads_as_the_full_history():
    full = _history(500, teacher=(7.5, 0.01), batch=(8.2, 0.05), kl=(1.0, 0.0), loss=(8.5, 0.02))
    log = HealthLog()
    for i, r in enumerate(full):
        log.add(r)
        if i == 250:  # through a checkpoint (JSON) and back
            log = HealthLog(json.loads(json.dumps(log.state())))
    kept = log.history()
    assert len(kept) == 2 * WINDOW and kept[:WINDOW] == full[:WINDOW] and kept[-WINDOW:] == full[-WINDOW:]
    assert health_verdict(kept, D) == health_verdict(full, D)


# ---------------------------------------------------------------- one process, only PyTorch


STUDY_CODE = """
import numpy as np, torch
from cion_dist.pretrain.config import PretrainConfig
from cion_dist.pretrain.health import health_verdict
from cion_dist.pretrain.step import NonFiniteLoss, train

def batches(seed):
    rng = np.random.default_rng(seed)
    while True:
        views = [rng.integers(0, 255, (8, 3, 64, 32), dtype=np.uint8) for _ in range(2)]
        views += [rng.integers(0, 255, (8, 3, 32, 16), dtype=np.uint8) for _ in range(2)]
        yield views, np.repeat(np.arange(4), 2)

def cfg(**kw):
    base = dict(backbone="resnet_tiny", out_dim=256, hidden_dim=64, bottleneck_dim=32, local_crops=2,
                batch_size_per_worker=8, epochs=2, gradual_epochs=[2], gradual_instances=[2], lr=0.16,
                warmup_epochs=0, freeze_last_layer=1)
    return PretrainConfig(**{**base, **kw})

c = cfg()
res = train(c, batches(0), steps=4)
last = res.parts.engine.module.head.last_layer.weight
print("RESULT", {"steps": len(res.history), "keys": sorted(res.history[0]), "lr0": res.history[0]["lr"],
       "epochs": [h["epoch"] for h in res.history], "embed": res.teacher(torch.zeros(2, 3, 64, 32)).shape[1],
       "verdict": health_verdict(res.history, c.out_dim)[0],
       "finite": all(np.isfinite(v) for h in res.history for v in h.values())})
flat = train(cfg(teacher_temp=5.0), batches(0), steps=4)
print("FLAT", health_verdict(flat.history, 256)[0])
try:
    train(cfg(lr=1e30), batches(0), steps=4)
    print("NAN no error")
except NonFiniteLoss as e:
    print("NAN", e)
blocked = [m for m in ("ray", "faiss", "decord", "mlflow", "deepspeed") if sys.modules.get(m) is not None]
print("LOADED", blocked)
"""


def test_in_process_train_runs_without_ray_faiss_decord_mlflow_or_deepspeed():
    out = _run_blocked(STUDY_CODE, blocked=BLOCK + ("deepspeed",))
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in out.splitlines() if " " in ln}
    res = eval(lines["RESULT"])  # noqa: S307 - our own subprocess's repr
    assert res["steps"] == 4 and res["finite"] and res["embed"] == 64
    keys = {"loss", "teacher_entropy", "batch_entropy", "kl", "center_norm", "lr", "wd", "momentum", "K"}
    assert keys <= set(res["keys"])
    assert res["lr0"] == pytest.approx(0.16 * 8 / 256) and res["epochs"] == [0, 0, 1, 1]  # 2 epochs of 2 steps
    assert res["verdict"] == LEARNING
    assert lines["FLAT"] == UNIFORM  # a teacher at temperature 5 cannot sharpen
    assert lines["NAN"].startswith("pretraining diverged at global step 2: non-finite loss") and "lr=" in lines["NAN"]
    assert lines["LOADED"] == "[]"


def test_gpu_step_benchmark_tiny_mode_runs_every_configuration_and_they_compute_the_same_step(tmp_path):
    code = f"""
    import runpy
    sys.argv = ["gpu_step.py", "--tiny", "--models", "resnet_tiny", "--json", {str(tmp_path / "rows.json")!r}]
    runpy.run_path("benchmarks/gpu_step.py", run_name="__main__")
    """
    out = _run_blocked(code)
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["config"] for r in rows] == ["plain", "plain+compile", "step", "ds0", "ds2", "ds2+compile"]
    for r in rows:
        assert r["images_per_s"] > 0 and r["flops_per_step"] > 0 and math.isfinite(r["loss"])
    # the same initial weights, data and schedule values: after the same number of steps every configuration
    # (plain loop, project step through TorchEngine or DeepSpeed ZeRO 0/2, compiled or not) is at the same loss
    losses = [r["loss"] for r in rows]
    assert max(losses) - min(losses) < 1e-3 * abs(losses[0]), losses
    assert "resnet_tiny" in out and "TFLOP per step" in out


def test_gpu_step_benchmark_says_why_deepspeed_rows_are_missing():
    code = """
    import runpy
    sys.argv = ["gpu_step.py", "--tiny", "--models", "vit_micro", "--configs", "plain,step,ds2"]
    runpy.run_path("benchmarks/gpu_step.py", run_name="__main__")
    """
    out = _run_blocked(code, blocked=BLOCK + ("deepspeed",))
    assert "ds rows skipped: DeepSpeed is not installed" in out
    assert "vit_micro       plain" in out and "vit_micro       step" in out and "ds2 " not in out.split("config")[1]

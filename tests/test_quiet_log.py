"""Quiet by default: a whole ``cion demo`` run, captured as a log file would, carries no library warnings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.integration]

# what Ray, Ray Data / Train, DeepSpeed, FAISS and Python's warnings module print when they warn
NOISE = re.compile(
    r"WARNING|\bW \d+ \d+\]|\[WARNING\]|Warning:|core_worker\.cc|gcs_client\.cc|\(raylet\)|Token authentication|"
    r"constructor arguments in the object store|AVX2|Traceback"
)

OWN = re.compile(r"\d\d:\d\d:\d\d [A-Z]+ cion_dist\.")  # cion's log format: time, level, logger


def test_demo_log_has_no_library_warnings(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CION_CLUSTER_FILE": str(tmp_path / "no-cluster.json")}
    for k in ("RAY_ADDRESS", "RAY_DEDUP_LOGS", "CION_VERBOSITY", "RAY_DATA_LOGGING_CONFIG"):
        env.pop(k, None)
    # the smallest demo that still runs every stage (2 pretraining epochs, so K grows once)
    overrides = [
        "synth.videos=3",
        "synth.frames=60",
        "synth.identities=6",
        "synth.benchmark_identities=4",
        "pretrain.epochs=2",
        "pretrain.gradual_epochs=[1, 2]",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "cion_dist.cli", "demo", "--out", str(tmp_path / "demo"), *overrides],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1200,
        check=False,
    )
    log = proc.stdout
    (tmp_path / "demo.log").write_text(log)
    assert proc.returncode == 0, log[-4000:]
    assert "cion demo summary" in log
    # cion's own log lines may say WARNING; a library's warning is noise even when it points at a cion_dist file
    noisy = [ln for ln in log.splitlines() if NOISE.search(ln) and not OWN.match(ln)]
    assert not noisy, "\n".join(noisy[:20])
    assert "ray: started a private local instance" in log
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert len(lines) < 150, f"{len(lines)} lines"


def test_private_instance_does_not_warn_about_its_own_worker_count(tmp_path):
    """A private instance declares 4 logical CPUs even on 2 cores; a dozen live actors (what a demo's Ray Train and
    Ray Data stages hold at once) are its normal load, not the raylet's "4x the expected startup concurrency"."""
    script = (
        "import os, time, ray\n"
        "from cion_dist.config_base import RayConfig\n"
        "from cion_dist.raycluster import ensure_ray\n"
        "ensure_ray(RayConfig(num_cpus=4))\n"
        "@ray.remote(num_cpus=0)\n"
        "class A:\n"
        "    def pid(self):\n"
        "        return os.getpid()\n"
        "actors = [A.remote() for _ in range(14)]\n"
        "print('pids', len(set(ray.get([a.pid.remote() for a in actors]))))\n"
        "time.sleep(2)\n"
        "ray.shutdown()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CION_CLUSTER_FILE": str(tmp_path / "no-cluster.json")}
    for k in ("RAY_ADDRESS", "RAY_worker_maximum_startup_concurrency"):
        env.pop(k, None)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "pids 14" in proc.stdout
    assert "worker processes have been started" not in proc.stdout, proc.stdout[-3000:]

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
    noisy = [ln for ln in log.splitlines() if NOISE.search(ln) and "cion_dist" not in ln]
    assert not noisy, "\n".join(noisy[:20])
    assert "ray: started a private local instance" in log
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert len(lines) < 150, f"{len(lines)} lines"

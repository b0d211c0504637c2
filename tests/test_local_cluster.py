"""``cion up`` / ``cion down`` and job files submitted as users type them: ``ray job submit ... jobs/<stage>.yaml``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def _env(cluster_file: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CION_CLUSTER_FILE": str(cluster_file)}
    env.pop("RAY_ADDRESS", None)
    return env


def _cion(env: dict, *args: str, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cion_dist.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def cion_cluster(tmp_path_factory):
    """A head started by ``cion up`` (its own temp dir and ports), stopped by ``cion down`` at the end."""
    import psutil

    from cion_dist.localcluster import read_record

    folder = tmp_path_factory.mktemp("cluster")
    env = _env(folder / "cluster.json")
    up = _cion(env, "up", "--num-cpus", "4")
    assert up.returncode == 0, up.stderr[-3000:]
    assert "local Ray cluster started" in up.stdout
    os.environ["CION_CLUSTER_FILE"], saved = str(folder / "cluster.json"), os.environ.get("CION_CLUSTER_FILE")
    try:
        rec = read_record()
    finally:
        if saved is None:
            os.environ.pop("CION_CLUSTER_FILE")
        else:
            os.environ["CION_CLUSTER_FILE"] = saved
    again = _cion(env, "up")
    assert again.returncode == 0 and "already running" in again.stdout
    yield env, rec, folder
    down = _cion(env, "down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    time.sleep(1)
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(rec.temp_dir in (a or "") for a in p.info["cmdline"] or ())
    ]
    assert not left, f"processes of the head still run: {left}"
    assert not (folder / "cluster.json").exists()
    assert _cion(env, "down").stdout.strip() == "no local Ray cluster is recorded"


def _tiny_corpus(root: Path) -> Path:
    from cion_dist.config_base import StorageConfig
    from cion_dist.storage import Storage
    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus

    generate_corpus(
        SynthConfig(out=str(root), identities=2, cameras=1, videos=1, frames=10, benchmark_identities=0),
        Storage(StorageConfig()),
    )
    return root / "manifest.parquet"


def test_a_run_joins_the_cluster_from_cion_up_and_says_so(cion_cluster, tmp_path):
    env, rec, _ = cion_cluster
    manifest = _tiny_corpus(tmp_path / "corpus")
    t0 = time.perf_counter()
    proc = _cion(
        env,
        "run",
        str(ROOT / "jobs" / "ingest.yaml"),
        f"output={tmp_path / 'out'}",
        f"ingest.manifest={manifest}",
        "mlflow.enabled=false",
        cwd=tmp_path,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"ray: joined the local cluster from `cion up` at (\S+), dashboard \S+ \(([\d.]+) s\)", proc.stderr)
    assert m, proc.stderr
    assert m.group(1) == rec.address
    print(f"cion run with `cion up`: joined in {m.group(2)} s, whole tiny ingest {wall:.1f} s")
    assert float(m.group(2)) < 10
    assert "[ingest]" in proc.stdout and "crops=" in proc.stdout


def test_ray_job_submit_runs_a_job_file_as_its_entrypoint(cion_cluster, tmp_path):
    """The literal form: ``ray job submit --working-dir . jobs/synth.yaml key=value`` from a project folder."""
    env, rec, _ = cion_cluster
    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    shutil.copy2(ROOT / "jobs" / "synth.yaml", project / "jobs" / "synth.yaml")  # keeps the run bit
    out = tmp_path / "submitted"
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [
        ray_bin,
        "job",
        "submit",
        "--address",
        rec.dashboard,
        "--working-dir",
        ".",
        "jobs/synth.yaml",
        f"output={out}",
        "synth.videos=1",
        "synth.frames=8",
        "synth.identities=2",
        "synth.benchmark_identities=0",
        "mlflow.enabled=false",
    ]
    proc = subprocess.run(
        cmd,
        cwd=project,
        env={**env, "RAY_AUTH_MODE": rec.auth_mode},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "succeeded" in proc.stdout
    assert "[synth]" in proc.stdout
    assert (out / "corpus" / "manifest.parquet").exists()


_PRIVATE_DRIVER = """
import os, sys, time
from cion_dist.config_base import RayConfig
from cion_dist.raycluster import ensure_ray
ensure_ray(RayConfig(num_cpus=2))
import ray
@ray.remote
def pid():
    return os.getpid()
ray.get([pid.remote() for _ in range(2)])
print("ready", ray._private.worker._global_node.get_session_dir_path(), flush=True)
time.sleep(600)
"""


def test_a_sigkilled_driver_takes_its_private_instance_along_and_leaves_cion_up_alone(cion_cluster, tmp_path):
    """A driver that started its own Ray instance, SIGKILLed: every process of that instance is gone within
    seconds (before: Ray's dashboard and runtime-env agents outlived it by 60-90 s), while the head of
    ``cion up``, running beside it, keeps every process."""
    import psutil

    _, rec, _ = cion_cluster
    env = _env(tmp_path / "no-cluster.json")  # no `cion up` record: the driver starts a private instance
    driver = subprocess.Popen(
        [sys.executable, "-c", _PRIVATE_DRIVER], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = driver.stdout.readline()
        assert line.startswith("ready "), line
        session = line.split(" ", 1)[1].strip()
        kids = psutil.Process(driver.pid).children(recursive=True)
        watchdog = [k for k in kids if "cion_dist.raywatch" in " ".join(k.cmdline())]
        instance = [k for k in kids if k not in watchdog]
        names = {" ".join(k.cmdline()).strip() for k in instance}
        assert any(session in n for n in names) and {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
        head = [p for p in psutil.process_iter(["cmdline"]) if any(rec.temp_dir in a for a in p.info["cmdline"] or ())]
        head += [c for p in head for c in p.children(recursive=True)]
        assert len(head) > 3
    finally:
        driver.kill()
        driver.wait()
    t0 = time.monotonic()

    def alive(procs):
        return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    while alive(instance) and time.monotonic() - t0 < 30:
        time.sleep(0.5)
    left = alive(instance)
    for p in left:  # this test's own leftovers only
        p.kill()
    assert not left, f"{len(left)} processes of the killed driver's instance still run: {[p.name() for p in left]}"
    assert time.monotonic() - t0 < 15
    assert len(watchdog) == 1
    watchdog[0].wait(timeout=10)
    assert len(alive(head)) == len(head), "the head of `cion up` lost processes"

"""``cion submit`` and plain ``ray job submit`` against a real Ray head started with ``ray start --head``.

The head runs as a separate process tree (its own temp dir, ports and auth token), so the in-process Ray instance
other tests share is never touched; it is stopped by signalling the process group this module started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from cion_dist.config import job_from_dict
from cion_dist.errors import CionError, ConfigError
from cion_dist.pipeline.submit import (
    build_entrypoint,
    build_runtime_env,
    find_repo_root,
    job_path_on_cluster,
    submit_job,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_SYNTH = {
    "stage": "synth",
    "name": "submit-smoke",
    "mlflow": {"enabled": False},
    "synth": {
        "identities": 2,
        "cameras": 1,
        "videos": 1,
        "frames": 8,
        "fps": 4,
        "width": 96,
        "height": 64,
        "people_per_video": 1,
        "benchmark_identities": 0,
    },
}


# ---------------------------------------------------------------- pure parts: paths, runtime env, entrypoint


def _repo(tmp: Path, job: dict, name: str = "jobs/tiny.yaml") -> Path:
    """A checkout-shaped folder: the package source plus one job file."""
    shutil.copytree(ROOT / "cion_dist", tmp / "cion_dist", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job))
    return path


def test_runtime_env_resolves_against_the_job_files_repo(tmp_path):
    job_file = _repo(tmp_path, {**TINY_SYNTH, "runtime_env": {"env_vars": {"A": "1"}, "pip": ["tqdm"]}})
    job = job_from_dict(yaml.safe_load(job_file.read_text()))
    assert find_repo_root(job_file) == tmp_path.resolve()
    env = build_runtime_env(job, str(job_file), environ={})  # no credentials in the submitter's environment
    assert env["working_dir"] == str(tmp_path.resolve())
    assert env["env_vars"] == {"A": "1"} and env["pip"] == ["tqdm"]
    assert ".venv" in env["excludes"]
    # relative to the uploaded folder, whatever the caller's cwd
    assert job_path_on_cluster(job_file, env["working_dir"]) == "jobs/tiny.yaml"


def test_entrypoint_quotes_overrides():
    cmd = build_entrypoint("jobs/a b.yaml", ["name=two words", "seed=3"])
    assert cmd == "cion run 'jobs/a b.yaml' 'name=two words' seed=3"
    assert build_entrypoint("j.yaml", [], command="python -m cion_dist.cli").startswith("python -m cion_dist.cli run ")


def test_job_file_outside_working_dir_is_a_config_error(tmp_path):
    _repo(tmp_path / "repo", TINY_SYNTH)
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(yaml.safe_dump({**TINY_SYNTH, "runtime_env": {"working_dir": str(tmp_path / "repo")}}))
    job = job_from_dict(yaml.safe_load(outside.read_text()))
    with pytest.raises(ConfigError, match="outside runtime_env.working_dir"):
        submit_job(job, str(outside), [], address="http://127.0.0.1:1")


def test_missing_working_dir_is_a_config_error(tmp_path):
    job_file = _repo(tmp_path, {**TINY_SYNTH, "runtime_env": {"working_dir": "no-such-folder"}})
    job = job_from_dict(yaml.safe_load(job_file.read_text()))
    with pytest.raises(ConfigError, match="no-such-folder"):
        build_runtime_env(job, str(job_file))


def test_unreachable_cluster_is_a_clear_error(tmp_path):
    job_file = _repo(tmp_path, TINY_SYNTH)
    job = job_from_dict(yaml.safe_load(job_file.read_text()))
    port = free_port()  # nothing listens there
    with pytest.raises(CionError, match=f"cannot reach the Ray job API at http://127.0.0.1:{port}"):
        submit_job(job, str(job_file), [], address=f"http://127.0.0.1:{port}")


# ---------------------------------------------------------------- a real head node


@dataclass
class Head:
    address: str
    env: dict  # environment for client commands (auth token, PATH with this venv's bin)
    proc: subprocess.Popen
    log: Path


def _wait_ready(address: str, token: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Ray head at {address} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """``ray start --head --block`` in its own session; SIGTERM (then SIGKILL) to that process group at the end."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    token = secrets.token_hex(32)
    # no AWS_* on the cluster: a job reaches S3 only through the env_vars its runtime_env carries
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH") and not k.startswith("AWS_")
    }
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    dash = free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--num-cpus=4",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
    ]
    log = tmp_path_factory.mktemp("head") / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_ready(address, token, proc, log)
        yield Head(address, env, proc, log)
    finally:
        # the whole group this fixture created (ray start, GCS, raylet, dashboard): SIGTERM, then SIGKILL stragglers
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(1)  # let the rest of the group act on the signal
        shutil.rmtree(temp_dir, ignore_errors=True)


def _run(cmd: list[str], head: Head, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=head.env, capture_output=True, text=True, timeout=timeout)


def _synth_corpus(root: Path) -> int:
    """Videos in the corpus a synth run wrote under ``root``: manifest rows, each with its mp4, stage complete."""
    corpus = root / "corpus"
    assert (corpus / "_SUCCESS.json").exists(), sorted(str(p) for p in root.rglob("*"))
    manifest = pq.read_table(corpus / "manifest.parquet").to_pylist()
    assert all((corpus / "videos" / f"{row['video_id']}.mp4").stat().st_size > 0 for row in manifest)
    return len(manifest)


@pytest.mark.integration
def test_cion_submit_wait_runs_the_job_on_the_cluster_writing_to_s3(ray_head, s3_bucket, tmp_path):
    import s3fs

    job = {
        **TINY_SYNTH,
        "output": f"{s3_bucket}/cluster-run",
        "runtime_env": {
            "working_dir": ".",
            "env_vars": {
                "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        },
    }
    job_file = _repo(tmp_path / "repo", job)
    res = _run(
        [str(BIN / "cion"), "submit", "jobs/tiny.yaml", "synth.videos=2", "--address", ray_head.address, "--wait"],
        ray_head,
        cwd=tmp_path / "repo",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    sid = next(w for w in res.stdout.split() if w.startswith("raysubmit_"))
    assert f"ray job logs --address {ray_head.address} --follow {sid}" in res.stdout
    assert f"job {sid} SUCCEEDED" in res.stdout
    # the override reached the cluster: two clips in the manifest written to S3
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    corpus = f"{s3_bucket}/cluster-run/corpus"
    assert fs.exists(f"{corpus}/_SUCCESS.json"), fs.find(s3_bucket)
    with fs.open(f"{corpus}/manifest.parquet", "rb") as f:
        assert pq.read_table(f).num_rows == 2
    assert len(fs.glob(f"{corpus}/videos/*.mp4")) == 2
    assert not (job_file.parent.parent / "cluster-run").exists()  # nothing landed locally


@pytest.mark.integration
def test_plain_ray_job_submit_of_cion_run(ray_head, tmp_path):
    """Ray's own CLI with ``cion run`` of a synth -> ingest pipeline: ingest's Ray Data work joins the cluster."""
    out = tmp_path / "out"
    _repo(
        tmp_path / "repo",
        {
            **TINY_SYNTH,
            "stage": "pipeline",
            "output": str(out),
            "pipeline": {"stages": ["synth", "ingest"]},
            "ingest": {"concurrency": 1},
        },
    )
    res = _run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            ray_head.address,
            "--working-dir",
            ".",
            "--",
            "cion",
            "run",
            "jobs/tiny.yaml",
        ],
        ray_head,
        cwd=tmp_path / "repo",
    )
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs
    assert "succeeded" in logs.lower()
    # the job joins the cluster it was submitted to (cion says which), never a private instance
    assert "ray: joined" in logs and "started a private local instance" not in logs
    assert _synth_corpus(out) == TINY_SYNTH["synth"]["videos"]
    (ingest_run,) = (out / "ingest").iterdir()
    success = json.loads((ingest_run / "_SUCCESS.json").read_text())
    assert success["rows"]["clips"] == TINY_SYNTH["synth"]["videos"] and success["rows"]["errors"] == 0


@pytest.mark.integration
def test_failing_job_makes_cion_submit_exit_nonzero(ray_head, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _repo(tmp_path / "repo", {**TINY_SYNTH, "output": str(blocker / "out")})
    res = _run(
        [str(BIN / "cion"), "submit", "jobs/tiny.yaml", "--address", ray_head.address, "--wait"],
        ray_head,
        cwd=tmp_path / "repo",
    )
    assert res.returncode != 0
    assert "ended FAILED" in res.stderr, res.stdout + res.stderr


def test_invalid_override_is_refused_before_anything_is_submitted(tmp_path):
    _repo(tmp_path / "repo", TINY_SYNTH)
    res = subprocess.run(
        [
            str(BIN / "cion"),
            "submit",
            "jobs/tiny.yaml",
            "synth.identities=1",
            "--address",
            f"http://127.0.0.1:{free_port()}",
        ],
        cwd=tmp_path / "repo",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "synth.identities" in res.stderr and "submitted" not in res.stdout

"""Fault and abuse with Ray: one bad clip in a real ingest, a second run on a busy output, SIGTERM mid-stage, and a
secret marker in every secret-bearing place grepped out of everything a run leaves (CLI output, Ray job and
session logs, S3 objects including ``_SUCCESS.json``, the MLflow server's store, artifacts and API)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cion_dist.config import job_from_dict
from tests.test_promote import mlflow_server  # noqa: F401 - fixture
from tests.test_submit import BIN, TINY_SYNTH, _repo, _run, ray_head  # noqa: F401 - ray_head is a fixture

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from cion_dist.storage import Storage
    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(
        SynthConfig(
            out=str(root),
            identities=4,
            cameras=2,
            videos=3,
            frames=60,
            fps=10,
            width=320,
            height=180,
            people_per_video=2,
            benchmark_identities=0,
        ),
        Storage(),
    )
    return root


def test_one_folder_among_the_clips_is_an_error_row_and_the_run_completes(ray_local, corpus, tmp_path):
    from cion_dist.pipeline.runner import run_stage

    rows = pq.read_table(corpus / "manifest.parquet").to_pylist()
    (tmp_path / "folder.mp4").mkdir()
    rows.append({**rows[0], "video_id": "zz-folder", "uri": str(tmp_path / "folder.mp4")})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    job = job_from_dict(
        {
            "stage": "ingest",
            "output": str(tmp_path / "out"),
            "mlflow": {"enabled": False},
            "ingest": {"manifest": str(tmp_path / "manifest.parquet"), "max_error_fraction": 0.5, "concurrency": 2},
        }
    )
    res = run_stage(job)
    # before: IsADirectoryError failed the Ray dataset: no errors table, no _SUCCESS.json, max_error_fraction bypassed
    success = json.loads((Path(res.uri) / "_SUCCESS.json").read_text())
    assert success["rows"]["errors"] == 1 and success["rows"]["clips"] == len(rows)
    (errors,) = (Path(res.uri) / "errors").glob("*.parquet")
    err = pq.read_table(errors).to_pylist()
    assert [(e["video_id"], e["error_type"]) for e in err] == [("zz-folder", "IsADirectoryError")]
    assert "folder.mp4" in err[0]["reason"]


@pytest.mark.slow
def _ingest_job_file(corpus: Path, tmp_path: Path, experiment: str) -> tuple[Path, str, dict]:
    """A one-stage ingest job file on the corpus with its own sqlite MLflow store, and the environment of a private
    Ray instance for a ``cion run`` of it: (job file, store URI, env)."""
    import yaml

    store = f"sqlite:///{tmp_path}/m.db"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "stage": "ingest",
                "output": str(tmp_path / "out"),
                "ray": {"num_cpus": 2},
                "mlflow": {"tracking_uri": store, "experiment": experiment},
                "ingest": {"manifest": str(corpus / "manifest.parquet"), "concurrency": 1, "chunk_frames": 4},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return job, store, env


def test_a_second_run_on_a_busy_output_is_refused_and_sigterm_marks_the_run_failed(corpus, tmp_path):
    """Two ``cion run`` of one job: the second exits 2 naming the first (before: both did all the work); the first,
    terminated mid-stage, leaves its MLflow run FAILED (before: RUNNING forever)."""
    import mlflow

    job, store, env = _ingest_job_file(corpus, tmp_path, "busy")
    client = mlflow.MlflowClient(tracking_uri=store)
    client.search_experiments()  # the store's tables now, not raced by this poller and the driver's first use
    first = subprocess.Popen(
        [sys.executable, "-m", "cion_dist.cli", "run", str(job)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, running = time.monotonic() + 240, []
        while time.monotonic() < deadline and not running:
            time.sleep(1)
            assert first.poll() is None, first.stdout.read()
            try:
                exp = client.get_experiment_by_name("busy")
                running = client.search_runs([exp.experiment_id]) if exp else []
            except Exception:  # noqa: BLE001 - the store may be mid-creation
                running = []
        assert running and running[0].info.status == "RUNNING"
        second = subprocess.run(
            [sys.executable, "-m", "cion_dist.cli", "run", str(job)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by the ingest run of pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first one is still at work
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode != 0 and "Traceback" not in out, out
    assert client.get_run(running[0].info.run_id).info.status == "FAILED"
    assert not (tmp_path / "out" / "_LOCK.json").read_text()  # released: the holder record is cleared


@pytest.mark.slow
def test_a_sigkilled_stage_leaves_no_run_running_once_the_next_run_starts(corpus, tmp_path):
    """``cion run`` SIGKILLed mid-ingest (nothing unwinds: its MLflow run stays RUNNING), then run again: the rerun,
    holding the output lock, marks the killed run FAILED and names itself on it; it ends FINISHED (before: the
    killed run stayed RUNNING forever)."""
    import mlflow

    job, store, env = _ingest_job_file(corpus, tmp_path, "killed")
    cmd = [sys.executable, "-m", "cion_dist.cli", "run", str(job)]
    client = mlflow.MlflowClient(tracking_uri=store)
    client.search_experiments()  # the store's tables now, not raced by this poller and the driver's first use
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline, running = time.monotonic() + 240, []
        while time.monotonic() < deadline and not running:
            time.sleep(0.5)
            assert first.poll() is None, first.stdout.read()
            try:
                exp = client.get_experiment_by_name("killed")
                running = client.search_runs([exp.experiment_id]) if exp else []
            except Exception:  # noqa: BLE001 - the store may be mid-creation
                running = []
        assert running and running[0].info.status == "RUNNING"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray instance it started, as a lost machine
        first.wait()
    killed = running[0].info.run_id
    assert not list((tmp_path / "out").glob("ingest/*/_SUCCESS.json"))  # killed before the end
    assert client.get_run(killed).info.status == "RUNNING"  # nothing could end it
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    (rerun,) = set(runs) - {killed}
    assert runs[killed].info.status == "FAILED" and runs[rerun].info.status == "FINISHED"
    assert runs[killed].data.tags["cion.interrupted_by"] == rerun
    assert runs[rerun].data.tags["cion.after_interrupted"] == killed
    assert runs[killed].data.tags["cion.run_id"] == runs[rerun].data.tags["cion.run_id"]
    assert "marked FAILED 1 earlier run(s)" in again.stderr


# ---- a secret marker everywhere --------------------------------------------------------------------------------

MARKS = {
    "submitter env": "EnvMark4f1c9a",  # AWS_SECRET_ACCESS_KEY of the submitter (forwarded to the job)
    "storage config": "YamlMark77b2e0",  # storage.secret_access_key in the job file
    "runtime_env": "RtMark0c3d5e",  # runtime_env.env_vars.SERVICE_TOKEN in the job file
    "override": "OvrMark9a8b7c",  # storage.secret_access_key=... on the command line
    "URL userinfo": "UrlMark5d6e7f",  # mlflow.tracking_uri=http://alice:<mark>@host on the command line
}


def _grep(text: str, where: str, found: list) -> None:
    for what, mark in MARKS.items():
        if mark in text:
            i = text.index(mark)
            found.append(f"{what} marker in {where}: ...{text[max(0, i - 120) : i + 40]!r}")


@pytest.mark.slow
def test_no_secret_marker_in_any_output(ray_head, s3_bucket, mlflow_server, tmp_path):  # noqa: F811
    import mlflow
    import s3fs

    host = mlflow_server.split("://", 1)[1]
    job = {
        **TINY_SYNTH,
        "stage": "pipeline",
        "name": "secrets",
        "output": f"{s3_bucket}/run",
        "pipeline": {"stages": ["synth", "ingest"]},
        "ingest": {"concurrency": 1},
        "mlflow": {"enabled": True, "experiment": "secrets"},
        "storage": {"access_key_id": "testing", "secret_access_key": MARKS["storage config"]},
        "runtime_env": {
            "working_dir": ".",
            "env_vars": {
                "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
                "AWS_DEFAULT_REGION": "us-east-1",
                "SERVICE_TOKEN": MARKS["runtime_env"],
            },
        },
    }
    _repo(tmp_path / "repo", job)
    cwd = tmp_path / "repo"
    overrides = [
        f"storage.secret_access_key={MARKS['override']}",
        f"mlflow.tracking_uri=http://alice:{MARKS['URL userinfo']}@{host}",
    ]
    env = {
        **ray_head.env,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": MARKS["submitter env"],
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def cion(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "cion"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )

    found: list[str] = []
    res = cion("validate", "jobs/tiny.yaml", *overrides)
    assert res.returncode == 0, res.stderr
    _grep(res.stdout + res.stderr, "cion validate", found)
    local = cion("-v", "run", "jobs/tiny.yaml", *overrides, f"output={s3_bucket}/local", "pipeline.stages=[synth]")
    assert local.returncode == 0, local.stdout + local.stderr
    _grep(local.stdout + local.stderr, "cion run", found)
    sub = cion("submit", "jobs/tiny.yaml", *overrides, "--address", ray_head.address, "--wait", timeout=400)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    _grep(sub.stdout + sub.stderr, "cion submit", found)
    assert "secrets passed as runtime_env env_vars, not on the command line" in sub.stdout
    assert "CION__STORAGE__SECRET_ACCESS_KEY" in sub.stdout and "AWS_SECRET_ACCESS_KEY" in sub.stdout
    sid = next(w for w in sub.stdout.split() if w.startswith("raysubmit_"))
    logs = _run([str(BIN / "ray"), "job", "logs", "--address", ray_head.address, sid], ray_head, cwd=cwd)
    _grep(logs.stdout + logs.stderr, "ray job logs", found)
    info = _run([str(BIN / "ray"), "job", "list", "--address", ray_head.address], ray_head, cwd=cwd)
    entry = [line for line in info.stdout.splitlines() if sid in line]
    _grep("\n".join(line.split("runtime_env")[0] for line in entry), "ray job list (entrypoint)", found)
    # every log file of the head's session (the uploaded working_dir copy under runtime_resources is the job file).
    # Ray's runtime-env agent writes each runtime environment, env_vars values included, to its own log: a known
    # limit of passing secrets as env_vars (README, "Secrets"); ${NAME} references keep values on the cluster.
    temp_dir = next(a.split("=", 1)[1] for a in ray_head.proc.args if a.startswith("--temp-dir="))
    n_logs = 0
    for path in Path(temp_dir).rglob("*"):
        if path.is_file() and "runtime_resources" not in path.parts and "logs" in path.parts:
            text = path.read_bytes().decode("utf-8", "replace")
            if path.name.startswith("runtime_env_agent"):
                continue
            n_logs += 1
            _grep(text, f"Ray session log {path.name}", found)
    assert n_logs > 5
    # every object the runs wrote to S3, _SUCCESS.json files among them
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    objects = fs.find(s3_bucket)
    successes = [o for o in objects if o.endswith("_SUCCESS.json")]
    assert len(successes) >= 3, objects  # local synth, cluster synth, cluster ingest
    for o in objects:
        _grep(fs.cat_file(o).decode("latin-1"), f"s3://{o}", found)
    # MLflow: what the API returns, and every byte of the server's store and artifacts
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("secrets")
    runs = client.search_runs([exp.experiment_id])
    assert {r.data.tags.get("cion.stage") for r in runs} >= {"ingest"}
    for r in runs:
        _grep(
            json.dumps(
                {
                    "params": r.data.params,
                    "tags": r.data.tags,
                    "inputs": [str(d.dataset) for d in r.inputs.dataset_inputs],
                }
            ),
            f"MLflow run {r.info.run_id}",
            found,
        )
    server_root = Path(mlflow_server_root(mlflow_server))
    for path in server_root.rglob("*"):
        if path.is_file() and path.name != "server.log":
            _grep(path.read_bytes().decode("latin-1"), f"MLflow server file {path.name}", found)
    assert not found, "\n".join(found)


def mlflow_server_root(url: str) -> str:
    """The folder of the ``mlflow_server`` fixture (its sqlite store and artifacts), found from its process."""
    import psutil

    port = url.rsplit(":", 1)[1]
    for p in psutil.process_iter(["cmdline", "cwd"]):
        cmd = p.info.get("cmdline") or []
        if "server" in cmd and "--port" in cmd and port in cmd:
            return p.info["cwd"]
    raise AssertionError(f"no mlflow server process on port {port}")

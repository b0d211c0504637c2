"""Errors first, Ray later: faults in the files a job names end in one ``error:`` line before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cion_dist.config import job_from_dict
from cion_dist.errors import CionError, DataError
from cion_dist.preflight import registered, run_preflight

ROOT = Path(__file__).resolve().parents[1]


def _cion_run(tmp_path: Path, job_text: str, *overrides: str):
    job = tmp_path / "job.yaml"
    job.write_text(job_text)
    ray_tmp = tmp_path / "ray-tmp"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_TMPDIR": str(ray_tmp),
        "CION_CLUSTER_FILE": str(tmp_path / "no-cluster.json"),
    }
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cion_dist.cli", "run", str(job), *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return proc, time.perf_counter() - t0, ray_tmp


def _assert_one_error_before_ray(proc, seconds: float, ray_tmp: Path, *needles: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[0]], proc.stderr
    assert "Traceback" not in proc.stderr and "ray:" not in proc.stderr
    assert not ray_tmp.exists(), "Ray was started"
    assert seconds < 5, f"took {seconds:.1f} s"
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_missing_detector_model_fails_in_one_line_before_ray(tmp_path):
    proc, s, ray_tmp = _cion_run(
        tmp_path,
        "stage: ingest\noutput: out\ningest:\n  detector:\n    kind: yolox\n    model_uri: models/yolox.onnx\n",
    )
    _assert_one_error_before_ray(proc, s, ray_tmp, "ingest.detector.model_uri", str(tmp_path / "models/yolox.onnx"))


def test_incomplete_detector_fails_in_one_line_before_ray(tmp_path):
    proc, s, ray_tmp = _cion_run(tmp_path, "stage: ingest\noutput: out\ningest:\n  detector:\n    kind: yolox\n")
    _assert_one_error_before_ray(proc, s, ray_tmp, "model_uri")


def test_missing_onnx_embedder_fails_before_ray(tmp_path):
    proc, s, ray_tmp = _cion_run(tmp_path, "stage: embed\noutput: out\nembed:\n  backbone: onnx\n  model: osnet.onnx\n")
    _assert_one_error_before_ray(proc, s, ray_tmp, "embed.model: file not found")


def test_unreadable_model_file_is_named(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    model.chmod(0)
    job = job_from_dict(
        {"stage": "embed", "output": str(tmp_path / "out"), "embed": {"backbone": "onnx", "model": str(model)}}
    )
    with pytest.raises(CionError, match="embed.model: .* cannot be read"):
        run_preflight(job)


def test_dataset_folder_and_manifest_schema(tmp_path):
    job = job_from_dict(
        {
            "stage": "evaluate",
            "output": str(tmp_path / "out"),
            "evaluate": {"dataset": str(tmp_path / "market"), "model": "init:resnet_tiny"},
        }
    )
    with pytest.raises(CionError, match="evaluate.dataset: folder not found"):
        run_preflight(job)
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"video_id": ["v0"], "path": ["a.mp4"]}), manifest)
    job = job_from_dict({"stage": "ingest", "output": str(tmp_path / "out"), "ingest": {"manifest": str(manifest)}})
    with pytest.raises(DataError, match="lacks column 'uri'"):
        run_preflight(job)
    # inputs written by an earlier stage of the same pipeline are not checked
    job = job_from_dict(
        {"stage": "pipeline", "output": str(tmp_path / "out"), "pipeline": {"stages": ["synth", "ingest", "evaluate"]}}
    )
    run_preflight(job)
    assert {"detector-settings", "model-files", "dataset-folders", "manifest-schema"} <= set(registered())


def test_error_inside_a_ray_task_reaches_the_user_as_its_own_line():
    import ray.exceptions

    from cion_dist.cli import _user_message

    try:
        raise DataError("clip v03 (s3://b/v03.mp4): not a decodable video")
    except DataError as e:
        wrapped = ray.exceptions.RayTaskError("run_clip", "Traceback (most recent call last): ...", e)
    assert _user_message(wrapped.as_instanceof_cause()) == "clip v03 (s3://b/v03.mp4): not a decodable video"

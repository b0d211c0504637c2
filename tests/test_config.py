"""Job files: loading, overrides, and errors that name the file and the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cion_dist.config import load_job
from cion_dist.config.loader import apply_overrides
from cion_dist.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return str(p)


def test_every_shipped_job_file_validates():
    files = sorted((ROOT / "jobs").glob("*.yaml"))
    assert files, "jobs/ has no job files"
    for f in files:
        job = load_job(str(f))
        assert job.stage in {"synth", "ingest", "embed", "correlate", "pretrain", "evaluate", "promote", "pipeline"}


def test_overrides_set_nested_keys_with_yaml_types(tmp_path):
    job = load_job(
        write(tmp_path, "stage: ingest\n"),
        ["ingest.every_n=3", "ingest.detector.kind=yolox", "ingest.detector.model_uri=y.onnx", "ray.num_cpus=8"],
    )
    assert job.ingest.every_n == 3 and isinstance(job.ingest.every_n, int)
    assert job.ingest.detector.kind == "yolox"
    assert job.ray.num_cpus == 8


def test_unknown_key_is_named_with_file_and_path(tmp_path):
    path = write(tmp_path, "stage: ingest\ningest:\n  detector:\n    knd: yolox\n")
    with pytest.raises(ConfigError) as e:
        load_job(path)
    msg = str(e.value)
    assert path in msg and "ingest.detector.knd" in msg and "unknown key" in msg


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, "stage: ingest\ningest:\n  every_n: lots\n")
    with pytest.raises(ConfigError, match=r"ingest\.every_n: .*integer"):
        load_job(path)


def test_bad_stage_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="stage"):
        load_job(write(tmp_path, "stage: nope\n"))
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"stage": "ingest"}, ["stage.x=1"])


def test_secrets_are_masked_when_echoed(tmp_path):
    job = load_job(
        write(tmp_path, "stage: ingest\nstorage:\n  access_key_id: AKIAEXAMPLE\n  secret_access_key: sup3rs3cret\n")
    )
    dumped = job.model_dump_json()
    assert "sup3rs3cret" not in dumped and "AKIAEXAMPLE" not in dumped
    assert job.storage.secret_access_key.get_secret_value() == "sup3rs3cret"


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    path = write(tmp_path, "stage: ingest\ningest:\n  bogus: 1\n")
    proc = subprocess.run([sys.executable, "-m", "cion_dist.cli", "validate", path], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "ingest.bogus: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout

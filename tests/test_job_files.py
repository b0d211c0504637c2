"""Job files as users type them: executable through their shebang, paths relative to the file's folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cion_dist.config import load_job

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
SHEBANG = "#!/usr/bin/env -S cion run"


def test_every_job_file_runs_through_cion_run_and_is_executable():
    assert len(JOBS) >= 8
    for f in JOBS:
        assert f.read_text().splitlines()[0] == SHEBANG, f"{f.name}: first line is not the cion shebang"
        assert os.access(f, os.X_OK), f"{f.name}: no run bit"
        listed = subprocess.run(
            ["git", "ls-files", "-s", str(f.resolve())], cwd=ROOT, capture_output=True, text=True, check=False
        )
        if listed.stdout:  # committed with mode 100755, so a fresh checkout keeps the run bit
            assert listed.stdout.split()[0] == "100755", f"{f.name}: committed without the run bit"


def test_paths_in_the_file_resolve_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "jobs"
    folder.mkdir(parents=True)
    job_file = folder / "ingest.yaml"
    job_file.write_text(
        "stage: ingest\noutput: ../out\ningest:\n  manifest: corpus/manifest.parquet\n"
        "  detector:\n    kind: background\n    model_uri: ./m.onnx\n"
        "embed:\n  model: resnet50\n  weights: s3://bucket/w.safetensors\n"
        "evaluate:\n  model: models:/cion-backbone@champion\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = load_job(os.path.relpath(job_file, elsewhere))
    assert job.output == str(tmp_path / "project" / "out")
    assert job.ingest.manifest == str(folder / "corpus" / "manifest.parquet")
    assert job.ingest.detector.model_uri == str(folder / "m.onnx")
    # names and URIs are not paths
    assert job.embed.model == "resnet50"
    assert job.embed.weights == "s3://bucket/w.safetensors"
    assert job.evaluate.model == "models:/cion-backbone@champion"


def test_overrides_resolve_against_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    job_file = tmp_path / "jobs" / "embed.yaml"
    job_file.write_text("stage: embed\noutput: ../out\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    job = load_job(
        str(job_file), ["output=runs", "embed.model=models/osnet.onnx", "embed.input=latest", "ingest.every_n=2"]
    )
    assert job.output == str(cwd / "runs")
    assert job.embed.model == str(cwd / "models" / "osnet.onnx")
    assert job.embed.input == "latest"
    assert job.ingest.every_n == 2


def test_shipped_job_files_point_at_the_project_folder():
    for name in ("ingest", "pipeline", "evaluate"):
        job = load_job(str(ROOT / "jobs" / f"{name}.yaml"))
        assert job.output == str(ROOT / "cion-out")
    assert load_job(str(ROOT / "jobs" / "ingest.yaml")).ingest.manifest == str(
        ROOT / "cion-out/corpus/manifest.parquet"
    )


def test_job_file_runs_as_a_program_with_overrides(tmp_path):
    """``./jobs/synth.yaml key=value`` from another folder: the shebang hands the file to ``cion run``."""
    out = tmp_path / "corpus-run"
    proc = subprocess.run(
        [
            str(ROOT / "jobs" / "synth.yaml"),
            f"output={out}",
            "synth.videos=1",
            "synth.frames=8",
            "synth.identities=2",
            "synth.benchmark_identities=0",
            "mlflow.enabled=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "corpus" / "manifest.parquet").exists()
    assert "[synth]" in proc.stdout

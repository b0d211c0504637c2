"""The stage skeleton's run id: execution-only settings and input URIs of every stage are left out, at any depth;
everything else decides the output folder. Typed results read back from ``_SUCCESS.json`` records."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from cion_dist.config.loader import load_default
from cion_dist.config_base import NOT_IN_RUN_ID
from cion_dist.stage import EmbedResult, PretrainResult, StageRun, SynthResult, derive_run_id, run_id_config
from cion_dist.stage.result import StageResult

STAGES = ("ingest", "embed", "correlate", "pretrain", "evaluate")


def _marked(model: BaseModel, prefix: str = ""):
    """(dotted path, field info) of every field marked as left out of the run id, nested models included."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        extra = info.json_schema_extra
        if isinstance(extra, dict) and NOT_IN_RUN_ID in extra:
            yield f"{prefix}{name}", info
        elif isinstance(value, BaseModel):
            yield from _marked(value, f"{prefix}{name}.")


def _changed(value, info):
    """A valid different value for a field."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        bounds = {type(m).__name__: m for m in info.metadata}
        cand = value + 1
        if "Le" in bounds and cand > bounds["Le"].le:
            cand = value / 2 if value else bounds["Le"].le / 2
        return type(value)(cand) if isinstance(value, int) else float(cand)
    if value is None:
        return 3 if "int" in str(info.annotation) else "s3://elsewhere/x"
    if isinstance(value, str):
        return "local" if value == "auto" else value + "-other"
    raise AssertionError(f"no changed value for {value!r}")


def _set(cfg: BaseModel, path: str, value) -> BaseModel:
    head, _, rest = path.partition(".")
    if not rest:
        return cfg.model_copy(update={head: value})
    return cfg.model_copy(update={head: _set(getattr(cfg, head), rest, value)})


def _get(cfg: BaseModel, path: str):
    for p in path.split("."):
        cfg = getattr(cfg, p)
    return cfg


@pytest.mark.parametrize("stage", STAGES)
def test_execution_only_settings_keep_the_run_id(stage):
    cfg = getattr(load_default("demo", []), stage)
    marked = list(_marked(cfg))
    assert marked, f"{stage} marks no execution-only settings"
    base = derive_run_id(stage, cfg, "digest")
    for path, info in marked:
        other = _set(cfg, path, _changed(_get(cfg, path), info))
        assert _get(other, path) != _get(cfg, path)
        assert derive_run_id(stage, other, "digest") == base, f"{stage}.{path} changed the run id"
    assert derive_run_id(stage, cfg, "other digest") != base


@pytest.mark.parametrize(
    "stage, path, value",
    [
        ("ingest", "every_n", 3),
        ("ingest", "detector.score_threshold", 0.5),
        ("embed", "height", 128),
        ("correlate", "window_videos", 16),
        ("correlate", "calibration.sample", 500),
        ("pretrain", "num_workers", 4),
        ("pretrain", "lr", 1e-3),
        ("evaluate", "flip", False),
    ],
)
def test_output_settings_change_the_run_id(stage, path, value):
    cfg = getattr(load_default("demo", []), stage)
    assert derive_run_id(stage, _set(cfg, path, value), "d") != derive_run_id(stage, cfg, "d")


def test_expected_settings_are_execution_only():
    job = load_default("demo", [])
    marked = {s: {p for p, _ in _marked(getattr(job, s))} for s in STAGES}
    assert {"concurrency", "max_error_fraction", "detector.num_gpus", "detector.threads", "manifest"} <= marked[
        "ingest"
    ]
    assert {"concurrency", "num_gpus", "num_cpus", "threads", "batch_size", "input"} <= marked["embed"]
    assert {"num_shards", "shard_cpus", "videos_per_task", "tasks_in_flight", "input"} <= marked["correlate"]
    assert {"cpus_per_worker", "max_failures", "input", "crops"} <= marked["pretrain"]
    assert {"num_actors", "batch_size", "finetune.num_threads", "model", "dataset"} <= marked["evaluate"]
    assert "num_workers" not in marked["pretrain"]  # the global batch, hence the result, depends on it


def test_run_id_config_is_json_and_drops_marked_fields():
    cfg = load_default("demo", []).ingest
    d = run_id_config(cfg)
    assert "concurrency" not in d and "num_gpus" not in d["detector"] and "manifest" not in d
    assert d["every_n"] == cfg.every_n and d["tracker"]["max_age"] == cfg.tracker.max_age


def test_stage_run_resumes_the_same_folder_across_execution_settings(tmp_path):
    job = load_default("demo", [f"output={tmp_path}", "mlflow.enabled=false"])
    a = StageRun(job, "embed", job.embed, [{"uri": "x", "digest": "abc", "stage": "ingest"}])
    job.embed.concurrency = 5
    b = StageRun(job, "embed", job.embed, [{"uri": "y", "digest": "abc", "stage": "ingest"}])
    assert a.uri == b.uri and a.completed() is None
    with b.tracking():
        record = b.finalize({"embeddings": 3}, {"embedding_dim": 8, "backbone": "h"})
    res = EmbedResult.from_record(a.completed(), skipped=True)
    assert res.skipped and res.embedding_dim == 8 and res.backbone == "h" and res.rows == {"embeddings": 3}
    assert record["digest"] == a.out.success()["digest"]


def test_runs_left_running_are_failed_by_the_next_run_and_an_interrupt_ends_failed(tmp_path):
    """A RUNNING run of the same stage, run id and output (what a SIGKILLed driver leaves) is marked FAILED when
    the next run starts under the output lock; RUNNING runs of another run id or output are left alone."""
    from mlflow.tracking import MlflowClient

    from cion_dist.lock import holds

    store = f"sqlite:///{tmp_path}/m.db"
    job = load_default("demo", [f"output={tmp_path}/out", f"mlflow.tracking_uri={store}", "mlflow.experiment=k"])
    rec = [{"uri": "x", "digest": "abc", "stage": "ingest"}]
    first = StageRun(job, "embed", job.embed, rec)
    with pytest.raises(KeyboardInterrupt):  # what SIGTERM raises in `cion` (cli._on_sigterm)
        with first.tracking():
            assert holds(job)
            raise KeyboardInterrupt
    assert not holds(job)
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(first.mlflow_run_id).info.status == "FAILED"
    exp = client.get_experiment_by_name("k").experiment_id
    tags = {"cion.stage": "embed", "cion.run_id": first.run_id, "cion.output": job.output}
    killed = client.create_run(exp, tags=tags).info.run_id  # a driver killed mid-stage never ends its run
    other_output = client.create_run(exp, tags={**tags, "cion.output": f"{tmp_path}/elsewhere"}).info.run_id
    other_id = client.create_run(exp, tags={**tags, "cion.run_id": "embed-000000000000"}).info.run_id
    second = StageRun(job, "embed", job.embed, rec)
    with second.tracking():
        pass
    got = client.get_run(killed)
    assert got.info.status == "FAILED" and got.data.tags["cion.interrupted_by"] == second.mlflow_run_id
    assert f"by run {second.mlflow_run_id}" in got.data.tags["cion.interrupted"]
    done = client.get_run(second.mlflow_run_id)
    assert done.info.status == "FINISHED" and done.data.tags["cion.after_interrupted"] == killed
    assert done.data.tags["cion.run_id"] == first.run_id and done.data.tags["cion.output"] == job.output
    assert [client.get_run(r).info.status for r in (other_output, other_id)] == ["RUNNING", "RUNNING"]


def test_typed_results_hand_over_the_right_uri():
    synth = SynthResult.from_record(
        {"stage": "synth", "uri": "/c", "summary": {"manifest_uri": "/c/m.parquet", "gt_uri": "/c/gt.parquet"}}
    )
    assert synth.handoff == "/c/m.parquet" and synth.gt_uri == "/c/gt.parquet"
    pre = PretrainResult.from_record({"stage": "pretrain", "uri": "/p", "summary": {"model_uri": "models:/m/2"}})
    assert pre.handoff == "models:/m/2"
    assert PretrainResult.from_record({"stage": "pretrain", "uri": "/p", "summary": {}}).handoff == "/p"
    assert StageResult.from_record({"stage": "embed", "uri": "/e"}).handoff == "/e"

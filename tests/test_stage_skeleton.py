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


def test_typed_results_hand_over_the_right_uri():
    synth = SynthResult.from_record(
        {"stage": "synth", "uri": "/c", "summary": {"manifest_uri": "/c/m.parquet", "gt_uri": "/c/gt.parquet"}}
    )
    assert synth.handoff == "/c/m.parquet" and synth.gt_uri == "/c/gt.parquet"
    pre = PretrainResult.from_record({"stage": "pretrain", "uri": "/p", "summary": {"model_uri": "models:/m/2"}})
    assert pre.handoff == "models:/m/2"
    assert PretrainResult.from_record({"stage": "pretrain", "uri": "/p", "summary": {}}).handoff == "/p"
    assert StageResult.from_record({"stage": "embed", "uri": "/e"}).handoff == "/e"

"""Dispatch a job to its stage, and run a pipeline of stages that hand each other their output URIs."""

from __future__ import annotations

import importlib
import logging
import time

from cion_dist.config.job import Job
from cion_dist.errors import CionError
from cion_dist.stage import PretrainResult, StageResult, SynthResult

log = logging.getLogger(__name__)

STAGE_MODULES = {
    "synth": "cion_dist.synth.job",
    "ingest": "cion_dist.ingest.job",
    "embed": "cion_dist.embed.job",
    "correlate": "cion_dist.correlate.job",
    "pretrain": "cion_dist.pretrain.job",
    "evaluate": "cion_dist.evaluate.job",
    "promote": "cion_dist.evaluate.promote_job",
}

# which config field of a stage receives the previous stage's output URI
_INPUT_FIELD = {
    "ingest": ("ingest", "manifest"),
    "embed": ("embed", "input"),
    "correlate": ("correlate", "input"),
    "pretrain": ("pretrain", "input"),
    "evaluate": ("evaluate", "model"),
}


def stage_module(stage: str):
    name = STAGE_MODULES.get(stage)
    if name is None:
        raise CionError(f"unknown stage {stage!r}; known: {', '.join(STAGE_MODULES)}")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("cion_dist"):
            raise CionError(f"the {stage} stage is not available in this version of cion-dist") from None
        raise


def run_stage(job: Job, stage: str | None = None) -> StageResult:
    stage = stage or job.stage
    t0 = time.time()
    result = stage_module(stage).run(job)  # holds the output lock itself (``stage.locked_stage``)
    result.summary.setdefault("seconds", round(time.time() - t0, 2))
    log.info("%s finished: %s", stage, result.uri)
    return result


def run_pipeline(job: Job) -> list[StageResult]:
    """Run ``job.pipeline.stages`` in order; each stage reads what the previous one wrote.

    With ``pipeline.iterations`` > 1, embed -> correlate -> pretrain runs again with the newest pretrained backbone
    as the embedder, so the identities the next round trains on come from better features.
    """
    from cion_dist.lock import output_lock

    # one hold around all the stages: no other run takes the output between two of them
    with output_lock(job, "pipeline"):
        return _run_pipeline(job)


def _run_pipeline(job: Job) -> list[StageResult]:
    results: list[StageResult] = []
    current = job.model_copy(deep=True)
    stages = list(current.pipeline.stages)
    gt_uri = None
    iteration, i = 1, 0
    while i < len(stages):
        stage = stages[i]
        i += 1
        res = run_stage(current, stage)
        res.summary.setdefault("iteration", iteration)
        results.append(res)
        nxt = _next_input(stage, res)
        if nxt is not None:
            section, fieldname, value = nxt
            setattr(getattr(current, section), fieldname, value)
        if isinstance(res, SynthResult):
            gt_uri = res.gt_uri
        elif stage == "ingest" and gt_uri and not current.correlate.ground_truth:
            from cion_dist.pipeline.groundtruth import attach_ground_truth

            current.correlate.ground_truth = attach_ground_truth(current, res, gt_uri)
        elif isinstance(res, PretrainResult) and iteration < current.pipeline.iterations and "embed" in stages[: i - 1]:
            iteration += 1
            current.embed.backbone = "torch"
            current.embed.model = current.pretrain.backbone
            current.embed.weights = res.handoff
            i = stages.index("embed")
            log.info("pipeline iteration %d: re-embedding with %s", iteration, current.embed.weights)
    return results


def _next_input(stage: str, res: StageResult):
    """(config section, field, value): where the stage after ``stage`` finds what ``res`` hands over."""
    follow = {
        "synth": "ingest",
        "ingest": "embed",
        "embed": "correlate",
        "correlate": "pretrain",
        "pretrain": "evaluate",
    }
    if stage in follow:
        section, fieldname = _INPUT_FIELD[follow[stage]]
        return (section, fieldname, res.handoff)
    return None

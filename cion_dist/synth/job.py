"""The ``synth`` stage: make the synthetic corpus that the pipeline (and its tests) start from."""

from __future__ import annotations

from cion_dist.config.job import Job
from cion_dist.stage import SynthResult, locked_stage
from cion_dist.storage.fs import Storage, join
from cion_dist.synth.generate import generate_corpus


@locked_stage("synth")
def run(job: Job) -> SynthResult:
    cfg = job.synth
    out = cfg.out or join(job.output, "corpus")
    info = generate_corpus(cfg.model_copy(update={"out": out}), Storage(job.storage))
    rows = {k: int(info[k]) for k in ("videos", "frames", "gt_boxes", "market_images", "identities")}
    summary = {k: v for k, v in info.items() if k != "skipped"}  # counts too: summaries print from here
    return SynthResult.from_record(
        {"stage": "synth", "uri": info["out"], "rows": rows, "summary": summary}, skipped=bool(info["skipped"])
    )

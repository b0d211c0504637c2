"""``cion demo``: the whole pipeline on a synthetic corpus with embedded defaults, then a summary table."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Optional

from cion_dist.config.loader import load_default
from cion_dist.loopback_s3 import loopback_s3
from cion_dist.pipeline.runner import run_pipeline, run_stage
from cion_dist.stage import EvaluateResult, StageResult

log = logging.getLogger(__name__)


def _by_stage(results: list[StageResult]) -> dict[str, StageResult]:
    return {r.stage: r for r in results}


def summary_rows(results: list[StageResult], baseline: Optional[EvaluateResult]) -> list[tuple[str, str]]:
    """(label, value) rows of the closing table; missing figures show as '-'."""
    s = _by_stage(results)

    def get(stage: str, *path: str, where: str = "summary") -> str:
        r = s.get(stage)
        if r is None:
            return "-"
        node = r.rows if where == "rows" else r.summary
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return _fmt(node)

    promote = s.get("promote")
    version = "-"
    if promote is not None:
        name = promote.uri.split("/")[1].split("@")[0] if promote.uri.startswith("models:/") else ""
        version = f"models:/{name}/{getattr(promote, 'candidate_version', '')}"
    return [
        ("videos", get("synth", "videos")),
        ("crops", get("ingest", "crops", where="rows")),
        ("tracklets", get("ingest", "tracklets", where="rows")),
        ("tracking IDF1 / MOTA (vs ground truth)", f"{get('ingest', 'idf1')} / {get('ingest', 'mota')}"),
        ("identities after correlation", get("correlate", "identities", where="rows")),
        ("correlation pairwise F: CION", get("correlate", "quality", "cion", "pairwise_f")),
        ("  baseline: tracklet = identity", get("correlate", "quality", "tracklet", "pairwise_f")),
        ("  baseline: DBSCAN", get("correlate", "quality", "dbscan", "pairwise_f")),
        ("  baseline: FINCH", get("correlate", "quality", "finch", "pairwise_f")),
        ("pretraining steps", get("pretrain", "steps")),
        ("pretraining loss first -> last", f"{get('pretrain', 'first_loss')} -> {get('pretrain', 'final_loss')}"),
        ("pretraining health", get("pretrain", "health_verdict")),
        (
            "mAP / Rank-1 before pretraining (random init)",
            f"{_fmt(baseline.mAP)} / {_fmt(baseline.rank1)}" if baseline else "-",
        ),
        ("mAP / Rank-1 after pretraining", f"{get('evaluate', 'mAP')} / {get('evaluate', 'rank1')}"),
        ("benchmark queries (held-out identities x cameras)", get("evaluate", "num_queries")),
        ("promotion", f"{get('promote', 'decision')} ({version})"),
    ]


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = ["", "cion demo summary", "-" * (width + 24)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def run_demo(out: str = "./cion-demo", s3: bool = False, overrides: list[str] = ()) -> list[StageResult]:
    """Build the embedded demo job (local files, or a loopback S3 endpoint with ``s3``) and execute it."""
    out_abs = os.path.abspath(out)
    os.makedirs(out_abs, exist_ok=True)
    extra = [f"mlflow.tracking_uri=sqlite:///{os.path.join(out_abs, 'mlflow.db')}"]
    with contextlib.ExitStack() as stack:
        if s3:
            endpoint = stack.enter_context(loopback_s3("cion-demo"))
            job = load_default("demo", [*extra, "output=s3://cion-demo/run", *overrides])
            print(f"demo data goes to s3://cion-demo/run on the loopback endpoint {endpoint}")
        else:
            job = load_default("demo", [*extra, f"output={out_abs}", *overrides])
        return execute_demo(job, stop_ray=True)


def execute_demo(job, stop_ray: bool = False) -> list[StageResult]:
    """Run the pipeline, evaluate a random-init reference, print the summary table and where MLflow is.

    ``stop_ray`` shuts the local Ray instance down before printing, so late worker logs do not trail the table.
    """
    t0 = time.time()
    results = run_pipeline(job)
    baseline = _random_init_baseline(job, results)
    if stop_ray:
        import ray

        ray.shutdown()
    print(format_table(summary_rows(results, baseline)))
    print(f"\nfinished in {time.time() - t0:.0f} s; outputs under {job.output}")
    uri = job.mlflow.tracking_uri or ""
    if uri.startswith("sqlite:///"):
        print(f"MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000")
    elif uri:
        print(f"MLflow UI: {uri}")
    if baseline is not None:
        results.append(dataclasses.replace(baseline, stage="baseline"))
    return results


def _random_init_baseline(job, results: list[StageResult]) -> Optional[EvaluateResult]:
    """Evaluate the same architecture with random weights on the same benchmark: the 'before' of the demo."""
    if "evaluate" not in job.pipeline.stages or "pretrain" not in job.pipeline.stages:
        return None
    base = job.model_copy(deep=True)
    base.evaluate.model = f"init:{job.pretrain.backbone}"
    try:
        return run_stage(base, "evaluate")
    except Exception as e:  # noqa: BLE001 - the baseline is informative; the pipeline result stands without it
        log.warning("random-init baseline evaluation failed: %s", e)
        return None

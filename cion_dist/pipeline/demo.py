"""``cion demo``: the whole pipeline on a synthetic corpus with embedded defaults, then a summary table."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from typing import Iterator, Optional

from cion_dist.config.loader import load_default
from cion_dist.pipeline.result import StageResult
from cion_dist.pipeline.runner import run_pipeline, run_stage

log = logging.getLogger(__name__)


@contextlib.contextmanager
def loopback_s3(bucket: str) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the demo's ``--s3`` mode; exported through the AWS variables."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": saved["AWS_DEFAULT_REGION"] or "us-east-1"})
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    try:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _by_stage(results: list[StageResult]) -> dict[str, StageResult]:
    return {r.stage: r for r in results}


def summary_rows(results: list[StageResult], baseline: Optional[StageResult]) -> list[tuple[str, str]]:
    """(label, value) rows of the closing table; missing figures show as '-'."""
    s = _by_stage(results)

    def get(stage: str, key: str, where: str = "summary"):
        r = s.get(stage)
        if r is None:
            return "-"
        src = r.rows if where == "rows" else r.summary
        v = src.get(key, "-")
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = [
        ("videos", get("synth", "videos")),
        ("crops", get("ingest", "crops", "rows")),
        ("tracklets", get("ingest", "tracklets", "rows")),
        ("tracking IDF1 (vs ground truth)", get("ingest", "idf1")),
        ("identities after correlation", get("correlate", "identities", "rows")),
        ("correlation pairwise F (CION)", get("correlate", "pairwise_f")),
        ("correlation pairwise F (tracklet = identity)", get("correlate", "pairwise_f_tracklet")),
        ("pretraining loss first -> last", f"{get('pretrain', 'first_loss')} -> {get('pretrain', 'final_loss')}"),
        ("mAP before pretraining (random init)", _fmt(baseline.summary.get("mAP")) if baseline else "-"),
        ("mAP after pretraining", get("evaluate", "mAP")),
        ("Rank-1 after pretraining", get("evaluate", "rank1")),
        ("promotion", get("promote", "decision")),
        ("model version", get("promote", "model_uri")),
    ]
    return rows


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = ["", "cion demo summary", "-" * (width + 24)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def run_demo(out: str = "./cion-demo", s3: bool = False, overrides: list[str] = ()) -> list[StageResult]:
    out_abs = os.path.abspath(out)
    os.makedirs(out_abs, exist_ok=True)
    extra = [f"mlflow.tracking_uri=sqlite:///{os.path.join(out_abs, 'mlflow.db')}"]
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        if s3:
            endpoint = stack.enter_context(loopback_s3("cion-demo"))
            job = load_default("demo", [*extra, "output=s3://cion-demo/run", *overrides])
            print(f"demo data goes to s3://cion-demo/run on the loopback endpoint {endpoint}")
        else:
            job = load_default("demo", [*extra, f"output={out_abs}", *overrides])
        results = run_pipeline(job)
        baseline = _random_init_baseline(job, results)
    print(format_table(summary_rows(results, baseline)))
    print(f"\nfinished in {time.time() - t0:.0f} s; outputs under {job.output}")
    print(f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{os.path.join(out_abs, 'mlflow.db')} --port 5000")
    return results


def _random_init_baseline(job, results: list[StageResult]) -> Optional[StageResult]:
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

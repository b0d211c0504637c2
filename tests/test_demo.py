"""The embedded demo end to end: synthetic corpus in loopback S3 -> every stage -> summary, MLflow lineage and
registry. This is the README's `cion demo`, run in-process on the session's Ray instance."""

from __future__ import annotations

import pytest

from cion_dist.config.loader import load_default
from cion_dist.mlflow_io.lineage import lineage_chain
from cion_dist.pipeline.demo import execute_demo

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_demo_pipeline_on_loopback_s3(tmp_path, s3_bucket, ray_local, capsys):
    db = tmp_path / "mlflow.db"
    job = load_default("demo", [f"output={s3_bucket}/run", f"mlflow.tracking_uri=sqlite:///{db}"])
    results = {r.stage: r for r in execute_demo(job)}
    printed = capsys.readouterr().out
    assert "cion demo summary" in printed and "mlflow ui --backend-store-uri sqlite:///" in printed

    assert set(results) >= {"synth", "ingest", "embed", "correlate", "pretrain", "evaluate", "promote", "baseline"}
    assert all(r.uri.startswith("s3://") for k, r in results.items() if k in ("ingest", "embed", "correlate"))
    ingest = results["ingest"]
    assert ingest.rows["crops"] > 500 and ingest.rows["tracklets"] >= 10
    assert ingest.summary["idf1"] >= 0.8  # tracking against the corpus's ground truth

    q = results["correlate"].summary["quality"]
    for baseline in ("tracklet", "dbscan", "finch"):
        assert q["cion"]["pairwise_f"] > q[baseline]["pairwise_f"], (baseline, q)

    pre = results["pretrain"].summary
    assert pre["steps"] > 0 and pre["model_uri"].startswith("models:/")
    before, after = results["baseline"].summary["mAP"], results["evaluate"].summary["mAP"]
    assert 0 < before < 1 and 0 < after <= 1
    assert after > before, f"pretraining did not help: mAP {before:.3f} -> {after:.3f}"

    promote = results["promote"].summary
    assert promote["decision"] == "promoted" and promote["champion_after"] == promote["candidate_version"]

    chain = lineage_chain(pre["model_uri"], tracking_uri=f"sqlite:///{db}")
    stages = [link.get("stage") for link in chain]
    for stage in ("pretrain", "correlate", "embed", "ingest", "manifest"):
        assert stage in stages, stages

"""Promotion: the pure decision rule, then the promote stage against a local sqlite store and a real MLflow
tracking server on 127.0.0.1 (aliases moved, reasons recorded on versions)."""

import math
import os
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

from cion_dist.config import job_from_dict
from cion_dist.errors import ConfigError
from cion_dist.evaluate.promote_job import run as promote
from cion_dist.evaluate.promotion import Evaluated, decide
from cion_dist.mlflow_io.registry import record_evaluation
from cion_dist.models import build_backbone
from cion_dist.models.backbone_io import export_model, log_backbone, register_backbone
from tests.conftest import free_port

D1, D2 = "a" * 64, "b" * 64


# ---- pure rule ------------------------------------------------------------------------------------------------


def test_first_version_becomes_champion_only_past_a_floor_or_when_allowed():
    d = decide(Evaluated("1", D1, 0.4), None, floor=0.3)
    assert d.promote and d.alias == "champion" and "no champion" in d.reason
    assert decide(Evaluated("1", D1, 0.4), None, allow_first_without_floor=True).promote
    d = decide(Evaluated("1", D1, 0.4), None)
    assert not d.promote and d.alias is None and "promote.floor" in d.reason
    assert not decide(Evaluated("1", D1, 0.2), None, floor=0.3).promote


def test_better_by_more_than_margin_promotes():
    d = decide(Evaluated("2", D1, 0.56), Evaluated("1", D1, 0.50), margin=0.05)
    assert d.promote and d.alias == "champion" and "0.0600" in d.reason


def test_within_margin_or_tie_or_worse_is_challenger():
    for value, word in ((0.54, "does not beat"), (0.50, "ties"), (0.30, "is below")):
        d = decide(Evaluated("2", D1, value), Evaluated("1", D1, 0.50), margin=0.05 if value == 0.54 else 0.0)
        assert not d.promote and d.alias == "challenger" and word in d.reason


def test_exact_tie_with_zero_margin_never_promotes():
    d = decide(Evaluated("2", D1, 0.5), Evaluated("1", D1, 0.5), margin=0.0)
    assert not d.promote


def test_other_dataset_is_not_comparable():
    d = decide(Evaluated("2", D1, 0.9), Evaluated("1", D2, 0.1))
    assert not d.promote and d.alias == "challenger" and "not comparable" in d.reason


def test_missing_or_nan_metric_never_promotes():
    for value in (None, math.nan):
        d = decide(Evaluated("2", D1, value), Evaluated("1", D1, 0.1))
        assert not d.promote and d.alias is None
    assert not decide(Evaluated("2", None, 0.9), None).promote
    assert not decide(Evaluated("2", D1, 0.9), Evaluated("1", D1, math.nan)).promote


def test_champion_is_left_alone():
    d = decide(Evaluated("3", D1, 0.9), Evaluated("3", D1, 0.9))
    assert not d.promote and d.alias is None and "already champion" in d.reason


# ---- against MLflow stores ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` (sqlite backend, one worker, no job execution) on a free loopback port."""
    tmp = tmp_path_factory.mktemp("mlserver")
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp}/server.db",
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(params=["sqlite", "server"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mlflow.db"
    return request.getfixturevalue("mlflow_server")


def _job(store, tmp_path, name, **promote):
    return job_from_dict(
        {
            "stage": "promote",
            "output": str(tmp_path / "out"),
            "mlflow": {"tracking_uri": store, "experiment": f"exp-{name}"},
            "promote": {"model_name": name, "floor": 0.1, **promote},
        }
    )


def _new_version(job, name, metrics_by_digest):
    """A pretrain-like run with a backbone, registered, with evaluation tags per dataset digest."""
    from cion_dist.mlflow_io.mlflow_run import stage_run

    with stage_run(job, "pretrain", params={"p": 1}) as run:
        log_backbone(export_model(build_backbone("resnet_tiny"), "resnet_tiny"))
    mv = register_backbone(run.info.run_id, name)
    for digest, value in metrics_by_digest.items():
        record_evaluation(name, mv.version, "frozen", digest, {"mAP": value, "rank1": value + 0.1})
    return str(mv.version)


def test_promotion_sequence(store, tmp_path):
    name = f"bb-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    job = _job(store, tmp_path, name)
    c = lambda: mlflow.MlflowClient()  # noqa: E731 - the tracking URI is set by the stage

    v1 = _new_version(job, name, {D1: 0.50})
    r = promote(job)
    assert r.summary["decision"] == "promoted" and r.summary["champion_after"] == v1
    assert str(c().get_model_version_by_alias(name, "champion").version) == v1

    v2 = _new_version(job, name, {D1: 0.50})  # tie
    r = promote(job)
    assert r.summary["decision"] == "challenger" and "ties" in r.summary["reason"]
    assert str(c().get_model_version_by_alias(name, "champion").version) == v1
    assert str(c().get_model_version_by_alias(name, "challenger").version) == v2
    tags = c().get_model_version(name, v2).tags
    assert tags["cion.promote.decision"] == "challenger" and tags["cion.promote.compared_to"] == v1
    assert tags["cion.promote.dataset_digest"] == D1

    v3 = _new_version(job, name, {D2: 0.99})  # better, but on another dataset than the champion's
    r = promote(job)
    assert r.summary["decision"] == "challenger" and "not comparable" in r.summary["reason"]
    assert str(c().get_model_version_by_alias(name, "champion").version) == v1

    v4 = _new_version(job, name, {D1: 0.61})
    r = promote(job.model_copy(update={"promote": job.promote.model_copy(update={"margin": 0.1})}))
    assert r.summary["decision"] == "promoted" and r.summary["champion_before"] == v1
    assert str(c().get_model_version_by_alias(name, "champion").version) == v4

    # an explicit candidate on an explicit dataset: v3 was never measured on D1
    r = promote(_job(store, tmp_path, name, candidate=v3, dataset_digest=D1))
    assert r.summary["decision"] == "unchanged" and "has no mAP" in r.summary["reason"]
    assert str(c().get_model_version_by_alias(name, "champion").version) == v4
    run = c().get_run(r.mlflow_run_id)
    assert run.data.tags["cion.stage"] == "promote" and run.data.tags["cion.promote.candidate"] == v3

    # once measured on D1 the challenger (v3) wins by alias, and gives the challenger alias up
    assert str(c().get_model_version_by_alias(name, "challenger").version) == v3
    record_evaluation(name, v3, "frozen", D1, {"mAP": 0.9, "rank1": 0.95})
    r = promote(_job(store, tmp_path, name, candidate=f"models:/{name}@challenger", metric="rank1"))
    assert r.summary["candidate_version"] == v3 and r.summary["decision"] == "promoted"
    assert r.summary["champion_value"] == pytest.approx(0.71) and r.summary["candidate_value"] == pytest.approx(0.95)
    assert str(c().get_model_version_by_alias(name, "champion").version) == v3
    assert "challenger" not in c().get_registered_model(name).aliases


def test_bad_candidate(tmp_path):
    job = _job(f"sqlite:///{tmp_path}/m.db", tmp_path, "x", candidate="abc")
    with pytest.raises(ConfigError, match="promote.candidate 'abc'"):
        promote(job)


def test_cli_promote(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from cion_dist.cli import app

    store = f"sqlite:///{tmp_path}/mlflow.db"
    job = _job(store, tmp_path, "cli-bb")
    v1 = _new_version(job, "cli-bb", {D1: 0.3})
    jf = tmp_path / "promote.yaml"
    jf.write_text(
        yaml.safe_dump(
            {
                "stage": "promote",
                "output": str(tmp_path / "out"),
                "mlflow": {"tracking_uri": store, "experiment": "exp-cli-bb"},
                "promote": {"model_name": "cli-bb", "metric": "rank1", "floor": 0.2},
            }
        )
    )
    res = CliRunner().invoke(app, ["promote", str(jf)])
    assert res.exit_code == 0, res.output
    assert "decision: promoted" in res.output and "models:/cli-bb@champion" in res.output
    assert str(mlflow.MlflowClient(tracking_uri=store).get_model_version_by_alias("cli-bb", "champion").version) == v1

"""Lineage: a chain of stage runs made with ``stage_run`` in a temporary sqlite store is walked back from the
registered model version to the video manifest, with explicit digests as MLflow dataset inputs."""

import mlflow
import pytest

from cion_dist.config import job_from_dict
from cion_dist.errors import DataError
from cion_dist.mlflow_io.lineage import format_chain, lineage_chain, log_output
from cion_dist.mlflow_io.mlflow_run import stage_run
from cion_dist.models import build_backbone
from cion_dist.models.backbone_io import export_model, log_backbone, register_backbone


@pytest.fixture(scope="module")
def chain_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lineage")
    uri = f"sqlite:///{tmp}/mlflow.db"
    job = job_from_dict(
        {"stage": "pretrain", "output": str(tmp / "out"), "mlflow": {"tracking_uri": uri, "experiment": "lin"}}
    )
    manifest = {"uri": str(tmp / "corpus" / "manifest.parquet"), "digest": "f" * 64, "stage": "manifest"}
    prev, ids = manifest, {}
    for stage in ("ingest", "embed", "correlate"):
        out = str(tmp / "out" / stage / f"{stage}-run")
        digest = stage[0] * 64
        with stage_run(job, stage, params={"x": 1}, inputs=(prev,)) as run:
            log_output(out, digest)
        ids[stage] = run.info.run_id
        prev = {"uri": out, "digest": digest, "stage": stage, "mlflow_run_id": run.info.run_id}
    with stage_run(job, "pretrain", params={"epochs": 1}, inputs=(prev,)) as run:
        log_backbone(export_model(build_backbone("resnet_tiny"), "resnet_tiny"))
        log_output(str(tmp / "out" / "pretrain" / "p"), "p" * 64)
    ids["pretrain"] = run.info.run_id
    mv = register_backbone(run.info.run_id, "lin-backbone")
    mlflow.MlflowClient().set_registered_model_alias("lin-backbone", "champion", mv.version)
    return uri, ids, manifest, mv


def test_chain_reaches_the_manifest(chain_store):
    uri, ids, manifest, mv = chain_store
    chain = lineage_chain(f"models:/lin-backbone/{mv.version}", tracking_uri=uri)
    kinds = [n["kind"] for n in chain]
    assert kinds == ["model_version", "run", "run", "run", "run", "data"]
    assert [n.get("stage") for n in chain[1:]] == ["pretrain", "correlate", "embed", "ingest", "manifest"]
    assert [n["run_id"] for n in chain[1:5]] == [ids["pretrain"], ids["correlate"], ids["embed"], ids["ingest"]]
    assert chain[-1]["uri"] == manifest["uri"] and chain[-1]["digest"] == manifest["digest"]
    assert [n["depth"] for n in chain] == [0, 1, 2, 3, 4, 5]
    assert chain[0]["aliases"] == ["champion"]
    # outputs and explicit dataset inputs were recorded on every run
    assert chain[2]["output_digest"] == "c" * 64
    embed = chain[3]
    assert embed["datasets"] and embed["datasets"][0]["digest"] == ("i" * 32)  # the ingest output's digest


def test_alias_and_format(chain_store):
    uri, ids, manifest, mv = chain_store
    text = format_chain(lineage_chain("models:/lin-backbone@champion", tracking_uri=uri))
    lines = text.splitlines()
    assert lines[0].startswith(f"models:/lin-backbone/{mv.version} [champion]")
    assert lines[1].strip().startswith(f"pretrain run {ids['pretrain']}")
    assert lines[-1].strip() == f"manifest data {manifest['uri']} (digest {'f' * 12})"
    assert len(lines) == 6 and lines[-1].startswith(" " * 10)


def test_full_digest_kept_as_input_tag(chain_store):
    uri, ids, *_ = chain_store
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(ids["ingest"])
    (di,) = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in di.tags}
    assert tags["cion.digest"] == "f" * 64 and tags["mlflow.data.context"] == "manifest"


def test_bad_uris(chain_store):
    uri, *_ = chain_store
    with pytest.raises(DataError, match="lineage needs"):
        lineage_chain("/some/file.safetensors", tracking_uri=uri)
    with pytest.raises(DataError, match="cannot resolve"):
        lineage_chain("models:/lin-backbone/99", tracking_uri=uri)


def test_cli_prints_the_chain(chain_store):
    from typer.testing import CliRunner

    from cion_dist.cli import app

    uri, ids, manifest, mv = chain_store
    res = CliRunner().invoke(app, ["lineage", f"models:/lin-backbone/{mv.version}", "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    assert f"ingest run {ids['ingest']}" in res.output and f"manifest data {manifest['uri']}" in res.output

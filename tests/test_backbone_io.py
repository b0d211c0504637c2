"""One backbone I/O path: a model exported at 384x128 with its own normalisation is fed exactly so by the embed
stage's embedder and by evaluate's feature extraction, explicit settings win with a warning, and an export
registered in a real sqlite MLflow store loads back by alias with the same preprocessing and weights."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
from embed_fixtures import synthetic_people

from cion_dist.config import job_from_dict
from cion_dist.embed.config import EmbedConfig
from cion_dist.embed.embedders import TorchEmbedder, build_embedder
from cion_dist.evaluate.features import load_images
from cion_dist.evaluate.job import extract, model_preprocess, resolve_model
from cion_dist.images import encode_jpeg
from cion_dist.models import build_backbone
from cion_dist.models.backbone_io import (
    META_FILE,
    WEIGHTS_FILE,
    Preprocess,
    export_model,
    load_backbone,
    log_backbone,
    register_backbone,
    write_export,
)
from cion_dist.storage.fs import Storage
from cion_dist.vectors import l2_normalise

TALL = Preprocess((384, 128), (0.3, 0.5, 0.7), (0.15, 0.2, 0.35))  # neither the default size nor ImageNet's


@pytest.fixture()
def tall_export(tmp_path):
    torch.manual_seed(3)
    model = build_backbone("resnet_tiny").eval()
    with torch.no_grad():  # BN statistics off their defaults, so a wrong load or wrong input shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    folder = write_export(export_model(model, "resnet_tiny", preprocess=TALL), str(tmp_path / "model"))
    return model, folder


@pytest.fixture()
def crops(tmp_path):
    ims, _ = synthetic_people(n_ids=3, per_id=2, seed=11)
    uris = []
    for i, im in enumerate(ims):
        path = tmp_path / "imgs" / f"{i:02d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode_jpeg(im, quality=95))
        uris.append(str(path))
    return uris, load_images(uris)


def _input_shapes(module: torch.nn.Module) -> list[tuple]:
    seen: list[tuple] = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    return seen


def _evaluate_job(tmp_path, folder, **evaluate):
    cfg = {"model": folder, "extraction": "local", "flip": False, "device": "cpu", "batch_size": 4, **evaluate}
    return job_from_dict({"stage": "evaluate", "output": str(tmp_path / "out"), "evaluate": cfg})


def test_embed_and_evaluate_feed_the_exported_size_and_normalisation(tmp_path, tall_export, crops):
    _, folder = tall_export
    uris, images = crops
    embedder = build_embedder(EmbedConfig(backbone="torch", weights=folder, batch_size=4))
    assert isinstance(embedder, TorchEmbedder) and embedder.preprocess == TALL
    embed_seen = _input_shapes(embedder.model)
    from_embed = embedder(images)

    job = _evaluate_job(tmp_path, folder)
    model = resolve_model(job.evaluate.model, experiment="x", mlflow_enabled=False)
    pp = model_preprocess(job.evaluate, model)
    assert pp == TALL and model.preprocess == TALL
    eval_seen = _input_shapes(model.module)
    from_evaluate = extract(job, model.module, uris, Storage(), pp)

    assert set(embed_seen) == {(4, 3, 384, 128), (2, 3, 384, 128)}
    assert set(eval_seen) == {(4, 3, 384, 128), (2, 3, 384, 128)}
    assert from_embed.shape == (6, model.embed_dim)
    np.testing.assert_allclose(l2_normalise(from_evaluate), from_embed, atol=1e-5)
    # the recorded normalisation is what made them agree: the 256x128 ImageNet defaults give other features
    default = extract(job, model.module, uris, Storage(), Preprocess())
    assert np.abs(l2_normalise(default) - from_embed).max() > 1e-2


def test_explicit_settings_win_with_a_warning(tmp_path, tall_export, crops, caplog):
    _, folder = tall_export
    job = _evaluate_job(tmp_path, folder, height=256, std=[0.2, 0.2, 0.2])
    model = resolve_model(job.evaluate.model, experiment="x", mlflow_enabled=False)
    with caplog.at_level(logging.WARNING, logger="cion_dist.models.backbone_io"):
        pp = model_preprocess(job.evaluate, model)
    assert pp == Preprocess((256, 128), TALL.mean, (0.2, 0.2, 0.2))  # width and mean stay the model's
    assert "input size (256, 128) (model: (384, 128))" in caplog.text and "std" in caplog.text
    caplog.clear()
    # a config value left at its default is not explicit: the export wins, silently
    with caplog.at_level(logging.WARNING, logger="cion_dist.models.backbone_io"):
        assert model_preprocess(_evaluate_job(tmp_path, folder).evaluate, model) == TALL
        emb = build_embedder(EmbedConfig(backbone="torch", weights=folder, width=64))
    assert emb.preprocess == Preprocess((384, 64), TALL.mean, TALL.std)
    assert "input size (384, 64)" in caplog.text and caplog.text.count("WARNING") == 1


def test_registry_round_trip_by_alias(tmp_path, tall_export):
    import mlflow

    from cion_dist.mlflow_io.mlflow_run import stage_run

    model, folder = tall_export
    store = f"sqlite:///{tmp_path}/mlflow.db"
    job = job_from_dict(
        {"stage": "pretrain", "output": str(tmp_path / "out"), "mlflow": {"tracking_uri": store, "experiment": "io"}}
    )
    with stage_run(job, "pretrain") as run:
        meta = log_backbone(export_model(model, "resnet_tiny", preprocess=TALL))
    assert meta["input_size"] == [384, 128] and meta["mean"] == list(TALL.mean)
    mv = register_backbone(run.info.run_id, "io-backbone", tags={"architecture": "resnet_tiny"})
    client = mlflow.MlflowClient(tracking_uri=store)
    client.set_registered_model_alias("io-backbone", "champion", mv.version)

    loaded = load_backbone("models:/io-backbone@champion", tracking_uri=store)
    local = load_backbone(folder)
    assert (loaded.name, loaded.version, loaded.run_id) == ("io-backbone", str(mv.version), run.info.run_id)
    assert loaded.uri == f"models:/io-backbone/{mv.version}"
    assert loaded.preprocess == local.preprocess == TALL
    assert loaded.architecture == "resnet_tiny" and loaded.embed_dim == model.embed_dim
    with open(f"{folder}/{WEIGHTS_FILE}", "rb") as f:
        assert loaded.weights_digest == local.weights_digest == hashlib.sha256(f.read()).hexdigest()
    ref = model.state_dict()
    got = loaded.module.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    # the run's artifact folder, by runs:/, names the registered version it became
    by_run = load_backbone(f"runs:/{run.info.run_id}/model", tracking_uri=store)
    assert by_run.uri == loaded.uri and by_run.preprocess == TALL
    assert META_FILE in {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "model")}


def test_pretrain_publishes_through_log_and_register(tmp_path, tall_export):
    from cion_dist.mlflow_io.mlflow_run import stage_run
    from cion_dist.pretrain.job import publish_model

    model, _ = tall_export
    store = f"sqlite:///{tmp_path}/mlflow.db"
    job = job_from_dict(
        {
            "stage": "pretrain",
            "output": str(tmp_path / "out"),
            "mlflow": {"tracking_uri": store, "experiment": "pub"},
            "pretrain": {"model_name": "pub-backbone"},
        }
    )
    files = export_model(model, "resnet_tiny", preprocess=TALL)
    with stage_run(job, "pretrain") as run:
        uri = publish_model(files, job.pretrain, run)
    assert uri == "models:/pub-backbone/1"
    back = load_backbone(uri, tracking_uri=store)
    assert back.preprocess == TALL and back.run_id == run.info.run_id
    with stage_run(job, "pretrain") as run2:
        unregistered = publish_model(files, job.pretrain.model_copy(update={"register_model": False}), run2)
    assert unregistered == f"runs:/{run2.info.run_id}/model"

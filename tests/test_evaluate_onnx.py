"""evaluate.model=<file>.onnx: a re-ID ONNX model (the shipped OSNet) scored on a Market-layout benchmark made by
the synthetic generator, through the embed stage's ONNX embedder."""

from __future__ import annotations

import numpy as np
import pytest

from cion_dist.config import job_from_dict
from cion_dist.embed.embedders import OnnxEmbedder
from cion_dist.errors import ConfigError, DataError
from cion_dist.evaluate.datasets import load_dataset
from cion_dist.evaluate.features import extract_local
from cion_dist.evaluate.job import OnnxModel, resolve_model
from cion_dist.evaluate.job import run as evaluate


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    from cion_dist.storage.fs import Storage
    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus

    root = tmp_path_factory.mktemp("synth")
    info = generate_corpus(
        SynthConfig(
            out=str(root / "c"),
            videos=1,
            frames=8,
            identities=4,
            people_per_video=2,
            benchmark_identities=8,
            benchmark_images_per_camera=3,
        ),
        Storage(),
    )
    return info["market_uri"]


@pytest.fixture(scope="module")
def osnet(shared_data):
    return str(shared_data / "models" / "osnet_x0_25_msmt17.onnx")


def test_evaluate_scores_the_osnet_onnx_model(market, osnet, tmp_path):
    base = {"stage": "evaluate", "output": str(tmp_path / "out"), "mlflow": {"enabled": False}}
    res = evaluate(
        job_from_dict(
            {**base, "evaluate": {"dataset": market, "model": osnet, "extraction": "local", "batch_size": 32}}
        )
    )
    s = res.summary
    print(f"OSNet x0.25 ONNX on the synthetic Market benchmark: mAP {s['mAP']:.3f} rank-1 {s['rank1']:.3f}")
    assert s["num_valid_queries"] > 0
    # same-person images from other cameras rank high: far above the 1/8 of chance with 8 identities
    assert s["mAP"] > 0.5 and s["rank1"] > 0.6
    assert s["model_uri"] == osnet
    # a rerun of the same model, dataset and settings is skipped
    again = evaluate(
        job_from_dict(
            {**base, "evaluate": {"dataset": market, "model": osnet, "extraction": "local", "batch_size": 32}}
        )
    )
    assert again.skipped


def test_onnx_model_features_are_the_embed_stage_features(market, osnet):
    ds = load_dataset(market, "auto")
    uris = [r.uri for r in ds.query[:6]]
    model = resolve_model(osnet, experiment="x", mlflow_enabled=False)
    assert (
        isinstance(model, OnnxModel) and model.embed_dim == 512 and model.architecture == "onnx:osnet_x0_25_msmt17.onnx"
    )
    assert model.embedder.height == 256 and model.embedder.width == 128  # fixed axes of the model win
    feats = extract_local(model.embedder, uris, flip=False)
    from cion_dist.evaluate.features import load_images

    direct = OnnxEmbedder(osnet)(load_images(uris))
    np.testing.assert_allclose(feats, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # a given normalisation changes the features (it is used), and travels through pickling (Ray actors)
    import pickle

    other = resolve_model(
        osnet, experiment="x", mlflow_enabled=False, onnx={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    ).embedder
    assert other.mean == (0.5, 0.5, 0.5)
    assert np.abs(extract_local(other, uris, flip=False) - feats).max() > 1e-3
    assert pickle.loads(pickle.dumps(other)).mean == (0.5, 0.5, 0.5)


def test_onnx_errors_name_the_file(tmp_path, market):
    with pytest.raises(DataError, match="missing.onnx"):
        resolve_model(str(tmp_path / "missing.onnx"), experiment="x", mlflow_enabled=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="bad.onnx"):
        resolve_model(str(bad), experiment="x", mlflow_enabled=False)


def test_finetune_of_an_onnx_model_is_refused(market, osnet, tmp_path):
    job = job_from_dict(
        {
            "stage": "evaluate",
            "output": str(tmp_path / "o"),
            "mlflow": {"enabled": False},
            "evaluate": {"dataset": market, "model": osnet, "protocol": "finetune"},
        }
    )
    with pytest.raises(ConfigError, match="finetune needs a torch backbone"):
        evaluate(job)


def test_ray_extraction_of_an_onnx_model_matches_in_process(market, osnet, ray_local):
    from cion_dist.evaluate.features import extract_ray

    ds = load_dataset(market, "auto")
    uris = [r.uri for r in ds.gallery[:10]]
    model = resolve_model(osnet, experiment="x", mlflow_enabled=False)
    local = extract_local(model.embedder, uris)
    remote = extract_ray(model.embedder, uris, batch_size=4, num_actors=1)
    np.testing.assert_allclose(remote, local, atol=1e-5)

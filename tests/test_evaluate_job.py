"""The evaluate stage end to end on a tiny Market-layout benchmark: a randomly initialised backbone and a
fine-tuned one are registered, evaluated (metrics on the run and on the model version), and promotion picks the
better. Also: Ray Data extraction agrees with in-process extraction, and the finetune protocol's pieces."""

import numpy as np
import pytest
import torch

from cion_dist.config import job_from_dict
from cion_dist.evaluate.datasets import load_dataset
from cion_dist.evaluate.features import extract_local, extract_ray
from cion_dist.evaluate.finetune import batch_hard_triplet, finetune, pk_batches
from cion_dist.evaluate.job import run as evaluate
from cion_dist.evaluate.promote_job import run as promote
from cion_dist.models import build_backbone
from tests.evaluate_fixtures import write_market

SMALL = {"height": 64, "width": 32, "batch_size": 32, "extraction": "local"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_market(tmp_path_factory.mktemp("bench") / "market")


def test_batch_hard_triplet_by_hand():
    feat = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: dp 1, dn 3 -> 0 ; anchor 1: dp 1, dn sqrt(10) -> 0 ; anchor 2: dp 2, dn 3 -> 2-3+0.3=0
    # anchor 3: dp 2, dn 5 -> 0.  With margin 1.5 anchor 2 gives 0.5.
    assert float(batch_hard_triplet(feat, labels, 0.3)) == pytest.approx(0.0)
    assert float(batch_hard_triplet(feat, labels, 1.5)) == pytest.approx(0.5 / 4)
    soft = float(batch_hard_triplet(feat, labels, 0.0))
    assert soft == pytest.approx(
        float(torch.nn.functional.softplus(torch.tensor([1 - 3, 1 - 10**0.5, 2 - 3, 2 - 5.0])).mean()), rel=1e-5
    )


def test_pk_batches_layout():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    batches = list(pk_batches(labels, p=3, k=2, iterations=5, seed=1))
    assert len(batches) == 5
    for b in batches:
        assert len(b) == 6
        ids = labels[b].reshape(3, 2)
        assert (ids[:, 0] == ids[:, 1]).all() and len(set(ids[:, 0])) == 3


def test_finetune_trains_a_frozen_teacher_backbone(bench):
    """A pretraining teacher comes with requires_grad off on every parameter (it follows the student by EMA);
    the protocol fine-tunes the whole backbone anyway, and leaves the caller's model untouched."""
    teacher = build_backbone("resnet_tiny", widths=(8, 16, 16, 32)).requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ds = load_dataset(str(bench))
    cfg = job_from_dict({"stage": "evaluate"}).evaluate.finetune.model_copy(
        update={"iterations": 3, "p": 4, "k": 2, "lr": 3e-3}
    )
    tuned, _ = finetune(teacher, ds.train, cfg, height=64, width=32, seed=0)
    conv = [k for k in before if k.endswith("weight") and before[k].ndim == 4]
    moved = [k for k in conv if not torch.equal(tuned.state_dict()[k], before[k])]
    assert len(moved) == len(conv), f"{len(conv) - len(moved)} of {len(conv)} conv weights were not fine-tuned"
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())


@pytest.mark.slow
def test_random_vs_finetuned_backbone_and_promotion(bench, tmp_path):
    import mlflow

    from cion_dist.mlflow_io.mlflow_run import stage_run
    from cion_dist.models.backbone_io import Preprocess, export_model, log_backbone, register_backbone

    store = f"sqlite:///{tmp_path}/mlflow.db"
    common = {"output": str(tmp_path / "out"), "mlflow": {"tracking_uri": store, "experiment": "evalx"}}
    job = job_from_dict(
        {"stage": "evaluate", **common, "evaluate": {"dataset": str(bench), **SMALL, "model": "models:/bb/1"}}
    )
    torch.manual_seed(0)
    random_bb = build_backbone("resnet_tiny")
    with stage_run(job, "pretrain", params={"init": "random"}) as run:
        log_backbone(export_model(random_bb, "resnet_tiny", preprocess=Preprocess((64, 32))))
    register_backbone(run.info.run_id, "bb")

    # the "better" backbone: the same init after a short supervised fine-tune on the benchmark's train split
    ds = load_dataset(str(bench))
    cfg = job.evaluate.finetune.model_copy(update={"iterations": 60, "p": 6, "k": 4, "lr": 3e-3})
    tuned, stats = finetune(random_bb, ds.train, cfg, height=64, width=32, seed=0)
    assert stats["finetune_last_loss"] < stats["finetune_first_loss"]
    with stage_run(job, "pretrain", params={"init": "tuned"}) as run2:
        log_backbone(export_model(tuned, "resnet_tiny", preprocess=Preprocess((64, 32))))
    register_backbone(run2.info.run_id, "bb")

    r1 = evaluate(job)
    promote_job = job_from_dict({"stage": "promote", **common, "promote": {"model_name": "bb", "floor": 0.0}})
    p1 = promote(promote_job.model_copy(update={"promote": promote_job.promote.model_copy(update={"candidate": "1"})}))
    assert p1.summary["decision"] == "promoted"

    # model None = newest finished pretrain run -> its registered version 2
    job2 = job_from_dict({"stage": "evaluate", **common, "evaluate": {"dataset": str(bench), **SMALL}})
    r2 = evaluate(job2)
    assert r2.summary["model_uri"] == "models:/bb/2" and r1.summary["model_uri"] == "models:/bb/1"
    assert r1.summary["dataset_digest"] == r2.summary["dataset_digest"] == ds.digest()
    for r in (r1, r2):
        s = r.summary
        assert s["num_queries"] == 36 and s["num_skipped_queries"] == 0
        assert 0 < s["mAP"] <= 1 and s["rank1"] <= s["rank5"] <= s["rank10"] <= 1 and 0 < s["mINP"] <= s["mAP"] + 1e-9
    assert r2.summary["mAP"] > r1.summary["mAP"] + 0.05, (r1.summary["mAP"], r2.summary["mAP"])

    p2 = promote(promote_job)  # candidate = newest version (2)
    assert p2.summary["decision"] == "promoted" and p2.summary["champion_before"] == "1"
    c = mlflow.MlflowClient()
    assert str(c.get_model_version_by_alias("bb", "champion").version) == "2"

    # metrics live on the evaluation run and, keyed by dataset digest, on the model version
    erun = c.get_run(r2.mlflow_run_id)
    assert erun.data.metrics["mAP"] == pytest.approx(r2.summary["mAP"])
    assert erun.data.tags["cion.eval.dataset_digest"] == ds.digest()
    assert erun.data.tags["cion.input.1.mlflow_run_id"] == run2.info.run_id  # the model's producing run
    assert {d.dataset.digest for d in erun.inputs.dataset_inputs} >= {ds.digest()[:32]}
    mv = c.get_model_version("bb", "2")
    from cion_dist.mlflow_io.registry import evaluation_records, latest_eval_key

    rec = evaluation_records(mv)[latest_eval_key(mv, "frozen")]
    assert rec["metrics"]["mAP"] == pytest.approx(r2.summary["mAP"])
    assert rec["settings"]["dataset_digest"] == ds.digest() and rec["settings"]["height"] == job2.evaluate.height
    assert mv.tags["cion.eval.latest_run_id"] == r2.mlflow_run_id

    # a rerun with the same model, data and settings is skipped
    again = evaluate(job2)
    assert again.skipped and again.summary["mAP"] == pytest.approx(r2.summary["mAP"])


@pytest.mark.slow
def test_finetune_protocol_and_checkpoint_path(bench, tmp_path):
    """A model folder (safetensors + json) evaluated frozen, re-ranked, and under the finetune protocol, MLflow off."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(1)
    bb = build_backbone("resnet_tiny")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text(
        json.dumps({"architecture": "resnet_tiny", "embed_dim": 64, "input_size": [64, 32]})
    )
    base = {"stage": "evaluate", "output": str(tmp_path / "out"), "mlflow": {"enabled": False}}
    frozen = evaluate(job_from_dict({**base, "evaluate": {"dataset": str(bench), "model": str(folder), **SMALL}}))
    tuned = evaluate(
        job_from_dict(
            {
                **base,
                "evaluate": {
                    "dataset": str(bench),
                    "model": str(folder),
                    **SMALL,
                    "protocol": "finetune",
                    "finetune": {"iterations": 30, "p": 6, "k": 4, "lr": 3e-3, "neck_feat": "after"},
                },
            }
        )
    )
    reranked = evaluate(
        job_from_dict(
            {
                **base,
                "evaluate": {
                    "dataset": str(bench),
                    "model": str(folder),
                    **SMALL,
                    "rerank": True,
                    "rerank_k1": 6,
                    "rerank_k2": 3,
                },
            }
        )
    )
    assert reranked.summary["num_valid_queries"] == frozen.summary["num_valid_queries"] == 36
    assert 0 < reranked.summary["mAP"] <= 1 and reranked.summary["mAP"] != frozen.summary["mAP"]
    assert frozen.mlflow_run_id is None and frozen.uri == str(folder)
    assert tuned.summary["finetune_last_loss"] < tuned.summary["finetune_first_loss"]
    assert tuned.summary["mAP"] > frozen.summary["mAP"]


@pytest.mark.slow
def test_ray_extraction_matches_local(bench, ray_local):
    ds = load_dataset(str(bench))
    uris = [r.uri for r in ds.gallery][:40]
    torch.manual_seed(0)
    bb = build_backbone("resnet_tiny").eval()
    local = extract_local(bb, uris, batch_size=16, height=64, width=32, device="cpu")
    remote = extract_ray(bb, uris, batch_size=16, height=64, width=32, device="cpu", num_actors=2)
    assert remote.shape == local.shape == (40, 64)
    np.testing.assert_allclose(remote, local, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_dataset_model_and_output_on_s3(bench, s3_bucket, tmp_path):
    """Everything on the loopback S3 server gives the same figures as local files."""
    import json

    import s3fs
    from safetensors.torch import save_file

    torch.manual_seed(2)
    bb = build_backbone("resnet_tiny")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text(json.dumps({"architecture": "resnet_tiny", "embed_dim": 64}))
    fs = s3fs.S3FileSystem()
    fs.put(str(bench), f"{s3_bucket[5:]}/market", recursive=True)
    fs.put(str(folder), f"{s3_bucket[5:]}/ckpt", recursive=True)
    base = {"stage": "evaluate", "mlflow": {"enabled": False}}
    remote = evaluate(
        job_from_dict(
            {
                **base,
                "output": f"{s3_bucket}/out",
                "evaluate": {"dataset": f"{s3_bucket}/market", "model": f"{s3_bucket}/ckpt", **SMALL},
            }
        )
    )
    local = evaluate(
        job_from_dict(
            {
                **base,
                "output": str(tmp_path / "out"),
                "evaluate": {"dataset": str(bench), "model": str(folder), **SMALL},
            }
        )
    )
    assert remote.summary["mAP"] == pytest.approx(local.summary["mAP"], abs=1e-6)
    assert remote.summary["dataset_digest"] == local.summary["dataset_digest"]
    assert any(p.endswith("_SUCCESS.json") for p in fs.find(f"{s3_bucket[5:]}/out/evaluate"))


@pytest.mark.slow
def test_default_dataset_is_the_synthetic_corpus_benchmark(tmp_path):
    """With no dataset named, the stage reads ``<output>/corpus/market`` as the corpus generator writes it."""
    import json

    from safetensors.torch import save_file

    from cion_dist.storage import Storage
    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus

    out = tmp_path / "out"
    info = generate_corpus(
        SynthConfig(
            out=str(out / "corpus"),
            identities=2,
            cameras=2,
            videos=1,
            frames=8,
            benchmark_identities=12,
            benchmark_images_per_camera=3,
            width=320,
            height=180,
        ),
        Storage(),
    )
    torch.manual_seed(3)
    bb = build_backbone("resnet_tiny")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text(json.dumps({"architecture": "resnet_tiny", "embed_dim": 64}))
    res = evaluate(
        job_from_dict(
            {
                "stage": "evaluate",
                "output": str(out),
                "mlflow": {"enabled": False},
                "evaluate": {"model": str(folder), **SMALL},
            }
        )
    )
    ds = load_dataset(info["market_uri"])
    assert res.summary["dataset_digest"] == ds.digest()
    assert res.summary["num_queries"] == len(ds.query) == 12 and res.summary["num_skipped_queries"] == 0
    assert 0 < res.summary["mAP"] <= 1 and res.rows["gallery"] == len(ds.gallery)

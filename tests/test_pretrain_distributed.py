"""Pretraining on a real local Ray cluster: 2 CPU workers, DeepSpeed ZeRO 0/2/3, S3 checkpoints, MLflow.

Two stage runs are shared by several tests (each Ray Train fit costs tens of seconds):
- ZeRO-2 with checkpoints on loopback S3 and a fault drill (``hooks.FaultDrill``: rank 0's process dies once at
  step 5), so Ray Train restarts the worker group from the newest committed checkpoint; ``hooks.MemoryProbe``
  reports the workers' memory;
- ZeRO-3 (the teacher partitioned too) with the multi-crop running in Ray Data tasks, same data and seed, and
  its own fault drill in the last epoch (rank 0 dies at step 8), checkpoints on local storage.
Both must trace the same loss curve: resume is exact and ZeRO-3 partitioning changes nothing numerically.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid

import numpy as np
import pytest
import torch

from cion_dist.config.job import Job
from cion_dist.pretrain import hooks
from cion_dist.storage.fs import Storage

sys.path.insert(0, os.path.dirname(__file__))
from pretrain_fixtures import write_labelled_corpus  # noqa: E402

pytestmark = pytest.mark.slow

TINY = {
    "backbone": "resnet_tiny",
    "out_dim": 256,
    "hidden_dim": 64,
    "bottleneck_dim": 32,
    "local_crops": 2,
    "batch_size_per_worker": 8,
    "epochs": 3,
    "gradual_epochs": [3],
    "gradual_instances": [2],
    "warmup_epochs": 0,
    "lr": 0.16,  # x 16 / 256 images = 0.01
    "freeze_last_layer": 0,
    "cpu_shm_comm": False,
    "num_workers": 2,
}


@pytest.fixture(scope="module")
def ray_module(s3_endpoint):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pretrain-out"))
    write_labelled_corpus(out, identities=8, per_identity=6)
    return out


def _job(output, tmp, **pretrain) -> Job:
    return Job(
        stage="pretrain",
        output=output,
        ray={"num_cpus": 4, "log_to_driver": False},
        mlflow={"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "pretrain-test"},
        pretrain={**TINY, **pretrain},
    )


@pytest.fixture(scope="module")
def zero2_run(ray_module, s3_endpoint, corpus, tmp_path_factory):
    import s3fs

    from cion_dist.pretrain.job import run

    bucket = f"ckpt-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(bucket)
    tmp = tmp_path_factory.mktemp("mlflow2")
    job = _job(
        corpus,
        tmp,
        zero_stage=2,
        augment_in="worker",
        storage_path=f"s3://{bucket}/train",
        checkpoint_every_steps=2,
        max_failures=1,
    )
    with hooks.installed(hooks.FaultDrill(at_step=5), hooks.MemoryProbe()):
        res = run(job)
    return job, res, f"s3://{bucket}/train"


@pytest.fixture(scope="module")
def zero3_run(ray_module, corpus, tmp_path_factory):
    from cion_dist.pretrain.job import run

    tmp = tmp_path_factory.mktemp("mlflow3")
    job = _job(
        corpus, tmp, zero_stage=3, augment_in="ray_data", model_name="cion-z3", checkpoint_every_steps=2, max_failures=1
    )
    with hooks.installed(hooks.FaultDrill(at_step=8)):
        return job, run(job)


def _history(job, run_id, key):
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(tracking_uri=job.mlflow.tracking_uri).get_metric_history(run_id, key)
    by_step = {}
    for m in sorted(hist, key=lambda m: m.timestamp):
        by_step[m.step] = m.value  # a re-run step after the restart overwrites the dead attempt's value
    return [by_step[s] for s in sorted(by_step)], sorted(by_step)


def test_zero2_run_resumes_from_s3_checkpoint_after_a_killed_worker(zero2_run):
    job, res, ckpt_uri = zero2_run
    # 48 images, 8 identities x 3 groups of K=2; 16 images per global step -> 3 steps per epoch, 3 epochs
    assert res.summary["steps"] == 9 and res.rows == {"images": 48, "identities": 8, "steps": 9}
    # killed at step 5; checkpoints were reported at steps 2, 3 (epoch end) and 4, and the restart continues from
    # the newest one the controller had committed before the death (4, or 3 if the death beat its bookkeeping)
    assert res.summary["resumed_from_step"] in (3, 4)
    fs, path = Storage().fs(ckpt_uri)
    ckpts = [p for p in fs.find(path) if p.endswith("state.json")]
    assert ckpts, f"no checkpoint on S3 under {ckpt_uri}"
    assert any(p.endswith("zero_pp_rank_1_mp_rank_00_optim_states.pt") for p in fs.find(path))  # rank 1's shard
    assert res.summary["checkpoint"].startswith(ckpt_uri)


def test_loss_falls_and_mlflow_has_params_metrics_inputs(zero2_run):
    from mlflow.tracking import MlflowClient

    job, res, _ = zero2_run
    losses, steps = _history(job, res.mlflow_run_id, "loss")
    assert steps == list(range(1, 10))
    assert min(losses[1:4]) < losses[0] - 0.2, losses  # the student learns to match the teacher
    assert res.summary["first_loss"] == pytest.approx(losses[0])
    assert res.summary["final_loss"] == pytest.approx(losses[-1])
    client = MlflowClient(tracking_uri=job.mlflow.tracking_uri)
    run = client.get_run(res.mlflow_run_id)
    assert run.data.params["pretrain.zero_stage"] == "2" and run.data.params["identities"] == "8"
    # the workers' own measurements of the last epoch (each the larger worker's): the parts make up the student's
    # state, ZeRO-2 holds an fp32 master partition, and the replicated teacher is the whole weights plus BN buffers
    figures = run.data.metrics
    parts = sum(figures[f"student_{k}_mb"] for k in ("weights", "master", "optimizer", "other"))
    assert 0.9 * parts < figures["student_state_mb"] <= parts * (1 + 1e-9) and figures["student_master_mb"] > 0
    assert figures["teacher_mb"] > figures["student_weights_mb"] > 0
    # (peak and current RSS are read at different moments, so they are not compared with each other)
    assert min(figures["peak_rss_mb_max_worker"], figures["rss_mb_max_worker"]) > figures["student_state_mb"]
    for key in ("lr", "wd", "momentum", "K", "images_per_s", "data_wait_fraction"):
        vals, _ = _history(job, res.mlflow_run_id, key)
        assert len(vals) == 9, key
    wd, _ = _history(job, res.mlflow_run_id, "wd")
    assert wd[0] == pytest.approx(0.04) and wd[-1] > wd[0]
    mom, _ = _history(job, res.mlflow_run_id, "momentum")
    assert mom[0] == pytest.approx(0.996) and mom[-1] > mom[0]
    assert run.data.tags["cion.input.0.stage"] == "correlate"
    assert {d.dataset.name.split(":")[0] for d in run.inputs.dataset_inputs} == {"correlate", "ingest"}


def test_registered_model_loads_as_the_exported_teacher(zero2_run):
    import mlflow

    from cion_dist.models.backbone_io import load_backbone

    job, res, _ = zero2_run
    assert res.summary["model_uri"] == "models:/cion-backbone/1"
    mlflow.set_tracking_uri(job.mlflow.tracking_uri)
    registered = load_backbone(res.summary["model_uri"])
    local = load_backbone(res.summary["model_folder"])
    assert registered.architecture == "resnet_tiny" and registered.embed_dim == 64
    assert registered.preprocess == local.preprocess and registered.preprocess.input_size == (256, 128)
    assert registered.weights_digest == local.weights_digest and registered.version == "1"
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        assert torch.equal(registered.module(x), local.module(x)) and registered.module(x).shape == (2, 64)
    # a second run of the same stage on the same inputs is complete already and does nothing
    from cion_dist.pretrain.job import run

    again = run(job)
    assert again.skipped and again.summary["model_uri"] == res.summary["model_uri"]


def test_zero3_with_ray_data_augmentation_traces_the_same_loss_curve(zero2_run, zero3_run):
    job2, res2, _ = zero2_run
    job3, res3 = zero3_run
    l2, _ = _history(job2, res2.mlflow_run_id, "loss")
    l3, _ = _history(job3, res3.mlflow_run_id, "loss")
    # killed at step 8 after checkpoints at 2, 3 (epoch end), 4 and 6: resumes from 6, or 4 if the death beat the
    # controller's bookkeeping of the newest
    assert res3.summary["resumed_from_step"] in (4, 6) and res3.summary["steps"] == 9
    # the whole curves agree to float noise: both restarts resume exactly, and neither ZeRO-3 partitioning (of the
    # student and of the teacher, updated shard by shard) nor the Ray Data augmentation path changes anything
    assert res2.summary["resumed_from_step"] >= 3
    np.testing.assert_allclose(l3, l2, rtol=1e-4)
    assert res3.summary["model_uri"] == "models:/cion-z3/1"


def test_health_verdict_is_in_the_summary_and_health_is_logged_per_step(zero2_run):
    job, res, _ = zero2_run
    assert res.summary["health_verdict"] in ("learning", "collapsing to one prototype", "uniform (not sharpening)")
    assert (
        res.summary["health"].startswith(res.summary["health_verdict"] + ": ")
        and "teacher entropy" in res.summary["health"]
    )
    for key in ("teacher_entropy", "batch_entropy", "kl", "center_norm"):
        vals, steps = _history(job, res.mlflow_run_id, key)
        assert steps == list(range(1, 10)) and all(np.isfinite(vals)), key
    kl, _ = _history(job, res.mlflow_run_id, "kl")
    ent, _ = _history(job, res.mlflow_run_id, "teacher_entropy")
    assert min(kl) >= -1e-4 and 0 < max(ent) <= np.log(TINY["out_dim"]) + 1e-4


def test_non_finite_loss_stops_the_run_at_once_without_retries(ray_module, corpus, tmp_path):
    from cion_dist.errors import DataError
    from cion_dist.pretrain.job import run

    # lr 1e30 blows the weights up in the first step: the second step's loss is NaN. With max_failures 2 a worker
    # exception would be retried twice and end as a WorkerGroupError; the workers instead report the marker
    job = _job(corpus, tmp_path, zero_stage=2, augment_in="worker", lr=1e30, max_failures=2, model_name="cion-nan")
    with pytest.raises(DataError, match=r"diverged at global step 2: non-finite loss.*lr=") as info:
        run(job)
    assert "lower pretrain.lr" in str(info.value)


# ---------------------------------------------------------------- teacher EMA under ZeRO 0 / 2 / 3


def _ema_worker(config):
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from cion_dist.pretrain.config import PretrainConfig
    from cion_dist.pretrain.ema import ema_update, full_state, is_zero3_param, load_full_state
    from cion_dist.pretrain.train_loop import (
        _disable_cpu_shm_comm,
        build_networks,
        deepspeed_config,
        param_groups,
        place_teacher,
    )

    _disable_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    metrics = {}
    for name, stage, partition_teacher in config["cases"]:
        # a head wide enough (hidden 1024, 4096 prototypes) that gloo's all-gathers take time: reads of a gather
        # that has not finished show up
        cfg = PretrainConfig(
            backbone="resnet_tiny",
            out_dim=4096,
            hidden_dim=1024,
            bottleneck_dim=64,
            local_crops=0,
            batch_size_per_worker=4,
            gradual_epochs=[1],
            gradual_instances=[2],
            zero_stage=stage,
            partition_teacher=partition_teacher,
        )
        student, teacher = build_networks(cfg, seed=0)
        n_params = sum(p.numel() for p in student.parameters())
        groups, _ = param_groups(student)
        engine, *_ = deepspeed.initialize(
            model=student, optimizer=torch.optim.AdamW(groups, lr=0.05), config=deepspeed_config(cfg, world, n_params)
        )
        start = {n: p.detach().clone() for n, p in teacher.named_parameters()}
        # the train loop's layout: partitioned under ZeRO-3 with partition_teacher, else a replica on every rank
        teacher, _keep = place_teacher(teacher, cfg, world, n_params, torch.device("cpu"))
        expected = dict(start)
        # before any step the gathered student is the initial model (the teacher is its copy), read after read
        reads = [full_state(engine.module) for _ in range(config["reads"])]
        metrics[f"{name}_bad_reads"] = sum(any(not torch.equal(r[n], start[n]) for n in start) for r in reads)
        m = 0.8
        for step in range(3):
            g = torch.Generator().manual_seed(100 * step + rank)
            out = engine([torch.randn(4, 3, 64, 32, generator=g)])
            loss = torch.nn.functional.log_softmax(out / 0.1, dim=-1)[:, 0].neg().mean()
            engine.backward(loss)
            engine.step()
            full = full_state(engine.module)  # the gathered student weights
            for n in expected:
                expected[n] = m * expected[n] + (1 - m) * full[n]
            ema_update(teacher, engine.module, m)
        got = full_state(teacher)  # gathered when the teacher is partitioned
        err = max(float((got[n] - expected[n]).abs().max()) for n in expected)
        moved = max(float((got[n] - start[n]).abs().max()) for n in expected)
        flat = torch.cat([got[n].flatten() for n in expected])
        copies = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        # the checkpoint path: the full teacher written by rank 0 goes back into a fresh teacher of the same layout
        _, fresh = build_networks(cfg, seed=1)
        fresh, _keep2 = place_teacher(fresh, cfg, world, n_params, torch.device("cpu"))
        load_full_state(fresh, got)
        back = full_state(fresh)
        metrics.update(
            {
                f"{name}_err": err,
                f"{name}_moved": moved,
                f"{name}_spread": max(float((c - flat).abs().max()) for c in copies),
                f"{name}_partitioned": float(
                    any(is_zero3_param(p) and p.ds_tensor.numel() < p.ds_numel for p in engine.module.parameters())
                ),
                f"{name}_teacher_partitioned": float(
                    all(
                        is_zero3_param(p) and p.ds_tensor.numel() < p.ds_numel
                        for p in teacher.parameters()
                        if p.numel() > 1
                    )
                ),
                f"{name}_reload_exact": float(all(torch.equal(back[n], got[n]) for n in got)),
            }
        )
    # Ray Train keeps the metrics of reports that carry a checkpoint
    with tempfile.TemporaryDirectory() as d:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def test_teacher_ema_equals_ema_of_gathered_student_under_zero_0_2_3(ray_local, tmp_path):
    import ray.cloudpickle
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cases = [("z0", 0, False), ("z2", 2, False), ("z3", 3, False), ("z3p", 3, True)]
    trainer = TorchTrainer(
        _ema_worker,
        train_loop_config={"cases": cases, "reads": 20},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2),
        # a worker lost to a health-check timeout on a loaded machine restarts the whole (checkpoint-free) check
        run_config=RunConfig(name="ema", storage_path=str(tmp_path), failure_config=FailureConfig(max_failures=2)),
    )
    result = trainer.fit()
    assert result.error is None, result.error
    m = result.metrics
    for name, _, _ in cases:
        assert m[f"{name}_err"] < 1e-6, m
        assert m[f"{name}_spread"] == 0.0, m  # every rank holds the same teacher
        assert m[f"{name}_moved"] > 1e-4, m  # the student trained and the teacher followed
        assert m[f"{name}_bad_reads"] == 0, m  # every gather of the partitioned student is whole
        assert m[f"{name}_reload_exact"] == 1.0, m  # a saved teacher loads back bit for bit, shards included
    assert m["z3_partitioned"] == 1.0 and m["z2_partitioned"] == 0.0
    # the train loop's ZeRO-3 teacher is split like the student (and updated shard by shard); a replica is not
    assert m["z3p_teacher_partitioned"] == 1.0 and m["z3_teacher_partitioned"] == 0.0

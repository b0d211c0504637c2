"""The identity-shard stream on a multi-node Ray cluster (``ray.cluster_utils.Cluster``): each Ray Train worker
reads only its own shards, sees every kept image once per epoch at K = 1, and a worker killed mid-epoch resumes
with exactly the batches it would have had.

The train loop here takes the stream's batches and no model step (the DeepSpeed loop on the same stream is
covered by test_pretrain_distributed.py); it checkpoints its position every step, as the real loop does with
``checkpoint_every_steps``. The module shuts down the session's Ray instance first and leaves Ray down.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pretrain_fixtures import write_labelled_corpus  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BATCH = 4


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """Head (no CPUs) + two worker nodes of 3 CPUs: one training worker and its data tasks on each."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    old_tmpdir = os.environ.get("TMPDIR")
    tmpdir = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    os.environ["TMPDIR"] = tmpdir  # keep plain ray.init() calls elsewhere from finding this cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(num_cpus=3)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if old_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmpdir
        shutil.rmtree(tmpdir, ignore_errors=True)


def _loop(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    from cion_dist.pretrain.augment import MultiCropSpec
    from cion_dist.pretrain.stream import DATASET, worker_batches

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    epoch, step = 0, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            epoch, step = json.loads(Path(d, "state.json").read_text())
    attempt = "resumed" if ckpt is not None else "first"
    node = ray.get_runtime_context().get_node_id()
    stream = worker_batches(
        ray.train.get_dataset_shard(DATASET), config["cursor"], rank, epoch, step, MultiCropSpec(local_crops=1), True, 1
    )
    log = Path(config["out"], f"rank{rank}-{attempt}.jsonl")
    for e in range(epoch, len(config["epoch_steps"])):
        for s in range(step if e == epoch else 0, config["epoch_steps"][e]):
            got_e, got_s, views, names = next(stream)
            with log.open("a") as f:
                f.write(
                    json.dumps(
                        {"epoch": got_e, "step": got_s, "ids": names, "node": node, "shape": list(views[0].shape)}
                    )
                    + "\n"
                )
            nxt = (e, s + 1) if s + 1 < config["epoch_steps"][e] else (e + 1, 0)
            if attempt == "first" and rank == 0 and (e, s) == tuple(config["die_at"]):
                os._exit(17)  # the worker dies as a lost node's would, mid-epoch
            d = tempfile.mkdtemp()
            if rank == 0:
                Path(d, "state.json").write_text(json.dumps(list(nxt)))
            ray.train.report({"epoch": nxt[0], "step": nxt[1]}, checkpoint=Checkpoint.from_directory(d))
            shutil.rmtree(d, ignore_errors=True)


def test_each_worker_streams_only_its_shards_and_resumes_with_the_same_batches(cluster, tmp_path):
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cion_dist.pretrain import labelled
    from cion_dist.pretrain.augment import MultiCropSpec
    from cion_dist.pretrain.job import find_crops
    from cion_dist.pretrain.stream import DATASET, RunPlan, ingest_config, make_cursor, shard_batches, work_items
    from cion_dist.storage.fs import Storage
    from cion_dist.storage.stage_io import StageOutput, read_table, resolve_input

    out = str(tmp_path / "data")
    write_labelled_corpus(out, identities=16, per_identity=6, noise_rows=3)
    st = Storage()
    corr = resolve_input(None, out, "correlate", st)
    data = labelled.build(
        corr, find_crops(corr, None, st), out, "lab", world=2, shard_images=24, min_ids_per_shard=4, seed=0, config={}
    )
    # epoch 0 at K = 1, epochs 1-2 at K = 2
    plan = RunPlan.build(labelled.read_index(data), labelled.shard_files(data), 2, BATCH, 3, 3, [1, 3], [1, 2])
    plan.check()
    assert len(plan.shard_uris) == 4 and all(len(r) == 2 for r in plan.rank_shards)
    epoch_steps = [plan.epoch_steps(e) for e in range(3)]
    assert epoch_steps[0] == 12  # 4 shards of 4 identities x 6 images, 4 images a step: every image once
    cursor = make_cursor()
    items, bounds = work_items(plan, 3)
    logs = tmp_path / "logs"
    logs.mkdir()
    die_at = (1, 3)
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"cursor": cursor, "epoch_steps": epoch_steps, "out": str(logs), "die_at": die_at},
        datasets={DATASET: items},
        dataset_config=ingest_config(
            plan, bounds, spec=MultiCropSpec(local_crops=1), augment=True, cursor=cursor, storage=st
        ),
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, placement_strategy="SPREAD"),
        run_config=RunConfig(
            name="stream", storage_path=str(tmp_path / "train"), failure_config=FailureConfig(max_failures=1)
        ),
    )
    result = trainer.fit()
    assert result.error is None, result.error
    ray.kill(cursor)

    def read(rank, attempt):
        p = logs / f"rank{rank}-{attempt}.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    # what each rank must see, from the plan and the shard files alone
    tables = {s: read_table(u, st) for s, u in plan.shard_uris.items()}
    expected = {}
    for r in range(2):
        for it in plan.items(r, range(3)):
            t = tables[it["shard"]]
            for step, rows in shard_batches(t, it, BATCH, 3):
                expected[(r, it["epoch"], step)] = t["image_id"].take(rows).to_pylist()
    kept = set(StageOutput(data.uri, st).read(columns=["image_id"])["image_id"].to_pylist())
    assert len(kept) == 96 and not any(i.startswith("noise") for i in kept)
    shard_of = {i: s for s, t in tables.items() for i in t["image_id"].to_pylist()}
    nodes = set()
    for r in range(2):
        first, resumed = read(r, "first"), read(r, "resumed")
        assert first and resumed, "the worker group did not restart"
        for b in first + resumed:
            assert b["ids"] == expected[(r, b["epoch"], b["step"])], (r, b["epoch"], b["step"])
            assert {shard_of[i] for i in b["ids"]} <= set(plan.rank_shards[r])  # only its own shards
            assert b["shape"] == [BATCH, 3, 256, 128]
            nodes.add(b["node"])
        # the restart picks up at the last checkpoint before the death and runs to the end, every step once
        start = (resumed[0]["epoch"], resumed[0]["step"])
        assert (1, 0) <= start <= die_at
        got = [(b["epoch"], b["step"]) for b in resumed]
        assert got == [(e, s) for e in range(3) for s in range(epoch_steps[e]) if (e, s) >= start]
        # the steps the dead attempt had already taken are replayed with identical batches
        replayed = {(b["epoch"], b["step"]): b["ids"] for b in first if (b["epoch"], b["step"]) >= start}
        assert replayed and all(
            replayed[k] == next(b["ids"] for b in resumed if (b["epoch"], b["step"]) == k) for k in replayed
        )
    assert len(nodes) == 2  # the two workers ran on different nodes
    # epoch 0 (K = 1): no image on two workers, every kept image seen
    seen = [set(i for b in read(r, "first") if b["epoch"] == 0 for i in b["ids"]) for r in range(2)]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == kept
    # K = 2 epochs: identities of a batch come in pairs, and ranks still hold disjoint identities
    for r in range(2):
        for b in read(r, "resumed"):
            if b["epoch"] >= 1:
                pid = [i.split("-")[1] for i in b["ids"]]
                assert pid[0::2] == pid[1::2] and len(set(pid)) == BATCH // 2
    np.testing.assert_equal(sum(1 for b in read(0, "first") if b["epoch"] == 0), epoch_steps[0])

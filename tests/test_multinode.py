"""Losing a node in the middle of a stage on a multi-node Ray cluster (``ray.cluster_utils.Cluster``).

Stages write one Parquet file per unit from Ray tasks that Ray retries when their node dies; a unit's file is
written atomically and skipped when it exists. So a worker node removed while units are in flight must leave an
output identical, byte for byte, to an undisturbed run: checked on a stage-shaped probe (where the retries can be
counted) and on the ingest stage itself (Ray Data actor pool). The module shuts down the session's in-process Ray
instance first and leaves Ray down; later tests start it again through the ``ray_local`` fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cion_dist.storage.stage_io import StageOutput, read_table

pytestmark = [pytest.mark.slow, pytest.mark.integration]

UNITS = 12


def unit_table(unit: int) -> pa.Table:
    """A unit's rows: deterministic in the unit key alone, like a clip's crops or a video's labels."""
    rng = np.random.default_rng(1000 + unit)
    n = 40 + 3 * unit
    return pa.table(
        {
            "unit": pa.array(np.full(n, unit, dtype=np.int32)),
            "row": pa.array(np.arange(n, dtype=np.int32)),
            "value": pa.array(rng.standard_normal(n).astype(np.float32)),
        }
    )


def unit_key(unit: int) -> str:
    return f"clip-{unit:03d}"


def write_unit(out_uri: str, unit: int, markers: str, delay_s: float) -> dict:
    """Body of one stage task: skip a finished unit, else compute it and write it atomically."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    out = StageOutput(out_uri)
    if out.has_unit(unit_key(unit)):
        return {"unit": unit, "node": node, "skipped": True}
    Path(markers, f"start-{unit:03d}-{uuid.uuid4().hex[:8]}.json").write_text(json.dumps({"unit": unit, "node": node}))
    time.sleep(delay_s)
    out.write_unit(unit_key(unit), unit_table(unit))
    return {"unit": unit, "node": node, "skipped": False}


def run_stage(out_uri: str, markers: str, delay_s: float = 0.0, units=range(UNITS)) -> list:
    """Submit every unit as a retried task spread over the worker nodes; returns the refs."""
    import ray

    task = ray.remote(write_unit).options(
        max_retries=3, num_cpus=1, resources={"worker": 1}, scheduling_strategy="SPREAD"
    )
    return [task.remote(out_uri, u, markers, delay_s) for u in units]


def finalize(out_uri: str) -> dict:
    out = StageOutput(out_uri)
    return out.finalize(stage="multinode-probe", rows={"rows": out.read().num_rows})


def starts(markers: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(markers.glob("start-*.json"))]


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """Head (no CPUs: it only hosts the driver) + two worker nodes, each a separate raylet on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    # Cluster() records its address in $TMPDIR/ray/ray_current_cluster, where a plain ray.init() anywhere on this
    # machine would pick it up: give it a private TMPDIR (short: Ray's socket paths must stay under 107 bytes).
    old_tmpdir = os.environ.get("TMPDIR")
    tmpdir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    os.environ["TMPDIR"] = tmpdir
    # fast node-death detection (defaults take ~15 s of missed health checks)
    fast_failure = {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_timeout_ms": 500,
        "health_check_failure_threshold": 3,
    }
    c = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": fast_failure}
    )
    try:
        for _ in range(2):
            c.add_node(num_cpus=2, resources={"worker": 2})
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        # workers do not have tests/ on sys.path: ship this module's task functions by value
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


def test_node_loss_mid_stage_leaves_the_undisturbed_output(cluster, s3_bucket, tmp_path):
    import ray

    ref_markers, markers = tmp_path / "ref-markers", tmp_path / "markers"
    ref_markers.mkdir()
    markers.mkdir()

    # undisturbed run
    ref_uri = f"{s3_bucket}/ref/probe/run"
    ray.get(run_stage(ref_uri, str(ref_markers)))
    ref = finalize(ref_uri)

    # the same stage; one worker node is removed while some of its units are in flight
    uri = f"{s3_bucket}/disturbed/probe/run"
    victim = cluster.list_all_nodes()[1]
    victim_id = victim.node_id
    refs = run_stage(uri, str(markers), delay_s=1.5)
    deadline = time.monotonic() + 60
    while not any(s["node"] == victim_id for s in starts(markers)):
        assert time.monotonic() < deadline, "no unit ever started on the node to remove"
        time.sleep(0.05)
    cluster.remove_node(victim, allow_graceful=False)
    results = ray.get(refs, timeout=180)
    got = finalize(uri)

    # Ray re-ran the lost units elsewhere: units started on the victim (removed 1.5 s before any could finish
    # there) were completed by another node
    lost = {s["unit"] for s in starts(markers) if s["node"] == victim_id}
    completed_by = {r["unit"]: r["node"] for r in results}
    assert lost and all(completed_by[u] != victim_id for u in lost)
    assert sorted(completed_by) == list(range(UNITS))

    assert got["digest"] == ref["digest"]
    assert got["rows"] == ref["rows"] == {"rows": sum(unit_table(u).num_rows for u in range(UNITS))}
    out, want = StageOutput(uri), StageOutput(ref_uri)
    assert [f.rsplit("/", 1)[-1] for f in out.files()] == [f.rsplit("/", 1)[-1] for f in want.files()]
    assert (
        out.read()
        .sort_by([("unit", "ascending"), ("row", "ascending")])
        .equals(want.read().sort_by([("unit", "ascending"), ("row", "ascending")]))
    )


def test_rerun_after_lost_units_redoes_only_those(cluster, s3_bucket, tmp_path):
    import ray

    markers = tmp_path / "markers"
    markers.mkdir()
    uri = f"{s3_bucket}/resume/probe/run"
    ray.get(run_stage(uri, str(markers)))
    ref = finalize(uri)
    out = StageOutput(uri)
    fs, _ = out.storage.fs(uri)
    # a crash before _SUCCESS.json: three units never written, no success marker
    for u in (2, 5, 11):
        fs.rm(out.unit_uri(unit_key(u)).removeprefix("s3://"))
    fs.rm(out.success_uri.removeprefix("s3://"))
    before = len(starts(markers))
    results = ray.get(run_stage(uri, str(markers)))
    assert sorted(r["unit"] for r in results if not r["skipped"]) == [2, 5, 11]
    assert len(starts(markers)) - before == 3
    assert finalize(uri)["digest"] == ref["digest"]


# ---------------------------------------------------------------- the ingest stage itself


def _one_cpu_workers(cluster, n: int) -> None:
    """Exactly ``n`` worker nodes with one CPU each, so ``n`` one-CPU actors land one per node."""
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)
    for _ in range(n):
        cluster.add_node(num_cpus=1, resources={"worker": 1})
    cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    from cion_dist.config import job_from_dict
    from cion_dist.pipeline.runner import run_stage

    root = tmp_path_factory.mktemp("corpus")
    job = job_from_dict(
        {
            "stage": "synth",
            "output": str(root),
            "mlflow": {"enabled": False},
            "synth": {
                "identities": 4,
                "cameras": 2,
                "videos": 6,
                "frames": 60,
                "fps": 10,
                "width": 320,
                "height": 180,
                "people_per_video": 2,
                "benchmark_identities": 0,
            },
        }
    )
    return run_stage(job).summary["manifest_uri"]


def test_ingest_survives_losing_a_node_mid_stage(cluster, corpus, tmp_path):
    import pyarrow.parquet as pq

    from cion_dist.config import job_from_dict
    from cion_dist.ingest.clip import ingest_clip
    from cion_dist.ingest.manifest import resolve_clip_uri
    from cion_dist.pipeline.runner import run_stage
    from cion_dist.storage.fs import Storage

    _one_cpu_workers(cluster, 2)
    job = job_from_dict(
        {
            "stage": "ingest",
            "output": str(tmp_path / "runs"),
            "mlflow": {"enabled": False},
            "ingest": {"manifest": corpus, "concurrency": 2},
        }
    )
    result: dict = {}

    def drive() -> None:
        try:
            result["res"] = run_stage(job)
        except BaseException as e:  # noqa: BLE001 - reported by the assertions below
            result["error"] = e

    runner = threading.Thread(target=drive, daemon=True)
    runner.start()

    # Each worker node has room for one ingest actor, so once the first clip's part lands both nodes are
    # ingesting: kill one of them then.
    manifest = pq.read_table(corpus).to_pylist()
    deadline = time.monotonic() + 180

    def parts() -> list[Path]:
        return list((tmp_path / "runs" / "ingest").glob("*/part-*.parquet"))

    while not parts():
        assert runner.is_alive() and time.monotonic() < deadline, f"ingest never got going: {result}"
        time.sleep(0.05)
    victim = sorted(cluster.worker_nodes, key=lambda n: n.node_id)[0]
    done_at_kill = len(parts())
    cluster.remove_node(victim, allow_graceful=False)
    cluster.add_node(num_cpus=1, resources={"worker": 1})  # what an autoscaler does after losing a node
    runner.join(timeout=240)
    assert not runner.is_alive(), "ingest did not finish after the node loss"
    assert done_at_kill < len(manifest), "the node went away after the stage had finished: nothing was tested"
    assert "error" not in result, result.get("error")

    res = result["res"]
    assert res.rows["clips"] == len(manifest) and res.rows["errors"] == 0
    # each part equals the clip ingested alone, in this process, with no Ray and no failure
    out = StageOutput(res.uri)
    for row in manifest:
        want = ingest_clip(row["video_id"], resolve_clip_uri(row["uri"], corpus), job.ingest, Storage(), None).table
        assert _read_part(out, row["video_id"]).equals(want), row["video_id"]
    assert res.rows["crops"] == sum(_read_part(out, r["video_id"]).num_rows for r in manifest)


def _read_part(out: StageOutput, unit: str) -> pa.Table:
    return read_table(out.unit_uri(unit), out.storage)

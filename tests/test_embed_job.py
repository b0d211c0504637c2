"""The embed stage end to end on a local Ray instance: local files and loopback S3, reruns, resume, bad crops."""

from __future__ import annotations

import os

import numpy as np
import pytest
from embed_fixtures import ingest_table, mot17_crops, write_ingest

from cion_dist.config import job_from_dict
from cion_dist.embed.job import run
from cion_dist.embed.parts import embeddings_matrix
from cion_dist.embed.pool import ERRORS_SUBDIR
from cion_dist.embed.reader import read_embeddings
from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput

OSNET = "models/osnet_x0_25_msmt17.onnx"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crops(shared_data):
    return mot17_crops(shared_data, ids_per_seq=2, frames_per_id=2)


def make_job(output: str, **embed) -> object:
    mlflow = embed.pop("mlflow", {"enabled": False})
    return job_from_dict({"stage": "embed", "output": output, "mlflow": mlflow, "embed": embed})


@pytest.mark.slow
def test_run_onnx_local_with_mlflow_rerun_and_resume(ray_local, crops, shared_data, tmp_path):
    out_root = str(tmp_path / "out")
    ingest = write_ingest(out_root, crops)
    n_parts = len(ingest.files())
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = make_job(
        out_root,
        backbone="onnx",
        model=str(shared_data / OSNET),
        concurrency=2,
        batch_size=8,
        crops_per_unit=1,
        mlflow={"enabled": True, "tracking_uri": db, "experiment": "embed-test"},
    )

    res = run(job)
    assert not res.skipped and res.rows == {"embeddings": len(crops), "bad_images": 0}
    out = StageOutput(res.uri)
    assert res.uri.startswith(os.path.join(out_root, "embed", "embed-"))
    assert len(out.files()) == n_parts
    table = out.read()
    assert table.column_names == ["image_id", "tracklet_id", "video_id", "frame_index", "embedding"]
    assert sorted(table.column("image_id").to_pylist()) == sorted(ingest.read().column("image_id").to_pylist())
    feats = embeddings_matrix(table)
    assert feats.shape == (len(crops), 512)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # identities of the ingest rows (tracklet ids here are the MOT17 gt ids) come out separated
    pids = np.array(table.column("tracklet_id").to_pylist())
    sim = feats @ feats.T
    same = (pids[:, None] == pids[None]) & ~np.eye(len(pids), dtype=bool)
    assert sim[same].mean() - sim[pids[:, None] != pids[None]].mean() > 0.3

    rec = out.success()
    assert rec["stage"] == "embed" and rec["summary"]["embedding_dim"] == 512
    assert rec["summary"]["backbone"] == "onnx:osnet_x0_25_msmt17.onnx"
    assert rec["inputs"][0]["uri"] == ingest.uri and rec["inputs"][0]["digest"] == ingest.success()["digest"]

    import mlflow

    mlflow.set_tracking_uri(db)
    mrun = mlflow.get_run(res.mlflow_run_id)
    assert mrun.data.metrics["embeddings"] == len(crops)
    assert mrun.data.tags["cion.input.0.uri"] == ingest.uri
    assert mrun.data.params["embed.backbone"] == "onnx"

    # rerun: complete output, nothing recomputed or rewritten
    mtimes = {f: os.path.getmtime(f) for f in out.files()}
    again = run(job)
    assert again.skipped and again.uri == res.uri and again.rows == res.rows
    assert {f: os.path.getmtime(f) for f in out.files()} == mtimes

    # resume: an interrupted run (one part and _SUCCESS missing) embeds only the missing part
    lost = out.files()[1]
    os.remove(lost)
    os.remove(out.success_uri)
    resumed = run(job.model_copy(update={"mlflow": job.mlflow.model_copy(update={"enabled": False})}))
    assert not resumed.skipped and resumed.summary["units_embedded_now"] == 1
    assert resumed.rows == res.rows and os.path.exists(lost)
    assert all(os.path.getmtime(f) == t for f, t in mtimes.items() if f != lost)
    table2 = out.read()
    order = np.argsort(table2.column("image_id").to_pylist())
    np.testing.assert_allclose(
        embeddings_matrix(table2)[order], feats[np.argsort(table.column("image_id").to_pylist())], atol=1e-5
    )


def test_run_handcrafted_on_s3(ray_local, crops, s3_bucket):
    st = Storage()
    root = f"{s3_bucket}/cion"
    ingest = write_ingest(root, crops[:12], st)
    job = make_job(root, backbone="handcrafted", concurrency=2)
    res = run(job)
    assert res.uri.startswith(f"{root}/embed/embed-")
    out = StageOutput(res.uri, st)
    assert out.is_complete() and len(out.files()) == 1 < len(ingest.files())  # 12 crops: one unit, one part
    table = out.read()
    assert table.num_rows == 12 == res.rows["embeddings"]
    feats = embeddings_matrix(table)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert out.success()["summary"]["embedding_dim"] == feats.shape[1]
    assert run(job).skipped
    more_actors = run(make_job(root, backbone="handcrafted", concurrency=1, batch_size=7, num_cpus=0.5))
    assert more_actors.skipped and more_actors.uri == res.uri
    # another config is another run folder, and input=<ingest uri> picks that ingest run explicitly
    other = run(make_job(root, backbone="handcrafted", input=ingest.uri, handcrafted={"stripes": 4}))
    assert other.uri != res.uri and other.summary["embedding_dim"] != feats.shape[1]


def test_bad_jpeg_fails_with_image_id_or_is_recorded(ray_local, crops, tmp_path):
    bad = [dict(c) for c in crops[:6]]
    for c in bad:
        c["seq"] = "MOT17-bad"
    bad[3]["jpeg"] = b"\xff\xd8\xff\xe0 truncated"
    root = str(tmp_path / "out")
    ingest = write_ingest(root, bad)
    bad_id = ingest.read().column("image_id")[3].as_py()

    with pytest.raises(DataError, match=bad_id):
        run(make_job(root, backbone="handcrafted"))

    res = run(make_job(root, backbone="handcrafted", on_bad_image="skip"))
    assert res.rows == {"embeddings": 5, "bad_images": 1}
    out = StageOutput(res.uri)
    assert bad_id not in out.read().column("image_id").to_pylist()
    errors = out.read(ERRORS_SUBDIR)
    assert errors.column("image_id").to_pylist() == [bad_id]
    assert "decodable" in errors.column("reason")[0].as_py()


def test_missing_ingest_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="run the ingest stage first"):
        run(make_job(str(tmp_path / "nothing")))
    empty = StageOutput.create(str(tmp_path / "x"), "ingest", "r1")
    empty.write_unit("v", ingest_table([], "v"))
    with pytest.raises(DataError, match="not a complete ingest output"):
        run(make_job(str(tmp_path / "x"), input=empty.uri))


def test_bad_model_path_surfaces_from_the_actors(ray_local, crops, tmp_path):
    root = str(tmp_path / "out")
    write_ingest(root, crops[:3])
    missing = str(tmp_path / "no-such-model.onnx")
    with pytest.raises(DataError, match="no-such-model.onnx does not exist"):
        run(make_job(root, backbone="onnx", model=missing))


@pytest.mark.slow
def test_run_torch_backbone_from_registry_alias(ray_local, crops, tmp_path):
    from embed_fixtures import register_backbone, tiny_backbone_folder

    model = tiny_backbone_folder(tmp_path / "model")
    db = register_backbone(tmp_path, "embed-job-backbone", "candidate")
    root = str(tmp_path / "out")
    write_ingest(root, crops[:6])
    job = make_job(
        root,
        backbone="torch",
        weights="models:/embed-job-backbone@candidate",
        concurrency=1,
        mlflow={"enabled": False, "tracking_uri": db},
    )
    res = run(job)
    assert res.summary["backbone"] == "torch:resnet_tiny" and res.summary["embedding_dim"] == model.embed_dim
    keys, feats = read_embeddings(res.uri)
    assert keys.num_rows == 6 and feats.shape == (6, model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)

"""The correlate stage end to end on embeddings with known identities: local and S3 output, resume, MLflow."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from correlate_fixtures import make_corpus, write_embed_output, write_ground_truth

from cion_dist.config import job_from_dict
from cion_dist.correlate.job import run
from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage, join, read_json
from cion_dist.storage.stage_io import StageOutput


def _job(output, **correlate):
    return job_from_dict(
        {
            "stage": "correlate",
            "output": str(output),
            "mlflow": {"enabled": False},
            "correlate": {"num_shards": 2, "window_videos": 4, "stride_videos": 2, **correlate},
        }
    )


def test_correlate_beats_tracklets_and_writes_contract(tmp_path, ray_local, caplog):
    caplog.set_level("INFO", logger="cion_dist.correlate.job")
    corpus = make_corpus(seed=1)
    embed_uri = write_embed_output(str(tmp_path), corpus)
    gt = write_ground_truth(str(tmp_path / "gt.parquet"), corpus)
    res = run(_job(tmp_path, input=embed_uri, ground_truth=gt))

    out = StageOutput(res.uri)
    assert out.is_complete()
    t = out.read()
    assert set(t.column_names) >= {"image_id", "identity_id", "tracklet_id", "video_id", "removed_at", "reason"}
    assert t.num_rows == len(corpus.x)
    ident = t.column("identity_id").to_numpy()
    removed = t.column("removed_at").to_numpy()
    reasons = t.column("reason").to_pylist()
    assert ((ident >= 0) == (removed == 0)).all()
    assert all((r is None) == (i >= 0) for r, i in zip(reasons, ident))
    assert res.rows["identities"] == len(np.unique(ident[ident >= 0]))
    # every kept identity meets min_images
    assert np.bincount(ident[ident >= 0]).min() >= 4

    q = read_json(join(res.uri, "quality.json"))["methods"]
    assert q["cion"]["pairwise_f"] > q["tracklet"]["pairwise_f"] + 0.2
    assert q["cion"]["pairwise_f"] > q["finch"]["pairwise_f"]
    assert q["cion"]["pairwise_f"] >= q["dbscan"]["pairwise_f"] - 0.05
    assert "pair_F" in caplog.text  # the quality table is logged, not printed
    c = res.summary["counts"]
    assert c["images_in"] == len(corpus.x)
    assert c["level3"]["identities_out"] == res.rows["identities"]
    assert c["level2"]["identities_out"] >= c["level3"]["identities_out"]
    assert 0 < res.summary["radius"] <= res.summary["link_distance"] < 1.0
    audit = res.summary["merge_audit"]  # people seen in several videos: their weakest links, closest first
    rows = audit["closest_to_threshold"]
    assert audit["identities_multi_video"] >= 5 and rows
    assert all(0 < r["margin"] <= res.summary["link_distance"] and r["videos"] >= 2 for r in rows)
    assert [r["margin"] for r in rows] == sorted(r["margin"] for r in rows)
    assert {r["identity"] for r in rows if r["identity"] >= 0} <= set(ident[ident >= 0].tolist())

    # a rerun finds the completed output and does nothing
    again = run(_job(tmp_path, input=embed_uri, ground_truth=gt))
    assert again.skipped and again.uri == res.uri


def test_resume_reuses_written_units(tmp_path, ray_local):
    corpus = make_corpus(people=12, videos=6, people_per_video=4, seed=2)
    embed_uri = write_embed_output(str(tmp_path), corpus)
    first = run(_job(tmp_path, input=embed_uri))
    out = StageOutput(first.uri)
    before = out.read().sort_by("image_id")
    # simulate a crash after levels 1-2 and one window: drop the final parts, a window and _SUCCESS
    fs, path = out.storage.fs(out.uri)
    for f in out.files():
        fs.rm(f)
    windows = out.files("windows")
    fs.rm(windows[-1])
    fs.rm(out.success_uri)
    again = run(_job(tmp_path, input=embed_uri))
    assert not again.skipped
    assert again.summary["videos_resumed"] == 6
    assert again.summary["windows_resumed"] == len(windows) - 1
    after = StageOutput(again.uri).read().sort_by("image_id")
    assert after.column("identity_id").to_pylist() == before.column("identity_id").to_pylist()


def test_correlate_on_s3_with_mlflow(tmp_path, s3_bucket, ray_local, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder for a non-local output is the working dir
    corpus = make_corpus(people=10, videos=4, people_per_video=4, seed=3)
    output = join(s3_bucket, "cion-out")
    embed_uri = write_embed_output(output, corpus, storage=Storage())
    job = job_from_dict(
        {
            "stage": "correlate",
            "output": output,
            "mlflow": {"enabled": True, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
            "correlate": {
                "num_shards": 2,
                "window_videos": 2,
                "stride_videos": 1,
                "radius": 0.3,
                "link_distance": 0.45,
            },
        }
    )
    res = run(job)
    assert res.uri.startswith("s3://")
    t = StageOutput(res.uri).read()
    assert t.num_rows == len(corpus.x)
    assert res.summary["calibrated"] == [] and res.summary["radius"] == 0.3
    import mlflow

    run_info = mlflow.get_run(res.mlflow_run_id)
    assert run_info.data.params["radius"] == "0.3"
    assert run_info.data.metrics["images_in"] == len(corpus.x)
    assert run_info.data.tags["cion.input.0.uri"] == embed_uri
    assert run_info.data.tags["cion.output.uri"] == res.uri
    assert run_info.data.tags["cion.output.digest"] == StageOutput(res.uri).success()["digest"]


def test_bad_embeddings_name_the_row(tmp_path, ray_local):
    corpus = make_corpus(people=6, videos=2, people_per_video=3, seed=4)
    t = corpus.table()
    emb = t.column("embedding").to_pylist()
    emb[5] = emb[5][:-1]
    t = t.set_column(3, "embedding", pa.array(emb, pa.list_(pa.float32())))
    out = StageOutput.create(str(tmp_path), "embed", "bad")
    out.write_unit("all", t)
    out.finalize(stage="embed", rows={})
    with pytest.raises(DataError, match=r"row 5 \(image_id img000005\)"):
        run(_job(tmp_path, input=out.uri))
    with pytest.raises(DataError, match="no complete embed run"):
        os.makedirs(tmp_path / "other" / "embed" / "x")
        run(_job(tmp_path / "other"))


@pytest.mark.parametrize("mode", [{"whole_corpus": True}, {"index": "ivf", "ivf_nlist": 4, "mutual_knn": True}])
def test_whole_corpus_graph_and_ivf_modes(tmp_path, ray_local, mode):
    corpus = make_corpus(people=12, videos=6, people_per_video=4, seed=5)
    embed_uri = write_embed_output(str(tmp_path), corpus)
    gt = write_ground_truth(str(tmp_path / "gt.parquet"), corpus)
    res = run(_job(tmp_path, input=embed_uri, ground_truth=gt, baselines=["tracklet"], **mode))
    assert res.summary["windows"] == (1 if mode.get("whole_corpus") else 2)
    q = res.summary["quality"]
    assert set(q) == {"cion", "tracklet"}
    assert q["cion"]["pairwise_f"] > q["tracklet"]["pairwise_f"]


def test_ground_truth_without_identity_column_is_a_data_error(tmp_path, ray_local):
    corpus = make_corpus(people=6, videos=2, people_per_video=3, seed=6)
    embed_uri = write_embed_output(str(tmp_path), corpus)
    bad = str(tmp_path / "gt.parquet")
    from cion_dist.storage.stage_io import write_table_atomic

    write_table_atomic(bad, pa.table({"image_id": corpus.image_id.tolist()}))
    with pytest.raises(DataError, match="gt.parquet: ground truth needs columns image_id, identity_id"):
        run(_job(tmp_path, input=embed_uri, ground_truth=bad))


def test_videos_follow_manifest_order_source_then_start_time():
    from cion_dist.correlate.inputs import embeddings_from_table

    corpus = make_corpus(people=8, videos=4, people_per_video=2, seed=7)
    t = corpus.table()
    vid = np.asarray(t.column("video_id").to_pylist())
    source = {"v000": "camB", "v001": "camA", "v002": "camA", "v003": "camB"}
    start = {"v000": 5.0, "v001": 10.0, "v002": 9.0, "v003": 2.0}  # 10 after 9: numbers, not text
    t = t.append_column("source", pa.array([source[v] for v in vid]))
    t = t.append_column("start_time", pa.array([start[v] for v in vid]))
    data = embeddings_from_table(t.take(pa.array(np.random.default_rng(0).permutation(t.num_rows))), "mem")
    assert data.videos == ["v002", "v001", "v003", "v000"]
    assert (np.diff(data.video_rank) >= 0).all()
    plain = embeddings_from_table(corpus.table(), "mem")
    assert plain.videos == ["v000", "v001", "v002", "v003"]

"""The ingest stage end to end on loopback S3 and a local Ray instance: real video, real detectors."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pytest

from cion_dist.config import job_from_dict
from cion_dist.errors import DataError
from cion_dist.images import decode_image
from cion_dist.ingest.job import ERRORS_SUBDIR, run
from cion_dist.ingest.manifest import check_manifest, load_manifest
from cion_dist.ingest.tracking_eval import evaluate_ingest_tracking
from cion_dist.stage import run_id_config
from cion_dist.storage.fs import Storage, write_bytes_atomic
from cion_dist.storage.stage_io import StageOutput, read_table, write_table_atomic


def manifest_table(rows: list[tuple[str, str]]) -> pa.Table:
    return pa.table(
        {
            "video_id": [r[0] for r in rows],
            "uri": [r[1] for r in rows],
            "source": ["test"] * len(rows),
            "start_time": [float(i) for i in range(len(rows))],
        }
    )


def ingest_job(output: str, manifest: str, tmp_path=None, **ingest) -> object:
    mlflow = {"enabled": False}
    if tmp_path is not None:
        mlflow = {"enabled": True, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "ingest-test"}
    return job_from_dict(
        {"stage": "ingest", "output": output, "mlflow": mlflow, "ingest": {"manifest": manifest, **ingest}}
    )


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.sort_by([("image_id", "ascending")])


@pytest.fixture(scope="module")
def corpus(s3_endpoint):
    """A small synthetic corpus (4 clips of 80 frames) generated straight into a loopback S3 bucket."""
    import s3fs

    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus

    bucket = f"ingest-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(bucket)
    cfg = SynthConfig(
        out=f"s3://{bucket}/corpus",
        videos=4,
        frames=80,
        identities=8,
        people_per_video=4,
        benchmark_identities=0,
        seed=3,
    )
    info = generate_corpus(cfg, Storage())
    info["bucket"] = f"s3://{bucket}"
    return info


def test_manifest_problems_name_file_and_row(tmp_path):
    bad = tmp_path / "m.parquet"
    write_table_atomic(str(bad), pa.table({"video_id": ["a"]}))
    with pytest.raises(DataError, match=r"m.parquet lacks column 'uri'"):
        load_manifest(str(bad))
    write_table_atomic(str(bad), manifest_table([("a", "/x.mp4"), ("a", "/y.mp4")]))
    with pytest.raises(DataError, match=r"row 1: duplicate video_id 'a'"):
        load_manifest(str(bad))
    with pytest.raises(DataError, match="manifest not found"):
        load_manifest(str(tmp_path / "none.parquet"))
    write_table_atomic(str(bad), manifest_table([("a", "videos/a.mp4"), ("b", "s3://b/v.mp4")]))
    table, digest = load_manifest(str(bad))
    assert table.column("uri").to_pylist() == [str(tmp_path / "videos" / "a.mp4"), "s3://b/v.mp4"]
    assert len(digest) == 64
    # the driver's check (Arrow kernels, no rows kept) says the same things
    write_table_atomic(str(bad), manifest_table([("a", "/x.mp4"), ("b", "/z.mp4"), ("a", "/y.mp4")]))
    with pytest.raises(DataError, match=r"row 2: duplicate video_id 'a'"):
        check_manifest(str(bad))
    write_table_atomic(str(bad), manifest_table([("a", "/x.mp4"), ("", "/y.mp4")]))
    with pytest.raises(DataError, match=r"row 1: empty video_id or uri"):
        check_manifest(str(bad))
    write_table_atomic(str(bad), manifest_table([("a", "videos/a.mp4"), ("b", "s3://b/v.mp4")]))
    info = check_manifest(str(bad))
    assert info.rows == 2 and info.digest == digest and info.files == [str(bad)]
    # streamed in batches: rows are counted across batches and files
    folder = tmp_path / "manifest"
    write_table_atomic(str(folder / "a.parquet"), manifest_table([(f"v{i}", "/x.mp4") for i in range(5)]))
    write_table_atomic(str(folder / "b.parquet"), manifest_table([("w0", "/x.mp4"), ("v3", "/y.mp4")]))
    with pytest.raises(DataError, match=r"row 6: duplicate video_id 'v3'"):
        check_manifest(str(folder), batch_rows=2)
    write_table_atomic(str(folder / "b.parquet"), manifest_table([("w0", "/x.mp4"), ("w1", "")]))
    with pytest.raises(DataError, match=r"row 6: empty video_id or uri"):
        check_manifest(str(folder), batch_rows=2)
    write_table_atomic(str(folder / "b.parquet"), manifest_table([("w0", "/x.mp4"), ("w1", "/y.mp4")]))
    assert check_manifest(str(folder), batch_rows=2).rows == 7


def test_run_id_ignores_resources_but_not_outputs():
    a = ingest_job("/o", "/m").ingest
    b = a.model_copy(update={"concurrency": 7, "max_error_fraction": 0.9})
    b.detector = b.detector.model_copy(update={"num_gpus": 1, "threads": 4})
    assert run_id_config(a) == run_id_config(b)
    c = a.model_copy(update={"every_n": 2})
    assert run_id_config(a) != run_id_config(c)


@pytest.mark.slow
def test_vtest_with_yolox_from_s3(ray_local, s3_bucket, shared_data, tmp_path):
    """vtest.avi and the YOLOX model live in S3; ingest yields plausible upright-person tracklets."""
    st = Storage()
    write_bytes_atomic(f"{s3_bucket}/videos/vtest.avi", (shared_data / "videos" / "vtest.avi").read_bytes(), st)
    write_bytes_atomic(f"{s3_bucket}/models/yolox.onnx", (shared_data / "models" / "yolox_nano.onnx").read_bytes(), st)
    manifest = f"{s3_bucket}/manifest.parquet"
    write_table_atomic(manifest, manifest_table([("vtest", f"{s3_bucket}/videos/vtest.avi")]), st)
    job = ingest_job(
        f"{s3_bucket}/out",
        manifest,
        tmp_path,
        max_frames=120,
        concurrency=1,
        detector={"kind": "yolox", "model_uri": f"{s3_bucket}/models/yolox.onnx"},
    )
    res = run(job)
    assert res.uri.startswith(f"{s3_bucket}/out/ingest/ingest-")
    out = StageOutput(res.uri, st)
    assert out.is_complete()
    t = out.read()
    assert t.schema.names == [
        "image_id",
        "video_id",
        "tracklet_id",
        "frame_index",
        "timestamp_s",
        "bbox",
        "score",
        "jpeg",
    ]
    print(f"vtest yolox: {res.rows} {res.summary['frames_per_s']} frames/s")
    assert res.rows == {
        "crops": t.num_rows,
        "tracklets": len(set(t["tracklet_id"].to_pylist())),
        "clips": 1,
        "errors": 0,
    }
    assert res.summary["frames_decoded"] == 120
    assert len(set(t["image_id"].to_pylist())) == t.num_rows
    assert 4 <= res.rows["tracklets"] <= 25
    assert 300 <= res.rows["crops"] <= 120 * 9

    df = t.drop(["jpeg"]).to_pandas()
    assert all(tid.startswith("vtest/t") for tid in df.tracklet_id)
    np.testing.assert_allclose(df.timestamp_s, df.frame_index / 10.0)
    boxes = np.stack(df.bbox.to_numpy())
    aspect = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
    per_track = (
        df.assign(aspect=aspect)
        .groupby("tracklet_id")
        .agg(aspect=("aspect", "median"), n=("frame_index", "size"), span=("frame_index", lambda f: f.max() - f.min()))
    )
    assert per_track.aspect.between(1.5, 4.0).all(), per_track
    assert (per_track.n >= job.ingest.tracker.min_length).all()
    assert per_track.n.max() >= 60  # someone walks through most of the 12 s
    assert (per_track.n <= per_track.span + 1).all()  # one crop per tracklet and frame
    # crops are the boxes' pixels
    row = t.slice(0, 1).to_pylist()[0]
    crop = decode_image(row["jpeg"])
    x1, y1, x2, y2 = row["bbox"]
    assert abs(crop.shape[0] - (y2 - y1)) <= 2 and abs(crop.shape[1] - (x2 - x1)) <= 2

    import mlflow

    run_info = mlflow.get_run(res.mlflow_run_id)
    assert run_info.data.metrics["crops"] == t.num_rows
    assert run_info.data.tags["cion.input.0.uri"] == manifest
    assert out.success()["inputs"][0]["digest"] == load_manifest(manifest)[1]


@pytest.mark.slow
def test_synthetic_corpus_background_tracking_quality(ray_local, corpus):
    out_root = f"{corpus['bucket']}/out-q"
    res = run(ingest_job(out_root, corpus["manifest_uri"]))
    assert res.rows["clips"] == 4 and res.rows["errors"] == 0
    m = evaluate_ingest_tracking(res.uri, corpus["gt_uri"])
    print("synthetic corpus, background detector:", {k: v for k, v in m.items() if k != "per_video"})
    assert m["videos"] == 4
    assert m["idf1"] >= 0.8
    assert m["mota"] >= 0.7
    assert m["num_switches"] <= 8
    # the CLI command prints the same figures
    import json

    from typer.testing import CliRunner

    from cion_dist.cli import app

    cli = CliRunner().invoke(app, ["evaluate-tracking", res.uri, "--gt", corpus["gt_uri"]])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["idf1"] == pytest.approx(m["idf1"])


@pytest.mark.slow
def test_bad_clips_are_recorded_and_reruns_resume(ray_local, corpus):
    st = Storage()
    good = read_table(corpus["manifest_uri"], st).slice(0, 2)
    bucket = corpus["bucket"]
    write_bytes_atomic(f"{bucket}/bad/corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40, st)
    write_bytes_atomic(f"{bucket}/bad/empty.mp4", b"", st)
    rows = list(zip(good["video_id"].to_pylist(), good["uri"].to_pylist()))
    rows += [
        ("corrupt", f"{bucket}/bad/corrupt.mp4"),
        ("empty", f"{bucket}/bad/empty.mp4"),
        ("missing", f"{bucket}/bad/missing.mp4"),
    ]
    manifest = f"{bucket}/bad-manifest.parquet"
    write_table_atomic(manifest, manifest_table(rows), st)
    out_root = f"{bucket}/out-r"

    # 3 of 5 clips fail: more than allowed
    with pytest.raises(DataError, match=r"3 of 5 clips failed.*corrupt \(.*cannot decode"):
        run(ingest_job(out_root, manifest, max_error_fraction=0.5))
    # a laxer limit resumes in the same run folder: the good clips are not decoded again
    res = run(ingest_job(out_root, manifest, max_error_fraction=0.7))
    assert res.summary["clips_ingested_now"] == 0
    assert res.rows["errors"] == 3 and res.rows["clips"] == 5
    out = StageOutput(res.uri, st)
    errors = out.read(ERRORS_SUBDIR).to_pydict()
    assert errors["video_id"] == ["corrupt", "empty", "missing"]
    assert "cannot decode" in errors["reason"][0] and "empty" in errors["reason"][1]
    assert "not found" in errors["reason"][2] and errors["uri"][2].endswith("missing.mp4")
    first = sorted_rows(out.read())
    assert set(first["video_id"].to_pylist()) == set(good["video_id"].to_pylist())

    # a complete run is not redone
    again = run(ingest_job(out_root, manifest, max_error_fraction=0.7))
    assert again.skipped and again.uri == res.uri

    # lose one part and the success marker: only that clip is ingested again, with the same rows
    fs, path = st.fs(out.uri)
    fs.rm(path + "/_SUCCESS.json")
    lost = out.files()[0]
    fs.rm(st.fs(lost)[1])
    redo = run(ingest_job(out_root, manifest, max_error_fraction=0.7))
    assert redo.summary["clips_ingested_now"] == 1 and redo.uri == res.uri
    assert sorted_rows(out.read()).equals(first)
    assert redo.rows == res.rows

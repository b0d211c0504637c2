"""The synthetic corpus end to end: clips on loopback S3 and local disk, ground truth against pixels, benchmark."""

from __future__ import annotations

import io
from collections import defaultdict

import decord
import numpy as np
import pandas as pd
import pytest

from cion_dist.config.job import Job
from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage, exists, read_bytes
from cion_dist.synth.appearance import recorded_torso_colour
from cion_dist.synth.config import SynthConfig
from cion_dist.synth.generate import generate_corpus, plan_corpus
from cion_dist.synth.groundtruth import read_ground_truth, read_identities
from cion_dist.synth.market import CROP_H, CROP_W, parse_market_filename

TINY = dict(
    identities=6,
    cameras=2,
    videos=3,
    frames=40,
    width=320,
    height=192,
    people_per_video=3,
    benchmark_identities=4,
    benchmark_images_per_camera=3,
)


def tiny(out, **kw) -> SynthConfig:
    return SynthConfig(out=str(out), **{**TINY, **kw})


@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory):
    cfg = tiny(tmp_path_factory.mktemp("corpus") / "c")
    return cfg, generate_corpus(cfg, Storage())


def _frames(uri: str, storage: Storage) -> np.ndarray:
    vr = decord.VideoReader(io.BytesIO(read_bytes(uri, storage)))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def test_cli_corpus_on_loopback_s3(s3_bucket):
    from typer.testing import CliRunner

    from cion_dist.cli import app

    out = f"{s3_bucket}/corpus"
    res = CliRunner().invoke(
        app,
        [
            "synth",
            "--out",
            out,
            "--identities",
            "6",
            "--cameras",
            "2",
            "--videos",
            "3",
            "--frames",
            "24",
            "--benchmark-identities",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    st = Storage()
    manifest = pd.read_parquet(io.BytesIO(read_bytes(f"{out}/manifest.parquet", st)))
    assert list(manifest.columns) == ["video_id", "uri", "source", "start_time"]
    assert len(manifest) == 3 and set(manifest.source) == {"cam0", "cam1"}
    for row in manifest.itertuples():
        assert row.uri == f"{out}/videos/{row.video_id}.mp4"
        vr = decord.VideoReader(io.BytesIO(read_bytes(row.uri, st)))
        assert len(vr) == 24
        assert vr[0].shape == (360, 640, 3)
    # clips of one camera follow each other in time
    cam0 = manifest[manifest.source == "cam0"].sort_values("start_time")
    assert np.allclose(np.diff(cam0.start_time.to_numpy()), 24 / 10)
    gt = read_ground_truth(out, st)
    assert set(gt.video_id) == set(manifest.video_id)
    assert ((gt.x1 >= 0) & (gt.y1 >= 0) & (gt.x2 <= 640) & (gt.y2 <= 360) & (gt.x2 > gt.x1)).all()
    assert gt.visibility.between(0, 1).all() and (gt.visibility < 1).any()
    # the MOTChallenge files say the same as the Parquet table
    vid = manifest.video_id[0]
    mot = np.loadtxt(io.BytesIO(read_bytes(f"{out}/gt/{vid}.txt", st)), delimiter=",", ndmin=2)
    g = gt[gt.video_id == vid].sort_values(["frame_index", "identity_id"])
    assert np.array_equal(mot[:, 0], g.frame_index.to_numpy() + 1)
    assert np.array_equal(mot[:, 1], g.identity_id.to_numpy())
    assert np.allclose(mot[:, 4], (g.x2 - g.x1).to_numpy()) and np.allclose(mot[:, 8], g.visibility, atol=1e-4)
    assert exists(f"{out}/_SUCCESS.json", st)
    again = generate_corpus(
        SynthConfig(out=out, identities=6, cameras=2, videos=3, frames=24, benchmark_identities=2), st
    )
    assert again["skipped"] and again["gt_boxes"] == len(gt)


def test_torso_pixels_match_ground_truth_and_identity_colour(local_corpus):
    cfg, info = local_corpus
    st = Storage()
    plan = plan_corpus(cfg)
    people = {p.identity_id: p for p in plan.people}
    gt = read_ground_truth(info["out"], st)
    manifest = pd.read_parquet(info["manifest_uri"])
    measured: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
    errors = []
    for clip in plan.clips:
        frames = _frames(manifest.set_index("video_id").uri[clip.video_id], st)
        assert frames.shape == (cfg.frames, cfg.height, cfg.width, 3)
        g = gt[(gt.video_id == clip.video_id) & (gt.visibility >= 0.999) & (gt.y2 - gt.y1 >= 40)]
        for r in g.itertuples():
            h, w = r.y2 - r.y1, r.x2 - r.x1
            crop = frames[
                r.frame_index, int(r.y1 + 0.24 * h) : int(r.y1 + 0.46 * h), int(r.x1 + 0.36 * w) : int(r.x1 + 0.64 * w)
            ]
            mean = crop.reshape(-1, 3).mean(axis=0)
            errors.append(np.abs(mean - recorded_torso_colour(people[r.identity_id], clip.camera)).max())
            measured[(r.identity_id, clip.camera.index)].append(mean)
    assert len(errors) > 50
    assert np.median(errors) < 12 and np.percentile(errors, 90) < 25
    # different identities seen by one camera look different where their outfits differ
    means = {k: np.mean(v, axis=0) for k, v in measured.items()}
    compared = 0
    for (a, ca), ma in means.items():
        for (b, cb), mb in means.items():
            if a < b and ca == cb:
                cam = plan.cameras[ca]
                want = np.abs(recorded_torso_colour(people[a], cam) - recorded_torso_colour(people[b], cam)).max()
                if want > 60:
                    assert np.abs(ma - mb).max() > 0.5 * want
                    compared += 1
    assert compared >= 2


def test_same_seed_same_corpus_other_seed_other(tmp_path, local_corpus):
    cfg, info = local_corpus
    same = generate_corpus(tiny(tmp_path / "same"), Storage())
    other = generate_corpus(tiny(tmp_path / "other", seed=1), Storage())
    st = Storage()
    assert read_bytes(same["gt_uri"], st) == read_bytes(info["gt_uri"], st)
    vid = "cam1-0000.mp4"
    assert np.array_equal(_frames(f"{same['out']}/videos/{vid}", st), _frames(f"{info['out']}/videos/{vid}", st))
    assert not read_ground_truth(other["out"]).equals(read_ground_truth(info["out"]))
    assert not np.array_equal(_frames(f"{other['out']}/videos/{vid}", st), _frames(f"{info['out']}/videos/{vid}", st))


def test_market_benchmark_layout_and_held_out_ids(local_corpus):
    import cv2

    cfg, info = local_corpus
    fs, root = Storage().fs(info["market_uri"])
    names = {
        split: [p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/{split}")]
        for split in ("bounding_box_train", "bounding_box_test", "query")
    }
    parsed = {s: [parse_market_filename(n) for n in ns] for s, ns in names.items()}
    train = {p[0] for p in parsed["bounding_box_train"]}
    query = {p[0] for p in parsed["query"]}
    gallery = {p[0] for p in parsed["bounding_box_test"]}
    video_ids = set(read_ground_truth(info["out"]).identity_id)
    assert len(train) == len(query) == cfg.benchmark_identities // 2
    assert not (train | query) & video_ids and not train & query
    assert {0, -1} <= gallery and gallery - {0, -1} == query
    # one query per (test identity, camera); the gallery holds the other crops of every camera
    assert sorted((p[0], p[1]) for p in parsed["query"]) == sorted(
        {(q, c + 1) for q in query for c in range(cfg.cameras)}
    )
    per_id = [p for p in parsed["bounding_box_test"] if p[0] > 0]
    assert len(per_id) == len(query) * cfg.cameras * (cfg.benchmark_images_per_camera - 1)
    assert len(set(names["bounding_box_test"])) == len(names["bounding_box_test"])
    img = cv2.imdecode(np.frombuffer(fs.cat(f"{root}/query/{names['query'][0]}"), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (CROP_H, CROP_W, 3)
    ident = read_identities(info["out"])
    assert set(ident[ident.held_out].identity_id) == train | query
    assert set(ident[~ident.held_out].identity_id) == video_ids


def test_stage_run_local_resumes_and_refuses_other_settings(tmp_path):
    from cion_dist.synth.job import run

    job = Job(stage="synth", output=str(tmp_path / "out"), synth=SynthConfig(**{**TINY, "videos": 2, "frames": 16}))
    first = run(job)
    assert first.uri == str(tmp_path / "out" / "corpus") and not first.skipped
    assert first.rows["videos"] == 2 and first.rows["frames"] == 32
    assert pd.read_parquet(first.summary["manifest_uri"]).shape == (2, 4)
    second = run(job)
    assert second.skipped and second.rows == first.rows
    changed = job.model_copy(update={"synth": SynthConfig(**{**TINY, "videos": 2, "frames": 16, "seed": 3})})
    with pytest.raises(DataError, match="seed"):
        run(changed)


def test_partial_corpus_is_completed_without_redoing_clips(tmp_path):
    cfg = tiny(tmp_path / "c", videos=2, frames=16, benchmark_identities=0)
    first = generate_corpus(cfg, Storage())
    assert first["market_uri"] == ""
    video = tmp_path / "c" / "videos" / "cam0-0000.mp4"
    stamp = video.stat().st_mtime_ns
    (tmp_path / "c" / "_SUCCESS.json").unlink()
    (tmp_path / "c" / "gt" / "gt.parquet").unlink()
    (tmp_path / "c" / "videos" / "cam1-0000.mp4").unlink()
    again = generate_corpus(cfg, Storage())
    assert not again["skipped"] and video.stat().st_mtime_ns == stamp
    assert (tmp_path / "c" / "videos" / "cam1-0000.mp4").exists()
    assert read_bytes(again["gt_uri"]) and again["gt_boxes"] == first["gt_boxes"]


def test_bad_ground_truth_location_names_the_uri(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        read_ground_truth(str(tmp_path))


def test_detections_get_the_identity_of_the_box_they_overlap(local_corpus, tmp_path):
    import pyarrow as pa

    from cion_dist.storage.stage_io import StageOutput
    from cion_dist.synth.groundtruth import crop_identities, label_boxes

    _, info = local_corpus
    gt = read_ground_truth(info["out"])
    det = gt[gt.visibility > 0.5].reset_index(drop=True).copy()
    rng = np.random.default_rng(0)
    h = (det.y2 - det.y1).to_numpy()
    for c in ("x1", "x2", "y1", "y2"):
        det[c] = det[c] + rng.uniform(-0.05, 0.05, len(det)) * h  # detector-like jitter
    far = det.iloc[:5].copy()
    far[["x1", "x2"]] += 1000.0  # nothing there
    twice = det.iloc[:1].copy()  # a second box on a person already matched
    twice[["x1", "x2"]] += 0.2 * h[0]
    boxes = pd.concat([det, far, twice], ignore_index=True)
    labels = label_boxes(boxes, gt, min_iou=0.5)
    assert np.array_equal(labels[: len(det)], det.identity_id.to_numpy())
    assert (labels[len(det) :] == -1).all()
    # the same from a stored ingest-style run (image_id, video_id, frame_index, bbox)
    run = StageOutput(str(tmp_path / "ingest"), Storage())
    run.write_unit(
        "all",
        pa.table(
            {
                "image_id": [f"img{i}" for i in range(len(boxes))],
                "video_id": boxes.video_id.tolist(),
                "frame_index": pa.array(boxes.frame_index.to_numpy(), pa.int32()),
                "bbox": pa.array(
                    boxes[["x1", "y1", "x2", "y2"]].to_numpy(np.float32).tolist(), pa.list_(pa.float32(), 4)
                ),
            }
        ),
    )
    table = crop_identities(run.uri, info["gt_uri"])
    assert table.num_rows == len(det)
    assert table.column("identity_id").to_pylist() == det.identity_id.tolist()

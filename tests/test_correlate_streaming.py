"""The correlate stage reads vectors inside its tasks: its output must equal the single-process reference, for
any part layout and for float16 embeddings, and its video order must follow the manifest through the lineage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from correlate_fixtures import make_corpus

from cion_dist.config import job_from_dict
from cion_dist.correlate.catalog import scan_embeddings
from cion_dist.correlate.denoise import REASONS
from cion_dist.correlate.job import run
from cion_dist.correlate.reference import correlate_in_process
from cion_dist.correlate.switches import SwitchSplit
from cion_dist.storage.stage_io import StageOutput, write_table_atomic


def _write(output: str, table: pa.Table, layout: str, run_id: str, inputs=()) -> StageOutput:
    out = StageOutput.create(output, "embed", run_id)
    if layout == "per_video":
        vids = np.asarray(table.column("video_id").to_pylist())
        for v in np.unique(vids):
            out.write_unit(v, table.take(pa.array(np.flatnonzero(vids == v))))
    elif layout == "one_part":
        out.write_unit("all", table)
    else:  # rows of every video spread over three parts
        for i in range(3):
            out.write_unit(
                f"chunk{i}",
                table.slice(i * table.num_rows // 3, (i + 1) * table.num_rows // 3 - i * table.num_rows // 3),
            )
    out.finalize(stage="embed", rows={"images": table.num_rows}, inputs=list(inputs))
    return out


@pytest.mark.parametrize("layout,dtype", [("per_video", "float32"), ("one_part", "float16"), ("striped", "float32")])
def test_stage_equals_single_process_reference(tmp_path, ray_local, layout, dtype):
    # looks shift between cameras: level 3 merges across videos and its radius re-check has images to drop
    c = make_corpus(people=14, videos=7, people_per_video=4, seed=11, camera_shift=0.8, spread=0.6)
    table = c.table()
    if dtype == "float16":
        x16 = c.x.astype(np.float16)
        table = table.set_column(3, "embedding", pa.array(list(x16), pa.list_(pa.float16())))
    out = _write(str(tmp_path), table, layout, f"e-{layout}")
    r, d = 0.3, 0.8
    job = job_from_dict(
        {
            "stage": "correlate",
            "output": str(tmp_path),
            "mlflow": {"enabled": False},
            "correlate": {
                "input": out.uri,
                "radius": r,
                "link_distance": d,
                "window_videos": 4,
                "stride_videos": 2,
                "num_shards": 2,
                "videos_per_task": 2,
            },
        }
    )
    res = run(job)
    got = StageOutput(res.uri).read().sort_by("image_id")

    x = c.x.astype(np.float16).astype(np.float32) if dtype == "float16" else c.x
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = correlate_in_process(x, c.video, c.tracklet, r, d, window=4, stride=2)
    order = np.argsort(c.image_id)
    assert got.column("image_id").to_pylist() == c.image_id[order].tolist()
    # identities are numbered by first image in corpus order in both
    assert got.column("identity_id").to_numpy().tolist() == ref.identity[order].tolist()
    assert res.rows["identities"] == ref.n_identities > 0
    assert res.summary["counts"]["reasons"].get("identity_radius", 0) == int((ref.reason == 4).sum()) > 0
    assert res.summary["counts"]["level3"]["images_removed"] == int(np.isin(ref.reason, (4, 5)).sum())
    assert got.column("reason").to_pylist() == [
        name or None for name in np.array(REASONS, dtype=object)[ref.reason[order]]
    ]
    assert res.summary["video_order"] == "video_id"


def test_video_order_comes_from_the_manifest_through_lineage(tmp_path):
    c = make_corpus(people=8, videos=4, people_per_video=2, seed=7)
    manifest = str(tmp_path / "manifest.parquet")
    write_table_atomic(
        manifest,
        pa.table(
            {
                "video_id": ["v000", "v001", "v002", "v003"],
                "uri": ["a", "b", "c", "d"],
                "source": ["camB", "camA", "camA", "camB"],
                "start_time": [5.0, 10.0, 9.0, 2.0],
            }
        ),
    )
    ingest = StageOutput.create(str(tmp_path), "ingest", "i1")
    ingest.finalize(stage="ingest", rows={}, inputs=[{"uri": manifest, "stage": "manifest", "digest": "x"}])
    out = _write(str(tmp_path), c.table(), "per_video", "e1", inputs=[{"uri": ingest.uri, "stage": "ingest"}])
    cat = scan_embeddings(out)
    assert cat.videos.tolist() == ["v002", "v001", "v003", "v000"]
    assert cat.order_source == "manifest"
    assert cat.images.tolist() == [int((c.video == v).sum()) for v in cat.videos]
    assert cat.tracklets.tolist() == [len(np.unique(c.tracklet[c.video == v])) for v in cat.videos]
    assert cat.bounds[-1] == len(c.x) and cat.video_rank().tolist() == np.repeat(np.arange(4), cat.images).tolist()

    # without a reachable manifest, the video id decides
    plain = _write(str(tmp_path), c.table(), "per_video", "e2")
    assert scan_embeddings(plain).videos.tolist() == ["v000", "v001", "v002", "v003"]


def test_stage_equals_reference_with_switch_splitting(tmp_path, ray_local):
    """With frame indices, level 1 cuts tracklets where the tracker switched people (make_corpus's mixes land
    after the tracklet's own images in frame order); the stage and the reference cut the same way."""
    c = make_corpus(people=14, videos=6, people_per_video=4, seed=5, mix_prob=0.6, images=16)
    frame = np.zeros(len(c.x), np.int64)
    for v in np.unique(c.video):
        rows = np.flatnonzero(c.video == v)
        frame[rows] = np.arange(len(rows))  # rows of a video in time order
    table = c.table().append_column("frame_index", pa.array(frame, pa.int64()))
    out = _write(str(tmp_path), table, "per_video", "e-split")
    r, d = 0.3, 0.5
    job = job_from_dict(
        {
            "stage": "correlate",
            "output": str(tmp_path),
            "mlflow": {"enabled": False},
            "correlate": {
                "input": out.uri,
                "radius": r,
                "link_distance": d,
                "window_videos": 4,
                "stride_videos": 2,
                "num_shards": 1,
                "videos_per_task": 2,
            },
        }
    )
    res = run(job)
    got = StageOutput(res.uri).read().sort_by("image_id")
    ref = correlate_in_process(c.x, c.video, c.tracklet, r, d, window=4, stride=2, frame=frame)
    order = np.argsort(c.image_id)
    assert got.column("identity_id").to_numpy().tolist() == ref.identity[order].tolist()
    # the stage's tasks cut exactly where level 1 run video by video cuts
    from cion_dist.correlate.denoise import denoise_video

    expected = sum(
        len(denoise_video(c.x[c.video == v], c.tracklet[c.video == v], r, d, 2, frame[c.video == v]).cuts)
        for v in np.unique(c.video)
    )
    assert res.summary["switch_cuts"] == expected > 0
    off = denoise_video(
        c.x[c.video == "v000"],
        c.tracklet[c.video == "v000"],
        r,
        d,
        2,
        frame[c.video == "v000"],
        split=SwitchSplit(enabled=False),
    )
    assert off.cuts == []


def test_select_and_concat_keep_each_images_video_position():
    from cion_dist.correlate.catalog import concat, select
    from cion_dist.correlate.inputs import embeddings_from_table

    data = embeddings_from_table(make_corpus(people=6, videos=3, people_per_video=2, seed=3).table(), "corpus")
    pieces = [select(data, np.flatnonzero(data.video_id == v)) for v in data.videos[::-1]]
    assert [p.video_rank.tolist() for p in pieces] == [[0] * len(p) for p in pieces]
    joined = concat(pieces)
    assert joined.videos == data.videos[::-1]
    assert [joined.videos[r] for r in joined.video_rank] == joined.video_id.tolist()
    assert np.diff(joined.video_rank).min() >= 0 and joined.video_rank.max() == 2

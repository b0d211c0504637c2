"""``cion manifest``: probe a folder or an s3:// prefix of videos in Ray tasks, derive source / start time,
cut segments, record unreadable files; the manifest then feeds ingest, which decodes only each segment."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cion_dist.config import job_from_dict
from cion_dist.errors import ConfigError, DataError
from cion_dist.ingest.manifest import load_manifest
from cion_dist.ingest.manifest_builder import (
    ManifestSpec,
    build_manifest,
    epoch_seconds,
    errors_uri,
    manifest_rows,
    segments,
    source_for,
    video_id_for,
)
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, read_table

T0 = 1772366400.0  # 2026-03-01 12:00:00 UTC


def test_names_times_and_segments():
    assert video_id_for("camA/2026 03 01.mp4") == "camA_2026_03_01"
    assert source_for("camA/x.mp4", None) == "camA" and source_for("x.mp4", None) == ""
    assert source_for("site3/cam-07/x.mp4", r"cam-(?P<source>\d+)") == "07"
    with pytest.raises(DataError, match="does not match"):
        source_for("x.mp4", r"cam-(?P<source>\d+)")
    assert epoch_seconds("20260301_120000", "%Y%m%d_%H%M%S") == T0
    assert epoch_seconds("2026-03-01T12:00:00.000000Z") == T0
    assert epoch_seconds("2026-03-01T13:00:00+01:00") == T0
    assert segments(8.0, 3.0) == [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0)]
    assert segments(6.0, 3.0) == [(0.0, 3.0), (3.0, 6.0)]
    assert segments(5.0, None) == [(None, None)]
    with pytest.raises(ConfigError, match="time_format"):
        ManifestSpec(root="r", out="o", time_pattern=r"(?P<time>\d+)")
    with pytest.raises(ConfigError, match="no \\(\\?P<source>"):
        ManifestSpec(root="r", out="o", source_pattern=r"cam(\d+)")


def test_rows_from_probes_are_pure():
    spec = ManifestSpec(
        root="/v", out="/m.parquet", time_pattern=r"(?P<time>\d{8}_\d{6})", time_format="%Y%m%d_%H%M%S", segment_s=4.0
    )
    probe = {
        "duration_s": 6.0,
        "fps": 10.0,
        "frames": 60,
        "width": 64,
        "height": 48,
        "codec": "h264",
        "size_bytes": 1000,
        "creation_time": None,
    }
    rows, errors = manifest_rows(
        spec,
        [
            {"uri": "/v/camA/20260301_120000.mp4", "probe": probe},
            {"uri": "/v/camB/clip.mp4", "probe": {**probe, "creation_time": "2026-03-01T12:00:00Z"}},
            {"uri": "/v/camB/junk.mp4", "error": "/v/camB/junk.mp4: cannot read video container"},
        ],
    )
    assert [r["video_id"] for r in rows] == [
        "camA_20260301_120000-s0000",
        "camA_20260301_120000-s0001",
        "camB_clip-s0000",
        "camB_clip-s0001",
    ]
    assert [(r["start_s"], r["end_s"]) for r in rows[:2]] == [(0.0, 4.0), (4.0, 6.0)]
    assert [r["start_time"] for r in rows] == [T0, T0 + 4, T0, T0 + 4]
    assert [r["source"] for r in rows] == ["camA", "camA", "camB", "camB"]
    assert errors == [
        {"video_id": "camB_junk", "uri": "/v/camB/junk.mp4", "reason": "/v/camB/junk.mp4: cannot read video container"}
    ]


def _video_with_creation_time(path: Path, frames: int = 30, fps: int = 10) -> None:
    import av

    with av.open(str(path), "w") as c:
        c.metadata["creation_time"] = "2026-03-01T12:00:00.000000Z"
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for k in range(frames):
            img = np.zeros((64, 96, 3), np.uint8)
            img[10:50, 2 * k : 2 * k + 16] = 200
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two synthetic 8 s street clips (10 fps) and a small clip with a creation_time tag, plus a broken file."""
    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus

    tmp = tmp_path_factory.mktemp("footage")
    generate_corpus(
        SynthConfig(
            out=str(tmp / "c"), videos=2, frames=80, identities=4, people_per_video=3, benchmark_identities=0, seed=5
        ),
        Storage(),
    )
    root = tmp / "videos"
    (root / "camA").mkdir(parents=True)
    (root / "camB").mkdir()
    src = sorted((tmp / "c" / "videos").glob("*.mp4"))
    shutil.copy(src[0], root / "camA" / "20260301_120000.mp4")
    shutil.copy(src[1], root / "camB" / "20260301_130000.mp4")
    _video_with_creation_time(root / "camB" / "tagged.mp4")
    (root / "camB" / "broken.mp4").write_bytes(b"\x00 not a video" * 50)
    (root / "camB" / "notes.txt").write_text("not a video")
    return root


SPEC = dict(time_pattern=r"(?P<time>\d{8}_\d{6})", time_format="%Y%m%d_%H%M%S", segment_s=3.0, files_per_task=2)


def _check_manifest(uri: str, root: str, storage: Storage) -> None:
    table, _ = load_manifest(uri, storage)
    rows = table.to_pylist()
    ids = [r["video_id"] for r in rows]
    assert ids == [
        "camA_20260301_120000-s0000",
        "camA_20260301_120000-s0001",
        "camA_20260301_120000-s0002",
        "camB_20260301_130000-s0000",
        "camB_20260301_130000-s0001",
        "camB_20260301_130000-s0002",
        "camB_tagged-s0000",
    ]
    a = rows[0]
    assert (a["fps"], a["frames"], a["width"], a["height"]) == (10.0, 80, 640, 360)
    assert a["duration_s"] == pytest.approx(8.0, abs=0.15) and a["codec"] in ("h264", "mpeg4")
    assert [(r["start_s"], r["end_s"]) for r in rows[:3]] == [
        (0.0, 3.0),
        (3.0, 6.0),
        (6.0, pytest.approx(8.0, abs=0.15)),
    ]
    assert [r["start_time"] for r in rows[:4]] == [T0, T0 + 3, T0 + 6, T0 + 3600]
    assert rows[6]["start_time"] == T0 and rows[6]["codec"] == "mpeg4"  # from the container's creation_time
    assert {r["source"] for r in rows} == {"camA", "camB"}
    errors = read_table(errors_uri(uri), storage).to_pylist()
    assert len(errors) == 1 and errors[0]["video_id"] == "camB_broken" and "broken.mp4" in errors[0]["reason"]


def _ingest_segments(manifest_uri: str, output: str) -> None:
    from cion_dist.ingest.job import run

    job = job_from_dict(
        {
            "stage": "ingest",
            "output": output,
            "mlflow": {"enabled": False},
            "ingest": {"manifest": manifest_uri, "concurrency": 2},
        }
    )
    res = run(job)
    table = StageOutput(res.uri).read()
    vids = np.asarray(table.column("video_id").to_pylist())
    frames = table.column("frame_index").to_numpy()
    assert res.rows["errors"] == 0 and res.summary["clips"] == 7
    for k, (lo, hi) in enumerate([(0, 30), (30, 60), (60, 80)]):
        sel = vids == f"camA_20260301_120000-s{k:04d}"
        assert sel.sum() > 0, f"segment {k} has no crops"
        assert frames[sel].min() >= lo and frames[sel].max() < hi  # only the segment's frames were decoded
    assert res.summary["gate_considered"] >= res.summary["gate_kept"] > 0


def test_manifest_from_a_folder_feeds_ingest(clips, tmp_path, ray_local):
    out = str(tmp_path / "manifest.parquet")
    info = build_manifest(ManifestSpec(root=str(clips), out=out, **SPEC))
    assert (info["files"], info["clips"], info["errors"], info["sources"]) == (4, 7, 1, 2)
    _check_manifest(out, str(clips), Storage())
    _ingest_segments(out, str(tmp_path / "out"))


def test_manifest_from_loopback_s3_feeds_ingest(clips, s3_bucket, tmp_path, ray_local):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(clips), f"{s3_bucket}/footage", recursive=True)
    out = f"{s3_bucket}/manifests/m.parquet"
    st = Storage()
    info = build_manifest(ManifestSpec(root=f"{s3_bucket}/footage", out=out, **SPEC), st)
    assert (info["files"], info["clips"], info["errors"]) == (4, 7, 1)
    _check_manifest(out, f"{s3_bucket}/footage", st)
    table, _ = load_manifest(out, st)
    assert all(u.startswith(f"{s3_bucket}/footage/") for u in table.column("uri").to_pylist())
    _ingest_segments(out, str(tmp_path / "out"))


def test_cli_manifest_on_an_empty_folder_names_it(tmp_path):
    from typer.testing import CliRunner

    from cion_dist.cli import app

    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["manifest", str(tmp_path / "empty"), "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code != 0 and "holds no video files" in str(res.exception)

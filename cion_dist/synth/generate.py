"""Write a synthetic person-video corpus: clips, manifest, ground truth and a held-out re-ID benchmark.

Layout under ``cfg.out`` (local folder or s3://)::

    videos/<video_id>.mp4        clips (H.264, yuv420p)
    manifest.parquet             video_id, uri, source, start_time   (what the ingest stage reads)
    gt/gt.parquet                video_id, frame_index, identity_id, x1, y1, x2, y2, visibility
    gt/<video_id>.txt            the same per clip in MOTChallenge format (1-based frames)
    gt/identities.parquet        each identity's outfit (and whether it is held out for the benchmark)
    market/{bounding_box_train,bounding_box_test,query}/*.jpg
    _SUCCESS.json                written last: counts, seed, config

Ground truth lives apart from the manifest, so no stage can read it by accident. Every random draw comes from a
``numpy`` generator seeded by ``(cfg.seed, purpose[, index])``, so the same seed gives the same ground truth and
the same decoded frames, and changing one part of the config does not reshuffle unrelated parts. A rerun skips
clips whose video and ground-truth files exist and does nothing once ``_SUCCESS.json`` exists.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cion_dist.errors import ConfigError, DataError
from cion_dist.storage.fs import Storage, is_s3, join, read_bytes, write_bytes_atomic
from cion_dist.storage.stage_io import StageOutput, dumps_config, write_table_atomic
from cion_dist.synth.appearance import Appearance, Camera, sample_appearances, sample_cameras
from cion_dist.synth.clip import BoxRecord, render_clip
from cion_dist.synth.config import SynthConfig
from cion_dist.synth.encode import Mp4Writer, video_codec
from cion_dist.synth.market import BenchmarkStyle, benchmark_files
from cion_dist.synth.render import SensorNoise, SpriteBank, camera_background, lit_background
from cion_dist.synth.scenario import Walk, assign_identities, plan_walks

log = logging.getLogger(__name__)

GT_COLUMNS = ("video_id", "frame_index", "identity_id", "x1", "y1", "x2", "y2", "visibility")


def _rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, *purpose])


@dataclass(frozen=True)
class ClipPlan:
    index: int
    video_id: str
    camera: Camera
    start_time: float
    identities: list[int]
    walks: list[Walk]


@dataclass(frozen=True)
class CorpusPlan:
    cameras: list[Camera]
    people: list[Appearance]
    held_out: list[Appearance]
    clips: list[ClipPlan]


def plan_corpus(cfg: SynthConfig) -> CorpusPlan:
    """Everything random about the corpus except pixel noise, decided up front from the seed."""
    look = dict(
        hard_negative_fraction=cfg.look_alike_fraction, texture_look_alikes=cfg.texture_look_alikes, details=cfg.details
    )
    people = sample_appearances(cfg.identities, _rng(cfg.seed, 1), first_id=1, **look)
    held_out = sample_appearances(cfg.benchmark_identities, _rng(cfg.seed, 7), first_id=cfg.identities + 1, **look)
    cameras = sample_cameras(cfg.cameras, _rng(cfg.seed, 2))
    clip_cams = [i % cfg.cameras for i in range(cfg.videos)]
    cast = assign_identities([p.identity_id for p in people], clip_cams, cfg.people_per_video, _rng(cfg.seed, 4))
    duration = cfg.frames / cfg.fps
    clips = []
    for i, (ci, ids) in enumerate(zip(clip_cams, cast)):
        k = i // cfg.cameras  # clips of one camera follow each other in time
        cam = cameras[ci]
        walks = plan_walks(ids, cam, cfg.width, cfg.height, cfg.frames, cfg.fps, _rng(cfg.seed, 5, i))
        clips.append(ClipPlan(i, f"{cam.name}-{k:04d}", cam, float(k * duration), ids, walks))
    return CorpusPlan(cameras, people, held_out, clips)


def _corpus_root(cfg: SynthConfig) -> str:
    out = cfg.out.strip()
    if not out:
        raise ConfigError("synth.out is empty: give a local folder or s3://bucket/prefix")
    return out.rstrip("/") if is_s3(out) else os.path.abspath(out)


def _mot_text(rows: list[BoxRecord]) -> bytes:
    lines = [
        f"{r.frame_index + 1},{r.identity_id},{r.x1:.2f},{r.y1:.2f},{r.x2 - r.x1:.2f},{r.y2 - r.y1:.2f},1,1,"
        f"{r.visibility:.4f}"
        for r in rows
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _parse_mot_text(data: bytes, uri: str) -> list[BoxRecord]:
    rows = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            f, pid, x, y, w, h, _, _, v = line.split(",")
            rows.append(
                BoxRecord(int(f) - 1, int(pid), float(x), float(y), float(x) + float(w), float(y) + float(h), float(v))
            )
        except ValueError as e:
            raise DataError(f"{uri} line {n}: not a MOTChallenge row ({e})") from e
    return rows


def _write_many(storage: Storage, base: str, files: dict[str, bytes]) -> None:
    """Write many small files; on S3 in one concurrent batch."""
    if not files:
        return
    if is_s3(base):
        fs, root = storage.fs(base)
        fs.pipe({f"{root}/{rel}": data for rel, data in files.items()})
    else:
        for rel, data in files.items():
            write_bytes_atomic(join(base, rel), data, storage)


def _clip_unit(
    plan: ClipPlan, cfg: SynthConfig, background: np.ndarray, bank: SpriteBank, out: str, storage: Storage
) -> list[BoxRecord]:
    """Render, encode and store one clip (video first, then its MOT file); reuse both if already there."""
    video_uri = join(out, "videos", f"{plan.video_id}.mp4")
    mot_uri = join(out, "gt", f"{plan.video_id}.txt")
    fs, _ = storage.fs(out)
    if fs.exists(storage.fs(video_uri)[1]) and fs.exists(storage.fs(mot_uri)[1]):
        return _parse_mot_text(read_bytes(mot_uri, storage), mot_uri)
    writer = Mp4Writer(cfg.width, cfg.height, cfg.fps)
    noise = SensorNoise(_rng(cfg.seed, 6, plan.index), cfg.width, cfg.height)
    rows: list[BoxRecord] = []
    for frame, frame_rows in render_clip(plan.walks, bank, plan.camera, background, cfg.frames, noise):
        writer.add(frame)
        rows.extend(sorted(frame_rows, key=lambda r: r.identity_id))
    write_bytes_atomic(video_uri, writer.finish(), storage)
    write_bytes_atomic(mot_uri, _mot_text(rows), storage)
    return rows


def _gt_table(per_clip: list[tuple[str, list[BoxRecord]]]) -> pa.Table:
    cols: dict[str, list] = {c: [] for c in GT_COLUMNS}
    for video_id, rows in per_clip:
        for r in rows:  # already ordered by frame, then identity
            cols["video_id"].append(video_id)
            cols["frame_index"].append(r.frame_index)
            cols["identity_id"].append(r.identity_id)
            for c in ("x1", "y1", "x2", "y2", "visibility"):
                cols[c].append(getattr(r, c))
    schema = pa.schema(
        [
            ("video_id", pa.string()),
            ("frame_index", pa.int32()),
            ("identity_id", pa.int64()),
            *[(c, pa.float64()) for c in ("x1", "y1", "x2", "y2", "visibility")],
        ]
    )
    return pa.table(cols, schema=schema)


def _identity_table(plan: CorpusPlan) -> pa.Table:
    recs = [{**p.to_record(), "held_out": False} for p in plan.people]
    recs += [{**p.to_record(), "held_out": True} for p in plan.held_out]
    return pa.Table.from_pylist(recs)


def _check_same_config(rec: dict, cfg: SynthConfig, out: str) -> None:
    want = {k: v for k, v in dumps_config(cfg).items() if k != "out"}
    have = {k: v for k, v in (rec.get("config") or {}).items() if k != "out"}
    if have != want:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise DataError(
            f"{out} already holds a corpus made with other settings ({', '.join(diff)}); "
            "choose another synth.out or delete it"
        )


def generate_corpus(cfg: SynthConfig, storage: Storage | None = None) -> dict:
    """Write the corpus under ``cfg.out`` and return where its parts are, with counts."""
    storage = storage or Storage()
    out = _corpus_root(cfg)
    done = StageOutput(out, storage)
    if done.is_complete():
        rec = done.success()
        _check_same_config(rec, cfg, out)
        return {**rec["summary"], "skipped": True}
    t0 = time.time()
    plan = plan_corpus(cfg)
    scenes = [camera_background(c, cfg.width, cfg.height, _rng(cfg.seed, 3, c.index)) for c in plan.cameras]
    backgrounds = [lit_background(c, s) for c, s in zip(plan.cameras, scenes)]
    bank = SpriteBank(plan.people)
    per_clip = []
    for clip in plan.clips:
        per_clip.append((clip.video_id, _clip_unit(clip, cfg, backgrounds[clip.camera.index], bank, out, storage)))
        log.info("synth clip %s written", clip.video_id)
    gt = _gt_table(per_clip)
    ordered = sorted(plan.clips, key=lambda c: (c.camera.name, c.start_time))
    manifest = pa.table(
        {
            "video_id": [c.video_id for c in ordered],
            "uri": [join(out, "videos", f"{c.video_id}.mp4") for c in ordered],
            "source": [c.camera.name for c in ordered],
            "start_time": pa.array([c.start_time for c in ordered], pa.float64()),
        }
    )
    market = join(out, "market")
    style = BenchmarkStyle(cfg.benchmark_light_jitter, cfg.benchmark_far, cfg.benchmark_occlusion)
    files = benchmark_files(
        plan.held_out, plan.cameras, backgrounds, cfg.benchmark_images_per_camera, _rng(cfg.seed, 8), style
    )
    _write_many(storage, market, files)
    write_table_atomic(join(out, "gt", "gt.parquet"), gt, storage)
    write_table_atomic(join(out, "gt", "identities.parquet"), _identity_table(plan), storage)
    write_table_atomic(join(out, "manifest.parquet"), manifest, storage)
    in_clips = {i for c in plan.clips for i in c.identities}
    result = {
        "out": out,
        "manifest_uri": join(out, "manifest.parquet"),
        "gt_uri": join(out, "gt", "gt.parquet"),
        "identities_uri": join(out, "gt", "identities.parquet"),
        "market_uri": market if files else "",
        "videos": len(plan.clips),
        "frames": len(plan.clips) * cfg.frames,
        "identities": len(in_clips),
        "held_out_identities": len(plan.held_out),
        "cameras": len(plan.cameras),
        "gt_boxes": gt.num_rows,
        "market_images": len(files),
        "codec": video_codec(),
        "seed": cfg.seed,
        "seconds": round(time.time() - t0, 2),
    }
    done.finalize(
        stage="synth",
        rows={
            "videos": result["videos"],
            "frames": result["frames"],
            "gt_boxes": gt.num_rows,
            "market_images": len(files),
        },
        config=dumps_config(cfg),
        summary=result,
    )
    return {**result, "skipped": False}

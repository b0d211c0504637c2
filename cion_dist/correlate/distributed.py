"""Ray glue for correlate: level 1-2 tasks per group of videos, level-3 window tasks over the sharded index.

Each unit (a video, a window) writes one Parquet file under the run folder (``videos/``, ``windows/``) from inside
its task, atomically; a rerun reads the files that exist and schedules only the missing units.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from cion_dist.correlate.denoise import denoise_video
from cion_dist.correlate.knn_index import ShardedKnnIndex, drop_self
from cion_dist.correlate.linking import links_from_knn
from cion_dist.storage.stage_io import StageOutput, read_table

VIDEOS_DIR = "videos"
WINDOWS_DIR = "windows"


def window_unit(start: int, stop: int) -> str:
    return f"w{start:07d}-{stop:07d}"


def _video_table(image_id: np.ndarray, group: np.ndarray, reason: np.ndarray) -> pa.Table:
    return pa.table({"image_id": pa.array(image_id, pa.string()), "group": pa.array(group, pa.int64()),
                     "reason": pa.array(reason, pa.int8())})


@ray.remote
def _denoise_videos(out: StageOutput, items: list, r: float, d: float, min_tracklet: int) -> list:
    """Levels 1-2 for a few videos; writes one unit per video and returns (video, group, reason) for each."""
    results = []
    for video, image_id, x, tracklet, frame in items:
        res = denoise_video(x, tracklet, r, d, min_tracklet, frame)
        out.write_unit(video, _video_table(image_id, res.group, res.reason), subdir=VIDEOS_DIR)
        results.append((video, res.group, res.reason))
    return results


def run_levels12(out: StageOutput, data, r: float, d: float, min_tracklet: int, videos_per_task: int):
    """Per-image (local group, reason) for every video, resuming from units already written.

    Returns ``(group, reason, done_before)`` aligned with ``data`` rows; ``group`` is local to each video.
    """
    n = len(data)
    group = np.full(n, -1, dtype=np.int64)
    reason = np.zeros(n, dtype=np.int8)
    bounds = np.searchsorted(data.video_rank, np.arange(len(data.videos) + 1))
    todo, reused = [], 0
    for vi, video in enumerate(data.videos):
        lo, hi = bounds[vi], bounds[vi + 1]
        if out.has_unit(video, subdir=VIDEOS_DIR):
            t = read_table(out.unit_uri(video, subdir=VIDEOS_DIR), out.storage)
            if t.num_rows == hi - lo and t.column("image_id").to_pylist() == data.image_id[lo:hi].tolist():
                group[lo:hi] = t.column("group").to_numpy()
                reason[lo:hi] = t.column("reason").to_numpy()
                reused += 1
                continue
        todo.append(vi)
    refs, span = [], {}
    for c in range(0, len(todo), videos_per_task):
        chunk = todo[c : c + videos_per_task]
        items = [(data.videos[vi], data.image_id[bounds[vi] : bounds[vi + 1]], data.x[bounds[vi] : bounds[vi + 1]],
                  data.tracklet_key[bounds[vi] : bounds[vi + 1]],
                  None if data.frame is None else data.frame[bounds[vi] : bounds[vi + 1]]) for vi in chunk]
        refs.append(_denoise_videos.remote(out, items, r, d, min_tracklet))
        for vi in chunk:
            span[data.videos[vi]] = (bounds[vi], bounds[vi + 1])
    for batch in ray.get(refs):
        for video, g, rs in batch:
            lo, hi = span[video]
            group[lo:hi] = g
            reason[lo:hi] = rs
    return group, reason, reused


@ray.remote(num_cpus=0.5)  # mostly waits on the shard actors, which do the search
def _link_windows(out: StageOutput, index: ShardedKnnIndex, cents: np.ndarray, node_video: np.ndarray,
                  specs: list, k: int, d: float, mutual: bool) -> list:
    """Cross-video links among the nodes [lo, hi) of each window: query the shards restricted to the window."""
    tables = []
    for lo, hi, unit in specs:
        sim, nbr = index.search(cents[lo:hi], min(k + 1, hi - lo), id_range=(lo, hi))
        sim, nbr = drop_self(sim, nbr, np.arange(lo, hi), min(k, hi - lo - 1))
        src, dst, dist = links_from_knn(sim, nbr, np.arange(lo, hi), node_video, d, mutual)
        table = pa.table({"src": pa.array(src, pa.int64()), "dst": pa.array(dst, pa.int64()),
                          "dist": pa.array(dist, pa.float32())})
        out.write_unit(unit, table, subdir=WINDOWS_DIR)
        tables.append(table)
    return tables


def run_level3_links(out: StageOutput, cents: np.ndarray, node_video: np.ndarray, node_bounds: np.ndarray,
                     windows: list, cfg, d: float):
    """Links from every window (resuming from written units); returns (src, dst, dist, windows_reused)."""
    tables, todo = [], []
    for s, e in windows:
        unit = window_unit(s, e)
        if out.has_unit(unit, subdir=WINDOWS_DIR):
            tables.append(read_table(out.unit_uri(unit, subdir=WINDOWS_DIR), out.storage))
        else:
            todo.append((s, e, unit))
    reused = len(tables)
    todo = [(s, e, u) for s, e, u in todo if node_bounds[e] - node_bounds[s] >= 2]
    if todo:
        index = ShardedKnnIndex(cents, cfg.num_shards, cfg.index, cfg.ivf_nlist, cfg.ivf_nprobe, cfg.shard_cpus)
        try:
            c_ref, v_ref = ray.put(cents), ray.put(node_video)
            specs = [(int(node_bounds[s]), int(node_bounds[e]), u) for s, e, u in todo]
            per_task = -(-len(specs) // max(1, cfg.window_tasks))
            refs = [_link_windows.remote(out, index, c_ref, v_ref, specs[i : i + per_task], cfg.knn_k, d,
                                         cfg.mutual_knn) for i in range(0, len(specs), per_task)]
            for batch in ray.get(refs):
                tables += batch
        finally:
            index.close()
    if not tables:
        e = np.zeros(0, dtype=np.int64)
        return e, e, np.zeros(0, np.float32), reused
    t = pa.concat_tables(tables)
    return t.column("src").to_numpy(), t.column("dst").to_numpy(), t.column("dist").to_numpy(), reused

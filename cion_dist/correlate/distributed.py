"""Ray glue for correlate: calibration, level 1-2 tasks per group of videos, level-3 window tasks over the sharded
index, the radius re-check of merged identities, and the output parts.

Every task that needs vectors reads them itself from the embed parts (``catalog.load_videos``); the driver passes
video lists, small per-image integer arrays and level-2 identity sums. Each unit (a video, a window) writes one
Parquet file under the run folder (``videos/``, ``nodes/``, ``windows/``) from inside its task, atomically; a
rerun reads the files that exist and schedules only the missing units.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pyarrow as pa
import ray

from cion_dist.correlate.catalog import VideoCatalog
from cion_dist.correlate.denoise import LEVEL_OF_REASON, REASONS, denoise_video
from cion_dist.correlate.geometry import group_sums
from cion_dist.correlate.knn_index import ShardedKnnIndex, drop_self
from cion_dist.correlate.linking import identity_rows, links_from_knn, radius_removals
from cion_dist.correlate.switches import SwitchSplit
from cion_dist.errors import DataError
from cion_dist.storage.stage_io import StageOutput, read_table

log = logging.getLogger(__name__)

VIDEOS_DIR = "videos"
NODES_DIR = "nodes"
WINDOWS_DIR = "windows"


def window_unit(start: int, stop: int) -> str:
    return f"w{start:07d}-{stop:07d}"


def _video_table(image_id: np.ndarray, group: np.ndarray, reason: np.ndarray) -> pa.Table:
    return pa.table({"image_id": pa.array(image_id, pa.string()), "group": pa.array(group, pa.int64()),
                     "reason": pa.array(reason, pa.int8())})


def _nodes_table(sums: np.ndarray) -> pa.Table:
    """A video's level-2 identities: the (unnormalised) sum of member vectors, row = local group id."""
    flat = pa.array(np.ascontiguousarray(sums, dtype=np.float32).reshape(-1))
    return pa.table({"sum": pa.FixedSizeListArray.from_arrays(flat, sums.shape[1])})


def _sums_of(table: pa.Table) -> np.ndarray:
    col = table.column("sum").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size).astype(np.float32)


@ray.remote
def _calibrate(items: list, storage, kwargs: dict):
    """Calibration on the images of the given videos (read here, not on the driver)."""
    from cion_dist.correlate.calibrate import calibrate
    from cion_dist.correlate.catalog import load_all

    data = load_all(items, storage)
    return calibrate(data.x, data.tracklet_key, data.video_id, **kwargs)


def calibrate_on_sample(catalog: VideoCatalog, storage, sample: int, seed: int, **kwargs):
    """``calibrate`` over whole videos drawn at random until ``sample`` tracklets are in (every video when the corpus
    has fewer), run in a task so that the driver never holds those vectors."""
    ranks = np.arange(len(catalog.videos))
    if int(catalog.tracklets.sum()) > sample:
        ranks = np.random.default_rng(seed).permutation(ranks)
        take = int(np.searchsorted(np.cumsum(catalog.tracklets[ranks]), sample)) + 1
        ranks = np.sort(ranks[:take])
    return ray.get(_calibrate.remote(catalog.items(ranks), storage, dict(kwargs, sample=sample, seed=seed)))


@ray.remote
def _denoise_videos(out: StageOutput, items: list, r: float, d: float, min_tracklet: int,
                    split: SwitchSplit = SwitchSplit()) -> list:
    """Levels 1-2 for a few videos (read here); writes one unit per video and returns (rank, group, reason, sums)."""
    from cion_dist.correlate.catalog import load_videos

    results = []
    for rank, video, data in load_videos(items, out.storage):
        res = denoise_video(data.x, data.tracklet_key, r, d, min_tracklet, data.frame, split=split)
        if res.cuts:
            log.info("correlate: %s: %d tracklets cut where their appearance switches", video,
                     len({c[0] for c in res.cuts}))
        sums = group_sums(data.x, res.group, res.n_groups)
        out.write_unit(video, _nodes_table(sums), subdir=NODES_DIR)
        out.write_unit(video, _video_table(data.image_id, res.group, res.reason), subdir=VIDEOS_DIR)
        results.append((rank, res.group, res.reason, sums, len(res.cuts)))
    return results


def run_levels12(out: StageOutput, catalog: VideoCatalog, r: float, d: float, min_tracklet: int,
                 videos_per_task: int, split: SwitchSplit = SwitchSplit(), cuts: Optional[list] = None):
    """Per-image (local group, reason) and per-video level-2 identity sums, resuming from units already written.

    Returns ``(group, reason, sums, done_before)``: ``group``/``reason`` follow the catalogue's image numbering
    (``group`` is local to each video), ``sums[v]`` is video ``v``'s (groups, dim) array of member sums.
    """
    n = catalog.n_images
    bounds = catalog.bounds
    group = np.full(n, -1, dtype=np.int64)
    reason = np.zeros(n, dtype=np.int8)
    sums: list = [None] * len(catalog.videos)
    todo, reused = [], 0
    for vi, video in enumerate(catalog.videos):
        lo, hi = bounds[vi], bounds[vi + 1]
        if out.has_unit(video, subdir=VIDEOS_DIR) and out.has_unit(video, subdir=NODES_DIR):
            t = read_table(out.unit_uri(video, subdir=VIDEOS_DIR), out.storage, columns=["group", "reason"])
            if t.num_rows == hi - lo:
                group[lo:hi] = t.column("group").to_numpy()
                reason[lo:hi] = t.column("reason").to_numpy()
                sums[vi] = _sums_of(read_table(out.unit_uri(video, subdir=NODES_DIR), out.storage))
                reused += 1
                continue
        todo.append(vi)
    refs = [_denoise_videos.remote(out, catalog.items(todo[c : c + videos_per_task]), r, d, min_tracklet, split)
            for c in range(0, len(todo), videos_per_task)]
    for batch in ray.get(refs):
        for vi, g, rs, s, n_cuts in batch:
            if cuts is not None:
                cuts.append(n_cuts)
            lo, hi = bounds[vi], bounds[vi + 1]
            group[lo:hi] = g
            reason[lo:hi] = rs
            sums[vi] = s
    return group, reason, sums, reused


@ray.remote
def _radius_check(items: list, storage, offsets: dict, members: list, r: float) -> np.ndarray:
    """The radius re-check of merged identities whose images lie in the given videos; returns dropped corpus rows."""
    from cion_dist.correlate.catalog import load_videos

    xs, corpus_rows = [], []
    for rank, _, data in load_videos(items, storage):  # items come in rank order, so corpus_rows ascend
        xs.append(data.x)
        corpus_rows.append(np.arange(offsets[rank], offsets[rank] + len(data)))
    rows = np.concatenate(corpus_rows)
    dropped = radius_removals(np.concatenate(xs), [np.searchsorted(rows, m) for m in members], r)
    return rows[dropped]


def radius_recheck(catalog: VideoCatalog, storage, ident: np.ndarray, node_of: np.ndarray, r: float,
                   videos_per_task: int) -> np.ndarray:
    """Corpus rows dropped by the radius re-check of identities merged at level 3.

    An identity that is one level-2 identity already passed the same check inside its video, so only identities
    joined across videos are sent out, packed into tasks by the videos they touch.
    """
    rank = catalog.video_rank()
    tasks, cur, cur_videos = [], [], set()
    for rows in identity_rows(ident):
        if len(rows) < 2 or len(np.unique(node_of[rows])) < 2:
            continue
        vids = set(np.unique(rank[rows]).tolist())
        if cur and len(cur_videos | vids) > 2 * videos_per_task:
            tasks.append((cur, cur_videos))
            cur, cur_videos = [], set()
        cur.append(rows)
        cur_videos |= vids
    if cur:
        tasks.append((cur, cur_videos))
    bounds = catalog.bounds
    refs = [_radius_check.remote(catalog.items(sorted(v)), storage, {int(i): int(bounds[i]) for i in v}, m, r)
            for m, v in tasks]
    out = [np.asarray(a, dtype=np.int64) for a in ray.get(refs)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@ray.remote
def _write_videos(out: StageOutput, items: list, identity: list, reason: list) -> int:
    """The output part of each video: its key columns read here, the labels from the driver."""
    from cion_dist.correlate.catalog import load_keys

    reason_names = np.array(REASONS, dtype=object)
    for (_, video, uris), ident, rs in zip(items, identity, reason):
        keys = load_keys(video, uris, out.storage)
        if keys.num_rows != len(ident):
            raise DataError(f"{video}: {keys.num_rows} rows in {uris}, {len(ident)} expected; the input changed")
        out.write_unit(video, pa.table({
            "image_id": keys.column("image_id").cast(pa.string()),
            "identity_id": pa.array(ident, pa.int64()),
            "tracklet_id": keys.column("tracklet_id"),
            "video_id": keys.column("video_id").cast(pa.string()),
            "removed_at": pa.array(LEVEL_OF_REASON[rs], pa.int8()),
            "reason": pa.array(np.where(rs > 0, reason_names[rs], None), pa.string()),
        }))
    return len(items)


def write_outputs(out: StageOutput, catalog: VideoCatalog, identity: np.ndarray, reason: np.ndarray,
                  videos_per_task: int) -> None:
    """One output part per video not written yet, by Ray tasks."""
    bounds = catalog.bounds
    todo = [v for v, video in enumerate(catalog.videos) if not out.has_unit(video)]
    refs = []
    for c in range(0, len(todo), videos_per_task):
        chunk = todo[c : c + videos_per_task]
        refs.append(_write_videos.remote(out, catalog.items(chunk), [identity[bounds[v] : bounds[v + 1]] for v in chunk],
                                         [reason[bounds[v] : bounds[v + 1]] for v in chunk]))
    ray.get(refs)


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

"""Ray glue for correlate: calibration, level 1-2 tasks per group of videos, blocks of level-2 identity vectors,
level-3 tasks per batch of windows, the guarded merge, the radius re-check of merged identities, the output parts.

Every step is a set of units written atomically from inside Ray tasks under the run folder, so a rerun redoes
only what is missing:

- ``calibration.json``: r, d and what they were read off;
- ``videos/`` (group, reason per image) and ``nodes/`` (level-2 identity sums) per video;
- ``blocks/``: the identity sums of ``block_videos`` consecutive videos in one file (what level 3, the whole-corpus
  index and the merge read, instead of one small file per video);
- ``windows/``: one links file (``src, dst, dist``) per batch of consecutive windows (or per query batch of the
  whole-corpus graph);
- ``merge/``: the component of every level-2 identity, and the accepted links with their distances;
- ``recheck/``: image rows dropped by the radius re-check, one file per task;
- the output part of every video.

The driver learns what exists from one listing per folder (``tasks.missing_units``), never an existence check
per unit, keeps at most ``tasks_in_flight`` tasks submitted per step (``tasks.bounded``), and holds per-image and
per-identity integer arrays only: identity vectors stay in the block files and in the tasks that read them.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from cion_dist.correlate.catalog import VideoCatalog
from cion_dist.correlate.denoise import LEVEL_OF_REASON, REASONS, denoise_video, merge_links
from cion_dist.correlate.geometry import group_sums
from cion_dist.correlate.linking import dedupe_links, links_from_knn, radius_removals
from cion_dist.correlate.switches import SwitchSplit
from cion_dist.correlate.tasks import bounded, list_files, missing_units
from cion_dist.errors import DataError
from cion_dist.storage.fs import join, read_json, write_json_atomic
from cion_dist.storage.stage_io import StageOutput, read_table
from cion_dist.vectors import l2_normalise

log = logging.getLogger(__name__)

VIDEOS_DIR = "videos"
NODES_DIR = "nodes"
_CUTS_KEY = "cion.switch_cuts"  # videos/ unit metadata: tracklet switch cuts made in that video
BLOCKS_DIR = "blocks"
WINDOWS_DIR = "windows"
MERGE_DIR = "merge"
RECHECK_DIR = "recheck"
CALIBRATION = "calibration.json"
_READ_THREADS = 8  # concurrent small-file reads inside one task (storage latency, not CPU)


def window_unit(start: int, stop: int) -> str:
    return f"w{start:07d}-{stop:07d}"


def block_unit(start: int, stop: int) -> str:
    return f"b{start:08d}-{stop:08d}"


def _video_table(image_id: np.ndarray, group: np.ndarray, reason: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "image_id": pa.array(image_id, pa.string()),
            "group": pa.array(group, pa.int64()),
            "reason": pa.array(reason, pa.int8()),
        }
    )


def _sums_table(sums: np.ndarray) -> pa.Table:
    """Level-2 identities: the (unnormalised) sum of member vectors, row = local group id."""
    flat = pa.array(np.ascontiguousarray(sums, dtype=np.float32).reshape(-1))
    return pa.table({"sum": pa.FixedSizeListArray.from_arrays(flat, sums.shape[1])})


def _sums_of(table: pa.Table) -> np.ndarray:
    col = table.column("sum").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size).astype(np.float32)


def _links_table(src: np.ndarray, dst: np.ndarray, dist: np.ndarray) -> pa.Table:
    return pa.table(
        {"src": pa.array(src, pa.int64()), "dst": pa.array(dst, pa.int64()), "dist": pa.array(dist, pa.float32())}
    )


def _read_many(uris: list[str], storage, columns=None) -> list[pa.Table]:
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        return list(pool.map(lambda u: read_table(u, storage, columns=columns), uris))


# ---------------------------------------------------------------- calibration


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


def saved_calibration(out: StageOutput):
    """The calibration a former attempt of this run saved, or None (one read of a known key, no listing)."""
    try:
        return read_json(join(out.uri, CALIBRATION), out.storage)
    except (DataError, FileNotFoundError, OSError):
        return None


def save_calibration(out: StageOutput, record: dict) -> None:
    write_json_atomic(join(out.uri, CALIBRATION), record, out.storage)


# ---------------------------------------------------------------- levels 1-2


@ray.remote
def _denoise_videos(
    out: StageOutput, items: list, r: float, d: float, min_tracklet: int, split: SwitchSplit = SwitchSplit()
) -> list:
    """Levels 1-2 for a few videos (read here); writes one unit per video and returns
    (rank, group, reason, groups, switch cuts)."""
    from cion_dist.correlate.catalog import load_videos

    results = []
    for rank, video, data in load_videos(items, out.storage):
        res = denoise_video(data.x, data.tracklet_key, r, d, min_tracklet, data.frame, split=split)
        if res.cuts:
            log.info(
                "correlate: %s: %d tracklets cut where their appearance switches", video, len({c[0] for c in res.cuts})
            )
        sums = group_sums(data.x, res.group, res.n_groups)
        out.write_unit(video, _sums_table(sums), subdir=NODES_DIR)
        table = _video_table(data.image_id, res.group, res.reason)
        table = table.replace_schema_metadata({_CUTS_KEY: str(len(res.cuts))})  # kept for a resumed summary
        out.write_unit(video, table, subdir=VIDEOS_DIR)  # last: done
        results.append((rank, res.group.astype(np.int32), res.reason, res.n_groups, len(res.cuts)))
    return results


@ray.remote
def _read_levels12(out: StageOutput, items: list, sizes: list) -> list:
    """(rank, group, reason, groups, cuts) of videos whose units exist; None for a unit that does not match."""

    def one(item, n):
        rank, video, _ = item
        t = read_table(out.unit_uri(video, subdir=VIDEOS_DIR), out.storage, columns=["group", "reason"])
        fs, path = out.storage.pyarrow(out.unit_uri(video, subdir=NODES_DIR))
        with fs.open_input_file(path) as f:
            groups = pq.ParquetFile(f).metadata.num_rows
        g = t.column("group").to_numpy().astype(np.int32)
        if t.num_rows != n or (len(g) and int(g.max()) >= groups):
            return rank, None, None, None, 0
        cuts = int((t.schema.metadata or {}).get(_CUTS_KEY.encode(), b"0"))
        return rank, g, t.column("reason").to_numpy().astype(np.int8), int(groups), cuts

    with ThreadPoolExecutor(_READ_THREADS) as pool:
        return list(pool.map(one, items, sizes))


def run_levels12(
    out: StageOutput,
    catalog: VideoCatalog,
    r: float,
    d: float,
    min_tracklet: int,
    videos_per_task: int,
    in_flight: int = 32,
    split: SwitchSplit = SwitchSplit(),
):
    """Per-image (local group, reason) and per-video level-2 identity counts, resuming from units already written.

    Returns ``(group, reason, groups_per_video, done_before, cuts_per_video)``: ``group`` (int32, local to each
    video) and
    ``reason`` (int8) follow the catalogue's image numbering. Units present in both ``videos/`` and ``nodes/``
    (one listing each) are read back by tasks; the rest are computed.
    """
    n_videos = len(catalog.videos)
    bounds = catalog.bounds
    group = np.full(catalog.n_images, -1, dtype=np.int32)
    reason = np.zeros(catalog.n_images, dtype=np.int8)
    groups = np.zeros(n_videos, dtype=np.int64)
    cuts = np.zeros(n_videos, dtype=np.int32)  # tracklet switch cuts per video
    videos = catalog.videos.tolist()
    absent = np.zeros(n_videos, dtype=bool)
    absent[missing_units(out, videos, subdir=VIDEOS_DIR)] = True
    absent[missing_units(out, videos, subdir=NODES_DIR)] = True
    del videos
    present = np.flatnonzero(~absent)
    chunk = max(videos_per_task, 64)

    def take(batch):
        redo = []
        for vi, g, rs, k, n_cuts in batch:
            if g is None:
                redo.append(vi)
                continue
            group[bounds[vi] : bounds[vi + 1]] = g
            reason[bounds[vi] : bounds[vi + 1]] = rs
            groups[vi] = k
            cuts[vi] = n_cuts
        return redo

    read_refs = (
        _read_levels12.remote(
            out, catalog.items(present[c : c + chunk]), catalog.images[present[c : c + chunk]].tolist()
        )
        for c in range(0, len(present), chunk)
    )
    redo = []
    for _, batch in bounded(read_refs, in_flight):
        redo += take(batch)
    todo = np.sort(np.concatenate([np.flatnonzero(absent), np.asarray(redo, dtype=np.int64)])).astype(np.int64)
    refs = (
        _denoise_videos.remote(out, catalog.items(todo[c : c + videos_per_task]), r, d, min_tracklet, split)
        for c in range(0, len(todo), videos_per_task)
    )
    for _, batch in bounded(refs, in_flight):
        take(batch)
    return group, reason, groups, int(len(present) - len(redo)), cuts


# ---------------------------------------------------------------- identity blocks


def plan_blocks(n_videos: int, block_videos: int) -> list[tuple[int, int]]:
    return [(s, min(s + block_videos, n_videos)) for s in range(0, n_videos, block_videos)]


@ray.remote
def _write_block(out: StageOutput, videos: list, node_lo: int, node_hi: int, unit: str) -> int:
    """One block file: the level-2 identity sums of consecutive videos (their ``nodes/`` units, read here)."""
    tables = _read_many([out.unit_uri(v, subdir=NODES_DIR) for v in videos], out.storage)
    sums = np.concatenate([_sums_of(t) for t in tables]) if tables else np.zeros((0, 1), np.float32)
    if len(sums) != node_hi - node_lo:
        raise DataError(
            f"{out.uri}/{NODES_DIR}: {len(sums)} identities for videos {videos[0]}..{videos[-1]}, "
            f"{node_hi - node_lo} expected; the level 1-2 units changed"
        )
    t = _sums_table(sums).append_column("node", pa.array(np.arange(node_lo, node_hi), pa.int64()))
    out.write_unit(unit, t, subdir=BLOCKS_DIR)
    return len(sums)


def write_blocks(
    out: StageOutput, catalog: VideoCatalog, node_bounds: np.ndarray, block_videos: int, in_flight: int = 32
) -> list[tuple[int, int, str]]:
    """Block files of every ``block_videos`` videos, those missing only; returns (node_lo, node_hi, uri) per block."""
    blocks = plan_blocks(len(catalog.videos), block_videos)
    units = [block_unit(s, e) for s, e in blocks]
    todo = missing_units(out, units, subdir=BLOCKS_DIR)
    refs = (
        _write_block.remote(
            out,
            catalog.videos[blocks[i][0] : blocks[i][1]].tolist(),
            int(node_bounds[blocks[i][0]]),
            int(node_bounds[blocks[i][1]]),
            units[i],
        )
        for i in todo
    )
    for _ in bounded(refs, in_flight):
        pass
    return [
        (int(node_bounds[s]), int(node_bounds[e]), out.unit_uri(u, subdir=BLOCKS_DIR))
        for (s, e), u in zip(blocks, units)
    ]


def read_blocks(blocks: list, lo: int, hi: int, storage) -> np.ndarray:
    """Identity sums of nodes [lo, hi) from the blocks that hold them (float32)."""
    use = [(a, b, u) for a, b, u in blocks if a < hi and b > lo and b > a]
    if not use:
        return np.zeros((0, 1), np.float32)
    parts = [_sums_of(t) for t in _read_many([u for _, _, u in use], storage, columns=["sum"])]
    x = np.concatenate(parts)
    return x[lo - use[0][0] : hi - use[0][0]]


def _blocks_in(blocks: list, lo: int, hi: int) -> list:
    return [b for b in blocks if b[0] < hi and b[1] > lo and b[1] > b[0]]


# ---------------------------------------------------------------- level 3


def plan_window_batches(windows: list, node_bounds: np.ndarray, per_task: int) -> list[list[tuple[int, int]]]:
    """Consecutive windows grouped ``per_task`` at a time, windows with fewer than two identities left out."""
    useful = [(s, e) for s, e in windows if node_bounds[e] - node_bounds[s] >= 2]
    return [useful[i : i + per_task] for i in range(0, len(useful), per_task)]


@ray.remote
def _link_window_batch(
    out: StageOutput,
    blocks: list,
    node_video: np.ndarray,
    node_bounds_of: dict,
    specs: list,
    k: int,
    d: float,
    mutual: bool,
    unit: str,
) -> int:
    """Cross-video links of a batch of consecutive windows: each window's identities search one another (exact,
    in-process FAISS on the W x W window); one links file for the batch."""
    from cion_dist.correlate.geometry import exact_knn

    lo = min(node_bounds_of[s] for s, _ in specs)
    hi = max(node_bounds_of[e] for _, e in specs)
    cents = l2_normalise(read_blocks(blocks, lo, hi, out.storage))
    got = []
    for s, e in specs:
        a, b = node_bounds_of[s], node_bounds_of[e]
        q = np.arange(a, b)
        sim, nb = exact_knn(cents[a - lo : b - lo], k + 1)
        got.append(links_from_knn(sim, np.where(nb >= 0, nb + a, -1), q, node_video, d, mutual))
    src, dst, dist = (np.concatenate(p) for p in zip(*got))
    src, dst, dist = dedupe_links(src, dst, dist)
    out.write_unit(unit, _links_table(src, dst, dist), subdir=WINDOWS_DIR)
    return len(src)


@ray.remote(num_cpus=0.5)  # mostly waits on the shard actors, which do the search
def _link_corpus_batch(
    out: StageOutput, index, blocks: list, node_video: np.ndarray, lo: int, hi: int, k: int, d: float, unit: str
) -> int:
    """Whole-corpus mode: links of the identities [lo, hi) to their k nearest over the sharded index."""
    from cion_dist.correlate.knn_index import drop_self

    q = l2_normalise(read_blocks(blocks, lo, hi, out.storage))
    sim, nbr = index.search(q, min(k + 1, index.n))
    sim, nbr = drop_self(sim, nbr, np.arange(lo, hi), min(k, index.n - 1))
    src, dst, dist = links_from_knn(sim, nbr, np.arange(lo, hi), node_video, d, False)
    out.write_unit(unit, _links_table(src, dst, dist), subdir=WINDOWS_DIR)
    return len(src)


def run_level3_links(
    out: StageOutput, blocks: list, node_video: np.ndarray, node_bounds: np.ndarray, windows: list, cfg, d: float
) -> tuple[int, int, int]:
    """Links of every window batch (resuming from written files); returns (links files, reused files, windows
    in reused files). The links stay on storage (``windows/``) for the merge.

    Windowed mode: one task per batch of ``windows_per_task`` consecutive windows reads the blocks its windows span
    and searches each window exactly. Whole-corpus mode: a sharded FAISS index (striped over actors that load their
    rows from the blocks) answers query batches of identities, one task and one links file per batch.
    """
    n_nodes = int(node_bounds[-1])
    if cfg.whole_corpus and cfg.mutual_knn:
        raise DataError(
            "correlate.mutual_knn needs windows (whole_corpus=false): a query batch does not see the other end's list"
        )
    if cfg.whole_corpus:
        step = max(1, cfg.windows_per_task * 64)
        ranges = [(s, min(s + step, n_nodes)) for s in range(0, n_nodes, step)] if n_nodes >= 2 else []
        units = [window_unit(s, e) for s, e in ranges]
        todo = missing_units(out, units, subdir=WINDOWS_DIR)
        if todo:
            from cion_dist.correlate.knn_index import ShardedKnnIndex

            index = ShardedKnnIndex(
                None,
                cfg.num_shards,
                cfg.index,
                cfg.ivf_nlist,
                cfg.ivf_nprobe,
                cfg.shard_cpus,
                blocks=(blocks, out.storage, n_nodes),
            )
            try:
                v_ref = ray.put(node_video)
                refs = (
                    _link_corpus_batch.remote(
                        out, index, blocks, v_ref, ranges[i][0], ranges[i][1], cfg.knn_k, d, units[i]
                    )
                    for i in todo
                )
                for _ in bounded(refs, cfg.tasks_in_flight):
                    pass
            finally:
                index.close()
        return len(units), len(units) - len(todo), len(units) - len(todo)

    batches = plan_window_batches(windows, node_bounds, cfg.windows_per_task)
    units = [window_unit(b[0][0], b[-1][1]) for b in batches]
    todo = missing_units(out, units, subdir=WINDOWS_DIR)
    if todo:
        v_ref = ray.put(node_video)
        refs = []
        for i in todo:
            specs = batches[i]
            lo, hi = int(node_bounds[specs[0][0]]), int(node_bounds[specs[-1][1]])
            bounds_of = {v: int(node_bounds[v]) for s, e in specs for v in (s, e)}
            refs.append((_blocks_in(blocks, lo, hi), bounds_of, specs, units[i]))
        gen = (
            _link_window_batch.remote(out, bl, v_ref, bo, sp, cfg.knn_k, d, cfg.mutual_knn, u) for bl, bo, sp, u in refs
        )
        for _ in bounded(gen, cfg.tasks_in_flight):
            pass
    done = set(range(len(units))) - set(todo)
    return len(units), len(done), sum(len(batches[i]) for i in done)


# ---------------------------------------------------------------- guarded merge


@ray.remote
def _merge(
    out: StageOutput, link_uris: list, blocks: list, node_video: np.ndarray, n_nodes: int, d: float, exclusive: bool
) -> np.ndarray:
    """The guarded merge over the sorted link table, in a task: reads the links and the sums of linked identities,
    writes the label per identity and the accepted links (``merge/``), returns the labels."""
    tables = _read_many(link_uris, out.storage)
    t = pa.concat_tables(tables) if tables else _links_table(np.zeros(0), np.zeros(0), np.zeros(0))
    del tables
    src, dst, dist = dedupe_links(t.column("src").to_numpy(), t.column("dst").to_numpy(), t.column("dist").to_numpy())
    del t
    live = dist < d
    touched = np.unique(np.concatenate([src[live], dst[live]]))
    dim = 1
    sums = None
    for a, b, u in blocks:  # only the rows of linked identities are kept
        rows = touched[(touched >= a) & (touched < b)]
        if len(rows) == 0:
            continue
        x = _sums_of(read_table(u, out.storage, columns=["sum"]))
        if sums is None:
            dim = x.shape[1]
            sums = np.zeros((len(touched), dim), np.float32)
        sums[np.searchsorted(touched, rows)] = x[rows - a]
    if sums is None:
        sums = np.zeros((0, dim), np.float32)
    local = np.searchsorted(touched, np.concatenate([src[live], dst[live]]))
    m = int(live.sum())
    tags = node_video[touched].astype(np.int64) if exclusive else None
    res = merge_links(sums, local[:m], local[m:], dist[live], d, tags)
    label = np.arange(n_nodes, dtype=np.int64)
    # a component is named by its smallest node; touched is ascending, so map each local label to its first member
    first = np.full(int(res.label.max()) + 1 if len(res.label) else 0, -1, np.int64)
    first[res.label[::-1]] = touched[::-1]
    label[touched] = first[res.label]
    _, label = np.unique(label, return_inverse=True)
    accepted = np.zeros(len(src), dtype=bool)
    accepted[np.flatnonzero(live)] = res.accepted
    linkage = np.full(len(src), np.nan, dtype=np.float32)  # average linkage of each accepted merge (merge audit)
    linkage[np.flatnonzero(live)] = res.linkage
    out.write_unit(
        "labels",
        pa.table({"node": pa.array(np.arange(n_nodes), pa.int64()), "label": pa.array(label, pa.int64())}),
        subdir=MERGE_DIR,
    )
    out.write_unit(
        "links",
        pa.table({"src": src, "dst": dst, "dist": dist, "accepted": accepted, "linkage": linkage}),
        subdir=MERGE_DIR,
    )
    return label.astype(np.int64)


def run_merge(
    out: StageOutput, blocks: list, node_video: np.ndarray, d: float, exclusive: bool, links_changed: bool = True
) -> np.ndarray:
    """Component per level-2 identity: read back when ``merge/`` holds it and no links file was (re)written in this
    attempt, else computed by ``_merge``."""
    n_nodes = len(node_video)
    if not links_changed and not missing_units(out, ["labels", "links"], subdir=MERGE_DIR):
        t = read_table(out.unit_uri("labels", subdir=MERGE_DIR), out.storage, columns=["label"])
        if t.num_rows == n_nodes:
            return t.column("label").to_numpy().astype(np.int64)
    links = list_files(join(out.uri, WINDOWS_DIR), out.storage)
    return ray.get(_merge.remote(out, links, blocks, ray.put(node_video), n_nodes, d, exclusive))


def accepted_links(out: StageOutput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dist, average linkage) of the links the merge accepted: fewer than one per level-2 identity."""
    import pyarrow.compute as pc

    try:
        t = read_table(
            out.unit_uri("links", subdir=MERGE_DIR), out.storage, columns=["src", "dist", "accepted", "linkage"]
        )
    except DataError:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    t = t.filter(pc.field("accepted"))
    return (
        t.column("src").to_numpy().astype(np.int64),
        t.column("dist").to_numpy().astype(np.float32),
        t.column("linkage").to_numpy().astype(np.float32),
    )


def merged_link_count(out: StageOutput) -> int:
    """Distinct candidate links the merge saw (from the footer of ``merge/links``; 0 when there was no merge)."""
    fs, path = out.storage.pyarrow(out.unit_uri("links", subdir=MERGE_DIR))
    try:
        with fs.open_input_file(path) as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    except (FileNotFoundError, OSError):
        return 0


# ---------------------------------------------------------------- radius re-check


@ray.remote
def _radius_check(out: StageOutput, items: list, offsets: dict, members: list, r: float, unit: str) -> np.ndarray:
    """The radius re-check of merged identities whose images lie in the given videos; writes and returns the
    dropped corpus rows."""
    from cion_dist.correlate.catalog import load_videos

    xs, corpus_rows = [], []
    for rank, _, data in load_videos(items, out.storage):  # items come in rank order, so corpus_rows ascend
        xs.append(data.x)
        corpus_rows.append(np.arange(offsets[rank], offsets[rank] + len(data)))
    rows = np.concatenate(corpus_rows)
    dropped = rows[radius_removals(np.concatenate(xs), [np.searchsorted(rows, m) for m in members], r)]
    out.write_unit(unit, pa.table({"row": pa.array(dropped, pa.int64())}), subdir=RECHECK_DIR)
    return dropped


@ray.remote
def _read_rows(out: StageOutput, units: list) -> np.ndarray:
    tables = _read_many([out.unit_uri(u, subdir=RECHECK_DIR) for u in units], out.storage)
    return np.concatenate([t.column("row").to_numpy() for t in tables]) if tables else np.zeros(0, np.int64)


def radius_recheck(
    out: StageOutput,
    catalog: VideoCatalog,
    ident: np.ndarray,
    node_of: np.ndarray,
    r: float,
    videos_per_task: int,
    in_flight: int = 32,
) -> tuple[np.ndarray, int]:
    """Corpus rows dropped by the radius re-check of identities merged at level 3, and the tasks reused.

    An identity that is one level-2 identity already passed the same check inside its video, so only identities
    joined across videos are sent out, packed into tasks by the videos they touch. Each task saves its result
    (``recheck/``); a rerun reads those back and computes the missing ones only.
    """
    # identities joined across videos: more than one level-2 identity (node) behind them
    node_label = np.full(int(node_of.max()) + 1 if len(node_of) else 0, -1, dtype=np.int64)
    kept = node_of >= 0
    node_label[node_of[kept]] = ident[kept]
    # labels are node ids: per-label lookups instead of sorting the image arrays (isin, unique), and each identity's
    # rows as a slice of one sorted array instead of an array of its own
    size = int(max(node_label.max(initial=-1), ident.max(initial=-1))) + 1
    multi = np.bincount(node_label[node_label >= 0], minlength=size) >= 2
    del node_label, kept
    rows_of = np.flatnonzero((ident >= 0) & multi[np.maximum(ident, 0)])
    ids = ident[rows_of]
    order = np.argsort(ids, kind="stable")  # by identity, rows ascending within one
    ids, rows_of = ids[order], rows_of[order]
    del order
    cuts = np.flatnonzero(np.diff(ids)) + 1
    del ids
    starts = np.concatenate([[0], cuts]) if len(rows_of) else np.zeros(0, np.int64)
    ends = np.concatenate([cuts, [len(rows_of)]]) if len(rows_of) else np.zeros(0, np.int64)
    rank = (np.searchsorted(catalog.bounds, rows_of, side="right") - 1).astype(np.int32)
    tasks, cur, cur_videos = [], [], set()
    for s, e in zip(starts.tolist(), ends.tolist()):
        vids = set(np.unique(rank[s:e]).tolist())
        if cur and len(cur_videos | vids) > 2 * videos_per_task:
            tasks.append((cur, cur_videos))
            cur, cur_videos = [], set()
        cur.append(rows_of[s:e])
        cur_videos |= vids
    if cur:
        tasks.append((cur, cur_videos))
    del rank, starts, ends
    units = [f"r{i:07d}-{int(m[0][0])}" for i, (m, _) in enumerate(tasks)]  # task index and its first image row
    todo = set(missing_units(out, units, subdir=RECHECK_DIR))
    done = [u for i, u in enumerate(units) if i not in todo]
    bounds = catalog.bounds

    def submit():
        for c in range(0, len(done), 256):
            yield _read_rows.remote(out, done[c : c + 256])
        for i in sorted(todo):
            m, v = tasks[i]
            yield _radius_check.remote(
                out, catalog.items(sorted(v)), {int(j): int(bounds[j]) for j in v}, m, r, units[i]
            )

    got = [np.asarray(a, dtype=np.int64) for _, a in bounded(submit(), in_flight)]
    return (np.sort(np.concatenate(got)) if got else np.zeros(0, dtype=np.int64)), len(done)


# ---------------------------------------------------------------- output


@ray.remote
def _write_videos(out: StageOutput, items: list, identity: list, reason: list) -> list[dict]:
    """The output part of each video: its key columns read here, the labels from the driver; returns the parts'
    reports (the driver writes them in batches of thousands, so finalize reads neither parts nor one file per task)."""
    from cion_dist.correlate.catalog import load_keys
    from cion_dist.storage.reports import part_record
    from cion_dist.storage.stage_io import unit_filename

    reason_names = np.array(REASONS, dtype=object)
    reports = []
    for (_, video, uris), ident, rs in zip(items, identity, reason):
        keys = load_keys(video, uris, out.storage)
        if keys.num_rows != len(ident):
            raise DataError(f"{video}: {keys.num_rows} rows in {uris}, {len(ident)} expected; the input changed")
        written = out.write_unit(
            video,
            pa.table(
                {
                    "image_id": keys.column("image_id").cast(pa.string()),
                    "identity_id": pa.array(ident, pa.int64()),
                    "tracklet_id": keys.column("tracklet_id"),
                    "video_id": keys.column("video_id").cast(pa.string()),
                    "removed_at": pa.array(LEVEL_OF_REASON[rs], pa.int8()),
                    "reason": pa.array(np.where(rs > 0, reason_names[rs], None), pa.string()),
                }
            ),
        )
        reports.append(part_record(unit_filename(video), written, rows=keys.num_rows))
    return reports


def write_outputs(
    out: StageOutput,
    catalog: VideoCatalog,
    identity: np.ndarray,
    reason: np.ndarray,
    videos_per_task: int,
    in_flight: int = 32,
) -> None:
    """One output part per video not written yet (one listing), by Ray tasks, a bounded number at a time."""
    bounds = catalog.bounds
    todo = missing_units(out, catalog.videos.tolist())

    def submit(chunk):
        return _write_videos.remote(
            out,
            catalog.items(chunk),
            [identity[bounds[v] : bounds[v + 1]] for v in chunk],
            [reason[bounds[v] : bounds[v + 1]] for v in chunk],
        )

    reports = out.report_writer()
    for _, rows in bounded(
        (submit(todo[c : c + videos_per_task]) for c in range(0, len(todo), videos_per_task)), in_flight
    ):
        reports.add(rows)
    reports.flush()

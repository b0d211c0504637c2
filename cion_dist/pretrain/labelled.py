"""The labelled crop set pretraining reads: ``image_id, identity_id, jpeg`` in identity shards on storage.

Written under ``<output>/labelled/<run_id>/`` before training, as its own stage output (``_SUCCESS.json`` with the
correlate and ingest runs as inputs, so lineage reaches it):

- ``part-shard-<s>-*.parquet``: shard ``s`` holds whole identities, rows sorted by (identity_id, image_id), the
  ``jpeg`` column ``large_binary`` (64-bit offsets: a shard is never limited to 2 GiB);
- ``index/``: one row per identity (``identity_id, shard, images``), what the P x K plans need.

How, without any process holding the corpus:
1. scan tasks read only key columns: each correlate part's ``identity_id`` counts and videos, each ingest part's
   videos. The driver keeps per-part video lists and per-identity counts, and deals identities to shards by image
   count (largest first, snake order, ties broken by the seed), so shards are near equal in images;
2. join tasks, one per correlate part, read that part and the ingest parts holding its videos (correlate and ingest
   both write per video, so normally one each), keep ``identity_id >= 0`` and join on ``image_id``;
3. Ray Data's hash grouping by shard moves each joined row once to the task that writes its shard. This is the
   one exchange of image bytes by identity, done once per labelled set, not per epoch: identities span videos,
   and a P x K batch needs K images of one identity together.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cion_dist.errors import CionError, DataError
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, input_record, read_table, table_to_parquet_bytes, unit_filename

log = logging.getLogger(__name__)
STAGE = "labelled"
INDEX_DIR = "index"
SCHEMA = pa.schema([("image_id", pa.string()), ("identity_id", pa.int64()), ("jpeg", pa.large_binary())])
PARTS_PER_SCAN_TASK = 32
SMALL_SET_IMAGES = 50_000  # up to this many images the exchange runs as plain tasks (a few MB to a few hundred each)
MAP_TASKS_SMALL = 8


# ---------------------------------------------------------------- pure pieces


def num_shards(images: int, identities: int, world: int, shard_images: int, min_ids_per_shard: int) -> int:
    """A multiple of ``world`` near ``images / shard_images``, with at least ``min_ids_per_shard`` identities each
    where the corpus allows (a shard must fill its own batches)."""
    per_rank = max(1, -(-images // (max(1, shard_images) * world)))
    per_rank = min(per_rank, max(1, identities // max(1, world * min_ids_per_shard)))
    return world * per_rank


def deal_shards(counts: np.ndarray, shards: int, seed: int) -> np.ndarray:
    """Shard of each identity: largest first, dealt in snake order (0..S-1, S-1..0, ...), so shards are near equal
    in images and in identities; ties between equal counts are broken at random from the seed."""
    counts = np.asarray(counts, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    order = np.lexsort((rng.random(len(counts)), -counts))
    pos = np.arange(len(counts))
    row, col = pos // shards, pos % shards
    out = np.empty(len(counts), dtype=np.int64)
    out[order] = np.where(row % 2 == 0, col, shards - 1 - col)
    return out


def shard_unit(shard: int) -> str:
    return f"shard-{shard:05d}"


def sort_shard(table: pa.Table) -> pa.Table:
    t = table.select(SCHEMA.names).cast(SCHEMA)
    return t.sort_by([("identity_id", "ascending"), ("image_id", "ascending")])


# ---------------------------------------------------------------- tasks


def _scan_correlate(uris: list[str], storage: Storage) -> list[dict]:
    out = []
    for uri in uris:
        import pyarrow.parquet as pq

        fs, path = storage.fs(uri)
        with fs.open(path, "rb") as f:
            names = pq.ParquetFile(f).schema_arrow.names
        if "identity_id" not in names or "image_id" not in names:
            raise DataError(f"correlate part {uri} lacks image_id / identity_id (has {names})")
        cols = ["identity_id"] + (["video_id"] if "video_id" in names else [])
        t = read_table(uri, storage, cols)
        ids = t["identity_id"].to_numpy(zero_copy_only=False)
        kept = ids[ids >= 0]
        u, c = np.unique(kept, return_counts=True)
        videos = None
        if "video_id" in names:
            videos = sorted(set(pc.unique(t["video_id"].cast(pa.string())).to_pylist()))
        out.append({"uri": uri, "ids": u.astype(np.int64), "counts": c.astype(np.int64), "videos": videos})
    return out


def _scan_ingest(uris: list[str], storage: Storage) -> list[dict]:
    out = []
    for uri in uris:
        t = read_table(uri, storage, ["video_id"])
        out.append({"uri": uri, "videos": sorted(set(pc.unique(t["video_id"].cast(pa.string())).to_pylist()))})
    return out


def join_unit(corr_uri: str, ingest_uris: list[str], storage: Storage) -> pa.Table:
    """The kept rows of one correlate part joined with their crops: ``image_id, identity_id, jpeg``."""
    ids = read_table(corr_uri, storage, ["image_id", "identity_id"])
    ids = ids.filter(pc.greater_equal(ids["identity_id"], 0))
    ids = ids.set_column(0, "image_id", ids["image_id"].cast(pa.string()))
    if ids.num_rows == 0:
        return SCHEMA.empty_table()
    wanted = ids["image_id"]
    pieces = []
    for uri in ingest_uris:
        t = read_table(uri, storage, ["image_id", "jpeg"])
        t = t.set_column(0, "image_id", t["image_id"].cast(pa.string()))
        t = t.filter(pc.is_in(t["image_id"], value_set=wanted))
        pieces.append(t.set_column(1, "jpeg", t["jpeg"].cast(pa.large_binary())))
    crops = (
        pa.concat_tables(pieces)
        if pieces
        else pa.table({"image_id": pa.array([], pa.string()), "jpeg": pa.array([], pa.large_binary())})
    )
    joined = ids.join(crops, "image_id", join_type="inner")
    if joined.num_rows != ids.num_rows:
        have = set(joined["image_id"].to_pylist())
        missing = [i for i in ids["image_id"].to_pylist() if i not in have]
        where = ", ".join(ingest_uris) or "the ingest output"
        raise DataError(f"{len(missing)} images of {corr_uri} have no crop in {where} (e.g. image_id {missing[:3]})")
    return joined.select(SCHEMA.names)


def join_and_tag(batch: dict, identity_ids: np.ndarray, shards: np.ndarray, storage: Storage) -> pa.Table:
    """Ray Data map: join units in, their joined rows tagged with each row's shard out."""
    tables = [join_unit(str(c), list(i), storage) for c, i in zip(batch["corr"], batch["ingest"])]
    t = pa.concat_tables(tables)
    pos = np.searchsorted(identity_ids, t["identity_id"].to_numpy())
    return t.append_column("shard", pa.array(shards[pos], pa.int64()))


def _exchange_with_ray_data(units, ids, shard_of, shards, out, storage) -> list[dict]:
    import ray

    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(
        join_and_tag,
        batch_size=1,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={"identity_ids": ids, "shards": shard_of, "storage": storage},
    )
    ds = ds.groupby("shard", num_partitions=min(shards, 64))
    ds = ds.map_groups(
        _write_shard, batch_format="pyarrow", num_cpus=1, fn_kwargs={"out_uri": out.uri, "storage": storage}
    )
    return ds.take_all()


def _join_split(units: list[dict], ids, shard_of, shards: int, storage: Storage):
    t = join_and_tag(
        {"corr": [u["corr"] for u in units], "ingest": [u["ingest"] for u in units]}, ids, shard_of, storage
    )
    shard = t["shard"].to_numpy()
    parts = [t.filter(pa.array(shard == s)) for s in range(shards)]
    return parts if shards > 1 else parts[0]


def _write_parts(out_uri: str, storage: Storage, shard: int, *parts: pa.Table) -> dict:
    t = pa.concat_tables(parts)
    if t.num_rows == 0:
        return {"shard": shard, "rows": 0, "name": "", "sha256": "", "size": 0, "fingerprint": ""}
    return _write_shard(t, out_uri, storage).to_pylist()[0]


def _exchange_with_tasks(units, ids, shard_of, shards, out, storage) -> list[dict]:
    """Small sets: a few join tasks each return one table per shard, one task per shard writes it (the same
    exchange without Ray Data's shuffle actors, whose start-up dominates below ``SMALL_SET_IMAGES``)."""
    import ray

    m = max(1, min(len(units), MAP_TASKS_SMALL))
    chunks = [units[i::m] for i in range(m)]
    join = ray.remote(num_cpus=1, num_returns=shards)(_join_split)
    refs = [join.remote(c, ids, shard_of, shards, storage) for c in chunks]
    refs = [r if isinstance(r, list) else [r] for r in refs]
    write = ray.remote(num_cpus=1)(_write_parts)
    return ray.get([write.remote(out.uri, storage, s, *[r[s] for r in refs]) for s in range(shards)])


def _write_shard(group: pa.Table, out_uri: str, storage: Storage) -> pa.Table:
    """Write one shard; returns its report (the driver records it, and never reads the shard back)."""
    shard = int(group["shard"][0].as_py())
    t = sort_shard(group.drop_columns(["shard"]))
    written = StageOutput(out_uri, storage).write_unit(shard_unit(shard), t)
    return pa.table(
        {
            "shard": [shard],
            "rows": [t.num_rows],
            "name": [unit_filename(shard_unit(shard))],
            "sha256": [written.sha256],
            "size": [int(written.size)],
            "fingerprint": [written.fingerprint],
        }
    )


def _report(out: StageOutput, written: list[dict]) -> None:
    """The shards' reports, so ``finalize`` combines the digest without reading a shard."""
    reports = out.report_writer()
    reports.add([{k: r[k] for k in ("name", "sha256", "size", "fingerprint", "rows")} for r in written if r["name"]])
    reports.flush()


# ---------------------------------------------------------------- the step


def _unwrap(e: BaseException) -> Optional[CionError]:
    """The data error a Ray (Data) task raised, out of the exceptions Ray wraps it in."""
    todo, seen = [e], set()
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, CionError):
            return x
        todo += [x.__cause__, getattr(x, "cause", None), x.__context__]
    marker = "cion_dist.errors.DataError: "
    text = str(e)
    if marker in text:  # the remote traceback's text is all that crossed the process boundary
        return DataError(text.split(marker, 1)[1].splitlines()[0])
    return None


def scan(corr: StageOutput, crops: StageOutput) -> tuple[list[dict], list[dict]]:
    """Key columns of every correlate and ingest part, read in Ray tasks (a few dozen parts per task)."""
    import ray

    scan_c = ray.remote(num_cpus=1)(_scan_correlate)
    scan_i = ray.remote(num_cpus=1)(_scan_ingest)
    cf, inf = corr.files(), crops.files()
    if not cf:
        raise DataError(f"no Parquet parts in {corr.uri}")
    if not inf:
        raise DataError(f"no Parquet parts in {crops.uri}")
    chunk = PARTS_PER_SCAN_TASK
    rc = [scan_c.remote(cf[i : i + chunk], corr.storage) for i in range(0, len(cf), chunk)]
    ri = [scan_i.remote(inf[i : i + chunk], crops.storage) for i in range(0, len(inf), chunk)]
    try:
        return [x for r in ray.get(rc) for x in r], [x for r in ray.get(ri) for x in r]
    except Exception as e:  # noqa: BLE001 - a task's DataError arrives wrapped by Ray
        raise (_unwrap(e) or e) from None


def identity_counts(corr_parts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([p["ids"] for p in corr_parts]) if corr_parts else np.zeros(0, np.int64)
    cnt = np.concatenate([p["counts"] for p in corr_parts]) if corr_parts else np.zeros(0, np.int64)
    u, inv = np.unique(ids, return_inverse=True)
    return u, np.bincount(inv, weights=cnt, minlength=len(u)).astype(np.int64)


def join_units(corr_parts: list[dict], ingest_parts: list[dict]) -> list[dict]:
    """Each correlate part with the ingest parts that hold its videos (all of them when it names no videos)."""
    by_video: dict[str, list[str]] = {}
    for p in ingest_parts:
        for v in p["videos"]:
            by_video.setdefault(v, []).append(p["uri"])
    every = [p["uri"] for p in ingest_parts]
    units = []
    for p in corr_parts:
        if len(p["ids"]) == 0:
            continue
        if p["videos"] is None:
            need = every
        else:
            need = sorted({u for v in p["videos"] for u in by_video.get(v, [])})
        units.append({"corr": p["uri"], "ingest": need})
    return units


def build(
    corr: StageOutput,
    crops: StageOutput,
    output: str,
    run_id: str,
    *,
    world: int,
    shard_images: int,
    min_ids_per_shard: int,
    seed: int,
    config: dict,
) -> StageOutput:
    """Write (or find complete) the labelled set of ``corr`` x ``crops``; returns its stage output."""
    out = StageOutput.create(output, STAGE, run_id, corr.storage)
    if out.is_complete():
        return out
    corr_parts, ingest_parts = scan(corr, crops)
    ids, counts = identity_counts(corr_parts)
    if len(ids) == 0:
        raise DataError(f"{corr.uri}: no image has an identity (identity_id >= 0)")
    shards = num_shards(int(counts.sum()), len(ids), world, shard_images, min_ids_per_shard)
    shard_of = deal_shards(counts, shards, seed)
    units = join_units(corr_parts, ingest_parts)
    try:
        if int(counts.sum()) <= SMALL_SET_IMAGES:
            written = _exchange_with_tasks(units, ids, shard_of, shards, out, corr.storage)
        else:
            written = _exchange_with_ray_data(units, ids, shard_of, shards, out, corr.storage)
    except Exception as e:  # noqa: BLE001 - a task's DataError arrives wrapped by Ray
        raise (_unwrap(e) or e) from None
    rows = {int(r["shard"]): int(r["rows"]) for r in written}
    expect = np.bincount(shard_of, weights=counts, minlength=shards).astype(np.int64)
    bad = [s for s in range(shards) if rows.get(s, 0) != expect[s]]
    if bad:
        raise DataError(
            f"labelled set {out.uri}: shards {bad[:5]} hold {[rows.get(s, 0) for s in bad[:5]]} rows, "
            f"expected {expect[bad[:5]].tolist()}"
        )
    _report(out, written)
    write_index(out, ids, shard_of, counts)
    return finalize(out, corr, crops, ids, counts, shards, config)


def write_index(out: StageOutput, ids: np.ndarray, shard_of: np.ndarray, counts: np.ndarray) -> None:
    from cion_dist.storage.fs import write_bytes_atomic

    t = pa.table(
        {
            "identity_id": pa.array(ids, pa.int64()),
            "shard": pa.array(shard_of, pa.int64()),
            "images": pa.array(counts, pa.int64()),
        }
    )
    write_bytes_atomic(out.unit_uri("index", subdir=INDEX_DIR), table_to_parquet_bytes(t), out.storage)


def finalize(
    out: StageOutput, corr: Optional[StageOutput], crops: Optional[StageOutput], ids, counts, shards: int, config: dict
) -> StageOutput:
    inputs = [input_record(x) for x in (corr, crops) if x is not None]
    out.finalize(
        stage=STAGE,
        rows={"images": int(np.sum(counts)), "identities": int(len(ids)), "shards": shards},
        inputs=inputs,
        config=config,
    )
    return out


def write_table(
    table: pa.Table,
    output: str,
    run_id: str,
    *,
    world: int,
    shard_images: int,
    min_ids_per_shard: int,
    seed: int,
    storage: Optional[Storage] = None,
) -> StageOutput:
    """A labelled set from an in-memory ``image_id, identity_id, jpeg`` table (small corpora, benchmarks, tests)."""
    st = storage or Storage()
    out = StageOutput.create(output, STAGE, run_id, st)
    if out.is_complete():
        return out
    labels = table["identity_id"].to_numpy()
    keep = labels >= 0
    table = table.filter(pa.array(keep))
    ids, counts = np.unique(labels[keep], return_counts=True)
    if len(ids) == 0:
        raise DataError("no image has an identity (identity_id >= 0)")
    shards = num_shards(int(counts.sum()), len(ids), world, shard_images, min_ids_per_shard)
    shard_of = deal_shards(counts, shards, seed)
    row_shard = shard_of[np.searchsorted(ids, table["identity_id"].to_numpy())]
    written = []
    for s in range(shards):
        part = sort_shard(table.filter(pa.array(row_shard == s)))
        w = out.write_unit(shard_unit(s), part)
        written.append(
            {
                "name": unit_filename(shard_unit(s)),
                "sha256": w.sha256,
                "size": int(w.size),
                "fingerprint": w.fingerprint,
                "rows": part.num_rows,
            }
        )
    _report(out, written)
    write_index(out, ids, shard_of, counts)
    return finalize(out, None, None, ids, counts, shards, {"source": "table"})


# ---------------------------------------------------------------- reading


def read_index(out: StageOutput) -> pa.Table:
    """The per-identity index, sorted by (shard, identity_id): the row order inside each shard file."""
    t = out.read(subdir=INDEX_DIR)
    return t.sort_by([("shard", "ascending"), ("identity_id", "ascending")])


def shard_files(out: StageOutput) -> dict[int, str]:
    files = {}
    for uri in out.files():
        name = uri.rsplit("/", 1)[-1]
        if name.startswith("part-shard-"):
            files[int(name.split("-")[2])] = uri
    return files

"""``cion inspect RUN``: contact sheets of an ingest or correlate run, written as PNG strips and ``index.html``.

Ingest runs: a sample of tracklets per video (longest first), crops evenly spread along each, and the quality
gate's drop counts from the run's summary (dropped crops are not stored). Correlate runs: the identities closest
to the link threshold (the merge audit) first, then the largest and the cross-video ones, each with crops from
each of its videos; then removed images per reason. Crops come from the ingest run the correlate run descends
from (lineage in ``_SUCCESS.json``). Parts are read one at a time with only the columns needed; crops are read
only for the rows shown, so memory stays at a few bytes per tracklet or identity plus the shown crops.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cion_dist.errors import DataError
from cion_dist.inspect.sheets import Group, Section, page_html, strip_png
from cion_dist.storage.fs import Storage, join, write_bytes_atomic
from cion_dist.storage.stage_io import StageOutput, read_table

log = logging.getLogger(__name__)


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def upstream(out: StageOutput, stage: str) -> StageOutput:
    """The run of ``stage`` this run descends from, through the ``inputs`` of each ``_SUCCESS.json``."""
    cur = out
    for _ in range(4):
        rec = cur.success()
        if rec.get("stage") == stage:
            return cur
        nxt = [i for i in rec.get("inputs", []) if i.get("stage") in ("embed", "ingest")]
        if not nxt:
            break
        cur = StageOutput(nxt[0]["uri"], out.storage)
    if cur.success().get("stage") == stage:
        return cur
    raise DataError(f"{out.uri}: no {stage} run found through its inputs (needed for the crops)")


def crops_for(ingest: StageOutput, wanted: dict[str, set]) -> dict[str, bytes]:
    """JPEG per image id, reading only the parts of the videos named in ``wanted`` (video -> image ids)."""
    found: dict[str, bytes] = {}
    for video, ids in wanted.items():
        uri = ingest.unit_uri(video)
        try:
            t = read_table(uri, ingest.storage, columns=["image_id", "jpeg"])
        except (DataError, FileNotFoundError, OSError) as e:
            log.warning("inspect: crops of %s unreadable (%s)", video, e)
            continue
        t = t.filter(pc.is_in(t.column("image_id"), value_set=pa.array(sorted(ids), pa.string())))
        found.update(zip(t.column("image_id").to_pylist(), t.column("jpeg").to_pylist()))
    return found


def ingest_sections(out: StageOutput, max_groups: int, per_group: int) -> tuple[list[Section], dict]:
    files = out.files()
    per_video = max(1, max_groups // max(1, len(files)))
    chosen: list[tuple[str, str, list]] = []  # (video, tracklet, image ids)
    tracklets = 0
    for f in files:
        t = read_table(f, out.storage, columns=["image_id", "video_id", "tracklet_id", "frame_index"])
        if not t.num_rows:
            continue
        df = t.to_pandas().sort_values(["tracklet_id", "frame_index"])
        groups = sorted(df.groupby("tracklet_id"), key=lambda kv: -len(kv[1]))
        tracklets += len(groups)
        for tid, rows in groups[:per_video]:
            chosen.append((str(rows.video_id.iloc[0]), str(tid), _spread(rows.image_id.tolist(), per_group)))
        if len(chosen) >= max_groups:
            break
    wanted: dict[str, set] = defaultdict(set)
    for v, _, ids in chosen:
        wanted[v].update(ids)
    jpeg = crops_for(out, wanted)
    sec = Section(
        "Tracklets",
        f"the longest tracklets of each video ({len(chosen)} of {tracklets} read), {per_group} crops spread along each",
    )
    sec.groups = [Group(f"{tid}", f"{len(ids)} crops shown", [jpeg.get(i, b"") for i in ids]) for _, tid, ids in chosen]
    summary = out.success().get("summary", {})
    facts = {k: v for k, v in summary.items() if k.startswith("gate_") or k in ("clips", "frames_decoded", "detector")}
    return [sec], facts


def correlate_sections(out: StageOutput, max_groups: int, per_group: int) -> tuple[list[Section], dict]:
    summary = out.success().get("summary", {})
    audit = summary.get("merge_audit", {})
    size: dict[int, int] = defaultdict(int)
    videos: dict[int, set] = defaultdict(set)
    removed: dict[str, list] = defaultdict(list)  # reason -> [(video, image id)], a few per reason
    files = out.files()
    for f in files:
        t = read_table(f, out.storage, columns=["image_id", "identity_id", "video_id", "reason"])
        ident = t.column("identity_id").to_numpy()
        vids = t.column("video_id").to_pylist()
        for i, v in zip(ident[ident >= 0].tolist(), [v for v, k in zip(vids, ident) if k >= 0]):
            size[i] += 1
            videos[i].add(v)
        for img, v, r in zip(t.column("image_id").to_pylist(), vids, t.column("reason").to_pylist()):
            if r and len(removed[r]) < per_group:
                removed[r].append((v, img))
    risky = [r["identity"] for r in audit.get("closest_to_threshold", []) if r.get("identity", -1) >= 0]
    largest = sorted(size, key=lambda i: (-size[i], i))
    multi = [i for i in largest if len(videos[i]) > 1]
    picks: list[tuple[int, str]] = []
    for label, ids in (("close to the threshold", risky), ("largest", largest), ("across videos", multi)):
        for i in ids:
            if len(picks) >= max_groups:
                break
            if i in size and i not in {p for p, _ in picks}:
                picks.append((i, label))
    chosen = {i for i, _ in picks}
    members: dict[int, dict[str, list]] = {i: defaultdict(list) for i in chosen}
    for f in files:
        t = read_table(f, out.storage, columns=["image_id", "identity_id", "video_id"])
        ident = t.column("identity_id").to_numpy()
        for img, i, v in zip(t.column("image_id").to_pylist(), ident.tolist(), t.column("video_id").to_pylist()):
            if i in chosen:
                members[i][v].append(img)
    shown: dict[int, list[tuple[str, str]]] = {}
    for i, by_video in members.items():
        k = max(1, per_group // max(1, len(by_video)))  # crops from each of its videos
        shown[i] = [(v, img) for v in sorted(by_video) for img in _spread(by_video[v], k)][
            : max(per_group, len(by_video))
        ]
    wanted: dict[str, set] = defaultdict(set)
    for rows in list(shown.values()) + list(removed.values()):
        for v, img in rows:
            wanted[v].add(img)
    jpeg = crops_for(upstream(out, "ingest"), wanted)
    margin = {r["identity"]: r for r in audit.get("closest_to_threshold", [])}
    ids_sec = Section(
        "Identities",
        "first those whose weakest cross-video link is closest to the threshold (check "
        "these for look-alike merges), then the largest and the cross-video ones; crops from each video",
    )
    for i, label in picks:
        note = f"{label}; {size[i]} images in {len(videos[i])} videos"
        if i in margin:
            note += f"; weakest link {margin[i]['weakest_link']}, margin {margin[i]['margin']}"
        ids_sec.groups.append(Group(f"identity {i}", note, [jpeg.get(img, b"") for _, img in shown[i]]))
    rem_sec = Section("Removed images", "a sample per removal reason")
    rem_sec.groups = [
        Group(r, f"{len(rows)} shown", [jpeg.get(img, b"") for _, img in rows]) for r, rows in sorted(removed.items())
    ]
    c = summary.get("counts", {})
    facts = {
        "images in": c.get("images_in"),
        "identities out": c.get("level3", {}).get("identities_out"),
        "removed by reason": c.get("reasons"),
        "radius r": summary.get("radius"),
        "link distance d": summary.get("link_distance"),
        "identities spanning several videos": audit.get("identities_multi_video"),
    }
    return [ids_sec, rem_sec], facts


def inspect_run(
    run_uri: str, out_dir: str, storage: Optional[Storage] = None, max_groups: int = 24, per_group: int = 12
) -> dict:
    """Write ``index.html`` and its PNG strips for the ingest or correlate run at ``run_uri``."""
    st = storage or Storage()
    run = StageOutput(run_uri.rstrip("/"), st)
    if not run.is_complete():
        raise DataError(f"{run_uri}: not a complete stage run (no _SUCCESS.json)")
    stage = run.success().get("stage")
    if stage == "ingest":
        sections, facts = ingest_sections(run, max_groups, per_group)
    elif stage == "correlate":
        sections, facts = correlate_sections(run, max_groups, per_group)
    else:
        raise DataError(f"{run_uri}: cion inspect reads ingest and correlate runs, this is a {stage!r} run")
    n = 0
    for s in sections:
        for g in s.groups:
            g.file = f"sheet-{n:04d}.png"
            write_bytes_atomic(join(out_dir, g.file), strip_png(g.jpegs), st)
            n += 1
    page = page_html(f"{stage} run {run.uri}", facts, sections)
    index = join(out_dir, "index.html")
    write_bytes_atomic(index, page.encode(), st)
    return {"index": index, "stage": stage, "sheets": n, "sections": {s.title: len(s.groups) for s in sections}}

"""Build a manifest from a folder or an ``s3://`` prefix of videos (``cion manifest``).

Every video file is probed in parallel Ray tasks (a few files per task) with PyAV, which reads the container
headers only: duration, frame rate, frame count, size, codec and the container's ``creation_time`` tag. The
driver keeps one small row per file. Columns written (one row per clip):

- ``video_id``: the path below the root without its extension, with anything but letters, digits, ``.``, ``_``
  and ``-`` replaced by ``_`` (plus ``-sNNNN`` per segment);
- ``uri``: the file's absolute path or ``s3://`` URI;
- ``source``: the camera or channel the video belongs to (level 3 orders videos by source, then start time):
  the ``source`` group of ``source_pattern`` (a regular expression searched in the path below the root), by
  default the name of the file's parent folder;
- ``start_time``: when the clip starts, in **seconds since the Unix epoch (1970-01-01 00:00:00 UTC)**, float:
  from ``time_pattern`` (a regular expression with a ``time`` group, searched in the file name) parsed with
  ``time_format`` (``strptime``, read as UTC unless it carries a zone), else the container's ``creation_time``,
  else null; a segment's start time adds its ``start_s``;
- ``duration_s, fps, frames, width, height, codec, size_bytes``: what the probe read;
- with ``segment_s``: ``start_s, end_s`` (seconds into the file): one long video becomes several clips of at
  most ``segment_s`` seconds without re-encoding; ingest decodes only that range.

Files that cannot be opened or hold no video stream go to an errors table (``video_id, uri, reason``) written
beside the manifest as ``<name>.errors.parquet``; a folder manifest reader skips it.
"""

from __future__ import annotations

import calendar
import io
import logging
import math
import os
import posixpath
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cion_dist.errors import ConfigError, DataError
from cion_dist.ingest.schema import ERRORS
from cion_dist.storage.fs import Storage, is_s3, write_bytes_atomic

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
ERRORS_SUFFIX = ".errors.parquet"


@dataclass(frozen=True)
class ManifestSpec:
    root: str
    out: str
    source_pattern: Optional[str] = None
    time_pattern: Optional[str] = None
    time_format: Optional[str] = None
    segment_s: Optional[float] = None
    extensions: tuple = VIDEO_EXTS
    files_per_task: int = 8

    def __post_init__(self):
        for key in ("source_pattern", "time_pattern"):
            pat = getattr(self, key)
            if pat is None:
                continue
            try:
                group = "source" if key == "source_pattern" else "time"
                if group not in re.compile(pat).groupindex:
                    raise ConfigError(f"manifest {key} {pat!r} has no (?P<{group}>...) group")
            except re.error as e:
                raise ConfigError(f"manifest {key} {pat!r} is not a regular expression ({e})") from None
        if self.time_pattern and not self.time_format:
            raise ConfigError("manifest time_pattern needs time_format (strptime, e.g. %Y%m%d_%H%M%S)")
        if self.segment_s is not None and self.segment_s <= 0:
            raise ConfigError(f"manifest segment_s must be positive, got {self.segment_s}")


def list_videos(root: str, storage: Storage, extensions=VIDEO_EXTS) -> list[str]:
    """Every video file below ``root`` (sorted URIs)."""
    fs, path = storage.fs(root)
    if not fs.exists(path):
        raise DataError(f"manifest root not found: {root}")
    files = [path] if fs.isfile(path) else fs.find(path)
    out = [("s3://" + p) if is_s3(root) else p for p in files if p.lower().endswith(tuple(extensions))]
    return sorted(out)


def relative(uri: str, root: str) -> str:
    base = root.rstrip("/")
    rel = uri[len(base) :].lstrip("/") if uri.startswith(base) else posixpath.basename(uri)
    return rel or posixpath.basename(uri)


def video_id_for(rel: str) -> str:
    stem = posixpath.splitext(rel)[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "video"


def source_for(rel: str, pattern: Optional[str]) -> str:
    """The ``source`` group of ``pattern`` in the relative path, else the parent folder's name ("" at the root)."""
    if pattern:
        m = re.search(pattern, rel)
        if not m:
            raise DataError(f"manifest source_pattern {pattern!r} does not match {rel!r}")
        return m.group("source")
    parent = posixpath.dirname(rel)
    return posixpath.basename(parent)


def epoch_seconds(text: str, fmt: Optional[str] = None) -> float:
    """Seconds since the Unix epoch of a time string: ``strptime(fmt)`` (UTC unless it names a zone), or ISO 8601."""
    if fmt:
        dt = datetime.strptime(text, fmt)
    else:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        return float(calendar.timegm(dt.timetuple())) + dt.microsecond / 1e6
    return dt.astimezone(timezone.utc).timestamp()


def start_time_for(rel: str, probe: dict, pattern: Optional[str], fmt: Optional[str]) -> Optional[float]:
    if pattern:
        m = re.search(pattern, posixpath.basename(rel))
        if m:
            try:
                return epoch_seconds(m.group("time"), fmt)
            except ValueError as e:
                raise DataError(
                    f"manifest time_format {fmt!r} cannot parse {m.group('time')!r} of {rel!r} ({e})"
                ) from None
    created = probe.get("creation_time")
    if created:
        try:
            return epoch_seconds(created)
        except ValueError:
            log.warning("manifest: %s has an unreadable creation_time %r", rel, created)
    return None


def probe_video(uri: str, storage: Storage) -> dict:
    """Container facts of one video (PyAV reads headers, not the stream); raises ``DataError`` naming the file."""
    import av

    fs, path = storage.fs(uri)
    try:
        size = int(fs.size(path))
        with fs.open(path, "rb") as f:
            with av.open(f, mode="r") as c:
                streams = [s for s in c.streams if s.type == "video"]
                if not streams:
                    raise DataError(f"{uri}: no video stream")
                s = streams[0]
                fps = float(s.average_rate or s.guessed_rate or 0.0)
                if s.duration is not None and s.time_base is not None:
                    duration = float(s.duration * s.time_base)
                elif c.duration is not None:
                    duration = c.duration / 1_000_000
                else:
                    duration = 0.0
                frames = int(s.frames or 0) or (int(round(duration * fps)) if fps else 0)
                meta = {**dict(c.metadata or {}), **dict(s.metadata or {})}
                return {
                    "duration_s": duration,
                    "fps": fps,
                    "frames": frames,
                    "width": int(s.codec_context.width),
                    "height": int(s.codec_context.height),
                    "codec": str(s.codec_context.name),
                    "size_bytes": size,
                    "creation_time": meta.get("creation_time"),
                }
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV / fsspec raise many types; name the file
        raise DataError(
            f"{uri}: cannot read video container ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None


def probe_many(uris: list[str], storage: Storage) -> list[dict]:
    """``{"uri", "probe"}`` or ``{"uri", "error"}`` per file."""
    out = []
    for u in uris:
        try:
            out.append({"uri": u, "probe": probe_video(u, storage)})
        except DataError as e:
            out.append({"uri": u, "error": str(e)})
    return out


def segments(duration: float, segment_s: Optional[float]) -> list[tuple[Optional[float], Optional[float]]]:
    """``(start_s, end_s)`` pieces of at most ``segment_s`` covering ``[0, duration)``; one (None, None) without."""
    if not segment_s:
        return [(None, None)]
    n = max(1, math.ceil(duration / segment_s - 1e-9))
    return [(round(k * segment_s, 6), round(min(duration, (k + 1) * segment_s), 6)) for k in range(n)]


def manifest_rows(spec: ManifestSpec, probed: list[dict]) -> tuple[list[dict], list[dict]]:
    """(manifest rows, error rows) from probe results; pure."""
    rows, errors, seen = [], [], {}
    for p in probed:
        rel = relative(p["uri"], spec.root)
        vid = video_id_for(rel)
        if vid in seen:
            vid = f"{vid}-{len(seen)}"  # same stem, different extension
        seen[vid] = True
        if "error" in p:
            errors.append({"video_id": vid, "uri": p["uri"], "reason": p["error"]})
            continue
        pr = p["probe"]
        try:
            source = source_for(rel, spec.source_pattern)
            start = start_time_for(rel, pr, spec.time_pattern, spec.time_format)
        except DataError as e:
            errors.append({"video_id": vid, "uri": p["uri"], "reason": str(e)})
            continue
        pieces = segments(pr["duration_s"], spec.segment_s)
        for k, (s0, s1) in enumerate(pieces):
            row = {
                "video_id": vid if s0 is None else f"{vid}-s{k:04d}",
                "uri": p["uri"],
                "source": source,
                "start_time": None if start is None else start + (s0 or 0.0),
                **{c: pr[c] for c in ("duration_s", "fps", "frames", "width", "height", "codec", "size_bytes")},
            }
            if spec.segment_s:
                row.update(start_s=s0, end_s=s1)
            rows.append(row)
    return rows, errors


MANIFEST_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("source", pa.string()),
        ("start_time", pa.float64()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("frames", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("size_bytes", pa.int64()),
    ]
)
SEGMENT_FIELDS = [pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64())]


def errors_uri(out: str) -> str:
    return (out[: -len(".parquet")] if out.endswith(".parquet") else out) + ERRORS_SUFFIX


def _write(table: pa.Table, uri: str, storage: Storage) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(uri, buf.getvalue(), storage)


def build_manifest(spec: ManifestSpec, storage: Optional[Storage] = None) -> dict:
    """Probe every video under ``spec.root`` in Ray tasks, write the manifest (and errors) atomically; returns
    counts and where they went."""
    import ray

    from cion_dist.raycluster import ensure_ray

    st = storage or Storage()
    t0 = time.perf_counter()
    if not is_s3(spec.root):  # listed files come back absolute: the root must be too for relative paths
        spec = replace(spec, root=os.path.abspath(spec.root))
    files = list_videos(spec.root, st, spec.extensions)
    if not files:
        raise DataError(f"manifest root {spec.root} holds no video files ({', '.join(spec.extensions)})")
    ensure_ray()
    task = ray.remote(num_cpus=1)(probe_many)
    refs = [task.remote(files[i : i + spec.files_per_task], st) for i in range(0, len(files), spec.files_per_task)]
    probed = [p for batch in ray.get(refs) for p in batch]
    rows, errors = manifest_rows(spec, probed)
    schema = pa.schema(list(MANIFEST_SCHEMA) + (SEGMENT_FIELDS if spec.segment_s else []))
    _write(pa.Table.from_pylist(rows, schema=schema), spec.out, st)
    err_uri = errors_uri(spec.out)
    _write(pa.Table.from_pylist(errors, schema=ERRORS), err_uri, st)
    for e in errors:
        log.warning("manifest: %s", e["reason"])
    return {
        "manifest": spec.out,
        "errors_uri": err_uri,
        "files": len(files),
        "clips": len(rows),
        "errors": len(errors),
        "sources": len({r["source"] for r in rows}),
        "seconds": round(time.perf_counter() - t0, 2),
    }

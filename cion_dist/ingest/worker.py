"""The Ray side of ingest: what Ray Data runs over manifest rows, one clip per call.

On CPUs each clip is a plain task (``ingest_row``): Ray reuses its worker processes, and a fresh detector per
clip costs little. With GPUs a pool of ``ClipWorker`` actors keeps one detector session per GPU between clips.

Each call writes the clip's Parquet part itself (so a crash loses at most the clips in flight) and returns one
small stats row to the driver. A clip whose part already exists and is readable is skipped; a part that is torn
(its Parquet footer does not read) is removed and the clip redone. Whatever goes wrong with one clip (a missing,
empty or undecodable file, a URI that names a folder, a detector error) comes back as an error row naming the
clip, the exception type and its message, never as a failure of the whole dataset: the driver then applies
``max_error_fraction``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cion_dist.errors import DataError
from cion_dist.ingest.clip import ingest_clip
from cion_dist.ingest.manifest import resolve_clip_uri
from cion_dist.redact import redact_text
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput

log = logging.getLogger(__name__)

STATS_FIELDS = ("video_id", "uri", "status", "reason", "error_type", "frames", "detections", "crops", "tracklets",
                "seconds")


def stats_row(video_id: str, uri: str, status: str, reason: str = "", frames: int = 0, detections: int = 0,
              crops: int = 0, tracklets: int = 0, seconds: float = 0.0, error_type: str = "") -> dict[str, Any]:
    return {"video_id": video_id, "uri": uri, "status": status, "reason": reason, "error_type": error_type,
            "frames": frames, "detections": detections, "crops": crops, "tracklets": tracklets, "seconds": seconds}


def part_is_intact(out: StageOutput, video_id: str) -> bool:
    """Whether the clip's part exists and its Parquet footer reads (a torn write or a damaged object does not)."""
    import pyarrow.parquet as pq

    uri = out.unit_uri(video_id)
    fs, path = out.storage.fs(uri)
    if not fs.exists(path):
        return False
    try:
        with fs.open(path, "rb") as f:
            pq.ParquetFile(f).metadata  # noqa: B018 - reading the footer is the check
        return True
    except Exception as e:  # noqa: BLE001 - any unreadable part is redone
        log.warning("ingest: part %s of clip %s is unreadable (%s: %s); redoing the clip",
                    uri, video_id, type(e).__name__, redact_text(e))
        fs.rm(path)
        return False


class ClipWorker:
    """Holds what is worth keeping between clips (a neural detector's session); background models are per clip."""

    def __init__(self, cfg, storage: Storage, out_uri: str, manifest_uri: str):
        self.cfg, self.storage, self.manifest_uri = cfg, storage, manifest_uri
        self.out = StageOutput(out_uri, storage)
        self._detector = None

    def _detector_for_clip(self):
        if self.cfg.detector.kind == "background":
            return None  # stateful: ingest_clip builds a fresh one per clip
        if self._detector is None:
            from cion_dist.ingest.detectors import make_detector

            self._detector = make_detector(self.cfg.detector, self.storage)
        return self._detector

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        video_id = str(row["video_id"])
        uri = resolve_clip_uri(str(row["uri"]), self.manifest_uri)
        t0 = time.perf_counter()
        try:
            if part_is_intact(self.out, video_id):
                return stats_row(video_id, uri, "skipped")
            res = ingest_clip(video_id, uri, self.cfg, self.storage, self._detector_for_clip())
            self.out.write_unit(video_id, res.table)
        except Exception as e:  # noqa: BLE001 - one clip's fault never fails the dataset; the driver counts them
            reason = redact_text(e) if isinstance(e, DataError) else f"{type(e).__name__}: {redact_text(e)} ({uri})"
            log.warning("ingest: skipping clip %s: %s", video_id, reason)
            return stats_row(video_id, uri, "error", reason=reason, seconds=time.perf_counter() - t0,
                             error_type=type(e).__name__)
        tracklets = len(set(res.table.column("tracklet_id").to_pylist()))
        return stats_row(video_id, uri, "done", frames=res.frames, detections=res.detections,
                         crops=res.table.num_rows, tracklets=tracklets, seconds=time.perf_counter() - t0)


def ingest_row(row: dict[str, Any], cfg, storage: Storage, out_uri: str, manifest_uri: str) -> dict[str, Any]:
    """Task form of ``ClipWorker`` for CPU runs."""
    return ClipWorker(cfg, storage, out_uri, manifest_uri)(row)

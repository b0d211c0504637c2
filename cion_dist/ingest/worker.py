"""The Ray side of ingest: what Ray Data runs over manifest rows, one clip per call.

On CPUs each clip is a plain task (``ingest_row``): Ray reuses its worker processes, and a fresh detector per
clip costs little. With GPUs a pool of ``ClipWorker`` actors keeps one detector session per GPU between clips.

Each call writes the clip's Parquet part itself (so a crash loses at most the clips in flight) and returns one
small stats row to the driver. A clip whose part already exists is skipped; a missing, empty or undecodable clip
comes back as an error row instead of failing the job.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

from cion_dist.errors import DataError
from cion_dist.ingest.clip import ingest_clip
from cion_dist.ingest.manifest import resolve_clip_uri
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput

log = logging.getLogger(__name__)

STATS_FIELDS = ("video_id", "uri", "status", "reason", "frames", "detections", "crops", "tracklets", "seconds", "gate")


def stats_row(video_id: str, uri: str, status: str, reason: str = "", frames: int = 0, detections: int = 0,
              crops: int = 0, tracklets: int = 0, seconds: float = 0.0, gate: str = "") -> dict[str, Any]:
    """``gate``: the clip's quality-gate tally as JSON (``GateTally.to_dict``), empty when the clip was not run."""
    return {"video_id": video_id, "uri": uri, "status": status, "reason": reason, "frames": frames,
            "detections": detections, "crops": crops, "tracklets": tracklets, "seconds": seconds, "gate": gate}


def _seconds(v) -> Optional[float]:
    """A manifest segment bound (seconds) or None where the manifest has none (column absent or null)."""
    return None if v is None or (isinstance(v, float) and v != v) else float(v)


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
        if self.out.has_unit(video_id):
            return stats_row(video_id, uri, "skipped")
        t0 = time.perf_counter()
        try:
            res = ingest_clip(video_id, uri, self.cfg, self.storage, self._detector_for_clip(),
                              _seconds(row.get("start_s")), _seconds(row.get("end_s")))
        except DataError as e:
            log.warning("ingest: skipping clip %s: %s", video_id, e)
            return stats_row(video_id, uri, "error", reason=str(e), seconds=time.perf_counter() - t0)
        self.out.write_unit(video_id, res.table)
        tracklets = len(set(res.table.column("tracklet_id").to_pylist()))
        return stats_row(video_id, uri, "done", frames=res.frames, detections=res.detections,
                         crops=res.table.num_rows, tracklets=tracklets, seconds=time.perf_counter() - t0,
                         gate=json.dumps(res.gate))


def ingest_row(row: dict[str, Any], cfg, storage: Storage, out_uri: str, manifest_uri: str) -> dict[str, Any]:
    """Task form of ``ClipWorker`` for CPU runs."""
    return ClipWorker(cfg, storage, out_uri, manifest_uri)(row)

"""The Ray side of ingest: what Ray Data runs over manifest rows, one clip per call.

On CPUs each clip is a plain task (``ingest_row``): Ray reuses its worker processes, and a fresh detector per
clip costs little. With GPUs a pool of ``ClipWorker`` actors keeps one detector session per GPU between clips.

Each call writes the clip's Parquet part itself (so a crash loses at most the clips in flight) and returns one
small stats row to the driver, with the part's report (sha256, size, fingerprint) so the driver never reads the
part back. The driver sends only clips without a reported part (a torn or changed part is redone). Whatever goes
wrong with one clip (a missing, empty or undecodable file, a URI that names a folder, a detector error) comes back
as an error row naming the clip, the exception type and its message, never as a failure of the whole dataset:
the driver then applies ``max_error_fraction``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

from cion_dist.errors import DataError
from cion_dist.ingest.clip import ingest_clip
from cion_dist.ingest.manifest import resolve_clip_uri
from cion_dist.redact import redact_text
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, unit_filename

log = logging.getLogger(__name__)


def stats_row(
    video_id: str,
    uri: str,
    status: str,
    reason: str = "",
    frames: int = 0,
    detections: int = 0,
    crops: int = 0,
    tracklets: int = 0,
    seconds: float = 0.0,
    written=None,
    name: str = "",
    error_type: str = "",
    gate: str = "",
) -> dict[str, Any]:
    """One clip's result; for a written part also its report (name, sha256, size, listing fingerprint).
    ``gate``: the clip's quality-gate tally as JSON (``GateTally.to_dict``), empty when the clip was not run."""
    return {
        "video_id": video_id,
        "uri": uri,
        "status": status,
        "reason": reason,
        "error_type": error_type,
        "frames": frames,
        "detections": detections,
        "crops": crops,
        "tracklets": tracklets,
        "seconds": seconds,
        "name": name,
        "sha256": written.sha256 if written else "",
        "size": written.size if written else 0,
        "fingerprint": written.fingerprint if written else "",
        "gate": gate,
    }


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
        t0 = time.perf_counter()
        try:
            res = ingest_clip(
                video_id,
                uri,
                self.cfg,
                self.storage,
                self._detector_for_clip(),
                _seconds(row.get("start_s")),
                _seconds(row.get("end_s")),
            )
            written = self.out.write_unit(video_id, res.table)
        except Exception as e:  # noqa: BLE001 - one clip's fault never fails the dataset; the driver counts them
            reason = redact_text(e) if isinstance(e, DataError) else f"{type(e).__name__}: {redact_text(e)} ({uri})"
            log.warning("ingest: skipping clip %s: %s", video_id, reason)
            return stats_row(
                video_id, uri, "error", reason=reason, seconds=time.perf_counter() - t0, error_type=type(e).__name__
            )
        tracklets = len(set(res.table.column("tracklet_id").to_pylist()))
        return stats_row(
            video_id,
            uri,
            "done",
            frames=res.frames,
            detections=res.detections,
            crops=res.table.num_rows,
            tracklets=tracklets,
            seconds=time.perf_counter() - t0,
            written=written,
            name=unit_filename(video_id),
            gate=json.dumps(res.gate),
        )


def ingest_row(row: dict[str, Any], cfg, storage: Storage, out_uri: str, manifest_uri: str) -> dict[str, Any]:
    """Task form of ``ClipWorker`` for CPU runs."""
    return ClipWorker(cfg, storage, out_uri, manifest_uri)(row)

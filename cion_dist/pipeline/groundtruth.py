"""Ground truth beside the pipeline, never inside it: when the corpus has ground truth (the synthetic one does),
score the ingest tracklets against it and give the correlate stage a crop -> identity file to score against.

The files go to ``<output>/groundtruth/<ingest run>/``, apart from every stage's own output, so no stage reads
ground truth while deciding anything.
"""

from __future__ import annotations

import logging

from cion_dist.stage import StageResult
from cion_dist.storage.fs import Storage, exists, join
from cion_dist.storage.stage_io import write_table_atomic

log = logging.getLogger(__name__)


def attach_ground_truth(job, ingest: StageResult, gt_uri: str) -> str:
    """Add tracking figures to ``ingest.summary`` and return the URI of the crop identity file for correlate."""
    from cion_dist.ingest.tracking_eval import evaluate_ingest_tracking
    from cion_dist.synth.groundtruth import crop_identities

    st = Storage(job.storage)
    run_name = ingest.uri.rstrip("/").rsplit("/", 1)[-1]
    crops_uri = join(job.output, "groundtruth", run_name, "crop_identities.parquet")
    try:
        track = evaluate_ingest_tracking(ingest.uri, gt_uri, st)
        for key in ("idf1", "mota", "num_switches"):
            if key in track:
                ingest.summary[key] = track[key]
    except Exception as e:  # noqa: BLE001 - scoring is a report; the pipeline's output stands without it
        log.warning("tracking evaluation against %s failed: %s", gt_uri, e)
    if not exists(crops_uri, st):
        write_table_atomic(crops_uri, crop_identities(ingest.uri, gt_uri, st), st)
    return crops_uri

"""What written ingest parts say about their clips, read from the Parquet footers alone (no rows).

The driver uses it to settle a run, and the tracking evaluation to rebuild which frames were decoded; neither
needs the other's module.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from cion_dist.ingest.schema import read_clip_metadata
from cion_dist.storage.stage_io import StageOutput


def part_clip_info(out: StageOutput) -> dict[str, tuple[int, float, int]]:
    """video_id -> (source frames, fps, frames decoded) from the footers of the parts written so far."""
    info = {}
    for uri in out.files():
        fs, path = out.storage.pyarrow(uri)
        with fs.open_input_file(path) as f:
            meta = read_clip_metadata(pq.ParquetFile(f).schema_arrow.metadata)
        if meta is not None:
            info[meta[0]] = meta[1:]
    return info

"""Read an embed output back as row keys plus one float32 matrix (what correlate and evaluation need)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from cion_dist.embed.parts import KEY_COLUMNS, embeddings_matrix
from cion_dist.errors import DataError
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput


def read_embeddings(uri: str, storage: Optional[Storage] = None) -> tuple[pa.Table, np.ndarray]:
    """(keys table: image_id, tracklet_id, video_id, frame_index; features float32 [n, d]) of a complete run."""
    out = StageOutput(str(uri).rstrip("/"), storage or Storage())
    if not out.is_complete():
        raise DataError(f"{uri} is not a complete embed output (no _SUCCESS.json); run the embed stage first")
    table = out.read()
    feats = embeddings_matrix(table)
    dim = int(out.success().get("summary", {}).get("embedding_dim") or feats.shape[1])
    if feats.shape[1] != dim:
        raise DataError(f"{uri}: embeddings have width {feats.shape[1]}, _SUCCESS.json says {dim}")
    return table.select(KEY_COLUMNS), feats

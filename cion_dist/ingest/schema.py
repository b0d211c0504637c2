"""Arrow schemas of the ingest output: person crops (the stage contract) and per-clip errors."""

from __future__ import annotations

import pyarrow as pa

CROPS = pa.schema(
    [
        ("image_id", pa.string()),
        ("video_id", pa.string()),
        ("tracklet_id", pa.string()),
        ("frame_index", pa.int64()),
        ("timestamp_s", pa.float64()),
        ("bbox", pa.list_(pa.float32(), 4)),
        ("score", pa.float32()),
        ("jpeg", pa.binary()),
    ]
)

ERRORS = pa.schema(
    [("video_id", pa.string()), ("uri", pa.string()), ("reason", pa.string()), ("error_type", pa.string())]
)

MANIFEST_REQUIRED = ("video_id", "uri")


def tracklet_key(video_id: str, n: int) -> str:
    """Tracklet ids are unique across the corpus: the video id plus the tracklet's rank in its clip."""
    return f"{video_id}/t{n}"


def image_key(tracklet_id: str, frame_index: int) -> str:
    return f"{tracklet_id}/f{int(frame_index):06d}"


META_VIDEO = b"cion.clip.video_id"
META_NUM_FRAMES = b"cion.clip.num_frames"
META_FPS = b"cion.clip.fps"
META_DECODED = b"cion.clip.frames_decoded"


def clip_metadata(video_id: str, num_frames: int, fps: float, decoded: int) -> dict[bytes, bytes]:
    """Parquet key-value metadata of a clip's part: the source's length and rate and how many frames were
    decoded, so evaluation can rebuild which frames were looked at, even for clips with no crops."""
    return {
        META_VIDEO: str(video_id).encode(),
        META_NUM_FRAMES: str(int(num_frames)).encode(),
        META_FPS: repr(float(fps)).encode(),
        META_DECODED: str(int(decoded)).encode(),
    }


def read_clip_metadata(md: dict | None) -> tuple[str, int, float, int] | None:
    """(video_id, source frames, fps, frames decoded), or None for a part without clip metadata."""
    if not md or META_NUM_FRAMES not in md:
        return None
    return md[META_VIDEO].decode(), int(md[META_NUM_FRAMES]), float(md[META_FPS]), int(md[META_DECODED])

"""A tiny identity-labelled crop set written as real ingest / embed / correlate stage outputs.

Each identity is a person-shaped figure with its own shirt and trouser colours on a varying background, so
images of one identity share appearance and the self-distillation loss has something to learn.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, input_record


def person_jpeg(identity: int, variant: int, size=(64, 128)) -> bytes:
    rng = np.random.default_rng([identity, variant])
    pal = np.random.default_rng(1000 + identity).integers(30, 225, size=(2, 3))
    w, h = size
    bg = tuple(int(c) for c in rng.integers(60, 200, size=3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    dx = int(rng.integers(-6, 7))
    d.ellipse((w // 2 - 9 + dx, 4, w // 2 + 9 + dx, 24), fill=(210, 170, 140))
    d.rectangle((w // 2 - 16 + dx, 26, w // 2 + 16 + dx, 70), fill=tuple(int(c) for c in pal[0]))
    d.rectangle((w // 2 - 14 + dx, 70, w // 2 + 14 + dx, h - 6), fill=tuple(int(c) for c in pal[1]))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, size=(h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_labelled_corpus(
    output: str, identities: int = 8, per_identity: int = 6, storage: Storage | None = None, noise_rows: int = 2
) -> dict:
    """ingest (jpeg) -> embed -> correlate (identity_id, a few rows at -1) under ``output``; returns URIs."""
    st = storage or Storage()
    image_ids, ids, jpegs = [], [], []
    for i in range(identities):
        for v in range(per_identity):
            image_ids.append(f"v{i % 3}-t{i}-f{v:03d}")
            ids.append(i)
            jpegs.append(person_jpeg(i, v))
    for j in range(noise_rows):  # images the correlate stage rejected as noise
        image_ids.append(f"noise-{j}")
        ids.append(-1)
        jpegs.append(person_jpeg(100 + j, 0))
    n = len(image_ids)
    ingest = StageOutput.create(output, "ingest", "ingest-test", st)
    ingest.write_unit(
        "all",
        pa.table(
            {
                "image_id": image_ids,
                "video_id": [s.split("-")[0] for s in image_ids],
                "jpeg": pa.array(jpegs, pa.binary()),
            }
        ),
    )
    ingest.finalize(stage="ingest", rows={"crops": n})
    embed = StageOutput.create(output, "embed", "embed-test", st)
    embed.write_unit("all", pa.table({"image_id": image_ids, "embedding": [[0.0, 1.0]] * n}))
    embed.finalize(stage="embed", rows={"embeddings": n}, inputs=[input_record(ingest)])
    corr = StageOutput.create(output, "correlate", "correlate-test", st)
    corr.write_unit(
        "all",
        pa.table(
            {
                "image_id": image_ids,
                "identity_id": pa.array(ids, pa.int64()),
                "video_id": [s.split("-")[0] for s in image_ids],
            }
        ),
    )
    corr.finalize(stage="correlate", rows={"images": n}, inputs=[input_record(embed)])
    return {"ingest": ingest.uri, "embed": embed.uri, "correlate": corr.uri, "images": n - noise_rows}

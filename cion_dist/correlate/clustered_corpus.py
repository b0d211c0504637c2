"""Embedding corpora with known identities: clustered vectors shaped like a tracker's output.

Used by the correlate benchmarks and tests, where the embed stage is not run: people with a fixed look seen in
several videos, and a tracker that splits, mixes and pollutes tracklets, so denoising has measurable work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cion_dist.vectors import l2_normalise


@dataclass
class Corpus:
    x: np.ndarray  # (n, dim) L2-normalised
    video: np.ndarray  # video id strings
    tracklet: np.ndarray  # tracklet id per image (int, unique within a video)
    identity: np.ndarray  # true person id
    image_id: np.ndarray
    extra: dict | None = None  # more embed-table columns (source, start_time)

    def table(self) -> pa.Table:
        cols = {
            "image_id": pa.array(self.image_id),
            "tracklet_id": pa.array(self.tracklet, pa.int64()),
            "video_id": pa.array(self.video),
            "embedding": pa.array(list(self.x), pa.list_(pa.float32())),
        }
        return pa.table({**cols, **{k: pa.array(v) for k, v in (self.extra or {}).items()}})

    def ground_truth(self) -> pa.Table:
        return pa.table({"image_id": pa.array(self.image_id), "identity_id": pa.array(self.identity, pa.int64())})


def make_corpus(
    people: int = 30,
    videos: int = 12,
    people_per_video: int = 6,
    images: int = 12,
    dim: int = 64,
    spread: float = 0.45,
    camera_shift: float = 0.25,
    mix_prob: float = 0.3,
    split_prob: float = 0.3,
    outlier_prob: float = 0.05,
    seed: int = 0,
) -> Corpus:
    """People with a fixed look, seen in several videos; the 'tracker' mixes, splits and pollutes tracklets.

    Videos come in order; each draws people from a sliding range of the population so the same person appears in
    nearby videos (what level 3's windows exploit). Per video a person's look shifts a little (camera/light).
    ``mix_prob``: a tracklet swallows a run of another person's images (identity switch at a crossing);
    ``split_prob``: a person's run is cut into two tracklets; ``outlier_prob``: an image is junk (background).
    """
    rng = np.random.default_rng(seed)
    proto = l2_normalise(rng.normal(size=(people, dim)))
    xs, vids, trks, ids = [], [], [], []
    for v in range(videos):
        lo = int(v * (people - people_per_video) / max(videos - 1, 1))
        who = rng.choice(np.arange(lo, lo + people_per_video), size=people_per_video, replace=False)
        look = l2_normalise(proto[who] + camera_shift * l2_normalise(rng.normal(size=(len(who), dim))))
        runs = []  # (person index in `who`, images)
        for j in range(len(who)):
            f = l2_normalise(look[j] + spread * rng.normal(size=(images, dim)) / np.sqrt(dim))
            junk = rng.random(images) < outlier_prob
            f[junk] = l2_normalise(rng.normal(size=(junk.sum(), dim)))
            runs.append([who[j], f])
        track = 0
        labels = []
        for _pid, f in runs:
            n = len(f)
            t = np.full(n, track)
            if rng.random() < split_prob:
                cut = rng.integers(2, n - 2)
                t[cut:] = track + 1
                track += 1
            track += 1
            labels.append(t)
        for j in range(len(runs)):
            if rng.random() < mix_prob and len(runs) > 1:
                other = (j + 1) % len(runs)
                m = rng.integers(2, max(3, images // 3))
                labels[other][:m] = labels[j][0]  # the tracker keeps j's id on the other's first images
        for (pid, f), t in zip(runs, labels):
            xs.append(f)
            vids += [f"v{v:03d}"] * len(f)
            trks.append(t)
            ids += [pid] * len(f)
    x = np.concatenate(xs).astype(np.float32)
    n = len(x)
    return Corpus(
        x=x,
        video=np.array(vids),
        tracklet=np.concatenate(trks).astype(np.int64),
        identity=np.array(ids, dtype=np.int64),
        image_id=np.array([f"img{i:06d}" for i in range(n)]),
    )


def write_embed_output(
    output: str, corpus: Corpus, run_id: str = "embed-fixture", storage=None, per_video: bool = True
):
    """Write ``corpus`` the way the embed stage does: Parquet parts then ``_SUCCESS.json``; returns the run URI."""
    from cion_dist.storage.fs import Storage
    from cion_dist.storage.stage_io import StageOutput

    out = StageOutput.create(output, "embed", run_id, storage or Storage())
    table = corpus.table()
    if per_video:
        vids = np.asarray(table.column("video_id").to_pylist())
        for v in np.unique(vids):
            out.write_unit(v, table.take(pa.array(np.flatnonzero(vids == v))))
    else:
        out.write_unit("all", table)
    out.finalize(stage="embed", rows={"images": table.num_rows})
    return out.uri

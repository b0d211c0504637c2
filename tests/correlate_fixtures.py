"""Embedding corpora with known identities for the correlate tests (built here, not read from the embed stage)."""

from __future__ import annotations

import numpy as np

from cion_dist.correlate.clustered_corpus import Corpus, make_corpus, write_embed_output  # noqa: F401
from cion_dist.vectors import l2_normalise


def write_ground_truth(uri: str, corpus: Corpus, storage=None) -> str:
    from cion_dist.storage.stage_io import write_table_atomic

    write_table_atomic(uri, corpus.ground_truth(), storage)
    return uri


def colour_descriptor(crops: list[np.ndarray], stripes: int = 6) -> np.ndarray:
    """A small weight-free re-ID feature: per horizontal stripe, a joint HSV histogram (8x4x4), sqrt, L2-normalised."""
    import cv2

    out = []
    for rgb in crops:
        img = cv2.resize(rgb, (32, 96), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int64)
        h, s, v = hsv[..., 0] * 8 // 180, hsv[..., 1] * 4 // 256, hsv[..., 2] * 4 // 256
        code = (h * 4 + s) * 4 + v
        feats = [
            np.bincount(code[i * 96 // stripes : (i + 1) * 96 // stripes].ravel(), minlength=128)
            for i in range(stripes)
        ]
        f = np.sqrt(np.concatenate(feats).astype(np.float32))
        out.append(f)
    return l2_normalise(np.stack(out))


def tracker_noise(
    identity: np.ndarray, frame: np.ndarray, rng: np.random.Generator, split_prob: float = 0.3, swap_prob: float = 0.5
) -> np.ndarray:
    """Tracklet ids for the boxes of one video from its true identities, with a tracker's typical errors.

    Each person's run is one tracklet, cut in two with ``split_prob`` (a lost track); with ``swap_prob`` a
    person's tracklet also takes over the first quarter of another person's run (an identity switch).
    """
    people = np.unique(identity)
    trk = np.zeros(len(identity), dtype=np.int64)
    next_id = 0
    first_of = {}
    for p in people:
        rows = np.flatnonzero(identity == p)
        rows = rows[np.argsort(frame[rows], kind="stable")]
        trk[rows] = next_id
        first_of[p] = next_id
        if len(rows) >= 6 and rng.random() < split_prob:
            trk[rows[len(rows) // 2 :]] = next_id + 1
            next_id += 1
        next_id += 1
    for i, p in enumerate(people):
        if len(people) > 1 and rng.random() < swap_prob:
            other = people[(i + 1) % len(people)]
            rows = np.flatnonzero(identity == other)
            rows = rows[np.argsort(frame[rows], kind="stable")]
            trk[rows[: max(2, len(rows) // 4)]] = first_of[p]
    return trk


def synthetic_video_corpus(
    root: str, seed: int = 0, min_visibility: float = 0.7, min_height: int = 24, embed=None
) -> Corpus:
    """Render the project's synthetic corpus, cut ground-truth crops, embed them and add tracker noise."""
    import decord
    import pyarrow.parquet as pq

    from cion_dist.storage.fs import Storage
    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus
    from cion_dist.synth.groundtruth import read_ground_truth

    cfg = SynthConfig(
        out=root,
        identities=10,
        cameras=2,
        videos=8,
        frames=60,
        width=320,
        height=192,
        people_per_video=4,
        benchmark_identities=0,
        seed=seed,
    )
    info = generate_corpus(cfg, Storage())
    gt = read_ground_truth(info["gt_uri"])
    manifest = pq.read_table(info["manifest_uri"]).to_pandas().set_index("video_id")
    gt = gt[(gt.visibility >= min_visibility) & ((gt.y2 - gt.y1) >= min_height) & ((gt.x2 - gt.x1) >= 8)]
    rng = np.random.default_rng(seed)
    xs, vids, trks, ids, names, srcs, starts, fidx = [], [], [], [], [], [], [], []
    for video, rows in gt.groupby("video_id", sort=True):
        vr = decord.VideoReader(manifest.loc[video, "uri"])
        frames = sorted(rows.frame_index.unique().tolist())
        batch = vr.get_batch(frames).asnumpy()
        pos = {f: i for i, f in enumerate(frames)}
        crops = [batch[pos[r.frame_index], int(r.y1) : int(r.y2), int(r.x1) : int(r.x2)] for r in rows.itertuples()]
        xs.append((embed or colour_descriptor)(crops))
        ident = rows.identity_id.to_numpy()
        trks.append(tracker_noise(ident, rows.frame_index.to_numpy(), rng))
        ids.append(ident)
        vids += [video] * len(rows)
        names += [f"{video}/{r.frame_index:05d}/{r.identity_id}" for r in rows.itertuples()]
        srcs += [manifest.loc[video, "source"]] * len(rows)
        starts += [float(manifest.loc[video, "start_time"])] * len(rows)
        fidx += rows.frame_index.astype(int).tolist()
    return Corpus(
        x=np.concatenate(xs),
        video=np.array(vids),
        tracklet=np.concatenate(trks),
        identity=np.concatenate(ids),
        image_id=np.array(names),
        extra={"source": srcs, "start_time": starts, "frame_index": fidx},
    )


def mot17_osnet_corpus(
    mot_root, model_path, seed: int = 0, min_visibility: float = 0.4, min_height: int = 48, max_per_sequence: int = 120
) -> Corpus:
    """Real people: MOT17 ground-truth pedestrians cut from the frames and embedded with OSNet (onnxruntime).

    Each sequence is a video; a person's true identity is (sequence, gt id); tracklets get ``tracker_noise``.
    OSNet wants RGB 256x128 with ImageNet mean/std and returns 512-d features, L2-normalised here.
    """
    import cv2
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    from cion_dist.images import IMAGENET_MEAN, IMAGENET_STD

    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    rng = np.random.default_rng(seed)
    xs, vids, trks, ids, names, fidx = [], [], [], [], [], []
    for seq in sorted(p for p in mot_root.iterdir() if (p / "gt" / "gt.txt").exists()):
        gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2)
        keep = (gt[:, 6] == 1) & (gt[:, 7] == 1) & (gt[:, 8] >= min_visibility) & (gt[:, 5] >= min_height)
        gt = gt[keep]
        gt = gt[np.isin(gt[:, 0], [int(p.stem) for p in (seq / "img1").glob("*.jpg")])]
        gt = gt[np.lexsort((gt[:, 0], gt[:, 1]))][:max_per_sequence]
        if len(gt) == 0:
            continue
        crops = []
        frames = {}
        for f, _pid, x, y, w, h in gt[:, :6]:
            img = frames.get(f)
            if img is None:
                img = frames[f] = cv2.cvtColor(cv2.imread(str(seq / "img1" / f"{int(f):06d}.jpg")), cv2.COLOR_BGR2RGB)
            H, W = img.shape[:2]
            x0, y0, x1, y1 = max(0, int(x)), max(0, int(y)), min(W, int(x + w)), min(H, int(y + h))
            crops.append(cv2.resize(img[y0:y1, x0:x1], (128, 256), interpolation=cv2.INTER_LINEAR))
        batch = ((np.stack(crops).astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
        feats = np.concatenate(
            [sess.run(None, {sess.get_inputs()[0].name: batch[i : i + 32]})[0] for i in range(0, len(batch), 32)]
        )
        xs.append(l2_normalise(feats))
        pid = gt[:, 1].astype(np.int64)
        trks.append(tracker_noise(pid, gt[:, 0].astype(np.int64), rng))
        ids += [f"{seq.name}/{p}" for p in pid]
        vids += [seq.name] * len(gt)
        names += [f"{seq.name}/{int(f):06d}/{int(p)}" for f, p in gt[:, :2]]
        fidx += gt[:, 0].astype(int).tolist()
    identity = np.unique(np.array(ids), return_inverse=True)[1]
    return Corpus(
        x=np.concatenate(xs),
        video=np.array(vids),
        tracklet=np.concatenate(trks),
        identity=identity,
        image_id=np.array(names),
        extra={"frame_index": fidx},
    )

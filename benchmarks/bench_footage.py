"""Crop quality gate and switch splitting, before / after, on pipeline output with ground truth.

One synthetic corpus (people who walk in and out of frame, cross and occlude each other) goes through ingest ->
embed -> correlate four times in one run: gate off and switch splitting off (the baseline), gate on only, both
on, and both on with the opt-in border check. Ground truth says, for every crop the ingest stage kept, whether it
is dirty:

- truncated: the matched person's true box leaves the frame;
- occluded: the matched person is less than 60% visible;
- two people: another person's true box covers 30% or more of the crop;
- no person: no true box overlaps it at IoU 0.5.

Figures: crops kept, dirty fraction of kept crops (and by kind), ingest tracklets mixing two people (the minority
person has 2 or more crops), correlate identities mixing people (minority share 10% or more), and pairwise F of
the identities (scored on the crops that match a true person). Optionally (``--vtest``) the gate's figures on the
real vtest.avi street video with tiled YOLOX-Nano (no ground truth: drop counts and the kept crops' edge share).

    python benchmarks/bench_footage.py [--videos 6 --frames 80] [--vtest]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from datadir import SHARED_DATA

from cion_dist.config import job_from_dict
from cion_dist.ingest.boxes import iou_matrix
from cion_dist.pipeline.runner import run_pipeline
from cion_dist.storage.stage_io import StageOutput
from cion_dist.synth.groundtruth import read_ground_truth

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "baseline (gate off, split off)": ({"enabled": False}, {"enabled": False}),
    "gate on, split off": ({}, {"enabled": False}),
    "gate on, split on": ({}, {}),
    "gate + border check, split on": ({"border_margin": 0.005}, {}),
}


def dirty_kinds(crops: pd.DataFrame, gt: pd.DataFrame, width: int, height: int) -> pd.DataFrame:
    """Per crop: matched true identity (-1 none) and booleans truncated / occluded / two_people / no_person."""
    out = pd.DataFrame(
        {"identity": -1, "truncated": False, "occluded": False, "two_people": False, "no_person": True},
        index=crops.index,
    )
    truth = {k: g for k, g in gt.groupby(["video_id", "frame_index"], sort=False)}
    for key, idx in crops.groupby(["video_id", "frame_index"], sort=False).groups.items():
        g = truth.get(key)
        if g is None:
            continue
        cb = crops.loc[idx, ["x1", "y1", "x2", "y2"]].to_numpy(float)
        gb = g[["x1", "y1", "x2", "y2"]].to_numpy(float)
        iou = iou_matrix(cb, gb)
        # share of each crop covered by each true box
        ix = np.clip(np.minimum(cb[:, None, 2], gb[None, :, 2]) - np.maximum(cb[:, None, 0], gb[None, :, 0]), 0, None)
        iy = np.clip(np.minimum(cb[:, None, 3], gb[None, :, 3]) - np.maximum(cb[:, None, 1], gb[None, :, 1]), 0, None)
        cover = ix * iy / np.maximum((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]), 1e-9)[:, None]
        for row, i in enumerate(idx):
            j = int(np.argmax(iou[row]))
            if iou[row, j] < 0.5:
                continue
            t = g.iloc[j]
            others = np.delete(cover[row], j)
            out.loc[i] = [
                int(t.identity_id),
                bool(t.x1 < 0 or t.y1 < 0 or t.x2 > width or t.y2 > height),
                bool(t.visibility < 0.6),
                bool(len(others) and others.max() >= 0.3),
                False,
            ]
    return out


def mixed(groups: np.ndarray, identity: np.ndarray, min_count=2, min_share=0.0) -> tuple[int, int]:
    """(groups mixing people, groups): the second most frequent true person has min_count crops / min_share."""
    n = total = 0
    for g in np.unique(groups):
        ids = identity[(groups == g) & (identity >= 0)]
        if not len(ids):
            continue
        total += 1
        counts = np.sort(np.unique(ids, return_counts=True)[1])
        n += int(len(counts) > 1 and counts[-2] >= min_count and counts[-2] / len(ids) >= min_share)
    return n, total


def run_setting(output: str, synth: dict, gate: dict, split: dict):
    job = job_from_dict(
        {
            "stage": "pipeline",
            "output": output,
            "mlflow": {"enabled": False},
            "pipeline": {"stages": ["synth", "ingest", "embed", "correlate"]},
            "synth": synth,
            "ingest": {"detector": {"kind": "background"}, "concurrency": 2, "gate": gate},
            "embed": {"backbone": "handcrafted"},
            "correlate": {"window_videos": 4, "stride_videos": 2, "num_shards": 1, "switch_split": split},
        }
    )
    res = {r.stage: r for r in run_pipeline(job)}
    gt = read_ground_truth(res["synth"].summary["gt_uri"])
    t = StageOutput(res["ingest"].uri).read(columns=["image_id", "video_id", "tracklet_id", "frame_index", "bbox"])
    bbox = np.asarray(t.column("bbox").to_pylist(), float).reshape(-1, 4)
    crops = pd.DataFrame(
        {
            "image_id": t.column("image_id").to_pylist(),
            "video_id": t.column("video_id").to_pylist(),
            "tracklet_id": t.column("tracklet_id").to_pylist(),
            "frame_index": t.column("frame_index").to_numpy(),
            "x1": bbox[:, 0],
            "y1": bbox[:, 1],
            "x2": bbox[:, 2],
            "y2": bbox[:, 3],
        }
    )
    kinds = dirty_kinds(crops, gt, synth["width"], synth["height"])
    dirty = kinds[["truncated", "occluded", "two_people", "no_person"]].any(axis=1)
    trk_mixed, trk_total = mixed(crops.tracklet_id.to_numpy(), kinds.identity.to_numpy())
    c = StageOutput(res["correlate"].uri).read(columns=["image_id", "identity_id"]).to_pandas()
    c = c.merge(pd.DataFrame({"image_id": crops.image_id, "truth": kinds.identity.to_numpy()}), on="image_id")
    kept = c[c.identity_id >= 0]
    id_mixed, id_total = mixed(kept.identity_id.to_numpy(), kept.truth.to_numpy(), min_share=0.1)
    q = res["correlate"].summary.get("quality", {}).get("cion", {})
    return {
        "crops kept": len(crops),
        "dirty kept": float(dirty.mean()),
        **{k: float(kinds[k].mean()) for k in ("truncated", "occluded", "two_people", "no_person")},
        "mixed tracklets": f"{trk_mixed}/{trk_total}",
        "mixed identities": f"{id_mixed}/{id_total}",
        "pairwise F": q.get("pairwise_f", float("nan")),
        "gate dropped": {
            k[len("gate_dropped_") :]: v
            for k, v in res["ingest"].summary.items()
            if k.startswith("gate_dropped_") and v
        },
        "switch cuts": res["correlate"].summary.get("switch_cuts_now", 0),
    }


def vtest_gate(data: Path, out: str) -> None:
    import pyarrow as pa

    from cion_dist.ingest.job import run
    from cion_dist.storage.stage_io import write_table_atomic

    manifest = os.path.join(out, "vtest-manifest.parquet")
    write_table_atomic(
        manifest,
        pa.table(
            {
                "video_id": ["vtest"],
                "uri": [str(data / "videos" / "vtest.avi")],
                "source": ["campus"],
                "start_time": [0.0],
            }
        ),
    )
    for name, gate in (("gate off", {"enabled": False}), ("gate on", {})):
        job = job_from_dict(
            {
                "stage": "ingest",
                "output": out,
                "mlflow": {"enabled": False},
                "ingest": {
                    "manifest": manifest,
                    "sample_fps": 5,
                    "detector": {
                        "kind": "yolox",
                        "score_threshold": 0.45,
                        "model_uri": str(data / "models" / "yolox_nano.onnx"),
                        "tiles": {"grid": [2, 2]},
                    },
                    "gate": gate,
                },
            }
        )
        s = run(job).summary
        print(
            f"vtest.avi, YOLOX-Nano tiles 2x2, {name}: {s['gate_kept']} of {s['gate_considered']} tracked crops "
            f"kept, dropped { ({k[13:]: v for k, v in s.items() if k.startswith('gate_dropped_') and v}) }, "
            f"kept touching an edge {s['gate_kept_edge_touch_fraction']:.3f}, h/w histogram "
            f"{s['gate_kept_aspect_histogram']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--vtest", action="store_true")
    ap.add_argument("--data", default=str(SHARED_DATA))
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="bench-footage-")
    synth = {
        "identities": 8,
        "cameras": 3,
        "videos": args.videos,
        "frames": args.frames,
        "width": 320,
        "height": 192,
        "people_per_video": 4,
        "benchmark_identities": 0,
        "seed": 0,
    }
    rows = {name: run_setting(out, synth, gate, split) for name, (gate, split) in SETTINGS.items()}
    print(f"synthetic corpus: {args.videos} videos x {args.frames} frames, background detector, handcrafted features")
    for name, r in rows.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if args.vtest:
        vtest_gate(Path(args.data), out)


if __name__ == "__main__":
    main()

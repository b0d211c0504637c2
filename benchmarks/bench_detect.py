"""Person detection on real MOT17 frames against human ground truth: whole frame vs tiled inference.

For each detector setting (whole frame; tile grids with the whole frame), every frame of ``mot17_mini`` is run
once at a low score floor; precision and recall at IoU 0.5 over visible pedestrians (MOT17 class 1, counted,
visibility >= 0.5; other annotated people are ignore regions) are then read off at each score threshold, since
greedy NMS keeps a box depending only on higher-scoring boxes. Recall is also split by ground-truth box height.
Frames/s is measured per setting in the same run (one onnxruntime thread), so settings compare under the same
machine load. The whole-frame setting at the shipped threshold is the baseline.

    python benchmarks/bench_detect.py [--grids 1x1,2x2,3x2,3x3] [--thresholds 0.2,0.25,0.3,0.35]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from datadir import SHARED_DATA

from cion_dist.ingest.config import DetectorConfig
from cion_dist.ingest.detection_eval import (
    DetectionCounts,
    match_frame,
    matched_ground_truth,
    recall_by_height,
)
from cion_dist.ingest.detectors import make_detector

ROOT = Path(__file__).resolve().parents[1]


def load_frames(mot_root: Path):
    """[(sequence, rgb, gt boxes counted, gt boxes ignored)] for every frame of every sequence."""
    out = []
    for seq in sorted(mot_root.glob("MOT17-*")):
        gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2)
        for img in sorted((seq / "img1").glob("*.jpg")):
            g = gt[gt[:, 0] == int(img.stem)]
            boxes = np.c_[g[:, 2], g[:, 3], g[:, 2] + g[:, 4], g[:, 3] + g[:, 5]]
            counted = (g[:, 6] == 1) & (g[:, 7] == 1) & (g[:, 8] >= 0.5)
            out.append((seq.name, cv2.imread(str(img))[:, :, ::-1].copy(), boxes[counted], boxes[~counted]))
    return out


def run_setting(frames, model: str, grid: tuple[int, int], overlap: float, floor: float):
    cfg = DetectorConfig(kind="yolox", model_uri=model, score_threshold=floor, tiles={"grid": grid, "overlap": overlap})
    det = make_detector(cfg)
    det.detect([frames[0][1]])  # warm-up
    preds, t0 = [], time.perf_counter()
    for _, rgb, _, _ in frames:
        preds.append(det.detect([rgb])[0])
    return preds, len(frames) / (time.perf_counter() - t0)


def score(frames, preds, threshold: float):
    total, hits, heights = DetectionCounts(), [], []
    for (_, _, gt, ign), (boxes, scores) in zip(frames, preds):
        b = boxes[scores >= threshold]
        total = total + match_frame(b, gt, ign)
        hits.append(matched_ground_truth(b, gt))
        heights.append(gt[:, 3] - gt[:, 1])
    return total, recall_by_height(np.concatenate(heights), np.concatenate(hits))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(SHARED_DATA))
    ap.add_argument("--grids", default="1x1,2x2,3x2,3x3")
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--thresholds", default="0.15,0.2,0.25,0.3,0.35")
    args = ap.parse_args()
    data = Path(args.data)
    model = str(data / "models" / "yolox_nano.onnx")
    frames = load_frames(data / "mot17_mini" / "train")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    n_gt = sum(len(f[2]) for f in frames)
    print(f"MOT17 mini: {len(frames)} frames, {n_gt} visible pedestrians; YOLOX-Nano {model}; IoU 0.5")
    header = None
    for g in args.grids.split(","):
        grid = tuple(int(v) for v in g.split("x"))
        preds, fps = run_setting(frames, model, grid, args.overlap, min(thresholds))
        name = "whole frame" if grid == (1, 1) else f"tiles {g} + whole"
        for t in thresholds:
            counts, by_h = score(frames, preds, t)
            if header is None:
                header = (
                    f"{'setting':<18} {'thr':>5} {'P':>6} {'R':>6} "
                    + " ".join(f"{'R' + lab + ' (' + str(n) + ')':>14}" for lab, n, _ in by_h)
                    + f" {'frames/s':>9}"
                )
                print(header)
            print(
                f"{name:<18} {t:>5.2f} {counts.precision:>6.3f} {counts.recall:>6.3f} "
                + " ".join(f"{r:>14.3f}" for _, _, r in by_h)
                + f" {fps:>9.2f}"
            )


if __name__ == "__main__":
    main()

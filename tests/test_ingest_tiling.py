"""Detector plumbing: input size read from the ONNX model, batched calls, tiled inference merged across tiles."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from cion_dist.errors import ConfigError
from cion_dist.ingest.boxes import nms
from cion_dist.ingest.config import DetectorConfig, TileConfig
from cion_dist.ingest.detection_eval import matched_ground_truth, recall_by_height
from cion_dist.ingest.detectors import make_detector
from cion_dist.ingest.detectors.onnx_model import resolve_input
from cion_dist.ingest.detectors.tiling import TiledDetector, cut_by_window, tile_windows
from cion_dist.ingest.detectors.yolox import YoloxDetector, anchor_grid


def test_input_size_comes_from_a_fixed_model_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        spec = resolve_input([1, 3, 416, 416], "images", 640)
    assert (spec.height, spec.width, spec.max_batch) == (416, 416, 1)
    assert "input_size=640 overridden" in caplog.text and "416x416" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_input([1, 3, 416, 416], "images", 416).height == 416
        assert resolve_input([1, 3, 416, 416], "images", None).width == 416
    assert caplog.text == ""
    dyn = resolve_input(["batch", 3, "h", "w"], "images", 512)
    assert (dyn.height, dyn.width, dyn.max_batch) == (512, 512, None)
    assert resolve_input(["batch", 3, "h", "w"], "images", None).height == 640
    with pytest.raises(ConfigError, match="expected \\[batch, 3, height, width\\]"):
        resolve_input([1, 416, 416], "images", None)


def test_shipped_yolox_nano_ignores_a_configured_640(shared_data, caplog):
    with caplog.at_level(logging.WARNING):
        det = make_detector(
            DetectorConfig(kind="yolox", model_uri=str(shared_data / "models" / "yolox_nano.onnx"), input_size=640)
        )
    assert det.size == (416, 416) and det.spec.max_batch == 1
    assert "overridden" in caplog.text


def _export_yolox_like(path, size: int):
    """A dynamic-batch ONNX model shaped like a raw YOLOX head at ``size``: one person box at a fixed anchor whose
    objectness is the image's mean brightness / 255, so each image of a batch gets its own score."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    grid, _ = anchor_grid(size)
    base = torch.zeros(len(grid), 85)
    a = 5 * (size // 8) + 6  # stride-8 anchor at x=6, y=5: centre (52, 44) in model pixels
    base[a, :4] = torch.tensor([0.5, 0.5, float(np.log(2.0)), float(np.log(5.0))])  # 16 x 40
    base[a, 5] = 1.0
    mask = torch.zeros(len(grid), 85)
    mask[a, 4] = 1.0

    class Head(torch.nn.Module):
        def forward(self, x):
            bright = x.mean(dim=(1, 2, 3)) / 255.0
            return base[None] + mask[None] * bright[:, None, None]

    torch.onnx.export(
        Head(),
        torch.zeros(1, 3, size, size),
        str(path),
        input_names=["images"],
        output_names=["output"],
        dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    return a


def test_any_yolox_size_and_a_dynamic_batch(tmp_path):
    size = 320
    _export_yolox_like(tmp_path / "m.onnx", size)
    det = YoloxDetector(str(tmp_path / "m.onnx"), input_size=None, score_threshold=0.3, batch_size=3)
    assert det.size == (size, size) and det.spec.max_batch is None
    frames = np.stack([np.full((size, size, 3), v, np.uint8) for v in (200, 50, 150, 250, 120)])
    out = det.detect(frames)  # 5 images in calls of 3 + 2
    got = [len(b) for b, _ in out]
    assert got == [1, 0, 1, 1, 1]
    for (b, s), v in zip(out, (200, 50, 150, 250, 120)):
        if len(b):
            np.testing.assert_allclose(b[0], [44, 24, 60, 64], atol=1e-4)
            assert s[0] == pytest.approx(v / 255, abs=1e-3)
    one_by_one = [det.detect(f[None])[0] for f in frames]
    for (b1, s1), (b2, s2) in zip(out, one_by_one):
        np.testing.assert_allclose(b1, b2)
        np.testing.assert_allclose(s1, s2)


def test_tile_windows_cover_the_frame_with_overlap():
    w = tile_windows(1920, 1080, 3, 2, 0.25)
    assert w.shape == (6, 4)
    assert w[:, 0].min() == 0 and w[:, 2].max() == 1920 and w[:, 1].min() == 0 and w[:, 3].max() == 1080
    tw = w[0, 2] - w[0, 0]
    assert tw == pytest.approx(1920 / (3 - 2 * 0.25), abs=1)
    assert w[0, 2] - w[1, 0] == pytest.approx(0.25 * tw, abs=1)  # neighbours share a quarter of a tile
    assert tile_windows(100, 80, 1, 1, 0.25).tolist() == [[0, 0, 100, 80]]


def test_cut_by_window_only_counts_inner_edges():
    boxes = np.array([[0, 10, 20, 50], [40, 10, 60, 50], [80, 10, 100, 50]], float)
    cut = cut_by_window(boxes, (0, 0, 100, 60), 200, 60, margin=1)
    assert cut.tolist() == [False, False, True]  # x=0 is the frame's edge, x=100 an inner tile edge


class BlobDetector:
    """A stateless stand-in model: every white connected region of an image is a person, score 0.9."""

    def __init__(self):
        self.calls = []

    def detect(self, frames):
        self.calls.append(len(frames))
        out = []
        for f in frames:
            n, _, stats, _ = cv2.connectedComponentsWithStats((f[:, :, 0] > 128).astype(np.uint8))
            b = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]], np.float32).reshape(-1, 4)
            out.append((b, np.full(len(b), 0.9, np.float32)))
        return out


def test_tiled_detector_merges_duplicates_and_drops_people_cut_by_a_tile():
    frame = np.zeros((200, 400, 3), np.uint8)
    # the middle person crosses the left tile's right edge (tiles span x 0-229 and 171-400)
    people = np.array([[30, 40, 50, 100], [220, 60, 280, 140], [330, 20, 360, 90]], float)
    for x1, y1, x2, y2 in people.astype(int):
        frame[y1:y2, x1:x2] = 255
    inner = BlobDetector()
    det = TiledDetector(inner, TileConfig(grid=(2, 1), overlap=0.25), nms_threshold=0.45)
    ((boxes, scores),) = det.detect([frame])
    assert inner.calls == [3]  # the whole frame and both tiles in one batch
    order = np.argsort(boxes[:, 0])
    np.testing.assert_allclose(boxes[order], people)  # each person once, none as a cut piece
    assert np.all(scores == pytest.approx(0.9))
    wins = tile_windows(400, 200, 2, 1, 0.25)
    assert wins.tolist() == [[0, 0, 229, 200], [171, 0, 400, 200]]
    # without dropping cut boxes, the left tile's piece (215-229) would survive NMS beside the whole person
    piece = np.array([[220, 60, 229, 140]], float)
    assert cut_by_window(piece, wins[0], 400, 200, 1).item()
    assert len(nms(np.r_[people[1:2], piece], np.array([0.9, 0.9]), 0.45)) == 2


def test_tiles_need_a_stateless_detector():
    with pytest.raises(ValueError, match="cannot be tiled"):
        DetectorConfig(kind="background", tiles={"grid": [2, 2]})
    with pytest.raises(ValueError, match="positive"):
        TileConfig(grid=(0, 2))


def test_recall_by_height_bins():
    gt = np.array([[0, 0, 10, 50], [0, 0, 10, 100], [0, 0, 10, 200], [0, 0, 10, 300]], float)
    hit = matched_ground_truth(gt[[1, 3]] + 1, gt)
    assert hit.tolist() == [False, True, False, True]
    labels = recall_by_height(gt[:, 3] - gt[:, 1], hit)
    assert [(lab, n, r) for lab, n, r in labels] == [
        ("<64", 1, 0.0),
        ("64-128", 1, 1.0),
        ("128-256", 1, 0.0),
        (">256", 1, 1.0),
    ]


def test_tiled_yolox_meets_the_recall_target_on_mot17(shared_data):
    """Tiles 3x2 + whole frame at score 0.45 (benchmarks/bench_detect.py): recall >= 0.6 at precision >= 0.8."""
    from cion_dist.ingest.detection_eval import DetectionCounts, match_frame

    cfg = DetectorConfig(
        kind="yolox",
        model_uri=str(shared_data / "models" / "yolox_nano.onnx"),
        score_threshold=0.45,
        tiles={"grid": [3, 2]},
    )
    det = make_detector(cfg)
    total = DetectionCounts()
    for seq in sorted((shared_data / "mot17_mini" / "train").glob("MOT17-*")):
        gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2)
        for img in sorted((seq / "img1").glob("*.jpg")):
            g = gt[gt[:, 0] == int(img.stem)]
            gb = np.c_[g[:, 2], g[:, 3], g[:, 2] + g[:, 4], g[:, 3] + g[:, 5]]
            counted = (g[:, 6] == 1) & (g[:, 7] == 1) & (g[:, 8] >= 0.5)
            ((boxes, _),) = det.detect([cv2.imread(str(img))[:, :, ::-1]])
            total = total + match_frame(boxes, gb[counted], gb[~counted])
    print(f"MOT17 mini, yolox_nano tiles 3x2 + whole, score 0.45: P={total.precision:.3f} R={total.recall:.3f}")
    assert total.precision >= 0.8 and total.recall >= 0.6

"""Figures of correlation and pretraining runs: the numbers behind them, and PNGs that open."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cion_dist.correlate.denoise import REASONS
from cion_dist.correlate.plots import (
    HIST_BINS,
    correlate_figures,
    distance_histogram,
    identity_statistics,
)
from cion_dist.pretrain.plots import pretrain_figures, smooth


def _opens(png: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    return img.size


def test_identity_statistics_count_images_and_distinct_videos():
    identity = np.array([0, 0, 0, 1, 1, -1, 2, 0])
    video = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    s = identity_statistics(identity, video)
    assert s["images"].tolist() == [4, 2, 1]
    assert s["videos"].tolist() == [3, 1, 1]


def test_distance_histogram_bins_the_cosine_range():
    h = distance_histogram(np.array([0.0, 0.01, 1.0, 1.99, 2.0]))
    assert len(h) == HIST_BINS and sum(h) == 5 and h[0] == 2 and h[-1] == 2


def test_correlate_figures_are_pngs():
    rng = np.random.default_rng(0)
    identity = rng.integers(-1, 20, 500)
    reason = np.where(identity < 0, rng.integers(1, len(REASONS), 500), 0)
    summary = {
        "radius": 0.3,
        "link_distance": 0.3,
        "calibrated": ["radius", "link_distance"],
        "radius_stats": {"hist": distance_histogram(rng.uniform(0, 0.5, 300))},
        "link_stats": {"hist": distance_histogram(rng.uniform(0.2, 1.0, 50))},
    }
    figs = correlate_figures(identity, rng.integers(0, 6, 500), reason, summary)
    assert set(figs) == {"identity_sizes.png", "removals.png", "calibration.png"}
    for png in figs.values():
        w, h = _opens(png)
        assert w > 300 and h > 200


def test_pretrain_figures_and_smoothing():
    steps = np.arange(1, 101)
    history = {
        "loss": (steps, 8 - np.log(steps)),
        "K": (steps, np.where(steps < 50, 2.0, 4.0)),
        "lr": (steps, np.linspace(0, 1e-3, 100)),
        "wd": (steps, np.full(100, 0.04)),
        "momentum": (steps, np.linspace(0.996, 1, 100)),
        "images_per_s": (steps, np.full(100, 20.0)),
        "data_wait_fraction": (steps, np.full(100, 0.02)),
    }
    for png in pretrain_figures(history).values():
        _opens(png)
    assert smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]

"""The pretraining study's pure parts: labels per arm, the P x K feed with K growing, the spread and verdict lines."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pyarrow as pa
import pytest

_DIR = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, _DIR)  # as when the script runs: its sibling modules import
_PATH = os.path.join(_DIR, "pretrain_study.py")
_spec = importlib.util.spec_from_file_location("pretrain_study", _PATH)
study = importlib.util.module_from_spec(_spec)
sys.modules["pretrain_study"] = study  # dataclasses look their module up
_spec.loader.exec_module(study)


def _crops():
    return pa.table({"tracklet_id": ["v0/t0", "v0/t0", "v0/t1", "v1/t0", "v1/t0", "v1/t1"]})


def test_arm_labels_use_the_crops_each_label_source_keeps():
    crops = _crops()
    truth = np.array([5, 5, 7, 5, -1, 7])
    cion = np.array([0, 0, 1, 0, 0, -1])
    rows, lab = study.arm_labels("instance", crops, truth, cion)
    assert rows.tolist() == list(range(6)) and len(set(lab.tolist())) == 6
    rows, lab = study.arm_labels("tracklet", crops, truth, cion)
    assert lab.tolist() == [0, 0, 1, 2, 2, 3]
    rows, lab = study.arm_labels("cion", crops, truth, cion)
    assert rows.tolist() == [0, 1, 2, 3, 4] and lab.tolist() == [0, 0, 1, 0, 0]
    rows, lab = study.arm_labels("truth", crops, truth, cion)
    assert rows.tolist() == [0, 1, 2, 3, 5] and lab.tolist() == [0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="unknown arm"):
        study.arm_labels("nonsense", crops, truth, cion)
    with pytest.raises(ValueError, match="correlation labels"):
        study.arm_labels("cion", crops, truth, None)


def test_pk_views_identity_major_with_k_growing_at_the_same_step():
    from cion_dist.pretrain.augment import MultiCropSpec

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 20, 3), dtype=np.uint8) for _ in range(60)]
    labels = np.repeat(np.arange(12), 5)
    spec = MultiCropSpec((32, 16), (16, 8), 2)
    out = list(study.pk_views(images, labels, [2, 4], steps=7, batch=8, spec=spec, seed=1))
    assert len(out) == 7
    ks = []
    for views, lab in out:
        assert len(views) == 4 and views[0].shape == (8, 3, 32, 16) and views[2].shape == (8, 3, 16, 8)
        assert views[0].dtype == np.uint8
        runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, lab, -1]) != 0))
        assert len(set(runs.tolist())) == 1 and len(set(lab.tolist())) == len(runs)  # P distinct ids x K
        ks.append(int(runs[0]))
    assert ks == [2, 2, 2, 4, 4, 4, 4]  # K switches after half the steps, epochs replayed when one runs out


def test_spread_and_verdict():
    assert study.spread([0.5]) == "0.500"
    assert study.spread([0.4, 0.5, 0.6]) == "0.500 +- 0.100 [0.400-0.600]"
    res = {
        a: [{"frozen": {"synth": {"mAP": m}}} for m in ms]
        for a, ms in {
            "cion": [0.50, 0.52, 0.51],
            "instance": [0.30, 0.31, 0.29],
            "tracklet": [0.49, 0.53, 0.50],
        }.items()
    }
    lines = study.verdict(res)
    assert lines[0].startswith("cion - instance: +0.210") and lines[0].endswith("-> holds")
    assert lines[1].startswith("cion - tracklet: +0.003") and lines[1].endswith("-> does not hold")


def test_health_lines_count_each_arms_verdicts():
    res = {
        "random": [{"seed": 0}],
        "cion": [
            {"verdict": "learning", "loss_first": 6.0, "loss_last": 5.0},
            {"verdict": "uniform (not sharpening)", "loss_first": 6.2, "loss_last": 6.9},
            {"verdict": "learning", "loss_first": 6.1, "loss_last": 5.2},
        ],
    }
    assert study.health_lines(res) == ["health cion: learning x2, uniform (not sharpening) x1; loss 6.100 -> 5.700"]


def test_pretrain_set_reaches_the_stage_config_and_refuses_the_studys_own_keys():
    cfg = study.pretrain_config(study.parse_args(["--pretrain-set", "center_momentum=0.99", "warmup_epochs=1"]), [2, 4])
    assert (cfg.center_momentum, cfg.warmup_epochs, cfg.epochs) == (0.99, 1, 2)
    # the study's recipe at CPU scale (BN in the head, a colder teacher); --no-head-bn --teacher-temp 0.04: reference
    assert (cfg.head_bn, cfg.teacher_temp) == (True, 0.02)
    ref = study.pretrain_config(study.parse_args(["--no-head-bn", "--teacher-temp", "0.04"]), [2])
    assert (ref.head_bn, ref.teacher_temp) == (False, 0.04)
    for key in ("lr", "teacher_temp", "head_bn"):
        with pytest.raises(SystemExit, match=f"{key}=1"):
            study.pretrain_config(study.parse_args(["--pretrain-set", f"{key}=1"]), [2])


def test_supervised_control_uses_the_truth_crops_and_lowers_its_loss():
    crops = _crops()
    truth = np.array([5, 5, 7, 5, -1, 7])
    rows, lab = study.arm_labels("supervised", crops, truth, None)
    assert rows.tolist() == [0, 1, 2, 3, 5] and lab.tolist() == [0, 0, 1, 0, 1]
    rng = np.random.default_rng(0)
    # eight identities told apart by where a bright band sits (colour jitter and grayscale keep that)
    labels = np.array([i % 8 for i in range(64)])
    images = []
    for c in labels:
        im = rng.integers(0, 40, (32, 16, 3)).astype(np.uint8)
        im[4 * c : 4 * c + 4] = 220
        images.append(im)
    args = study.parse_args(
        [
            "--steps",
            "30",
            "--lr",
            "0.1",
            "--batch",
            "16",
            "--height",
            "32",
            "--width",
            "16",
            "--widths",
            "8",
            "8",
            "16",
            "16",
        ]
    )
    model, losses = study.train_supervised(images, labels, [2, 4], args, seed=0)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert model.embed_dim == 16

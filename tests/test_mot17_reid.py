"""The MOTChallenge -> re-ID benchmark builder: split rules on a made-up sequence, errors, the real MOT17 frames."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA

from cion_dist.errors import DataError
from cion_dist.evaluate.datasets import load_dataset
from cion_dist.evaluate.mot17_reid import build_benchmark

MOT17 = str(SHARED_DATA / "mot17_mini" / "train")


def _sequence(root, name="MOT17-03-FAKE", rows=(), frames=3):
    seq = root / name
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    for f in range(1, frames + 1):
        img = np.full((200, 300, 3), 40 * f, np.uint8)
        cv2.imwrite(str(seq / "img1" / f"{f:06d}.jpg"), img)
    (seq / "gt" / "gt.txt").write_text("".join(r + "\n" for r in rows))
    return seq


def test_split_queries_earliest_frame_gallery_other_frames(tmp_path):
    rows = []
    for f in (1, 2, 3):
        rows += [
            f"{f},1,10,10,30,80,1,1,1.0",  # odd id: training
            f"{f},2,60,10,30,80,1,1,0.9",  # even id: test
            f"{f},4,100,10,30,80,1,7,1.0",  # static person (class 7): never used
            f"{f},6,150,10,30,80,0,1,1.0",
        ]  # not to be considered: never used
    rows += [
        "2,8,200,10,30,80,1,1,0.1",  # barely visible
        "3,10,200,10,30,20,1,1,1.0",  # too small
        "9,12,200,10,30,80,1,1,1.0",
    ]  # frame without an image
    _sequence(tmp_path / "mot", rows=rows)
    info = build_benchmark(str(tmp_path / "mot"), str(tmp_path / "out"))
    assert (info["train_images"], info["query_images"], info["gallery_images"]) == (3, 1, 2)
    ds = load_dataset(info["list_uri"])
    assert {r.pid for r in ds.train} == {3001} and [r.pid for r in ds.query] == [3002]
    assert ds.query[0].uri.endswith("f000001.jpg") and all(r.camid == 1 for r in ds.gallery)
    assert sorted(r.uri.rsplit("_f", 1)[1] for r in ds.gallery) == ["000002.jpg", "000003.jpg"]
    assert cv2.imread(ds.query[0].uri).shape == (256, 128, 3)


def test_bad_row_names_file_and_line(tmp_path):
    _sequence(tmp_path / "mot", rows=["1,2,60,10,30,80,1,1,1.0", "2,two,60,10,30,80,1,1,1.0"])
    with pytest.raises(DataError, match=r"gt\.txt line 2"):
        build_benchmark(str(tmp_path / "mot"), str(tmp_path / "out"))
    with pytest.raises(DataError, match="not found"):
        build_benchmark(str(tmp_path / "nowhere"), str(tmp_path / "out"))


@pytest.mark.skipif(not os.path.isdir(MOT17), reason=f"MOT17 frames not present in {MOT17}")
def test_real_mot17_people(tmp_path):
    info = build_benchmark(MOT17, str(tmp_path / "mot17"))
    assert info["sequences"] == 7 and info["query_images"] >= 40 and info["gallery_images"] >= 4 * info["query_images"]
    ds = load_dataset(info["list_uri"])
    assert {r.pid for r in ds.query} == {r.pid for r in ds.gallery}
    assert not {r.pid for r in ds.train} & {r.pid for r in ds.query}

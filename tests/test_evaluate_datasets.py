"""Re-ID dataset readers (Market-1501, MSMT17 lists, generic CSV/Parquet) on local folders and loopback S3,
their errors, the dataset digest, and in-process feature extraction."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cion_dist.errors import DataError
from cion_dist.evaluate.datasets import load_dataset, read_list, read_market, read_msmt17
from cion_dist.evaluate.features import extract_local, load_images, to_tensor
from tests.evaluate_fixtures import write_market


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return write_market(tmp_path_factory.mktemp("mk") / "market", train_ids=range(1, 5), test_ids=range(5, 9))


def test_market_protocol(market):
    ds = load_dataset(str(market))
    assert ds.name == "market1501"
    assert len(ds.train) == 4 * 3 * 2  # junk train images dropped
    assert len(ds.query) == 4 * 3
    assert len(ds.gallery) == 4 * 3 * 2 + 3  # + the 3 distractors kept as negatives, junk dropped
    assert {r.pid for r in ds.query} == {5, 6, 7, 8}
    assert sorted({r.camid for r in ds.gallery}) == [0, 1, 2]
    assert sum(r.pid == 0 for r in ds.gallery) == 3 and all(r.pid != -1 for r in ds.gallery + ds.train)
    no_distractors = read_market(str(market), keep_distractors=False)
    assert len(no_distractors.gallery) == 4 * 3 * 2
    assert ds.counts()["query_ids"] == 4


def test_market_errors(tmp_path, market):
    with pytest.raises(DataError, match="re-ID dataset not found"):
        load_dataset(str(tmp_path / "nope"))
    bad = tmp_path / "bad"
    (bad / "query").mkdir(parents=True)
    (bad / "bounding_box_test").mkdir()
    with pytest.raises(DataError, match="no query images"):
        read_market(str(bad))
    (bad / "query" / "person_one.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"query/person_one\.jpg.*PPPP_cCsS"):
        read_market(str(bad))
    only_query = tmp_path / "oq"
    (only_query / "query").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing folder .*oq/bounding_box_test"):
        read_market(str(only_query))


def test_digest_tracks_content(tmp_path):
    a = write_market(tmp_path / "a", train_ids=range(1, 3), test_ids=range(3, 5), extras=False)
    b = write_market(tmp_path / "b", train_ids=range(1, 3), test_ids=range(3, 5), extras=False)
    da, db = load_dataset(str(a)).digest(), load_dataset(str(b)).digest()
    assert da == db  # same names, labels and bytes under another root
    q = sorted(os.listdir(b / "query"))[0]
    os.rename(b / "query" / q, b / "query" / q.replace("0003_", "0004_", 1))
    assert load_dataset(str(b)).digest() != da


def test_market_on_s3_has_the_same_digest(market, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(market), f"{s3_bucket[5:]}/bench/market", recursive=True)
    uri = f"{s3_bucket}/bench/market"
    ds = load_dataset(uri)
    local = load_dataset(str(market))
    assert ds.digest() == local.digest()
    assert ds.query[0].uri.startswith(s3_bucket + "/bench/market/query/")
    imgs = load_images([r.uri for r in ds.query[:3]])
    assert imgs[0].shape == (64, 32, 3) and imgs[0].dtype == np.uint8


def test_msmt17_lists(tmp_path):
    root = tmp_path / "msmt"
    for d in ("train", "test"):
        (root / d).mkdir(parents=True)
    (root / "list_train.txt").write_text(
        "0000/0000_000_01_0303morning_0015_0.jpg 0\n0001/0001_001_05_0303noon_0100_1.jpg 1\n"
    )
    (root / "list_val.txt").write_text("0002/0002_002_15_0303noon_0100_1.jpg 2\n")
    (root / "list_query.txt").write_text("0000/0000_000_03_0303morning_0015_0.jpg 0\n")
    (root / "list_gallery.txt").write_text("0000/0000_000_07_0303morning_0016_0.jpg 0\n\n0001/0001_1_02_x_0_0.jpg 1\n")
    ds = load_dataset(str(root))
    assert ds.name == "msmt17"
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (1, 4), (2, 14)]
    assert ds.query[0].camid == 2 and ds.query[0].uri.endswith("test/0000/0000_000_03_0303morning_0015_0.jpg")
    assert len(ds.gallery) == 2
    (root / "list_gallery.txt").write_text("0000/0000_000_07_x.jpg\n")
    with pytest.raises(DataError, match=r"list_gallery\.txt:1: expected '<path> <pid>'"):
        read_msmt17(str(root))
    (root / "list_gallery.txt").write_text("0000/nounderscores.jpg 0\n")
    with pytest.raises(DataError, match=r"list_gallery\.txt:1: cannot read pid/camera"):
        read_msmt17(str(root))


def test_generic_list(tmp_path, market):
    rows = {"path": [], "pid": [], "camid": [], "split": []}
    ds = load_dataset(str(market))
    for split in ("query", "gallery"):
        for r in ds.split(split):
            rows["path"].append(os.path.relpath(r.uri, tmp_path))
            rows["pid"].append(r.pid)
            rows["camid"].append(r.camid)
            rows["split"].append(split)
    pq.write_table(pa.table(rows), tmp_path / "bench.parquet")
    listed = load_dataset(str(tmp_path / "bench.parquet"))
    assert listed.name == "list" and len(listed.query) == len(ds.query) and len(listed.train) == 0
    assert os.path.exists(listed.gallery[0].uri)
    (tmp_path / "bad.csv").write_text("path,pid,split\na.jpg,1,query\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) camid"):
        read_list(str(tmp_path / "bad.csv"))
    (tmp_path / "bad2.csv").write_text("path,pid,camid,split\na.jpg,1,0,test\n")
    with pytest.raises(DataError, match=r"bad2\.csv: row 0: split 'test'"):
        read_list(str(tmp_path / "bad2.csv"))


def test_preprocessing_and_flip_average(market):
    ds = load_dataset(str(market))
    x = to_tensor(load_images([ds.query[0].uri]), 256, 128)
    assert x.shape == (1, 3, 256, 128)
    # ImageNet normalisation: a mid-grey pixel maps to (0.5 - mean) / std
    grey = to_tensor([np.full((4, 2, 3), 127.5, dtype=np.float32)], 4, 2)
    assert torch.allclose(
        grey[0, :, 0, 0], torch.tensor([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225])
    )

    class LeftHalf(torch.nn.Module):  # mean of the left half of the image: not flip-invariant
        embed_dim = 3

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, t):
            return t[..., : t.shape[-1] // 2].mean(dim=(2, 3))

    uris = [r.uri for r in ds.query[:5]]
    plain = extract_local(LeftHalf(), uris, flip=False, batch_size=2, height=64, width=32)
    flipped = extract_local(LeftHalf(), uris, flip=True, batch_size=2, height=64, width=32)
    full = to_tensor(load_images(uris), 64, 32).mean(dim=(2, 3)).numpy()
    assert plain.shape == (5, 3)
    np.testing.assert_allclose(flipped, full, atol=1e-5)  # left half + mirrored left half = whole image
    assert not np.allclose(plain, flipped, atol=1e-3)


def test_undecodable_image_is_named(tmp_path):
    p = tmp_path / "0001_c1s1_000001_00.jpg"
    p.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode image .*0001_c1s1_000001_00.jpg"):
        load_images([str(p)])

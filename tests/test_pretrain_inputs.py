"""How the pretrain stage finds and joins its inputs (no Ray): lineage walk, identity filter, bad data."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pytest

from cion_dist.errors import DataError
from cion_dist.pretrain.config import PretrainConfig
from cion_dist.pretrain.job import find_crops, labelled_crops
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, input_record, resolve_input

sys.path.insert(0, os.path.dirname(__file__))
from pretrain_fixtures import write_labelled_corpus  # noqa: E402


def test_crops_found_through_lineage_and_noise_rows_dropped(tmp_path):
    uris = write_labelled_corpus(str(tmp_path), identities=3, per_identity=4, noise_rows=2)
    st = Storage()
    corr = resolve_input(None, str(tmp_path), "correlate", st)
    crops = find_crops(corr, None, st)
    assert crops.uri == uris["ingest"]
    assert find_crops(corr, uris["ingest"], st).uri == uris["ingest"]
    table = labelled_crops(corr, crops)
    assert table.column_names == ["image_id", "identity_id", "jpeg"]
    assert table.num_rows == 12 and min(table["identity_id"].to_pylist()) == 0
    assert table["identity_id"].to_pylist() == sorted(table["identity_id"].to_pylist())


def test_crops_on_s3_and_missing_images_are_named(s3_bucket):
    uris = write_labelled_corpus(s3_bucket + "/out", identities=2, per_identity=3, noise_rows=0)
    st = Storage()
    corr = StageOutput(uris["correlate"], st)
    assert find_crops(corr, None, st).uri == uris["ingest"]
    # a correlate output naming an image the ingest output does not have
    bad = StageOutput.create(s3_bucket + "/out", "correlate", "bad", st)
    bad.write_unit("all", pa.table({"image_id": ["v0-t0-f000", "ghost-7"], "identity_id": pa.array([0, 0], pa.int64())}))
    bad.finalize(stage="correlate", rows={"images": 2}, inputs=corr.success()["inputs"])
    with pytest.raises(DataError, match="ghost-7"):
        labelled_crops(bad, find_crops(bad, None, st))
    empty = StageOutput.create(s3_bucket + "/out", "correlate", "empty", st)
    empty.write_unit("all", pa.table({"image_id": ["v0-t0-f000"], "identity_id": pa.array([-1], pa.int64())}))
    empty.finalize(stage="correlate", rows={"images": 1}, inputs=[])
    with pytest.raises(DataError, match="no image has an identity"):
        labelled_crops(empty, find_crops(corr, None, st))
    with pytest.raises(DataError, match="cannot find the ingest crops"):
        find_crops(empty, None, st)
    assert input_record(corr)["stage"] == "correlate"


def test_config_rejects_batches_not_divisible_by_k():
    with pytest.raises(ValueError, match="not divisible by K"):
        PretrainConfig(batch_size_per_worker=10, gradual_epochs=[1, 2], gradual_instances=[2, 4])
    with pytest.raises(ValueError, match="offload_optimizer needs"):
        PretrainConfig(offload_optimizer=True)


def test_config_rejects_half_precision_on_cpu_workers():
    with pytest.raises(ValueError, match="precision bf16 needs use_gpu"):
        PretrainConfig(precision="bf16")
    assert PretrainConfig(precision="bf16", use_gpu=True).precision == "bf16"

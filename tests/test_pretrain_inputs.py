"""How the pretrain stage finds and joins its inputs: lineage walk, the identity-sharded labelled set written by
Ray tasks (noise dropped, whole identities per shard, large binary), bad data named."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cion_dist.config.job import Job
from cion_dist.errors import DataError
from cion_dist.pretrain.config import PretrainConfig
from cion_dist.pretrain.job import find_crops, labelled_set
from cion_dist.pretrain.labelled import read_index, shard_files
from cion_dist.storage.fs import Storage
from cion_dist.storage.stage_io import StageOutput, input_record, read_table, resolve_input

sys.path.insert(0, os.path.dirname(__file__))
from pretrain_fixtures import write_labelled_corpus  # noqa: E402


def _job(output, **pretrain):
    return Job(
        stage="pretrain",
        output=output,
        ray={"num_cpus": 4, "log_to_driver": False},
        pretrain={"batch_size_per_worker": 4, "gradual_epochs": [1], "gradual_instances": [2], **pretrain},
    )


def test_labelled_set_holds_whole_identities_per_shard_with_lineage(ray_local, tmp_path):
    uris = write_labelled_corpus(str(tmp_path), identities=12, per_identity=4, noise_rows=2)
    st = Storage()
    corr = resolve_input(None, str(tmp_path), "correlate", st)
    crops = find_crops(corr, None, st)
    assert crops.uri == uris["ingest"]
    assert find_crops(corr, uris["ingest"], st).uri == uris["ingest"]
    data = labelled_set(_job(str(tmp_path)), corr, crops)
    rec = data.success()
    assert rec["stage"] == "labelled" and rec["rows"] == {"images": 48, "identities": 12, "shards": 2}
    assert [i["stage"] for i in rec["inputs"]] == ["correlate", "ingest"]
    index = read_index(data)
    files = shard_files(data)
    assert sorted(files) == [0, 1]
    seen = set()
    for s, uri in files.items():
        t = read_table(uri, st)
        assert t.schema.field("jpeg").type == pa.large_binary()
        ids = t["identity_id"].to_pylist()
        assert ids == sorted(ids) and min(ids) >= 0  # noise rows dropped, rows grouped by identity
        mine = index.filter(pc.equal(index["shard"], s))
        assert sorted(set(ids)) == mine["identity_id"].to_pylist()
        assert [ids.count(i) for i in sorted(set(ids))] == mine["images"].to_pylist()
        assert not seen & set(ids)  # an identity lives in one shard
        seen |= set(ids)
    assert seen == set(range(12))
    # complete: a second call finds it and writes nothing
    assert labelled_set(_job(str(tmp_path)), corr, crops).uri == data.uri


def test_labelled_set_on_s3_names_missing_images_and_empty_identities(ray_local, s3_bucket):
    uris = write_labelled_corpus(s3_bucket + "/out", identities=2, per_identity=3, noise_rows=0)
    st = Storage()
    corr = StageOutput(uris["correlate"], st)
    assert find_crops(corr, None, st).uri == uris["ingest"]
    # a correlate output naming an image the ingest output does not have
    bad = StageOutput.create(s3_bucket + "/out", "correlate", "bad", st)
    bad.write_unit(
        "all",
        pa.table(
            {
                "image_id": ["v0-t0-f000", "ghost-7"],
                "identity_id": pa.array([0, 0], pa.int64()),
                "video_id": ["v0", "v0"],
            }
        ),
    )
    bad.finalize(stage="correlate", rows={"images": 2}, inputs=corr.success()["inputs"])
    with pytest.raises(DataError, match="ghost-7"):
        labelled_set(_job(s3_bucket + "/out"), bad, find_crops(bad, None, st))
    empty = StageOutput.create(s3_bucket + "/out", "correlate", "empty", st)
    empty.write_unit("all", pa.table({"image_id": ["v0-t0-f000"], "identity_id": pa.array([-1], pa.int64())}))
    empty.finalize(stage="correlate", rows={"images": 1}, inputs=[])
    with pytest.raises(DataError, match="no image has an identity"):
        labelled_set(_job(s3_bucket + "/out"), empty, find_crops(corr, None, st))
    with pytest.raises(DataError, match="cannot find the ingest crops"):
        find_crops(empty, None, st)
    assert input_record(corr)["stage"] == "correlate"


def test_join_unit_reads_only_its_videos_parts(tmp_path):
    """Correlate and ingest both write per video: a unit joins one correlate part with its videos' ingest parts."""
    from cion_dist.pretrain.labelled import _scan_correlate, _scan_ingest, identity_counts, join_unit, join_units

    st = Storage()
    ing = StageOutput.create(str(tmp_path), "ingest", "i", st)
    cor = StageOutput.create(str(tmp_path), "correlate", "c", st)
    for v in ("a", "b"):
        ing.write_unit(
            v,
            pa.table(
                {
                    "image_id": [f"{v}-{i}" for i in range(3)],
                    "video_id": [v] * 3,
                    "jpeg": [b"x%d" % i for i in range(3)],
                }
            ),
        )
        cor.write_unit(
            v,
            pa.table(
                {
                    "image_id": [f"{v}-{i}" for i in range(3)],
                    "video_id": [v] * 3,
                    "identity_id": pa.array([1, -1, 2] if v == "a" else [2, 2, 3], pa.int64()),
                }
            ),
        )
    cparts, iparts = _scan_correlate(cor.files(), st), _scan_ingest(ing.files(), st)
    units = join_units(cparts, iparts)
    assert [len(u["ingest"]) for u in units] == [1, 1]
    assert all(u["ingest"][0].rsplit("/", 1)[-1] == u["corr"].rsplit("/", 1)[-1] for u in units)
    t = join_unit(units[0]["corr"], units[0]["ingest"], st)
    assert sorted(t["image_id"].to_pylist()) == ["a-0", "a-2"] and t.schema.field("jpeg").type == pa.large_binary()
    ids, counts = identity_counts(cparts)  # noise (-1) left out, counts summed over parts
    assert ids.tolist() == [1, 2, 3] and counts.tolist() == [1, 3, 1]


def test_config_rejects_batches_not_divisible_by_k():
    with pytest.raises(ValueError, match="not divisible by K"):
        PretrainConfig(batch_size_per_worker=10, gradual_epochs=[1, 2], gradual_instances=[2, 4])
    with pytest.raises(ValueError, match="offload_optimizer needs"):
        PretrainConfig(offload_optimizer=True)


def test_config_rejects_half_precision_on_cpu_workers():
    with pytest.raises(ValueError, match="precision bf16 needs use_gpu"):
        PretrainConfig(precision="bf16")
    assert PretrainConfig(precision="bf16", use_gpu=True).precision == "bf16"

"""Storage URIs (local and loopback S3) and stage outputs: atomic parts, _SUCCESS last, input resolution."""

from __future__ import annotations

import pyarrow as pa
import pytest

from cion_dist.config.base import StorageConfig
from cion_dist.errors import DataError
from cion_dist.storage import Storage, exists, join, read_bytes, write_bytes_atomic
from cion_dist.storage.stage_io import StageOutput, read_table, resolve_input


def _roundtrip(root: str):
    st = Storage()
    out = StageOutput.create(root, "ingest", "run-a", st)
    assert not out.is_complete()
    t1 = pa.table({"image_id": ["a", "b"], "x": [1, 2]})
    t2 = pa.table({"image_id": ["c"], "x": [3]})
    out.write_unit("video/0", t1)
    out.write_unit("video/1", t2)
    out.write_unit("errs", pa.table({"video_id": ["v9"], "reason": ["corrupt"]}), subdir="errors")
    assert out.has_unit("video/0") and not out.has_unit("video/2")
    # incomplete outputs are never resolved as inputs
    with pytest.raises(DataError, match="_SUCCESS"):
        resolve_input(out.uri, root, "ingest", st)
    rec = out.finalize(stage="ingest", rows={"crops": 3}, inputs=[{"uri": "m", "digest": "d"}], config={"k": 1})
    assert out.is_complete()
    table = out.read()
    assert sorted(table.column("image_id").to_pylist()) == ["a", "b", "c"]  # errors/ is a side table
    assert out.read(subdir="errors").num_rows == 1
    assert resolve_input(None, root, "ingest", st).uri == out.uri
    assert rec["digest"] == out.content_digest() and len(rec["digest"]) == 64
    # rewriting the same unit with the same rows keeps the digest (idempotent units)
    out.write_unit("video/0", t1)
    assert out.content_digest() == rec["digest"]
    out.write_unit("video/0", pa.table({"image_id": ["z"], "x": [9]}))
    assert out.content_digest() != rec["digest"]
    return out


def test_stage_output_local(tmp_path):
    _roundtrip(str(tmp_path / "out"))


def test_stage_output_on_loopback_s3(s3_bucket):
    out = _roundtrip(join(s3_bucket, "out"))
    assert out.uri.startswith("s3://")
    assert all(f.startswith("s3://") and "/errors/" not in f for f in out.files())


def test_bytes_and_missing_files(tmp_path, s3_bucket):
    for root in (str(tmp_path), s3_bucket):
        uri = join(root, "a", "b.bin")
        digest = write_bytes_atomic(uri, b"hello")
        assert exists(uri) and read_bytes(uri) == b"hello" and len(digest) == 64
        with pytest.raises(DataError, match="missing.bin"):
            read_bytes(join(root, "missing.bin"))
    with pytest.raises(DataError, match="unsupported URI scheme"):
        Storage().fs("gs://bucket/x")
    with pytest.raises(DataError, match="cannot read Parquet file"):
        (tmp_path / "bad.parquet").write_bytes(b"not parquet")
        read_table(str(tmp_path / "bad.parquet"))


def test_explicit_endpoint_and_secrets_not_described(s3_endpoint):
    cfg = StorageConfig(endpoint_url=s3_endpoint, access_key_id="testing", secret_access_key="testing")
    st = Storage(cfg)
    fs, _ = st.fs("s3://x")
    fs.mkdir("explicit-endpoint")
    assert "explicit-endpoint" in [p.rstrip("/") for p in fs.ls("")]
    assert "testing" not in repr(st) and "testing" not in str(st.describe())


def test_ray_data_reads_stage_output_from_s3(s3_bucket, ray_local):
    out = _roundtrip(join(s3_bucket, "rd"))
    fs, path = Storage().pyarrow(out.uri)
    ds = ray_local.data.read_parquet(out.files(), filesystem=fs)
    assert ds.count() == 2  # the roundtrip left one row in each of its two parts

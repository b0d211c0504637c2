"""Storage URIs (local and loopback S3) and stage outputs: atomic parts, _SUCCESS last, input resolution."""

from __future__ import annotations

import pyarrow as pa
import pytest

from cion_dist.config_base import StorageConfig
from cion_dist.errors import DataError
from cion_dist.storage import Storage, exists, join, read_bytes, write_bytes_atomic
from cion_dist.storage.listing import iter_listing
from cion_dist.storage.reports import part_record
from cion_dist.storage.stage_io import StageOutput, read_table, resolve_input, unit_filename


def _write(out: StageOutput, unit: str, table: pa.Table, reports=None) -> None:
    w = out.write_unit(unit, table)
    if reports is not None:
        reports.add([part_record(unit_filename(unit), w, rows=table.num_rows)])


def _roundtrip(root: str):
    st = Storage()
    out = StageOutput.create(root, "ingest", "run-a", st)
    assert not out.is_complete()
    t1 = pa.table({"image_id": ["a", "b"], "x": [1, 2]})
    t2 = pa.table({"image_id": ["c"], "x": [3]})
    reports = out.report_writer(flush_rows=1)  # one report file per part: grouping must not matter
    _write(out, "video/0", t1, reports)
    _write(out, "video/1", t2, reports)
    out.write_unit("errs", pa.table({"video_id": ["v9"], "reason": ["corrupt"]}), subdir="errors")
    assert out.existing_units() == {unit_filename("video/0"), unit_filename("video/1")}
    assert out.pending_units(["video/2", "video/0", "video/3"]) == ["video/2", "video/3"]
    assert out.existing_units("errors") == {unit_filename("errs")}
    # incomplete outputs are never resolved as inputs
    with pytest.raises(DataError, match="_SUCCESS"):
        resolve_input(out.uri, root, "ingest", st)
    parts = out.combine()
    assert parts.count == 2 and parts.totals == {"rows": 3} and parts.unreported == 0
    rec = out.finalize(
        stage="ingest", rows={"crops": 3}, inputs=[{"uri": "m", "digest": "d"}], config={"k": 1}, parts=parts
    )
    assert out.is_complete() and rec["parts"] == 2 and len(rec["digest"]) == 64
    table = out.read()
    assert sorted(table.column("image_id").to_pylist()) == ["a", "b", "c"]  # errors/ is a side table
    assert out.read(subdir="errors").num_rows == 1
    assert resolve_input(None, root, "ingest", st).uri == out.uri
    assert out.verify()["digest"] == rec["digest"]

    # the same parts without any report: read back and hashed, to the same digest
    bare = StageOutput.create(root, "ingest", "run-b", st)
    _write(bare, "video/1", t2)
    _write(bare, "video/0", t1)
    assert bare.combine().digest == rec["digest"] and bare.combine().unreported == 2

    # a changed part fails the digest check, naming the part
    out.write_unit("video/0", pa.table({"image_id": ["z"], "x": [9]}))
    with pytest.raises(DataError, match=r"changed after they were written.*" + unit_filename("video/0")[:12]):
        out.verify()
    # a part that is gone fails the check too
    bare.finalize(stage="ingest", rows={})
    fs, path = st.fs(bare.unit_uri("video/1"))
    fs.rm(path)
    with pytest.raises(DataError, match="added or removed"):
        bare.verify()
    fs.rm(st.fs(out.unit_uri("video/1"))[1])
    return out


def test_stage_output_local(tmp_path):
    _roundtrip(str(tmp_path / "out"))


def test_stage_output_on_loopback_s3(s3_bucket):
    out = _roundtrip(join(s3_bucket, "out"))
    assert out.uri.startswith("s3://")
    assert all(f.startswith("s3://") and "/errors/" not in f for f in out.files())


def test_listing_pages_through_a_prefix(s3_bucket, tmp_path):
    for root in (join(s3_bucket, "many"), str(tmp_path / "many")):
        for i in range(7):
            write_bytes_atomic(join(root, f"f{i}.bin"), b"x" * i)
        write_bytes_atomic(join(root, "sub", "deep.bin"), b"y")
        flat = sorted((e.name, e.size) for e in iter_listing(root, page_size=2, recursive=False))
        assert flat == [(f"f{i}.bin", i) for i in range(7)]
        deep = {e.name for e in iter_listing(root, page_size=3)}
        assert deep == {f"f{i}.bin" for i in range(7)} | {"sub/deep.bin"}
        assert list(iter_listing(join(root, "absent"))) == []


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
    assert ds.count() == 1  # the roundtrip left one part (video/0, rewritten to one row)

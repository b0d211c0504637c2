"""Resume without per-unit probes: a stage run that lost parts and has a torn one (what a kill leaves) redoes
exactly those units and ends identical to an undisturbed run, digest included; the driver's requests, counted at a
loopback S3 server, do not grow with the number of units."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest
from embed_fixtures import synthetic_people, write_ingest
from s3_counter import counting_s3_server

from cion_dist.config import job_from_dict
from cion_dist.embed.job import run
from cion_dist.embed.parts import embeddings_matrix
from cion_dist.errors import DataError
from cion_dist.lock import RENEW_S
from cion_dist.storage.fs import Storage
from cion_dist.storage.reports import REPORTS_DIR
from cion_dist.storage.stage_io import StageOutput

pytestmark = pytest.mark.integration


def _crops(n_videos: int = 32, per_video: int = 3) -> list[dict]:
    images, pids = synthetic_people(n_ids=n_videos, per_id=per_video, seed=3)
    return [
        {"rgb": im, "pid": int(p), "frame": i, "bbox": [0.0, 0.0, 8.0, 16.0], "seq": f"video-{int(p):03d}"}
        for i, (im, p) in enumerate(zip(images, pids))
    ]


def _job(root: str, endpoint: str, run_id: str):
    return job_from_dict(
        {
            "stage": "embed",
            "output": root,
            "run_id": run_id,
            "mlflow": {"enabled": False},
            "storage": {"endpoint_url": endpoint},
            "embed": {"backbone": "handcrafted", "concurrency": 2, "crops_per_unit": 2},
        }
    )


def _sorted(out: StageOutput) -> pa.Table:
    t = out.read()
    return t.take(pa.array(np.argsort(t.column("image_id").to_pylist())))


def test_resume_after_a_kill_redoes_only_lost_units_without_probes(ray_local):
    import s3fs

    with counting_s3_server() as (endpoint, counter):
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("resume")
        root = "s3://resume/cion"
        st = Storage(job_from_dict({"stage": "embed", "storage": {"endpoint_url": endpoint}}).storage)
        write_ingest(root, _crops(), st)

        whole = run(_job(root, endpoint, "embed-whole"))  # undisturbed
        first = run(_job(root, endpoint, "embed-killed"))
        w_out, out = StageOutput(whole.uri, st), StageOutput(first.uri, st)
        parts = out.files()
        assert len(parts) == 32 and whole.rows == first.rows == {"embeddings": 96, "bad_images": 0}

        # what a kill leaves: no _SUCCESS, two parts never written, and one part torn (written by someone else)
        fs, _ = st.fs(out.uri)
        reports = sorted(f"{out.uri}/{REPORTS_DIR}/{e.name}" for e in out.listing(REPORTS_DIR))
        fs.rm([st.fs(u)[1] for u in (out.success_uri, parts[0], parts[3])])
        torn = parts[5]
        data = fs.cat_file(st.fs(torn)[1])
        fs.pipe_file(st.fs(torn)[1], data[: len(data) // 2])
        with pytest.raises(DataError, match="changed after they were written"):
            out.combine()

        counter.reset()
        t0 = time.monotonic()
        resumed = run(_job(root, endpoint, "embed-killed"))
        # the output lock's heartbeat reads and rewrites its lease every RENEW_S seconds of the run's wall time
        renewals = 2 * int((time.monotonic() - t0) // RENEW_S)
        ops = counter.by_op("driver")
        assert resumed.summary["units_embedded_now"] == 3  # the two lost parts and the torn one
        assert resumed.rows == whole.rows
        assert _sorted(out).equals(_sorted(w_out))
        np.testing.assert_array_equal(embeddings_matrix(_sorted(out)), embeddings_matrix(_sorted(w_out)))
        assert out.success()["digest"] == w_out.success()["digest"]  # order-free digest of the same parts
        assert out.verify()["parts"] == 32
        # no probe per unit: the driver lists, reads reports and plans, and its requests do not scale with units
        # (a probe per unit, as before, was 32 HEADs alone; reading each part back for counts and digest 64 GETs)
        assert ops.get("HEAD", 0) + ops.get("GET", 0) < len(parts), ops  # fewer reads than units
        assert sum(ops.values()) <= 40 + 2 * len(reports) + renewals, ops
        assert counter.total("worker") > 0  # the units were redone by Ray workers, not by the driver

        # a complete run costs a constant handful: find the input run and read its record, see ours is complete
        counter.reset()
        assert run(_job(root, endpoint, "embed-killed")).skipped
        # (+3: the output lock's lease, put, read back at release and deleted)
        assert counter.total("driver") <= 13, counter.by_op("driver")

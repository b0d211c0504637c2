"""Correlate resumes unit by unit: after a crash it redoes only the missing units of every step and ends identical to
an undisturbed run, and its driver learns what exists from listings, not from a request per unit."""

from __future__ import annotations

import os

from correlate_fixtures import make_corpus, write_embed_output

from cion_dist.config import job_from_dict
from cion_dist.correlate.job import run
from cion_dist.storage.fs import Storage, join
from cion_dist.storage.stage_io import StageOutput

STEPS = ("videos", "nodes", "blocks", "windows", "merge", "recheck")


def _job(output, **correlate):
    return job_from_dict(
        {
            "stage": "correlate",
            "output": str(output),
            "mlflow": {"enabled": False},
            "correlate": {
                "num_shards": 2,
                "window_videos": 4,
                "stride_videos": 2,
                "videos_per_task": 2,
                "windows_per_task": 1,
                "block_videos": 3,
                **correlate,
            },
        }
    )


def _corpus():
    # looks shift between cameras, so level 3 merges across videos and the radius re-check has work
    return make_corpus(people=14, videos=9, people_per_video=4, seed=5, camera_shift=0.8, spread=0.6)


def test_resume_after_a_crash_redoes_only_missing_units(tmp_path, ray_local):
    corpus = _corpus()
    embed_uri = write_embed_output(str(tmp_path / "in"), corpus)
    ref = run(_job(tmp_path / "a", input=embed_uri))
    expect = StageOutput(ref.uri).read().sort_by("image_id")
    assert ref.summary["counts"]["level3"]["identities_out"] > 0

    first = run(_job(tmp_path / "b", input=embed_uri))
    out = StageOutput(first.uri)
    fs, _ = out.storage.fs(out.uri)
    files = {s: out.files(s) for s in STEPS}
    assert files["recheck"], "the corpus must give the radius re-check something to save"
    # a crash part-way through every step: some units of each are gone, with the outputs and _SUCCESS
    gone = [
        files["videos"][1],
        files["nodes"][4],
        files["blocks"][-1],
        files["windows"][0],
        files["recheck"][0],
        *files["merge"],
        *out.files(),
        out.success_uri,
    ]
    # a video is redone as a whole: both of its level 1-2 units are rewritten
    redone = {os.path.basename(files["videos"][1]), os.path.basename(files["nodes"][4])}
    kept = {
        f: os.stat(f).st_mtime_ns
        for s in STEPS
        for f in files[s]
        if f not in gone and not (s in ("videos", "nodes") and os.path.basename(f) in redone)
    }
    calibration = join(out.uri, "calibration.json")
    kept[calibration] = os.stat(calibration).st_mtime_ns
    for f in gone:
        fs.rm(f)

    again = run(_job(tmp_path / "b", input=embed_uri))
    assert not again.skipped and again.uri == first.uri
    s = again.summary
    assert s["videos_resumed"] == 9 - 2
    assert s["link_files_resumed"] == s["link_files"] - 1
    assert s["recheck_resumed"] == len(files["recheck"]) - 1
    assert (s["radius"], s["link_distance"]) == (first.summary["radius"], first.summary["link_distance"])
    # what survived the crash was read back, not rewritten
    assert {f: os.stat(f).st_mtime_ns for f in kept} == kept
    assert all(os.path.exists(f) for f in gone)
    after = StageOutput(again.uri).read().sort_by("image_id")
    for c in ("image_id", "identity_id", "removed_at", "reason"):
        assert after.column(c).to_pylist() == expect.column(c).to_pylist()
    assert again.rows == ref.rows


def _count_driver_requests(storage: Storage, bucket: str):
    """Every S3 request this process's s3fs client sends, as (method, path), via botocore's before-send event."""
    fs, _ = storage.fs(bucket)
    fs.connect()
    seen: list[tuple[str, str]] = []

    def record(request, **_):
        seen.append((request.method, request.url.split("?", 1)[0]))

    fs.s3.meta.events.register("before-send.s3", record)
    return seen


def test_resume_on_s3_makes_no_request_per_unit_on_the_driver(tmp_path, s3_bucket, ray_local):
    corpus = make_corpus(people=20, videos=16, people_per_video=3, images=8, seed=6)
    output = join(s3_bucket, "out")
    storage = Storage()
    embed_uri = write_embed_output(output, corpus, storage=storage)
    job = _job(output, input=embed_uri, radius=0.3, link_distance=0.45)
    first = run(job)
    out = StageOutput(first.uri, storage)
    fs, _ = storage.fs(out.uri)
    fs.rm(out.success_uri)  # every unit is there; only the completion record is missing

    seen = _count_driver_requests(storage, s3_bucket)
    again = run(job)
    assert again.summary["videos_resumed"] == 16
    assert again.summary["link_files_resumed"] == again.summary["link_files"]
    # existence probes (HEAD): the completion records and the merge's two files, whatever the number of units
    heads = [p for m, p in seen if m == "HEAD"]
    assert not [p for p in heads if any(f"/{s}/" in p for s in STEPS if s != "merge")], heads
    assert len(heads) <= 10, heads
    # the driver reads no unit of the intermediate steps itself: tasks read those back
    unit_reads = [p for m, p in seen if m == "GET" and any(f"/{s}/part-" in p for s in STEPS if s != "merge")]
    assert unit_reads == []
    # what is left is a few listings and records per step; finalize combines the digest from the parts' reports,
    # so no output part is read back
    digest_reads = [
        p for m, p in seen if m == "GET" and p.rsplit("/", 2)[-2].startswith("correlate-") and p.endswith(".parquet")
    ]
    assert digest_reads == [], digest_reads
    # a constant handful: inputs' records, listings per step, merge/ labels and links (the merge audit reads the
    # accepted links once), three plots, one report file, _SUCCESS.json; and the output lock's lease (put, read
    # back at release, delete)
    assert len(seen) <= 33, seen
    after = StageOutput(again.uri, storage).read().sort_by("image_id")
    before = StageOutput(first.uri, storage).read().sort_by("image_id")
    assert after.column("identity_id").to_pylist() == before.column("identity_id").to_pylist()

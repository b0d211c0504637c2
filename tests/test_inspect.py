"""``cion inspect``: contact sheets of a real ingest and correlate run (synthetic videos through the pipeline)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from cion_dist.config import job_from_dict
from cion_dist.errors import DataError
from cion_dist.inspect.sheets import THUMB_H, THUMB_W, decode_thumb, strip_png


def test_strip_png_lays_out_thumbnails():
    ok, jpg = cv2.imencode(".jpg", np.full((90, 30, 3), 200, np.uint8))
    png = strip_png([jpg.tobytes(), b"", jpg.tobytes()])
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (THUMB_H, 3 * THUMB_W + 4, 3)
    assert decode_thumb(b"junk").mean() == 64  # unreadable crop: a grey tile, not an error
    t = decode_thumb(jpg.tobytes())
    assert t[:, THUMB_W // 2].mean() > 190 and t[:, 0].mean() == 64  # aspect kept: padded at the sides


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _ray_session):
    import ray

    from cion_dist.pipeline.runner import run_pipeline

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    out = tmp_path_factory.mktemp("insp") / "out"
    job = job_from_dict(
        {
            "stage": "pipeline",
            "output": str(out),
            "mlflow": {"enabled": False},
            "pipeline": {"stages": ["synth", "ingest", "embed", "correlate"]},
            "synth": {
                "identities": 6,
                "cameras": 2,
                "videos": 4,
                "frames": 40,
                "width": 320,
                "height": 192,
                "people_per_video": 3,
                "benchmark_identities": 0,
                "seed": 1,
            },
            "ingest": {"detector": {"kind": "background"}, "concurrency": 2},
            "embed": {"backbone": "handcrafted"},
            "correlate": {"window_videos": 2, "stride_videos": 1, "num_shards": 1},
        }
    )
    return {r.stage: r for r in run_pipeline(job)}


def _sheets(index: str) -> list[str]:
    return re.findall(r"src='(sheet-\d+\.png)'", open(index).read())


def test_inspect_an_ingest_run(runs, tmp_path):
    from cion_dist.inspect.inspect_run import inspect_run

    res = inspect_run(runs["ingest"].uri, str(tmp_path / "i"), max_groups=6, per_group=5)
    assert res["stage"] == "ingest" and 0 < res["sheets"] <= 6 + 4
    page = open(res["index"]).read()
    assert "Tracklets" in page and "gate_considered" in page
    for f in _sheets(res["index"]):
        img = cv2.imread(str(tmp_path / "i" / f))
        assert img.shape[0] == THUMB_H and img.shape[1] >= THUMB_W
        assert img.std() > 5  # real crops, not grey placeholders


def test_inspect_a_correlate_run_from_the_cli(runs, tmp_path):
    from typer.testing import CliRunner

    from cion_dist.cli import app

    res = CliRunner().invoke(
        app, ["inspect", runs["correlate"].uri, "--out", str(tmp_path / "c"), "--groups", "5", "--per-group", "6"]
    )
    assert res.exit_code == 0, res.output
    page = (tmp_path / "c" / "index.html").read_text()
    assert "Identities" in page and "Removed images" in page and "identities spanning several videos" in page
    n_ident = page.count("<b>identity ")
    assert 1 <= n_ident <= 5
    audit = runs["correlate"].summary["merge_audit"]
    if audit["closest_to_threshold"]:
        first = audit["closest_to_threshold"][0]["identity"]
        assert f"<b>identity {first}</b>" in page and "close to the threshold" in page
    sheets = _sheets(str(tmp_path / "c" / "index.html"))
    img = cv2.imread(str(tmp_path / "c" / sheets[0]))
    assert img.std() > 5


def test_inspect_refuses_other_runs(runs, tmp_path):
    from cion_dist.inspect.inspect_run import inspect_run

    with pytest.raises(DataError, match="reads ingest and correlate runs"):
        inspect_run(runs["embed"].uri, str(tmp_path / "e"))
    with pytest.raises(DataError, match="not a complete stage run"):
        inspect_run(str(tmp_path), str(tmp_path / "e"))

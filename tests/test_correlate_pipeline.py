"""End to end on real pipeline output: synthetic videos -> ingest (background detector + tracker) -> embed
(weight-free descriptor) -> correlate, with the synthetic ground truth attached by the pipeline runner.

The people walk through several cameras, each with its own lighting, so the tracker alone cannot join a person's
tracklets across videos: CION must, and its pairwise F must beat every baseline scored on the same embeddings.
"""

from __future__ import annotations

import pytest

from cion_dist.config import job_from_dict
from cion_dist.pipeline.runner import run_pipeline
from cion_dist.storage.fs import join, read_json


def _job(output: str, seed: int) -> object:
    return job_from_dict(
        {
            "stage": "pipeline",
            "output": output,
            "mlflow": {"enabled": False},
            "pipeline": {"stages": ["synth", "ingest", "embed", "correlate"]},
            "synth": {
                "identities": 8,
                "cameras": 3,
                "videos": 6,
                "frames": 60,
                "width": 320,
                "height": 192,
                "people_per_video": 3,
                "benchmark_identities": 0,
                "seed": seed,
            },
            "ingest": {"detector": {"kind": "background"}, "concurrency": 2},
            "embed": {"backbone": "handcrafted"},
            "correlate": {"window_videos": 4, "stride_videos": 2, "num_shards": 1},
        }
    )


@pytest.mark.slow
def test_cion_beats_every_baseline_on_pipeline_output(tmp_path, ray_local):
    results = run_pipeline(_job(str(tmp_path / "out"), seed=0))
    assert [r.stage for r in results] == ["synth", "ingest", "embed", "correlate"]
    corr = results[-1]
    q = read_json(join(corr.uri, "quality.json"))
    methods = q["methods"]
    assert set(methods) == {"cion", "tracklet", "dbscan", "finch"}
    assert q["images_scored"] > 100
    cion = methods["cion"]
    # the true people are seen in more than one video: the tracker alone leaves them split
    assert methods["tracklet"]["clusters"] > methods["tracklet"]["true_identities"]
    for name in ("tracklet", "dbscan", "finch"):
        assert cion["pairwise_f"] > methods[name]["pairwise_f"], (name, methods)
    # calibration keeps nearly all of a clean tracker's images and links across videos
    assert cion["kept_fraction"] > 0.9
    assert cion["clusters"] < methods["tracklet"]["clusters"]
    assert corr.summary["calibrated"] == ["radius", "link_distance"]
    assert corr.summary["links"] > 0

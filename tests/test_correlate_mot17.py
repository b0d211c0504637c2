"""Correlate on real people: MOT17 ground-truth crops embedded with the OSNet ONNX re-ID model."""

from __future__ import annotations

import pytest
from correlate_fixtures import mot17_osnet_corpus, write_embed_output, write_ground_truth

from cion_dist.config import job_from_dict
from cion_dist.correlate.job import run
from cion_dist.storage.fs import join, read_json
from cion_dist.storage.stage_io import StageOutput

pytestmark = pytest.mark.slow


def test_real_crops_with_osnet_produce_identities_and_quality(tmp_path, shared_data, ray_local, capsys):
    model = shared_data / "models" / "osnet_x0_25_msmt17.onnx"
    mot = shared_data / "mot17_mini" / "train"
    if not model.exists() or not mot.exists():
        pytest.skip("OSNet model or MOT17 frames absent from the shared data folder")
    corpus = mot17_osnet_corpus(mot, model)
    assert corpus.x.shape[1] == 512
    embed_uri = write_embed_output(str(tmp_path), corpus)
    gt = write_ground_truth(str(tmp_path / "gt.parquet"), corpus)
    job = job_from_dict(
        {
            "stage": "correlate",
            "output": str(tmp_path),
            "mlflow": {"enabled": False},
            "correlate": {
                "input": embed_uri,
                "ground_truth": gt,
                "min_images": 3,
                "window_videos": 3,
                "stride_videos": 2,
                "num_shards": 2,
            },
        }
    )
    res = run(job)
    table = capsys.readouterr().out
    with capsys.disabled():
        print(
            f"\nMOT17 + OSNet: {len(corpus.x)} crops, r={res.summary['radius']:.4f} "
            f"d={res.summary['link_distance']:.4f}\n{table}"
        )
    q = read_json(join(res.uri, "quality.json"))["methods"]
    assert set(q) == {"cion", "tracklet", "dbscan", "finch"}
    out = StageOutput(res.uri).read()
    assert out.num_rows == len(corpus.x)
    assert res.rows["identities"] > 0
    # OSNet separates MOT17 people well: denoising must undo most identity switches
    assert q["cion"]["pairwise_precision"] > q["tracklet"]["pairwise_precision"]
    assert q["cion"]["pairwise_f"] > q["tracklet"]["pairwise_f"]

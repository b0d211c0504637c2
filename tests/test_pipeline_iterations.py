"""`pipeline.iterations`: embed -> correlate -> pretrain runs again with the newest pretrained backbone as embedder."""

from __future__ import annotations

import pytest

from cion_dist.config import job_from_dict
from cion_dist.pipeline.runner import run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_second_iteration_embeds_with_the_pretrained_backbone(tmp_path, ray_local):
    job = job_from_dict(
        {
            "stage": "pipeline",
            "output": str(tmp_path / "out"),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "pipeline": {"stages": ["synth", "ingest", "embed", "correlate", "pretrain"], "iterations": 2},
            "synth": {
                "identities": 10,
                "cameras": 2,
                "videos": 4,
                "frames": 60,
                "width": 320,
                "height": 192,
                "benchmark_identities": 0,
            },
            "ingest": {"concurrency": 1},
            "correlate": {"window_videos": 4, "stride_videos": 2, "num_shards": 1, "min_images": 2},
            # 4 images per worker step = 2 identities x K=2: the second round's correlation may find few identities
            "pretrain": {
                "backbone": "resnet_tiny",
                "epochs": 1,
                "batch_size_per_worker": 4,
                "gradual_epochs": [1],
                "gradual_instances": [2],
                "local_crops": 2,
                "out_dim": 256,
                "cpu_shm_comm": False,
            },
        }
    )
    results = run_pipeline(job)
    stages = [r.stage for r in results]
    assert stages == ["synth", "ingest", "embed", "correlate", "pretrain", "embed", "correlate", "pretrain"]
    first_embed, second_embed = results[2], results[5]
    assert first_embed.summary["backbone"].startswith("handcrafted")
    assert second_embed.summary["backbone"] == "torch:resnet_tiny"
    assert second_embed.uri != first_embed.uri and second_embed.rows["embeddings"] == first_embed.rows["embeddings"]
    first_model, second_model = results[4].summary["model_uri"], results[7].summary["model_uri"]
    assert first_model != second_model and results[7].summary["iteration"] == 2

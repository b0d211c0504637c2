"""Loading the backbone to evaluate from the forms a user names: model folder, weights file with its description,
a bare training checkpoint (architecture from config), a stage output folder; errors name the file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cion_dist.errors import ConfigError, DataError
from cion_dist.evaluate.job import resolve_model
from cion_dist.models import build_backbone
from cion_dist.models.backbone_io import load_backbone


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return build_backbone("resnet_tiny").eval()


def _same(a, b):
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def _save_folder(model, folder, meta=None):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text(
        json.dumps(meta or {"architecture": "resnet_tiny", "embed_dim": 64, "input_size": [256, 128]})
    )
    return folder


def test_folder_file_and_json(tiny, tmp_path):
    folder = _save_folder(tiny, tmp_path / "m")
    for uri in (folder, folder / "backbone.safetensors", folder / "backbone.json"):
        res = load_backbone(str(uri))
        assert res.architecture == "resnet_tiny" and res.embed_dim == 64 and _same(res.module, tiny)
    assert len(res.weights_digest) == 64


def test_stage_folder_is_searched(tiny, tmp_path):
    _save_folder(tiny, tmp_path / "pretrain" / "run-1" / "model")
    res = resolve_model(str(tmp_path / "pretrain" / "run-1"), experiment="x", mlflow_enabled=False)
    assert _same(res.module, tiny) and res.uri.endswith("run-1/model")


def test_bare_teacher_checkpoint_needs_architecture(tiny, tmp_path):
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in tiny.state_dict().items()}, "epoch": 3}, ckpt)
    with pytest.raises(ConfigError, match="set evaluate.architecture"):
        resolve_model(str(ckpt), experiment="x", mlflow_enabled=False)
    res = load_backbone(str(ckpt), architecture="resnet_tiny")
    assert _same(res.module, tiny)


def test_errors(tiny, tmp_path):
    with pytest.raises(DataError, match="model: .*nothing does not exist"):
        load_backbone(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no backbone.json in the folder or below"):
        load_backbone(str(tmp_path / "empty"))
    bad = _save_folder(tiny, tmp_path / "bad", {"architecture": "resnet_tiny", "embed_dim": 128})
    with pytest.raises(DataError, match="embed_dim 128 but resnet_tiny produces 64"):
        load_backbone(str(bad))
    with pytest.raises(ConfigError, match="needs MLflow"):
        resolve_model("models:/x/1", experiment="x", mlflow_enabled=False)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(DataError, match="not a model folder"):
        load_backbone(str(tmp_path / "w.txt"))

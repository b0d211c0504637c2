"""Backbone factory, weight loading and the self-distillation head."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from cion_dist.errors import ConfigError, DataError
from cion_dist.models import build_backbone, load_backbone_weights
from cion_dist.models.dino_head import DINOHead, MultiCropWrapper
from cion_dist.models.resnet import IBN


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,dim", [("resnet_tiny", 64), ("resnet18", 512), ("vit_micro", 64)])
def test_pooled_output_for_global_and_local_crops(name, dim):
    m = build_backbone(name).eval()
    with torch.no_grad():
        g = m(torch.randn(2, 3, 256, 128))
        loc = m(torch.randn(3, 3, 128, 64))
    assert m.embed_dim == dim
    assert g.shape == (2, dim) and loc.shape == (3, dim)
    assert torch.isfinite(g).all()


def test_resnet50_family_matches_reference_sizes_and_last_stride():
    r50 = build_backbone("resnet50")
    ibn = build_backbone("resnet50_ibn_a")
    # 23.51 M parameters for both (the CION model zoo table)
    assert round(_params(r50) / 1e6, 2) == 23.51
    assert round(_params(ibn) / 1e6, 2) == 23.51
    assert r50.embed_dim == 2048
    with torch.no_grad():
        fmap = r50.eval().forward_features(torch.randn(1, 3, 256, 128))
    assert fmap.shape[-2:] == (16, 8)  # last stride 1: 256x128 / 16
    assert build_backbone("resnet50", last_stride=2).eval().forward_features(torch.randn(1, 3, 256, 128)).shape[
        -2:
    ] == (8, 4)
    # IBN-a: half-InstanceNorm in the first norm of layer1-3 bottlenecks only
    for layer in ("layer1", "layer2", "layer3"):
        for blk in getattr(ibn, layer):
            assert (
                isinstance(blk.bn1, IBN)
                and blk.bn1.IN.num_features * 2 == blk.bn1.BN.num_features + blk.bn1.IN.num_features
            )
    assert not any(isinstance(b.bn1, IBN) for b in ibn.layer4)
    assert not any(isinstance(mod, IBN) for mod in r50.modules())


def test_vit_position_embedding_interpolates_for_local_crops():
    m = build_backbone("vit_micro").eval()
    assert m.pos_embed.shape == (1, 1 + 16 * 8, 64)
    with torch.no_grad():
        out = m(torch.randn(2, 3, 128, 64))  # 8x4 grid
        tall = m(torch.randn(1, 3, 384, 128))  # 24x8 grid
    assert out.shape == (2, 64) and tall.shape == (1, 64)


def test_unknown_and_timm_names_give_clear_errors():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet51'"):
        build_backbone("resnet51")
    if importlib.util.find_spec("timm") is None:
        with pytest.raises(ConfigError, match="timm"):
            build_backbone("timm:resnet50")


def test_weights_round_trip_with_wrapper_prefixes(tmp_path):
    src = build_backbone("resnet_tiny")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(2, 3, 256, 128)
    ref = src.eval()(x)

    # safetensors with DDP + MultiCropWrapper prefixes and a head that is not part of the backbone
    sd = {f"module.backbone.{k}": v.contiguous() for k, v in src.state_dict().items()}
    sd["module.head.last_layer.weight"] = torch.randn(8, 4)
    save_file(sd, str(tmp_path / "w.safetensors"))
    dst = build_backbone("resnet_tiny")
    info = load_backbone_weights(dst, str(tmp_path / "w.safetensors"))
    assert info["missing"] == [] and info["loaded"] == len(src.state_dict())
    assert torch.allclose(dst.eval()(x), ref, atol=1e-6)

    # a DINO-style torch checkpoint: {"teacher": {...}, "student": {...}}
    torch.save({"teacher": {f"backbone.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, tmp_path / "ck.pth")
    dst2 = build_backbone("resnet_tiny", pretrained_path=str(tmp_path / "ck.pth"))
    assert torch.allclose(dst2.eval()(x), ref, atol=1e-6)


def test_partial_or_mismatched_weights_are_rejected(tmp_path):
    src = build_backbone("resnet_tiny").state_dict()
    partial = {k: v for k, v in src.items() if not k.startswith("layer4")}
    save_file(partial, str(tmp_path / "p.safetensors"))
    with pytest.raises(DataError, match="backbone parameters missing"):
        load_backbone_weights(build_backbone("resnet_tiny"), str(tmp_path / "p.safetensors"))
    info = load_backbone_weights(build_backbone("resnet_tiny"), str(tmp_path / "p.safetensors"), strict=False)
    assert info["missing"] and all(k.startswith("layer4") for k in info["missing"])
    save_file({k: v for k, v in build_backbone("resnet18").state_dict().items()}, str(tmp_path / "r18.safetensors"))
    with pytest.raises(DataError, match="shapes do not match"):
        load_backbone_weights(build_backbone("resnet_tiny"), str(tmp_path / "r18.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth"):
        load_backbone_weights(build_backbone("resnet_tiny"), str(tmp_path / "junk.pth"))


def test_vit_weights_from_another_grid_are_resized(tmp_path):
    src = build_backbone("vit_micro", img_size=(384, 128))  # 24x8 grid
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "v.safetensors"))
    dst = build_backbone("vit_micro")  # 16x8 grid
    info = load_backbone_weights(dst, str(tmp_path / "v.safetensors"))
    assert info["missing"] == []
    assert dst.pos_embed.shape == (1, 129, 64)
    assert torch.equal(dst.pos_embed[:, 0], src.pos_embed[:, 0])  # CLS position kept


def test_dino_head_and_multicrop_wrapper():
    head = DINOHead(64, out_dim=32, hidden_dim=48, bottleneck_dim=16)
    w = torch.nn.functional.normalize(head.last_layer.weight, dim=1)
    assert torch.allclose(w.norm(dim=1), torch.ones(32))
    calls = []
    bb = build_backbone("resnet_tiny")
    bb.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    model = MultiCropWrapper(bb, head)
    crops = [torch.randn(4, 3, 256, 128)] * 2 + [torch.randn(4, 3, 128, 64)] * 3
    out = model(crops)
    assert out.shape == (20, 32)
    assert calls == [8, 12]  # one backbone call per resolution
    # scaling the last layer's raw weight leaves the output unchanged (gain fixed to 1)
    with torch.no_grad():
        before = head(torch.ones(3, 64))
        head.last_layer.weight.mul_(5.0)
        after = head(torch.ones(3, 64))
    assert torch.allclose(before, after, atol=1e-5)

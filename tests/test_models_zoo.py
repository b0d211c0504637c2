"""The CION model zoo: every family builds by name, takes 256x128 crops and 128x64 local crops, and trains."""

from __future__ import annotations

import copy

import pytest
import torch

from cion_dist.errors import ConfigError
from cion_dist.models import build_backbone
from cion_dist.models.dino_head import DINOHead, MultiCropWrapper
from cion_dist.models.zoo import ZOO, families, import_timm
from cion_dist.pretrain.loss import IdentityDINOLoss

FAMILIES = ("ResNet", "ResNet-IBN", "ViT", "Swin", "ConvNeXt", "GhostNet", "RepViT", "FastViT", "EdgeNeXt", "VOLO")
SMALLEST = {f: families()[f][0] for f in FAMILIES}
BUILTIN = ("ResNet", "ResNet-IBN", "ViT")


def _needs_timm(family: str) -> None:
    if family in BUILTIN:
        return
    try:
        import_timm()
    except ConfigError as e:
        pytest.skip(str(e))


def test_ten_families_listed_with_the_names_the_zoo_uses():
    assert set(families()) == set(FAMILIES)
    for name in (
        "swin_tiny",
        "convnext_tiny",
        "ghostnet_130",
        "repvit_m1_0",
        "fastvit_sa12",
        "edgenext_small",
        "volo_d1",
    ):
        assert name in ZOO


@pytest.mark.parametrize("family", FAMILIES)
def test_family_forward_at_256x128_and_one_dino_step(family):
    _needs_timm(family)
    torch.manual_seed(0)
    name = SMALLEST[family]
    backbone = build_backbone(name)
    assert backbone.arch == name
    with torch.no_grad():
        feats = backbone.eval()(torch.randn(2, 3, 256, 128))
    assert feats.shape == (2, backbone.embed_dim) and torch.isfinite(feats).all()

    student = MultiCropWrapper(backbone.train(), DINOHead(backbone.embed_dim, 64, hidden_dim=32, bottleneck_dim=16))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss_fn = IdentityDINOLoss(64, ncrops=4)
    glob = [torch.randn(2, 3, 256, 128) for _ in range(2)]
    local = [torch.randn(2, 3, 128, 64) for _ in range(2)]
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in student.backbone.named_parameters()}
    with torch.no_grad():
        t_out = teacher(glob)
    s_out = student(glob + local)
    assert s_out.shape == (8, 64)
    loss = loss_fn(s_out, t_out, k=2)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    moved = [n for n, p in student.backbone.named_parameters() if not torch.equal(p, before[n])]
    # gradients reach the backbone, not only the head
    assert len(moved) > len(before) // 2, f"{name}: only {len(moved)} of {len(before)} backbone tensors moved"


def test_swin_and_volo_are_set_up_for_person_crops():
    _needs_timm("Swin")
    swin = build_backbone("swin_tiny")
    assert tuple(swin.patch_embed.img_size) == (256, 128)
    volo = build_backbone("volo_d1")
    assert tuple(volo.pos_embed.shape[1:3]) == (16, 8)  # 256x128 / 16


def test_unknown_zoo_name_lists_the_families():
    with pytest.raises(ConfigError, match="unknown backbone 'swin_huge'.*swin_tiny"):
        build_backbone("swin_huge")

"""The DINO head's initialisation: trunc-normal MLP, PyTorch's default Linear init for the normalised last layer
(as in the reference recipe), and why the last layer's scale matters although its rows are normalised."""

from __future__ import annotations

import math

import torch

from cion_dist.models.dino_head import DINOHead, NormalizedLinear


def test_last_layer_starts_exactly_as_a_default_linear():
    torch.manual_seed(3)
    ours = NormalizedLinear(256, 4096).weight.detach()
    torch.manual_seed(3)
    ref = torch.nn.Linear(256, 4096, bias=False).weight.detach()
    assert torch.equal(ours, ref)
    bound = 1 / math.sqrt(256)
    assert float(ours.abs().max()) <= bound
    assert abs(float(ours.std()) - bound / math.sqrt(3)) < 0.02 * bound / math.sqrt(3)  # std 0.036, not 0.02


def test_mlp_layers_are_trunc_normal_and_biases_zero():
    torch.manual_seed(0)
    head = DINOHead(512, out_dim=1024, hidden_dim=2048, bottleneck_dim=256)
    for m in head.mlp:
        if isinstance(m, torch.nn.Linear):
            assert abs(float(m.weight.detach().std()) - 0.02) < 0.001
            assert float(m.bias.abs().max()) == 0.0


def _row_turn(std: float | None) -> float:
    """Mean angle (radians) the last layer's rows turn in one AdamW step of a fixed loss."""
    torch.manual_seed(1)
    layer = NormalizedLinear(256, 2048)
    if std is not None:
        with torch.no_grad():
            torch.nn.init.trunc_normal_(layer.weight, std=std)
    before = torch.nn.functional.normalize(layer.weight.detach().clone(), dim=1)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=0.0)
    x = torch.nn.functional.normalize(torch.randn(64, 256, generator=torch.Generator().manual_seed(2)), dim=1)
    target = torch.randint(0, 2048, (64,), generator=torch.Generator().manual_seed(4))
    torch.nn.functional.cross_entropy(layer(x) / 0.1, target).backward()
    opt.step()
    after = torch.nn.functional.normalize(layer.weight.detach(), dim=1)
    return float(torch.arccos((before * after).sum(1).clamp(-1, 1)).mean())


def test_a_smaller_start_turns_rows_further_per_step():
    default, small = _row_turn(None), _row_turn(0.02)
    # AdamW moves each element by about lr whatever the gradient's scale, so the turn grows as 1 / ||row||
    assert 1.6 < small / default < 2.0, (small, default)


def test_head_without_bn_keeps_the_reference_layout_and_with_bn_spreads_a_common_direction():
    plain = DINOHead(64, out_dim=128, hidden_dim=96, bottleneck_dim=32)
    # the reference's state-dict names (mlp.0 / mlp.2 / mlp.4 linear), so its checkpoints load unchanged
    assert [k for k in plain.state_dict() if k.startswith("mlp.")] == [
        f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    ]
    bn = DINOHead(64, out_dim=128, hidden_dim=96, bottleneck_dim=32, use_bn=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in bn.mlp) == 2
    # pooled ReLU features: a large shared positive part plus a small per-image part
    g = torch.Generator().manual_seed(0)
    x = 5.0 + 0.1 * torch.randn(256, 64, generator=g).abs()

    def mean_pair_cosine(head):
        z = torch.nn.functional.normalize(head.mlp(x), dim=1)
        c = z @ z.T
        return float((c.sum() - c.diagonal().sum()) / (len(z) * (len(z) - 1)))

    torch.manual_seed(1)
    plain.train()
    bn.train()
    assert mean_pair_cosine(plain) > 0.99  # every image's bottleneck vector nearly the same
    assert mean_pair_cosine(bn) < 0.5

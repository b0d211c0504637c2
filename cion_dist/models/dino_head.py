"""The self-distillation projection head and the multi-crop wrapper shared by student and teacher.

The last layer is a linear map whose rows are unit-normalised on every forward (weight normalisation with the
gain fixed to 1). It is written as a plain module computing ``W / ||W||`` from a single parameter rather than
through ``torch.nn.utils.parametrizations``: DeepSpeed ZeRO-3 gathers the parameters of the module whose forward
runs, and a parametrisation keeps its tensors in a nested module whose forward never runs.

Initialisation follows the reference recipe (docs/pretrain_study.md, "head initialisation"): the MLP's linear
layers start from a
trunc-normal with std 0.02, the last layer keeps PyTorch's default ``nn.Linear`` initialisation (Kaiming-uniform,
``U(-1/sqrt(in), 1/sqrt(in))``, std ``1/sqrt(3 in)``: 0.036 at in = 256). The scale of the last layer does not
change its output (rows are normalised) but it sets how far each optimiser step turns a row: the gradient of
``W / ||W||`` shrinks as ``1 / ||W||`` while AdamW's step per element does not, so rows started at std 0.02 turn
about 1.8x further per step than the reference's.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedLinear(nn.Module):
    """``y = x @ (W / ||W_row||)^T``, no bias: weight-normalised linear with the gain fixed to 1."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        # nn.Linear's own default (reset_parameters), as the reference's weight-normed last layer keeps it
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    """MLP ``in -> hidden -> hidden -> bottleneck`` (GELU), L2 normalisation, then ``NormalizedLinear`` to
    ``out_dim`` prototypes (2048 / 2048 / 256; trunc-normal MLP, default-initialised last layer).

    ``use_bn``: BatchNorm after each hidden linear layer, DINO's ``use_bn_in_head`` (off in CION's recipe). A
    conv net's pooled features are non-negative and share a large common direction, so without it every image's
    bottleneck vector starts nearly the same; the study (docs/pretrain_study.md) measures what it changes.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        use_bn: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(((in_dim, hidden_dim), (hidden_dim, hidden_dim), (hidden_dim, bottleneck_dim))):
            layers.append(nn.Linear(a, b))
            if i < 2:
                if use_bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops of mixed sizes.

    Consecutive crops of one resolution are concatenated and go through the backbone in one call (one call per
    resolution, so BatchNorm sees a full batch); the head then runs once on every feature. The output rows keep
    the input order: crop 0's batch, then crop 1's, and so on.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        feats = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(list(crops[start:end]), dim=0)))
            start = end
        return self.head(torch.cat(feats, dim=0))

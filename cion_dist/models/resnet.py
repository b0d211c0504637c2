"""ResNet and ResNet-IBN-a backbones for person re-ID, in plain torch.

Re-ID conventions: layer4 keeps stride 1 (``last_stride=1``) so a 256x128 crop ends as a 16x8 map instead of 8x4,
and the output is the globally average-pooled feature ``[B, embed_dim]`` (no classifier). Parameter names follow
the common torchvision / IBN-Net layout (``conv1``, ``bn1``, ``layerN.M.convK``, ``downsample.0/1``, IBN halves as
``bn1.IN`` / ``bn1.BN``) so third-party state_dicts load by name.
"""

from __future__ import annotations

from typing import Sequence, Type, Union

import torch
from torch import nn


class IBN(nn.Module):
    """IBN-a normalisation: the first ``ratio`` of the channels get InstanceNorm (style invariance), the rest
    BatchNorm (content discrimination). From IBN-Net (Pan et al., ECCV 2018)."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, ibn: bool = False
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, ibn: bool = False
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """ResNet trunk + global average pooling. ``ibn=True`` puts IBN-a in the first norm of every block of
    layer1-3 (layer4 stays pure BatchNorm, as in IBN-Net's resnet*_ibn_a)."""

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        last_stride: int = 1,
        ibn: bool = False,
        stem_width: int | None = None,
    ):
        super().__init__()
        stem = stem_width or widths[0]
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        strides = (1, 2, 2, last_stride)
        for i, (w, n, s) in enumerate(zip(widths, layers, strides)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, w, n, s, ibn=ibn and i < 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = widths[-1] * block.expansion
        self._init_weights()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int, ibn: bool) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, down, ibn=ibn)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, ibn=ibn) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``[B, C, H/16, W/16]`` (with last stride 1)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)).flatten(1)


def resnet18(**kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


def resnet18_ibn_a(**kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), ibn=True, **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)


def resnet50_ibn_a(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), ibn=True, **kw)


def resnet101(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), **kw)


def resnet101_ibn_a(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), ibn=True, **kw)


def resnet_tiny(**kw) -> ResNet:
    """A 4-stage, one-block-per-stage ResNet (about 0.2 M parameters, 64-d output) for CPU tests."""
    kw.setdefault("widths", (8, 16, 32, 64))
    return ResNet(BasicBlock, (1, 1, 1, 1), **kw)

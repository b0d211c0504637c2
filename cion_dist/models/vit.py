"""Vision Transformer backbones for 256x128 person crops, in plain torch.

Patch 16 gives a 16x8 token grid on a 256x128 crop. The position embedding is stored for that grid and resized
bicubically when another size arrives (the 128x64 local crops of multi-crop training, or 384x128 fine-tuning), so
one model serves every crop size. The output is the final-norm CLS token ``[B, embed_dim]``. Parameter names follow
the widespread ``patch_embed.proj`` / ``blocks.N.attn.qkv`` / ``norm`` layout so third-party ViT weights load by
name. ``stem_conv=True`` (the default for the tiny/small/base sizes, as in the CION model zoo) swaps the single
patchify convolution for a small convolutional stem; ``vit_micro`` (tests) keeps the plain patchify layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Patchify convolution, or with ``stem_conv`` the ICS-style stem the CION ViTs use: a 7x7 stride-2
    convolution with 64 channels and two 3x3 convolutions (BN + ReLU each), then a half-patch projection."""

    def __init__(self, patch: int, dim: int, stem_conv: bool, stem_width: int = 64):
        super().__init__()
        if stem_conv:
            if patch % 2:
                raise ValueError(f"stem_conv needs an even patch size, got {patch}")
            w = stem_width
            self.stem = nn.Sequential(
                nn.Conv2d(3, w, 7, 2, 3, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, 1, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, 1, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            )
            self.proj = nn.Conv2d(w, dim, patch // 2, patch // 2)
        else:
            self.stem = nn.Identity()
            self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x))  # [B, D, H/p, W/p]


def resize_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ``[1, 1 + gh*gw, D]`` position embedding (CLS first) to another token grid, bicubically."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:, :1], pos[:, 1:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)], dim=1)


class VisionTransformer(nn.Module):
    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        img_size: tuple[int, int] = (256, 128),
        drop_path_rate: float = 0.0,
        stem_conv: bool = False,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.patch_embed = PatchEmbed(patch_size, embed_dim, stem_conv)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All final-norm tokens ``[B, 1 + h*w, D]``, CLS first."""
        t = self.patch_embed(x)
        grid = (t.shape[2], t.shape[3])
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + resize_pos_embed(self.pos_embed, self.grid, grid)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]


def _vit(dim: int, depth: int, heads: int, **kw) -> VisionTransformer:
    return VisionTransformer(embed_dim=dim, depth=depth, num_heads=heads, **kw)


def vit_micro(**kw) -> VisionTransformer:
    """Two blocks of width 64 (about 0.1 M parameters) for CPU tests."""
    return _vit(64, 2, 2, **kw)


def vit_tiny(**kw) -> VisionTransformer:
    kw.setdefault("stem_conv", True)
    return _vit(192, 12, 3, **kw)


def vit_small(**kw) -> VisionTransformer:
    kw.setdefault("stem_conv", True)
    return _vit(384, 12, 6, **kw)


def vit_base(**kw) -> VisionTransformer:
    kw.setdefault("stem_conv", True)
    return _vit(768, 12, 12, **kw)

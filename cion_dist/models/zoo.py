"""The CION model zoo's backbone families by name, built through timm and set up for 256x128 person crops.

CION releases backbones from ten families (ResNet, ResNet-IBN, ViT, Swin, ConvNeXt, GhostNet, RepViT, FastViT,
EdgeNeXt, VOLO). ResNet(-IBN) and ViT are built in (``resnet.py``, ``vit.py``); the other seven come from timm,
always with ``pretrained=False`` (weights are loaded from a file the user names, never downloaded). Crops are
256x128 (height x width) and DINO's local crops 128x64, so each family gets what a non-square, changing input needs:

- Swin: ``img_size=(256, 128)`` and 8x8 windows (the 64x32 patch grid divides into them; the last stage, 8x4, is
  one clamped window), ``strict_img_size=False`` so 128x64 local crops pass too;
- VOLO: ``img_size=(256, 128)`` for its fixed position grid (16x8 after the /16 stem), resampled bicubically to
  the grid of any other input size (local crops), as ViT's is;
- ConvNeXt, GhostNet, RepViT, FastViT, EdgeNeXt: fully convolutional or with conditional / Fourier position
  encodings, so any multiple of 32 works as is.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cion_dist.errors import ConfigError


@dataclass(frozen=True)
class ZooEntry:
    family: str
    timm_name: str
    kwargs: dict = field(default_factory=dict)


_SWIN = {"img_size": (256, 128), "window_size": 8, "strict_img_size": False}
_VOLO = {"img_size": (256, 128)}


def _entries() -> dict[str, ZooEntry]:
    z: dict[str, ZooEntry] = {}
    for size in ("tiny", "small", "base"):
        z[f"swin_{size}"] = ZooEntry("Swin", f"swin_{size}_patch4_window7_224", _SWIN)
    for size in ("atto", "femto", "pico", "nano", "tiny", "small", "base"):
        z[f"convnext_{size}"] = ZooEntry("ConvNeXt", f"convnext_{size}")
    for size in ("050", "100", "130"):
        z[f"ghostnet_{size}"] = ZooEntry("GhostNet", f"ghostnet_{size}")
    for size in ("m0_9", "m1_0", "m1_1", "m1_5", "m2_3"):
        z[f"repvit_{size}"] = ZooEntry("RepViT", f"repvit_{size}")
    for size in ("t8", "t12", "s12", "sa12", "sa24", "sa36", "ma36"):
        z[f"fastvit_{size}"] = ZooEntry("FastViT", f"fastvit_{size}")
    for size in ("xx_small", "x_small", "small", "base"):
        z[f"edgenext_{size}"] = ZooEntry("EdgeNeXt", f"edgenext_{size}")
    for size in ("d1", "d2", "d3", "d4", "d5"):
        z[f"volo_{size}"] = ZooEntry("VOLO", f"volo_{size}_224", _VOLO)
    return z


ZOO: dict[str, ZooEntry] = _entries()

# the built-in families, for listings (names live in factory._BUILDERS)
BUILTIN_FAMILIES = {
    "ResNet": ("resnet_tiny", "resnet18", "resnet50", "resnet101"),
    "ResNet-IBN": ("resnet18_ibn_a", "resnet50_ibn_a", "resnet101_ibn_a"),
    "ViT": ("vit_micro", "vit_tiny", "vit_small", "vit_base"),
}


def families() -> dict[str, list[str]]:
    """Family -> names accepted by ``build_backbone``, smallest first."""
    out = {k: list(v) for k, v in BUILTIN_FAMILIES.items()}
    for name, e in ZOO.items():
        out.setdefault(e.family, []).append(name)
    return out


def import_timm():
    """Import timm, which imports torchvision.

    torchvision's PyPI wheels are CUDA builds; beside a CPU-only torch their compiled ops do not load and
    ``import torchvision`` then fails while registering the fake kernels of ``nms`` / ``qnms``. timm uses only
    torchvision's pure-Python parts, so when the compiled ops are absent their two schemas are declared (without
    kernels: calling them still raises) and the import proceeds.
    """
    try:
        try:
            import timm

            return timm
        except RuntimeError as e:
            if "torchvision::" not in str(e):
                raise
        _declare_torchvision_schemas()
        import timm

        return timm
    except ImportError as e:
        raise ConfigError(f"the zoo's timm families need the packages timm and torchvision ({e})") from None


_DECLARED: list = []


def _declare_torchvision_schemas() -> None:
    import sys

    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "timm"))]:
        del sys.modules[mod]  # half-imported by the failed attempt
    if not _DECLARED:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in (
            "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
        ):
            try:
                lib.define(schema)
            except RuntimeError:  # already defined by a loaded extension
                pass
        _DECLARED.append(lib)  # the library object must outlive the registration


def build_zoo_backbone(name: str, **kw) -> nn.Module:
    """A zoo backbone by its short name (``swin_tiny``, ``volo_d1``...) with the crop-size set-up above."""
    entry = ZOO.get(name)
    if entry is None:
        raise ConfigError(f"unknown zoo backbone {name!r}")
    return build_timm(entry.timm_name, {**entry.kwargs, **kw})


def build_timm(timm_name: str, kw: dict | None = None) -> nn.Module:
    """timm model without classifier (pooled features out), no weight download, ``embed_dim`` set."""
    timm = import_timm()
    kw = dict(kw or {})
    try:
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kw)
    except Exception as e:
        raise ConfigError(f"timm cannot build {timm_name!r}: {e}") from e
    if timm_name.startswith("volo_"):
        _resample_volo_positions(model)
    # models with a pre-logits stage (GhostNet's conv head) pool to head_hidden_size, not num_features
    model.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model


def _resample_volo_positions(model: nn.Module) -> None:
    """VOLO adds a fixed [1, H, W, C] position grid after its outlooker stage; resample it for other grids."""

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        for idx, block in enumerate(self.network):
            if idx == 2 and self.pos_embed is not None:
                pos = self.pos_embed
                if pos.shape[1:3] != x.shape[1:3]:
                    pos = F.interpolate(
                        pos.permute(0, 3, 1, 2), size=tuple(x.shape[1:3]), mode="bicubic", align_corners=False
                    ).permute(0, 2, 3, 1)
                x = self.pos_drop(x + pos)
            x = block(x)
        b, _, _, c = x.shape
        return x.reshape(b, -1, c)

    model.forward_tokens = types.MethodType(forward_tokens, model)

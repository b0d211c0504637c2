"""Backbones by name, and loading their weights from any checkpoint layout the project meets.

Every backbone maps an image batch ``[B, 3, H, W]`` to pooled global features ``[B, embed_dim]`` and carries an
``embed_dim`` attribute, so the embed, pretrain and evaluate stages can swap architectures from a config string.
ResNet(-IBN) and ViT are built in; the model zoo's other families (Swin, ConvNeXt, GhostNet, RepViT, FastViT,
EdgeNeXt, VOLO) are named by their short names (``swin_tiny``, ``volo_d1``...) and built through timm set up for
256x128 crops (``zoo.py``); any other timm model is ``timm:<name>``.
"""

from __future__ import annotations

import io
import re
from typing import Callable, Optional

import torch
from torch import nn

from cion_dist.errors import ConfigError, DataError
from cion_dist.models import resnet, vit, zoo

INPUT_SIZE = (256, 128)  # (height, width) of a person crop

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet_tiny": resnet.resnet_tiny,
    "resnet18": resnet.resnet18,
    "resnet18_ibn_a": resnet.resnet18_ibn_a,
    "resnet50": resnet.resnet50,
    "resnet50_ibn_a": resnet.resnet50_ibn_a,
    "resnet101": resnet.resnet101,
    "resnet101_ibn_a": resnet.resnet101_ibn_a,
    "vit_micro": vit.vit_micro,
    "vit_tiny": vit.vit_tiny,
    "vit_small": vit.vit_small,
    "vit_base": vit.vit_base,
}

# wrappers that training code and checkpoint formats put around a backbone's own parameter names
_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.", "encoder.")
_NESTED = ("teacher", "state_dict", "model", "module", "backbone")
# classifier / projection heads that are not part of a pooled-feature backbone
_HEADS = re.compile(r"^(fc|head|heads|classifier|bottleneck|last_layer)\.")


def backbone_names() -> list[str]:
    return sorted(_BUILDERS) + sorted(zoo.ZOO) + ["timm:<name>"]


def build_backbone(name: str, pretrained_path: Optional[str] = None, **kw) -> nn.Module:
    """A backbone by name (``resnet50_ibn_a``, ``vit_small``, ``timm:convnext_tiny``...), optionally with weights.

    Keyword arguments go to the architecture: ``last_stride`` (ResNets), ``img_size``, ``stem_conv``,
    ``drop_path_rate`` (ViTs). ``pretrained_path`` is a local path or s3:// URI of a safetensors file or a torch
    checkpoint (see ``load_backbone_weights``).
    """
    if name.startswith("timm:"):
        model = _build_timm(name[len("timm:") :], **kw)
    elif name in zoo.ZOO:
        model = zoo.build_zoo_backbone(name, **kw)
    else:
        builder = _BUILDERS.get(name)
        if builder is None:
            raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}")
        model = builder(**kw)
    model.arch = name
    if pretrained_path:
        load_backbone_weights(model, pretrained_path)
    return model


def _build_timm(name: str, **kw) -> nn.Module:
    return zoo.build_timm(name, kw)


def read_state_dict(path: str, storage=None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint (local or s3://), with wrapper prefixes stripped.

    Torch checkpoints are read with ``weights_only=True``; a DINO-style dict holding ``teacher`` / ``state_dict``
    / ``model`` is unwrapped (the teacher is preferred: it is the model self-distillation keeps).
    """
    from cion_dist.storage.fs import read_bytes

    raw = read_bytes(path, storage)
    if raw[:8] and (path.endswith(".safetensors") or _looks_like_safetensors(raw)):
        from safetensors.torch import load as st_load

        try:
            sd = st_load(raw)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        try:
            sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable torch checkpoint of plain tensors ({e})") from e
    for _ in range(3):
        if not isinstance(sd, dict):
            break
        inner = next((sd[k] for k in _NESTED if isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(f"{path}: holds no state_dict of tensors")
    return {_strip(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _looks_like_safetensors(raw: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON header starting with '{'
    if len(raw) < 10:
        return False
    n = int.from_bytes(raw[:8], "little")
    return 0 < n < len(raw) and raw[8:9] == b"{"


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def load_backbone_weights(model: nn.Module, path: str, strict: bool = True, storage=None) -> dict:
    """Load a checkpoint into a backbone by parameter name; returns ``{"loaded", "missing", "unexpected"}``.

    Wrapper prefixes (``module.backbone.``, ``backbone.``...) are stripped; classifier / projection heads are
    ignored; a ViT position embedding of another grid is resized. With ``strict`` a missing backbone parameter or
    a shape mismatch is a ``DataError`` naming the keys: a half-loaded backbone would fail silently downstream.
    """
    sd = read_state_dict(path, storage)
    own = model.state_dict()
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = _resize_pos(sd["pos_embed"], own["pos_embed"], model)
    mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        detail = ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:5])
        raise DataError(
            f"{path}: shapes do not match the {getattr(model, 'arch', type(model).__name__)} backbone: {detail}"
        )
    usable = {k: v for k, v in sd.items() if k in own}
    missing = sorted(k for k in own if k not in usable and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in sd if k not in own and not _HEADS.match(k))
    if strict and (missing or not usable):
        raise DataError(
            f"{path}: {len(missing)} backbone parameters missing (e.g. {', '.join(missing[:5])}); "
            f"{len(usable)} matched, unexpected keys e.g. {', '.join(unexpected[:5])}"
        )
    model.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "missing": missing, "unexpected": unexpected}


def _resize_pos(src: torch.Tensor, dst: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Resize a stored position embedding to the model's grid; the stored grid is inferred from its token count
    (same width in patches, e.g. 384x128 -> 256x128; else the model's aspect ratio; else square)."""
    new_grid = getattr(model, "grid", None)
    if new_grid is None or src.shape[-1] != dst.shape[-1]:
        return src  # reported as a shape mismatch
    n = src.shape[1] - 1
    gh_t, gw_t = new_grid
    gw_ratio = max(1, round((n * gw_t / gh_t) ** 0.5))
    for gw in (gw_t, gw_ratio, round(n**0.5)):
        if gw > 0 and n % gw == 0:
            return vit.resize_pos_embed(src, (n // gw, gw), (gh_t, gw_t))
    return src

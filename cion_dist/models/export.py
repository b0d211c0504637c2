"""The exported backbone format: ``backbone.safetensors`` (fp32 state_dict) + ``backbone.json`` (how to rebuild it).

``backbone.json`` holds ``{"architecture", "embed_dim", "input_size": [h, w], "kwargs", "mean", "std"}``, enough
for any stage to rebuild the network with ``build_backbone`` and feed it correctly. ``load_exported`` accepts the
folder as a local path, an s3:// URI, ``runs:/<run_id>/model`` or ``models:/<name>/<version|@alias>``.
"""

from __future__ import annotations

import json
import tempfile
from typing import Optional

import torch
from torch import nn

from cion_dist.errors import DataError
from cion_dist.models.factory import INPUT_SIZE, build_backbone, load_backbone_weights

WEIGHTS = "backbone.safetensors"
META = "backbone.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_state(full_state: dict[str, torch.Tensor], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The backbone's tensors of a student/teacher state_dict, prefix stripped, fp32, contiguous."""
    out = {
        k[len(prefix) :]: (v.float() if v.is_floating_point() else v).contiguous().cpu()
        for k, v in full_state.items()
        if k.startswith(prefix)
    }
    if not out:
        raise DataError(f"no '{prefix}*' tensors in the state_dict to export")
    return out


def export_files(
    state: dict[str, torch.Tensor],
    architecture: str,
    embed_dim: int,
    kwargs: Optional[dict] = None,
    input_size=INPUT_SIZE,
) -> dict[str, bytes]:
    """File name -> bytes of an exported backbone."""
    from safetensors.torch import save

    meta = {
        "architecture": architecture,
        "embed_dim": int(embed_dim),
        "input_size": list(input_size),
        "kwargs": kwargs or {},
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "format": "cion-backbone/1",
    }
    return {WEIGHTS: save(state, metadata={"architecture": architecture}), META: json.dumps(meta, indent=2).encode()}


def _local_folder(uri: str) -> str:
    if uri.startswith(("runs:/", "models:/")):
        import mlflow

        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="cion-model-"))
    return uri


def load_exported(uri: str, storage=None) -> tuple[nn.Module, dict]:
    """Rebuild an exported backbone (eval mode) and its metadata from a folder / runs:/ / models:/ URI."""
    from cion_dist.storage.fs import join, read_json

    folder = _local_folder(uri)
    meta = read_json(join(folder, META), storage)
    try:
        model = build_backbone(meta["architecture"], **meta.get("kwargs", {}))
    except KeyError as e:
        raise DataError(f"{join(folder, META)}: missing key {e}") from e
    load_backbone_weights(model, join(folder, WEIGHTS), storage=storage)
    return model.eval(), meta

"""Memory a training worker holds, measured from the process rather than computed from parameter counts.

``tensor_breakdown`` walks every tensor the Python heap holds (parameters, ZeRO partitions and flat buffers,
gradients, optimizer moments, the teacher) and sums their distinct storages once each, so views into one flat
buffer count once, then files each storage under the first named part that uses it. Called between steps, when
no activations are alive, the student side of it (everything but the excluded teacher) is the model state that
ZeRO partitions: weights, fp32 master copies, optimizer moments, gradients and communication buckets.

Measurement only: ``cion_dist.pretrain.hooks.MemoryProbe`` calls these from the benchmarks and tests; the
training path never walks the heap.
"""

from __future__ import annotations

import gc
import warnings
from typing import Iterable, Mapping

import torch
from torch import nn


def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # meta or sparse tensors hold no plain storage
        return None
    return (s.data_ptr(), s.nbytes()) if s.nbytes() else None


def _module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters (with the shard a ZeRO-3 parameter keeps in ``ds_tensor``) and buffers."""
    params = [t for p in module.parameters() for t in (p, getattr(p, "ds_tensor", None)) if t is not None]
    return params + list(module.buffers())


def module_bytes(module: nn.Module) -> int:
    """Bytes of the distinct storages of a module's parameters (this rank's shards under ZeRO-3) and buffers."""
    return sum(dict(key for t in _module_tensors(module) if (key := _storage(t))).values())


def tensor_breakdown(parts: Mapping[str, Iterable[torch.Tensor]], exclude: Iterable[nn.Module] = ()) -> dict[str, int]:
    """Bytes of the distinct tensor storages alive in this process, by part: a storage that one of ``parts``'
    tensors uses counts there (first part first), any other under ``"other"``; ``exclude`` modules' storages
    are left out."""
    skip = {key[0] for module in exclude for t in _module_tensors(module) if (key := _storage(t))}
    owner: dict[int, str] = {}
    for name, tensors in parts.items():
        for t in tensors:
            key = _storage(t)
            if key and key[0] not in skip:
                owner.setdefault(key[0], name)
    storages: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for t in tensors:
        key = _storage(t)
        if key and key[0] not in skip:
            storages[key[0]] = max(storages.get(key[0], 0), key[1])
    out = dict.fromkeys([*parts, "other"], 0)
    for ptr, nbytes in storages.items():
        out[owner.get(ptr, "other")] += nbytes
    return out


def is_zero3_param(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id") and hasattr(p, "ds_numel")


def model_state_parts(engine) -> dict[str, list[torch.Tensor]]:
    """A DeepSpeed engine's student tensors by kind, for ``tensor_breakdown``: the module's weights (this rank's
    partitions under ZeRO-3), the optimizer's moments, and the tensors the optimizer steps where they are not the
    weights (ZeRO's fp32 master partitions, read from DeepSpeed's attributes). Gradients and communication
    buckets fall under "other"."""
    weights = [p.ds_tensor if is_zero3_param(p) else p for p in engine.module.parameters()]
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    moments = [v for st in inner.state.values() for v in st.values() if torch.is_tensor(v)]
    stepped = [p for group in inner.param_groups for p in group["params"]]
    # ZeRO-1/2 and ZeRO-3 keep their fp32 partitions here; ZeRO-3 hands them to the optimizer only inside step
    for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        stepped += [t for t in getattr(engine.optimizer, attr, None) or [] if torch.is_tensor(t)]
    return {"weights": weights, "optimizer": moments, "master": stepped}

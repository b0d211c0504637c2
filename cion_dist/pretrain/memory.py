"""Memory a training worker holds, measured from the process rather than computed from parameter counts.

``tensor_bytes`` walks every tensor the Python heap holds (parameters, ZeRO partitions and flat buffers, gradients,
optimizer moments, the teacher) and sums their distinct storages once each, so views into one flat buffer count
once. Called between steps, when no activations are alive, the student side of it (everything but the teacher and
the modules named in ``exclude``) is the model state that ZeRO partitions: weights, gradients and optimizer state.
"""

from __future__ import annotations

import gc
import os
from typing import Iterable

import torch
from torch import nn


def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # meta or sparse tensors hold no plain storage
        return None
    return (s.data_ptr(), s.nbytes()) if s.nbytes() else None


def tensor_bytes(exclude: Iterable[nn.Module] = ()) -> int:
    """Bytes of the distinct tensor storages alive in this process, less those of the ``exclude`` modules."""
    skip = set()
    for module in exclude:
        for t in list(module.parameters()) + list(module.buffers()):
            key = _storage(t)
            if key:
                skip.add(key[0])
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            key = _storage(obj)
            if key and key[0] not in skip:
                storages[key[0]] = max(storages.get(key[0], 0), key[1])
    return sum(storages.values())


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def rss_mb() -> float:
    """Resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0

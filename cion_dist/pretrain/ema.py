"""Teacher EMA that stays right under every ZeRO stage.

The update ``t <- m * t + (1 - m) * s`` has two layouts:
- the teacher is a plain module replicated on every rank (it takes no gradients, so DeepSpeed need not own it).
  Under ZeRO 0/1/2 every rank holds the student's full weights in the module; under ZeRO-3 each rank holds only
  its partition, so the student parameters are gathered a bucket at a time (``bucket_numel`` elements, so only a
  slice of the model is ever whole) with ``deepspeed.zero.GatheredParameters`` (read-only, nothing is written
  back; on gloo it is waited on as a whole, see ``settle_gloo_gather``) and every rank applies the same update,
  keeping the replicas identical;
- under ZeRO-3 the teacher may be partitioned like the student: each rank then updates its own shards from the
  student's, with no communication at all.
The teacher stays fp32 whatever the student's precision.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


def is_zero3_param(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id") and hasattr(p, "ds_numel")


def _buckets(
    params: list[tuple[torch.Tensor, torch.Tensor]], max_numel: int
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    bucket, size = [], 0
    for pair in params:
        n = pair[1].ds_numel if is_zero3_param(pair[1]) else pair[1].numel()
        if bucket and size + n > max_numel:
            yield bucket
            bucket, size = [], 0
        bucket.append(pair)
        size += n
    if bucket:
        yield bucket


def paired_parameters(teacher: nn.Module, student: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(teacher, student) parameter pairs by name; the two modules must share their architecture."""
    s = dict(student.named_parameters())
    pairs = []
    for name, t in teacher.named_parameters():
        if name not in s:
            raise ValueError(f"teacher parameter {name} has no student counterpart")
        pairs.append((t, s[name]))
    return pairs


@contextlib.contextmanager
def gathered(params: list[torch.Tensor]):
    """Full student weights for the block; a no-op unless the parameters are ZeRO-3 partitioned."""
    z3 = [p for p in params if is_zero3_param(p)]
    if not z3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(z3, modifier_rank=None):
        settle_gloo_gather(z3[0].ds_process_group)
        yield


def settle_gloo_gather(group) -> None:
    """Wait for every piece of a ZeRO-3 gather on gloo before the gathered weights are read.

    DeepSpeed gathers several parameters by launching one async all-gather each into fresh ``torch.empty``
    buffers and waiting on the last handle only, which is enough where the collectives run in order on one CUDA
    stream (NCCL). Gloo runs them on a pool of threads, so the first buffers can still be filling when the context
    is entered: reads then see uninitialised memory (values up to 5e36 seen). A gloo barrier completes every
    earlier operation of the group before it returns. ``benchmarks/stress_collectives.py`` counts such reads.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_backend(group) == "gloo":
        dist.barrier(group=group)


def _lerp_(targets: list[torch.Tensor], sources: list[torch.Tensor], momentum: float) -> None:
    """``t <- t + (1 - m) (s - t)`` (= ``m t + (1 - m) s``) over lists, grouped by device and dtype so every
    group is one multi-tensor kernel; a source of another precision (a bf16 student) is cast once."""
    groups: dict[tuple, tuple[list, list]] = {}
    for t, s in zip(targets, sources):
        ts, ss = groups.setdefault((t.device, t.dtype), ([], []))
        ts.append(t)
        ss.append(s.detach() if (s.device, s.dtype) == (t.device, t.dtype) else s.detach().to(t.device, t.dtype))
    for ts, ss in groups.values():
        torch._foreach_lerp_(ts, ss, 1.0 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, bucket_numel: int = 4_000_000) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` over parameters (buffers are the teacher's own).

    A teacher partitioned by ZeRO-3 like the student is updated shard by shard, with no communication: both
    split every parameter the same way (the same shape over the same group), so each rank's shards line up.
    """
    pairs = paired_parameters(teacher, student)
    shards_t, shards_s = [], []
    for name, (t, s) in zip((n for n, _ in teacher.named_parameters()), pairs):
        if is_zero3_param(t):
            if not is_zero3_param(s) or t.ds_tensor.numel() != s.ds_tensor.numel():
                raise ValueError(f"teacher parameter {name} is partitioned but its student counterpart is not alike")
            shards_t.append(t.ds_tensor)
            shards_s.append(s.ds_tensor)
    if shards_t:
        _lerp_(shards_t, shards_s, momentum)
    replicated = [(t, s) for t, s in pairs if not is_zero3_param(t)]
    for bucket in _buckets(replicated, bucket_numel):
        with gathered([s for _, s in bucket]):
            _lerp_([t for t, _ in bucket], [s for _, s in bucket], momentum)


@torch.no_grad()
def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU fp32 copy of every parameter and buffer, gathering ZeRO-3 partitions (collective: call on all ranks)."""
    params = dict(module.named_parameters())
    out: dict[str, torch.Tensor] = {}
    with gathered(list(params.values())):
        for name, p in params.items():
            out[name] = p.detach().float().cpu().clone()
    for name, b in module.named_buffers():
        out[name] = b.detach().cpu().clone()
    return out


@torch.no_grad()
def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a full state (as ``full_state`` returns it) into ``module``; a ZeRO-3 parameter takes only this rank's
    slice of the flat tensor (zero-padded at the end, as ZeRO pads), so no communication is needed."""
    params, buffers = dict(module.named_parameters()), dict(module.named_buffers())
    missing = sorted((set(params) | set(buffers)) - set(state))
    if missing:
        raise KeyError(f"state has no entry for {missing[:5]}")
    for name, p in params.items():
        src = state[name]
        if is_zero3_param(p):
            if tuple(src.shape) != tuple(p.ds_shape):
                raise ValueError(f"{name}: state shape {tuple(src.shape)} != parameter shape {tuple(p.ds_shape)}")
            part = p.ds_tensor.numel()
            flat = src.reshape(-1)
            start = dist.get_rank(group=p.ds_process_group) * part
            piece = flat[start : start + part]
            p.ds_tensor.zero_()
            p.ds_tensor[: piece.numel()].copy_(piece)
        else:
            p.copy_(src)
    for name, b in buffers.items():
        b.copy_(state[name])

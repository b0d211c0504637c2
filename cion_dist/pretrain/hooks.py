"""Measurement and fault drills for the pretrain workers, kept out of the training path.

A hook sees the loop through ``LoopView`` after every step (``after_step``) and at every report (``at_report``,
called on every rank at the same point, so it may run collectives; what it returns joins the reported metrics).
Benchmarks and tests install hooks on the driver around a stage run::

    with hooks.installed(hooks.FaultDrill(at_step=5), hooks.MemoryProbe()):
        pretrain.job.run(job)

and ``pretrain.job.fit`` hands ``hooks.current()`` to the workers with the loop's config. With none installed
(production) the loop calls nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

_INSTALLED: list = []


@dataclass
class LoopView:
    rank: int
    world: int
    device: torch.device
    parts: Any  # cion_dist.pretrain.step.StepParts
    state: dict  # epoch, step_in_epoch, global_step, ...
    resumed_from: Optional[int]
    flush: Callable[[], None]  # push buffered metrics to MLflow now


class Hook:
    def after_step(self, view: LoopView) -> None:
        pass

    def at_report(self, view: LoopView) -> dict:
        return {}


class FaultDrill(Hook):
    """Rank 0's process dies at global step ``at_step`` of the first attempt, as a killed node would (the
    restarted attempt resumes from a checkpoint and is left alone)."""

    def __init__(self, at_step: int, exit_code: int = 17):
        self.at_step, self.exit_code = at_step, exit_code

    def after_step(self, view: LoopView) -> None:
        if view.state["global_step"] == self.at_step and view.resumed_from is None and view.rank == 0:
            view.flush()
            os._exit(self.exit_code)


def _max_over_ranks(x: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class MemoryProbe(Hook):
    """At each report, the larger worker's peak and current RSS and the student's model state by part (a walk
    of the Python heap, ``cion_dist.pretrain.memory``), the teacher left out, plus the teacher's own bytes."""

    def at_report(self, view: LoopView) -> dict:
        from cion_dist.pretrain.memory import model_state_parts, module_bytes, tensor_breakdown
        from cion_dist.procmem import peak_rss_mb, rss_mb

        dev, parts = view.device, view.parts
        held = tensor_breakdown(model_state_parts(parts.engine), exclude=[parts.teacher, parts.loss_fn])
        out = {f"student_{k}_mb": _max_over_ranks(v / 2**20, dev) for k, v in held.items()}
        out["student_state_mb"] = _max_over_ranks(sum(held.values()) / 2**20, dev)
        out["teacher_mb"] = _max_over_ranks(module_bytes(parts.teacher) / 2**20, dev)
        out["peak_rss_mb_max_worker"] = _max_over_ranks(peak_rss_mb(), dev)
        out["rss_mb_max_worker"] = _max_over_ranks(rss_mb(), dev)
        return out


def current() -> list[Hook]:
    return list(_INSTALLED)


@contextlib.contextmanager
def installed(*hooks: Hook):
    """Hooks handed to the workers of every pretrain fit started inside the block."""
    _INSTALLED.extend(hooks)
    try:
        yield
    finally:
        for h in hooks:
            _INSTALLED.remove(h)

"""Training schedules as arrays indexed by the global step (docs/method.md sections 4.3, 4.5).

Precomputing every value once makes schedules trivial to test and to resume: a restarted run reads entry
``step`` and lands on exactly the value the interrupted run would have used. Like the reference code, the arrays
are sized from the first epoch's step count; later (longer) epochs read the clamped last value (``at``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def cosine_schedule(
    base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_epochs``, then a half cosine to ``final``."""
    total = epochs * steps_per_epoch
    warm = min(warmup_epochs * steps_per_epoch, total)
    warmup = np.linspace(warmup_start, base, warm) if warm > 0 else np.array([])
    i = np.arange(total - warm)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(len(i), 1)))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def at(schedule: np.ndarray, step: int) -> float:
    return float(schedule[min(step, len(schedule) - 1)])


def instances_for_epoch(epoch: int, gradual_epochs: Sequence[int], gradual_instances: Sequence[int]) -> int:
    """K for an epoch: ``gradual_instances[i]`` for epochs below ``gradual_epochs[i]`` (the last K after that)."""
    if len(gradual_epochs) != len(gradual_instances) or not gradual_instances:
        raise ValueError("gradual_epochs and gradual_instances must be non-empty and of equal length")
    for end, k in zip(gradual_epochs, gradual_instances):
        if epoch < end:
            return int(k)
    return int(gradual_instances[-1])


@dataclass(frozen=True)
class Schedules:
    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray

    @classmethod
    def build(
        cls,
        *,
        epochs: int,
        steps_per_epoch: int,
        lr: float,
        min_lr: float,
        warmup_epochs: int,
        weight_decay: float,
        weight_decay_end: float,
        momentum_teacher: float,
    ) -> "Schedules":
        return cls(
            lr=cosine_schedule(lr, min_lr, epochs, steps_per_epoch, warmup_epochs),
            wd=cosine_schedule(weight_decay, weight_decay_end, epochs, steps_per_epoch),
            momentum=cosine_schedule(momentum_teacher, 1.0, epochs, steps_per_epoch),
        )

    def values(self, step: int) -> dict[str, float]:
        return {"lr": at(self.lr, step), "wd": at(self.wd, step), "momentum": at(self.momentum, step)}


def for_epochs(
    epoch_steps: Sequence[int],
    *,
    lr: float,
    min_lr: float,
    warmup_epochs: int,
    weight_decay: float,
    weight_decay_end: float,
    momentum_teacher: float,
) -> Schedules:
    """Schedules over the run's real steps, read at the running global step.

    The reference reads ``len(loader) * epoch + it`` from arrays sized by the first loader, so when K grows and
    its loader shortens, the index jumps back (lr and momentum move backwards at each milestone) and the cosine
    never reaches its end. Here every epoch's length is known before training (it follows from the per-identity
    counts, ``cion_dist.pretrain.stream.RunPlan``), so the arrays have one entry per step that will run: warm-up
    covers exactly the first ``warmup_epochs`` epochs, the cosine ends at the last step, and a resumed run reads
    the same entry from its saved global step.
    """
    total = int(sum(epoch_steps))
    warm = int(sum(epoch_steps[:warmup_epochs]))
    return Schedules.build(
        epochs=total,
        steps_per_epoch=1,
        lr=lr,
        min_lr=min_lr,
        warmup_epochs=warm,
        weight_decay=weight_decay,
        weight_decay_end=weight_decay_end,
        momentum_teacher=momentum_teacher,
    )

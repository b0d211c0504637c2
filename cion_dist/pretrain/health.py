"""Is self-distillation learning or collapsing? A verdict from the step's health figures.

Every step reports (``IdentityDINOLoss.loss_and_health``) the teacher's mean per-image entropy ``H(t)``, the
entropy of its batch-mean distribution ``H(mean t)``, the KL between teacher and student and the loss. Over ``D``
prototypes, ``log D`` is the entropy of a uniform output. The two ways self-distillation collapses (Caron et al.
2021, section 5.3) leave clear marks: every image sent to the same prototype makes even the batch mean sharp
(``H(mean t)`` near 0); centring without sharpening makes every image's distribution uniform (``H(t)`` near
``log D``). In both the output no longer depends on the image and the KL goes to 0. A learning teacher is sharp per
image and diverse over the batch: ``H(t)`` well below ``log D``, ``H(mean t)`` well above ``H(t)``.

``health_verdict`` compares the first and last ``WINDOW`` steps; ``HealthLog`` keeps just those (bounded
memory whatever the run's length) and travels in the workers' checkpoints.
"""

from __future__ import annotations

import math
from typing import Sequence

WINDOW = 20  # steps averaged at each end of the history
ONE_PROTOTYPE = math.log(2.0)  # batch-mean entropy below this: fewer than 2 prototypes in use over the batch
UNIFORM_MARGIN = 0.15  # per-image entropy within this many nats of log D: every image spreads over > 86% of D
DIVERGE_MARGIN = 1.0  # loss this many nats above log D (worse than a uniform guess) and rising: diverging

LEARNING, ONE, UNIFORM, DIVERGING = ("learning", "collapsing to one prototype", "uniform (not sharpening)", "diverging")
KEYS = ("loss", "teacher_entropy", "batch_entropy", "kl")


def _mean(rows: Sequence[dict], key: str) -> float:
    vals = [float(r[key]) for r in rows if key in r]
    return sum(vals) / len(vals) if vals else float("nan")


def health_verdict(history: Sequence[dict], out_dim: int) -> tuple[str, str]:
    """``(verdict, reason)`` for a run's per-step records (keys ``KEYS``), ``out_dim`` prototypes: one of
    ``learning``, ``collapsing to one prototype``, ``uniform (not sharpening)``, ``diverging``."""
    if not history:
        return "unknown", "no training step was recorded"
    log_d = math.log(out_dim)
    for i, r in enumerate(history):
        bad = [k for k in KEYS if k in r and not math.isfinite(float(r[k]))]
        if bad:
            return DIVERGING, f"non-finite {', '.join(bad)} at record {i}"
    w = max(1, min(WINDOW, len(history) // 2))
    first, last = history[:w], history[-w:]
    loss0, loss1 = _mean(first, "loss"), _mean(last, "loss")
    h0, h1 = _mean(first, "teacher_entropy"), _mean(last, "teacher_entropy")
    hb1, kl0, kl1 = _mean(last, "batch_entropy"), _mean(first, "kl"), _mean(last, "kl")
    figures = (
        f"teacher entropy {h0:.3f} -> {h1:.3f} nats (uniform {log_d:.3f}), batch-mean entropy {hb1:.3f}, "
        f"KL {kl0:.3f} -> {kl1:.3f}, loss {loss0:.3f} -> {loss1:.3f} (means of the first and last {w} steps)"
    )
    if loss1 > max(loss0, log_d) + DIVERGE_MARGIN:
        return DIVERGING, f"the loss rose above a uniform guess's; {figures}"
    if hb1 < ONE_PROTOTYPE:
        return ONE, f"every image goes to the same prototype (e^H(mean t) = {math.exp(hb1):.2f}); {figures}"
    if h1 > log_d - UNIFORM_MARGIN:
        return UNIFORM, f"the teacher's outputs stay near uniform; {figures}"
    return LEARNING, f"the teacher is sharp per image and diverse over the batch; {figures}"


class HealthLog:
    """The first and the last ``WINDOW`` step records, all ``health_verdict`` reads, as a JSON-able dict."""

    def __init__(self, state: dict | None = None):
        self.head: list[dict] = list((state or {}).get("head", []))
        self.tail: list[dict] = list((state or {}).get("tail", []))

    def add(self, record: dict) -> None:
        rec = {k: float(record[k]) for k in KEYS if k in record}
        if len(self.head) < WINDOW:
            self.head.append(rec)
        else:
            self.tail = (self.tail + [rec])[-WINDOW:]

    def history(self) -> list[dict]:
        return self.head + self.tail

    def state(self) -> dict:
        return {"head": self.head, "tail": self.tail}

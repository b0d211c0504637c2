"""The promotion rule, as a pure function: should a candidate model version take the ``champion`` alias?

Rules, in order:
1. a candidate without a finite metric is never promoted (and gets no alias);
2. with no champion, the candidate becomes champion;
3. the champion itself is left as it is;
4. the champion must have the metric on the *same* dataset (same digest), else the candidate is only challenger;
5. the candidate must beat the champion by strictly more than ``margin`` (a tie never promotes), else challenger.
All metrics here are higher-is-better (mAP, mINP, CMC ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Evaluated:
    """A model version's value of one metric on one dataset (``value`` None when it was never evaluated)."""

    version: str
    dataset_digest: Optional[str]
    value: Optional[float]


@dataclass(frozen=True)
class Decision:
    promote: bool
    alias: Optional[str]  # the alias the candidate gets: champion, challenger, or None
    reason: str


def _finite(v: Optional[float]) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def decide(candidate: Evaluated, champion: Optional[Evaluated], metric: str = "mAP", margin: float = 0.0) -> Decision:
    """Apply the promotion rules (see module docstring)."""
    d = (candidate.dataset_digest or "?")[:12]
    if not _finite(candidate.value) or not candidate.dataset_digest:
        return Decision(False, None, f"version {candidate.version} has no {metric} on dataset {d}; evaluate it first")
    if champion is None:
        return Decision(True, CHAMPION, f"no champion yet: version {candidate.version} ({metric} {candidate.value:.4f} on {d}) becomes champion")
    if champion.version == candidate.version:
        return Decision(False, None, f"version {candidate.version} is already champion")
    if champion.dataset_digest != candidate.dataset_digest or not _finite(champion.value):
        return Decision(False, CHALLENGER, f"champion version {champion.version} has no {metric} on dataset {d}; not comparable")
    gain = candidate.value - champion.value
    if gain > margin:
        return Decision(True, CHAMPION, f"{metric} {candidate.value:.4f} beats champion version {champion.version} "
                                        f"({champion.value:.4f}) by {gain:.4f} > margin {margin} on {d}")
    what = "ties" if gain == 0 else ("is below" if gain < 0 else "does not beat")
    return Decision(False, CHALLENGER, f"{metric} {candidate.value:.4f} {what} champion version {champion.version} "
                                       f"({champion.value:.4f}); needs more than +{margin} on {d}")

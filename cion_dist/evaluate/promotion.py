"""The promotion rule, as a pure function: should a candidate model version take the ``champion`` alias?

Rules, in order:
1. a candidate without a finite metric is never promoted (and gets no alias);
2. a candidate below the configured floor is never promoted;
3. with no champion, the candidate becomes champion only when a floor is configured (and reached) or a first
   champion without a floor is explicitly allowed: an untrained model must not win by default;
4. the champion itself is left as it is;
5. the champion must have the metric under *identical* settings (same settings key: protocol, input size, flip,
   re-ranking, distance, dataset digest, code version), else the candidate is only challenger;
6. the candidate must beat the champion by strictly more than ``margin`` (a tie never promotes), else challenger.
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
    """A model version's value of one metric in one evaluation record (``value`` None when there is none).

    ``settings_key`` names the record's full settings; two records are comparable only when both the dataset
    digest and the settings key agree (a record without a key is compared on the dataset alone).
    """

    version: str
    dataset_digest: Optional[str]
    value: Optional[float]
    settings_key: Optional[str] = None


@dataclass(frozen=True)
class Decision:
    promote: bool
    alias: Optional[str]  # the alias the candidate gets: champion, challenger, or None
    reason: str


def evaluation_settings(cfg, dataset_digest: str, code_version: str, preprocess=None) -> dict:
    """Everything that changes an evaluation's numbers, from an ``EvaluateConfig`` and the preprocessing that was
    run (``backbone_io.Preprocess``; None = the config's size, ImageNet): the comparison key. An ImageNet
    normalisation is left out of the key, so such records compare with those written before it was recorded."""
    from cion_dist.models.backbone_io import Preprocess

    pp = preprocess or Preprocess((cfg.height, cfg.width))
    s = {
        "protocol": cfg.protocol,
        "height": pp.height,
        "width": pp.width,
        "flip": cfg.flip,
        "metric": cfg.metric,
        "rerank": cfg.rerank,
        "keep_distractors": cfg.keep_distractors,
        "dataset_format": cfg.dataset_format,
        "dataset_digest": dataset_digest,
        "code_version": code_version,
    }
    if (pp.mean, pp.std) != (Preprocess.mean, Preprocess.std):
        s.update(mean=list(pp.mean), std=list(pp.std))
    if cfg.rerank:
        s.update(rerank_k1=cfg.rerank_k1, rerank_k2=cfg.rerank_k2, rerank_lambda=cfg.rerank_lambda)
    if cfg.protocol == "finetune":
        s["finetune"] = cfg.finetune.model_dump(mode="json")
    return s


def _finite(v: Optional[float]) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _comparable(a: Evaluated, b: Evaluated) -> bool:
    return a.dataset_digest == b.dataset_digest and (a.settings_key == b.settings_key)


def decide(
    candidate: Evaluated,
    champion: Optional[Evaluated],
    metric: str = "mAP",
    margin: float = 0.0,
    floor: Optional[float] = None,
    allow_first_without_floor: bool = False,
) -> Decision:
    """Apply the promotion rules (see module docstring)."""
    d = (candidate.dataset_digest or "?")[:12]
    where = f"on {d}" + (f" (settings {candidate.settings_key})" if candidate.settings_key else "")
    if not _finite(candidate.value) or not candidate.dataset_digest:
        return Decision(False, None, f"version {candidate.version} has no {metric} on dataset {d}; evaluate it first")
    if floor is not None and candidate.value < floor:
        return Decision(
            False,
            CHALLENGER if champion is not None else None,
            f"{metric} {candidate.value:.4f} of version {candidate.version} is below the floor {floor} {where}",
        )
    if champion is None:
        if floor is None and not allow_first_without_floor:
            return Decision(
                False,
                None,
                f"no champion yet and no promote.floor: version {candidate.version} "
                f"({metric} {candidate.value:.4f} {where}) is not crowned; set promote.floor "
                "to the least acceptable value, or promote.allow_first_without_floor=true",
            )
        why = f"reaches the floor {floor}" if floor is not None else "no floor, first champion explicitly allowed"
        return Decision(
            True,
            CHAMPION,
            f"no champion yet: version {candidate.version} ({metric} "
            f"{candidate.value:.4f} {where}; {why}) becomes champion",
        )
    if champion.version == candidate.version:
        return Decision(False, None, f"version {candidate.version} is already champion")
    if not _comparable(candidate, champion) or not _finite(champion.value):
        return Decision(
            False,
            CHALLENGER,
            f"champion version {champion.version} has no {metric} {where}; "
            "not comparable: evaluate the champion with the same settings",
        )
    gain = candidate.value - champion.value
    if gain > margin:
        return Decision(
            True,
            CHAMPION,
            f"{metric} {candidate.value:.4f} beats champion version {champion.version} "
            f"({champion.value:.4f}) by {gain:.4f} > margin {margin} {where}",
        )
    what = "ties" if gain == 0 else ("is below" if gain < 0 else "does not beat")
    return Decision(
        False,
        CHALLENGER,
        f"{metric} {candidate.value:.4f} {what} champion version {champion.version} "
        f"({champion.value:.4f}); needs more than +{margin} {where}",
    )

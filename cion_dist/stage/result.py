"""Typed stage results: what each stage returns to the CLI, the pipeline runner and the demo.

Every result carries the common part (stage, output URI, row counts, the free-form summary that is also written
to ``_SUCCESS.json``, the MLflow run); the fields a later stage or the runner reads are typed attributes of the
stage's own result class, filled from the summary by ``from_record``. ``handoff`` is what the next stage reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional


@dataclass
class StageResult:
    stage: str
    uri: str  # the stage's output run folder (or model URI for evaluate/promote)
    rows: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: Optional[str] = None
    skipped: bool = False  # True when the output was already complete and nothing ran

    STAGE: ClassVar[str] = ""

    @property
    def handoff(self) -> str:
        """The URI the next stage of a pipeline reads."""
        return self.uri

    @classmethod
    def from_record(cls, record: dict, skipped: bool = False, uri: Optional[str] = None) -> "StageResult":
        """A result from a ``_SUCCESS.json`` record (a finished or an already complete run)."""
        summary = dict(record.get("summary", {}))
        typed = {
            f.name: summary[f.name]
            for f in fields(cls)
            if f.name not in _COMMON and f.name in summary and summary[f.name] is not None
        }
        return cls(
            stage=record.get("stage") or cls.STAGE,
            uri=uri or record["uri"],
            rows=dict(record.get("rows", {})),
            summary=summary,
            mlflow_run_id=summary.get("mlflow_run_id"),
            skipped=skipped,
            **typed,
        )


_COMMON = {f.name for f in fields(StageResult)}


@dataclass
class SynthResult(StageResult):
    STAGE: ClassVar[str] = "synth"
    manifest_uri: str = ""
    gt_uri: Optional[str] = None
    market_uri: str = ""

    @property
    def handoff(self) -> str:
        return self.manifest_uri


@dataclass
class IngestResult(StageResult):
    STAGE: ClassVar[str] = "ingest"
    manifest_uri: str = ""


@dataclass
class EmbedResult(StageResult):
    STAGE: ClassVar[str] = "embed"
    embedding_dim: int = 0
    backbone: str = ""


@dataclass
class CorrelateResult(StageResult):
    STAGE: ClassVar[str] = "correlate"
    radius: float = 0.0
    link_distance: float = 0.0


@dataclass
class PretrainResult(StageResult):
    STAGE: ClassVar[str] = "pretrain"
    model_uri: str = ""  # models:/name/version when registered, else the exported model folder
    model_folder: str = ""
    checkpoint: Optional[str] = None

    @property
    def handoff(self) -> str:
        return self.model_uri or self.uri


@dataclass
class EvaluateResult(StageResult):
    STAGE: ClassVar[str] = "evaluate"
    model_uri: str = ""
    mAP: float = 0.0
    rank1: float = 0.0


@dataclass
class PromoteResult(StageResult):
    STAGE: ClassVar[str] = "promote"
    decision: str = ""
    candidate_version: str = ""

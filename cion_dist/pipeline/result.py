"""What every stage returns to the CLI and the pipeline runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class StageResult:
    stage: str
    uri: str  # the stage's output run folder (or model URI for evaluate/promote)
    rows: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: Optional[str] = None
    skipped: bool = False  # True when the output was already complete and nothing ran

    @classmethod
    def from_record(cls, stage: str, uri: str, record: dict) -> "StageResult":
        """The result of a stage whose output was already complete, read back from its ``_SUCCESS.json``."""
        summary = record.get("summary", {})
        return cls(stage, uri, rows=record.get("rows", {}), summary=summary,
                   mlflow_run_id=summary.get("mlflow_run_id"), skipped=True)

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

"""What every stage shares: its run id, its typed result, and the skeleton that opens, tracks and finalizes a run.

Stages import from here; the pipeline runner imports the stages. Nothing here imports a stage.
"""

from cion_dist.stage.result import (
    CorrelateResult,
    EmbedResult,
    EvaluateResult,
    IngestResult,
    PretrainResult,
    PromoteResult,
    StageResult,
    SynthResult,
)
from cion_dist.stage.runid import derive_run_id, run_id_config
from cion_dist.stage.skeleton import StageRun, locked_stage

__all__ = [
    "CorrelateResult",
    "EmbedResult",
    "EvaluateResult",
    "IngestResult",
    "PretrainResult",
    "PromoteResult",
    "StageResult",
    "StageRun",
    "SynthResult",
    "derive_run_id",
    "locked_stage",
    "run_id_config",
]

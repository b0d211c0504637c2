"""Deterministic run ids: the same stage config on the same input lands in the same folder, so reruns resume."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional


def derive_run_id(stage: str, stage_config: Any, input_digest: Optional[str] = "", explicit: Optional[str] = None) -> str:
    if explicit:
        return explicit
    cfg = stage_config.model_dump(mode="json") if hasattr(stage_config, "model_dump") else stage_config
    cfg = {k: v for k, v in (cfg or {}).items() if k not in ("concurrency", "num_gpus", "input")}
    blob = json.dumps({"stage": stage, "config": cfg, "input": input_digest or ""}, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

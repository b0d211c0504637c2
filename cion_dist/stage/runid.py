"""Deterministic run ids: the same settings on the same input land in the same folder, so a rerun resumes.

Which settings count is decided once, on the config models: fields declared with ``ExecutionField`` (resources,
parallelism, error limits) or ``InputField`` (input URIs, represented by their content digest) are left out, at
any depth. Every stage derives its run id here, so a change of, say, ``correlate.num_shards`` resumes correlate
exactly as a change of ``embed.concurrency`` resumes embed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from pydantic import BaseModel

from cion_dist.config_base import NOT_IN_RUN_ID


def _left_out(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and NOT_IN_RUN_ID in extra


def run_id_config(cfg: Any) -> Any:
    """The part of a config that decides a stage's output, as JSON-safe data (marked fields removed)."""
    if isinstance(cfg, BaseModel):
        return {
            name: run_id_config(getattr(cfg, name)) for name in type(cfg).model_fields if not _left_out(type(cfg), name)
        }
    if isinstance(cfg, dict):
        return {str(k): run_id_config(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [run_id_config(v) for v in cfg]
    return json.loads(json.dumps(cfg, default=str))


def derive_run_id(
    stage: str, stage_config: Any, input_digest: Optional[str] = "", explicit: Optional[str] = None
) -> str:
    """``<stage>-<12 hex>`` from the output-deciding config and the input digest; ``explicit`` wins when set."""
    if explicit:
        return explicit
    blob = json.dumps(
        {"stage": stage, "config": run_id_config(stage_config), "input": input_digest or ""},
        sort_keys=True,
        default=str,
    )
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

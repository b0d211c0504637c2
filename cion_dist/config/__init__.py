"""Typed job configuration (pydantic) loaded from ``jobs/*.yaml`` with ``key.sub=value`` overrides.

Names are resolved lazily: stage config modules import ``cion_dist.config.base``, and ``Job`` imports every stage
config, so importing ``Job`` eagerly here would make a cycle.
"""

from __future__ import annotations

_EXPORTS = {
    "STAGES": "cion_dist.config.job",
    "Job": "cion_dist.config.job",
    "job_from_dict": "cion_dist.config.loader",
    "load_default": "cion_dist.config.loader",
    "load_job": "cion_dist.config.loader",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)

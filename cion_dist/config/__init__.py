"""The job file (pydantic) loaded from ``jobs/*.yaml`` with ``key.sub=value`` overrides.

This package sits above the stages' own config modules: ``Job`` gathers one section per stage, and the stage
configs build on ``cion_dist.config_base`` only, so the imports point one way and any module can be imported first.
"""

from __future__ import annotations

from cion_dist.config.job import STAGES, Job
from cion_dist.config.loader import job_from_dict, load_default, load_job

__all__ = ["STAGES", "Job", "job_from_dict", "load_default", "load_job"]

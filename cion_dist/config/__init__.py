"""Typed job configuration (pydantic) loaded from ``jobs/*.yaml`` with ``key.sub=value`` overrides."""

from cion_dist.config.job import STAGES, Job
from cion_dist.config.loader import job_from_dict, load_default, load_job

__all__ = ["STAGES", "Job", "job_from_dict", "load_default", "load_job"]

"""Moved to ``cion_dist.stage.result`` (shared by every stage); kept so older imports keep working."""

from cion_dist.stage.result import StageResult  # noqa: F401

"""Moved to ``cion_dist.stage.runid`` (shared by every stage); kept so older imports keep working."""

from cion_dist.stage.runid import derive_run_id  # noqa: F401

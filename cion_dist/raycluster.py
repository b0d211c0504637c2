"""Connect to (or start) the Ray instance a job runs on."""

from __future__ import annotations

import logging
import os

from cion_dist.config.base import RayConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Join the cluster named in the config (or RAY_ADDRESS), else start a local instance.

    Inside ``ray job submit`` the driver already has RAY_ADDRESS set, so ``address=None`` joins that cluster.
    A local instance gets at least 4 logical CPUs: Ray Train workers plus the Ray Data read tasks feeding them
    otherwise deadlock on a 2-core machine.
    """
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": cfg.log_to_driver, "ignore_reinit_error": True}
    if address:
        ray.init(address=address, **kwargs)
        return
    kwargs["num_cpus"] = cfg.num_cpus or max(4, os.cpu_count() or 1)
    if cfg.num_gpus is not None:
        kwargs["num_gpus"] = cfg.num_gpus
    if cfg.object_store_memory:
        kwargs["object_store_memory"] = cfg.object_store_memory
    ray.init(**kwargs)
    log.info("started a local Ray instance with %s CPUs", kwargs["num_cpus"])

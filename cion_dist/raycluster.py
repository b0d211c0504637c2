"""Connect to (or start) the Ray instance a job runs on, and say which one it is."""

from __future__ import annotations

import logging
import os
import sys
import time

from cion_dist.config_base import RayConfig

log = logging.getLogger(__name__)


def _announce(line: str) -> None:
    """One line on stderr (not the log): which cluster a command uses is part of its output, unless -q."""
    from cion_dist.quiet import is_quiet

    if not is_quiet():
        print(f"ray: {line}", file=sys.stderr, flush=True)


def _reload_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its config when it is imported; re-read it after setting it here."""
    try:
        from ray._raylet import Config

        Config.initialize("")
    except Exception:
        log.debug("could not reload Ray's config", exc_info=True)


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Join the cluster named in the config, RAY_ADDRESS, or the one ``cion up`` keeps; else start a local instance.

    Inside ``ray job submit`` the driver already has RAY_ADDRESS set, so that cluster is joined. A local instance
    gets at least 4 logical CPUs: Ray Train workers plus the Ray Data read tasks feeding them otherwise deadlock on
    a 2-core machine.
    """
    import ray

    from cion_dist.quiet import VERBOSITY_ENV, configure_ray_data, ray_init_kwargs

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    t0 = time.time()
    # by default worker logs (raylet start-up notes, Ray Train's internal actors) stay in the session's log files;
    # a task's errors still reach the driver as exceptions, and `cion -v` forwards everything
    to_driver = cfg.log_to_driver if cfg.log_to_driver is not None else int(os.environ.get(VERBOSITY_ENV, "0")) > 0
    kwargs: dict = {"log_to_driver": to_driver, "ignore_reinit_error": True, **ray_init_kwargs()}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs.update(ray_init_kwargs(local=address.startswith(("127.0.0.1", "localhost"))))
        ray.init(address=address, **kwargs)
        configure_ray_data()
        _announce(f"joined {address} ({time.time() - t0:.1f} s)")
        return
    from cion_dist.localcluster import join_env, live_cluster

    rec = live_cluster()
    if rec is not None:
        # workers of a long-lived head were started with the environment of `cion up`; hand them this
        # command's module path so they import the same cion_dist as the driver
        if os.environ.get("PYTHONPATH"):
            kwargs["runtime_env"]["env_vars"]["PYTHONPATH"] = os.environ["PYTHONPATH"]
        os.environ.update(join_env(rec))
        _reload_ray_config()
        ray.init(address=rec.address, _node_ip_address="127.0.0.1", **kwargs)
        configure_ray_data()
        _announce(
            f"joined the local cluster from `cion up` at {rec.address}, dashboard {rec.dashboard} "
            f"({time.time() - t0:.1f} s)"
        )
        return
    from cion_dist.quiet import local_instance_env

    kwargs["num_cpus"] = cfg.num_cpus or max(4, os.cpu_count() or 1)
    local_instance_env(kwargs["num_cpus"])
    _reload_ray_config()
    if cfg.num_gpus is not None:
        kwargs["num_gpus"] = cfg.num_gpus
    if cfg.object_store_memory:
        kwargs["object_store_memory"] = cfg.object_store_memory
    ray.init(**kwargs)
    from cion_dist.raywatch import guard_private_instance

    guard_private_instance()  # its processes stop when this driver dies, even by SIGKILL
    configure_ray_data()
    _announce(
        f"started a private local instance with {kwargs['num_cpus']} CPUs ({time.time() - t0:.1f} s); "
        "`cion up` keeps one running for later commands"
    )

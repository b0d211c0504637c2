"""Quiet by default: what ``cion`` prints is the project's own progress and results, not its libraries' chatter.

Noise is turned off where it is made, not filtered out of the output afterwards:

- logging levels: the ``cion_dist`` loggers speak at INFO (DEBUG with ``-v``, WARNING with ``-q``); every other
  library (Ray, Ray Data, Ray Train, DeepSpeed, FAISS's loader, MLflow, alembic, urllib3...) only from WARNING, or
  from INFO with ``-v``;
- environment read by Ray before it starts: ``RAY_AUTH_MODE=token`` set explicitly for local instances (Ray then
  keeps its default, token authentication, without announcing it on every start), usage stats off, log
  deduplication on;
- Ray workers run ``worker_setup`` (a ``worker_process_setup_hook``), so the same levels hold in every worker
  process and DeepSpeed / FAISS / MLflow messages logged there never reach the driver's terminal;
- Ray Data logs everything to the session's ``ray-data.log``; its console handler gets ``RayDataConsoleFilter``
  (``RAY_DATA_LOGGING_CONFIG``), which lets warnings through and turns its periodic progress block into one line;
- Ray Data's progress bars stay on a terminal (one bar per operator of the running stage) and are off when the
  output is a file or a pipe, where cion's own one-line progress is printed instead (``progress.py``).

The verbosity travels to workers through ``CION_VERBOSITY`` (-1 quiet, 0 default, 1 verbose).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSITY_ENV = "CION_VERBOSITY"
PROGRESS_INTERVAL_S = 30  # one progress line per running dataset this often, when the output is not a terminal
_LIBRARIES = (
    "ray",
    "ray.train",
    "ray.tune",
    "ray.serve",
    "DeepSpeed",
    "deepspeed",
    "faiss",
    "faiss.loader",
    "mlflow",
    "alembic",
    "urllib3",
    "botocore",
    "s3fs",
    "fsspec",
    "werkzeug",
    "filelock",
    "torch",
    "timm",
    "matplotlib",
    "PIL",
    "numexpr",
    "py.warnings",
)


def verbosity() -> int:
    try:
        return int(os.environ.get(VERBOSITY_ENV, "0"))
    except ValueError:
        return 0


def is_quiet() -> bool:
    return verbosity() < 0


def is_verbose() -> bool:
    return verbosity() > 0


def is_interactive() -> bool:
    return sys.stderr.isatty()


def set_library_levels(level: int) -> None:
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(level)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (a handler bound to the stream of the moment
    breaks once that stream is replaced and closed, as in-process CLI runs and test captures do)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: int = 0) -> None:
    """Set up the CLI process: logging handlers and levels, and the environment Ray reads when it starts."""
    os.environ[VERBOSITY_ENV] = str(level)
    own = logging.DEBUG if level > 0 else logging.WARNING if level < 0 else logging.INFO
    libs = logging.INFO if level > 0 else logging.WARNING
    root = logging.getLogger()
    if not any(getattr(h, "_cion", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._cion = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(libs)
    logging.getLogger("cion_dist").setLevel(own)
    set_library_levels(libs)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", str(PROGRESS_INTERVAL_S))
    if level <= 0:
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", ray_data_logging_config())
        _quiet_python_warnings()


def _quiet_python_warnings() -> None:
    # library deprecation / future warnings are for their developers, not for someone running a pipeline; a library
    # attributes its deprecations to the caller's line (Ray Data's point at cion_dist), so those go whatever the
    # module (``-v`` shows them); a library's other warnings are filtered unless cion_dist itself raised them
    for cat in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(?!cion_dist)")


def local_instance_env(num_cpus: int) -> None:
    """Environment for a Ray instance cion starts itself (``ray.init`` without address, ``cion up``).

    Such an instance declares at least 4 logical CPUs (see ``raycluster.ensure_ray``) but Ray sizes its worker
    start-up concurrency, and the "N worker processes have been started ... 4x the maximum expected startup
    concurrency" warning, by the physical core count: on 2 cores a demo's 8 live workers (Ray Train's controller
    and workers, Ray Data's actors, idle pooled workers) would trip it. The expected concurrency is the logical
    CPU count the instance was given.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(1, int(num_cpus))))


def worker_setup() -> None:
    """``worker_process_setup_hook``: the CLI's levels in every Ray worker process.

    DeepSpeed warns on every worker start that it picked the CPU accelerator: at default verbosity it speaks
    from ERROR up, and is told the accelerator on nodes without a GPU.
    """
    level = verbosity()
    libs = logging.INFO if level > 0 else logging.WARNING
    set_library_levels(libs)
    if level <= 0:
        for name in ("DeepSpeed", "deepspeed"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # DeepSpeed logs its accelerator guess as a WARNING at import, before any level set here applies; on a
        # node without an NVIDIA device name the CPU accelerator, so it does not guess
        import glob

        if not glob.glob("/dev/nvidia[0-9]*"):
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    logging.getLogger("cion_dist").setLevel(
        logging.DEBUG if level > 0 else logging.WARNING if level < 0 else logging.INFO
    )
    if level <= 0:
        _quiet_python_warnings()


def ray_init_kwargs(local: bool = True) -> dict:
    """Arguments for ``ray.init`` that keep Ray's own driver-side logging at the chosen level and set the hook.

    ``local``: the cluster runs on this machine, so a file of this installation can be named to its workers.
    """
    level = verbosity()
    env_vars = {VERBOSITY_ENV: str(level)}
    if local:
        # Ray Train's preemption watcher reports spot-node preemptions, which a single machine never has; it is
        # created with worker handles among its constructor arguments and max_restarts=-1, and Ray's core warns
        # about exactly that on every fit
        env_vars["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    if level <= 0 and local:
        # workers set up Ray Data's logging again for every dataset: give them the filtered set-up
        env_vars["RAY_DATA_LOGGING_CONFIG"] = ray_data_logging_config()
    return {
        "logging_level": logging.INFO if level > 0 else logging.WARNING,
        "runtime_env": {"worker_process_setup_hook": "cion_dist.quiet.worker_setup", "env_vars": env_vars},
    }


_PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"


class OneLineProgress(logging.Filter):
    """Ray Data's non-terminal progress is a block of lines per dataset every interval (a banner, the total, each
    operator with its resource summary); keep the total only, as one line: ``progress: <dataset> 3/6``."""

    def __init__(self) -> None:
        super().__init__()
        self._dataset: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("======= Running Dataset:"):
            self._dataset = msg.split(":", 1)[1].strip(" =")
            return False
        if self._dataset is not None and ": " in msg and "/" in msg.rsplit(": ", 1)[-1]:
            record.msg, record.args = f"progress: {self._dataset} {msg.rsplit(': ', 1)[-1]} rows", ()
            self._dataset = None
            return True
        return False


class RayDataConsoleFilter(OneLineProgress):
    """On Ray Data's console handler (``defaults/ray_data_logging.yaml``): warnings and errors pass, progress
    becomes one line per interval (or nothing with ``-q``), the rest (plans, "execution finished") stays in the
    session's ``ray-data.log``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return "Progress bars disabled" not in record.getMessage()
        if is_verbose():
            return True
        if record.name == _PROGRESS_LOGGER and not is_quiet():
            return super().filter(record)
        return False


def ray_data_logging_config() -> str:
    """Path of the Ray Data logging set-up that carries ``RayDataConsoleFilter`` (for RAY_DATA_LOGGING_CONFIG)."""
    from importlib import resources

    return str(resources.files("cion_dist.defaults").joinpath("ray_data_logging.yaml"))


def configure_ray_data() -> None:
    """After ``import ray.data``: one bar per operator on a terminal, one periodic progress line otherwise, none
    with ``-q``; Ray Data's own start-of-execution banner only with ``-v``."""
    try:
        import ray.data

        if verbosity() <= 0:
            # importing ray puts its own filter for RayDeprecationWarning in front of those set by configure()
            _quiet_python_warnings()
        ctx = ray.data.DataContext.get_current()
        if hasattr(ctx, "print_on_execution_start"):
            ctx.print_on_execution_start = is_verbose()
        if is_quiet():
            ctx.enable_progress_bars = False
        # the driver's Ray Data console handler, set up when ray.data was imported
        for h in logging.getLogger("ray.data").handlers:
            if type(h).__name__ == "PlainRayHandler" and not any(
                isinstance(f, RayDataConsoleFilter) for f in h.filters
            ):
                h.addFilter(RayDataConsoleFilter())
    except Exception:
        logging.getLogger(__name__).debug("could not configure Ray Data's progress", exc_info=True)

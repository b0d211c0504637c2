"""Submit ``cion run JOB`` to a running Ray cluster through its job API.

The job file is validated here first, so a typo fails on the laptop, not after an upload. The runtime environment
comes from the job's ``runtime_env`` section; a relative ``working_dir`` is resolved against the repository that
holds the job file (the nearest folder above it with ``cion_dist/``, ``pyproject.toml`` or ``.git``), so
``cion submit jobs/pretrain.yaml`` from anywhere uploads the same tree. Ray puts the uploaded ``working_dir`` first
on ``PYTHONPATH``, so the driver runs the submitted ``cion_dist/`` even where the cluster image ships an older
installed copy; the image must still provide the dependencies (``infra/Dockerfile``).

Secrets never travel on the entrypoint command line (Ray records it, prints it and writes it to the driver log):
an override of a secret field (``storage.secret_access_key=...``) or one holding URL credentials becomes an
environment variable ``CION__SECTION__KEY`` of the job's runtime environment, which ``cion run`` reads back as the
same override; credentials set in the submitter's environment (``runtime_env.forward_env``) are copied there too,
and ``runtime_env.env_vars`` values written ``${NAME}`` are references that Ray resolves from the cluster's own
environment (a Kubernetes secret, say), so the value never leaves the cluster.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cion_dist.config.job import Job
from cion_dist.config.loader import ENV_PREFIX
from cion_dist.errors import CionError, ConfigError
from cion_dist.redact import is_secret_name, redact_env, redact_text, register_secret

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_REPO_MARKERS = ("cion_dist", "pyproject.toml", ".git")
_REMOTE_PREFIXES = ("s3://", "gs://", "https://", "http://")


@dataclass
class SubmittedJob:
    """What ``submit_job`` hands back: enough to follow, stop or inspect the job later."""

    submission_id: str
    address: str
    entrypoint: str
    runtime_env: dict[str, Any]
    status: Optional[str] = None
    follow_commands: list[str] = field(default_factory=list)


def find_repo_root(job_file: str | Path) -> Path:
    """The repository a job file belongs to; the job file's own folder when it sits in none."""
    start = Path(job_file).resolve().parent
    for folder in (start, *start.parents):
        if any((folder / m).exists() for m in _REPO_MARKERS):
            return folder
    return start


def resolve_working_dir(job: Job, job_file: str | Path) -> Optional[str]:
    """Absolute local folder (or remote package URI) to upload as the job's working directory."""
    wd = job.runtime_env.working_dir
    if not wd:
        return None
    if wd.startswith(_REMOTE_PREFIXES):
        return wd
    path = Path(wd).expanduser()
    if not path.is_absolute():
        path = find_repo_root(job_file) / path
    path = path.resolve()
    if not path.is_dir():
        raise ConfigError(f"{job_file}: runtime_env.working_dir {wd!r} resolves to {path}, which is not a folder")
    return str(path)


def is_secret_override(item: str) -> bool:
    """An override that must not appear on a command line: a secret field, or a value with URL credentials."""
    key, _, value = item.partition("=")
    return is_secret_name(key.strip()) or redact_text(value) != value


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(overrides safe for the command line, environment variables carrying the secret ones)."""
    plain, env = [], {}
    for item in overrides:
        if "=" in item and is_secret_override(item):
            key, value = item.split("=", 1)
            register_secret(value)
            if key.strip().startswith("runtime_env."):
                continue  # already part of the runtime environment built from the job; the driver needs no copy
            env[ENV_PREFIX + "__".join(p.upper() for p in key.strip().split("."))] = value
        else:
            plain.append(item)
    return plain, env


def forwarded_env(job: Job, environ: Optional[dict] = None) -> dict[str, str]:
    """The submitter's credentials named in ``runtime_env.forward_env`` that are set (and not set in env_vars)."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in job.runtime_env.forward_env if environ.get(k) and k not in job.runtime_env.env_vars}


def build_runtime_env(
    job: Job, job_file: str | Path, secret_env: Optional[dict[str, str]] = None, environ: Optional[dict] = None
) -> dict[str, Any]:
    """The ``runtime_env`` dict for Ray's job API; keys left out when the job leaves them empty.

    ``secret_env`` (from ``split_overrides``) and the forwarded credentials join ``env_vars``.
    """
    rt = job.runtime_env
    env: dict[str, Any] = {}
    wd = resolve_working_dir(job, job_file)
    if wd:
        env["working_dir"] = wd
        if rt.excludes and not wd.startswith(_REMOTE_PREFIXES):
            env["excludes"] = list(rt.excludes)
    if rt.pip:
        env["pip"] = list(rt.pip)
    env_vars = {str(k): str(v) for k, v in rt.env_vars.items()}
    env_vars.update(forwarded_env(job, environ))
    env_vars.update(secret_env or {})
    if env_vars:
        env["env_vars"] = env_vars
    return env


def job_path_on_cluster(job_file: str | Path, working_dir: Optional[str]) -> str:
    """How the driver names the job file: relative to the uploaded working directory, which is its cwd."""
    path = Path(job_file).resolve()
    if working_dir is None:
        return str(path)
    if working_dir.startswith(_REMOTE_PREFIXES):
        # a prebuilt package: the caller names the file as it lies inside that package
        return Path(job_file).as_posix()
    try:
        return path.relative_to(Path(working_dir)).as_posix()
    except ValueError:
        raise ConfigError(
            f"{job_file}: the job file lies outside runtime_env.working_dir ({working_dir}), so the cluster would "
            "not receive it; move it under that folder or change working_dir"
        ) from None


def build_entrypoint(job_file_on_cluster: str, overrides: Sequence[str], command: str = "cion") -> str:
    """The shell command the cluster runs; every argument quoted so overrides with spaces survive."""
    return " ".join([*shlex.split(command), "run", *map(shlex.quote, [job_file_on_cluster, *overrides])])


def _is_reference(value: str) -> bool:
    return str(value).startswith("${") and str(value).endswith("}")


def follow_commands(address: str, submission_id: str) -> list[str]:
    return [
        f"ray job logs --address {address} --follow {submission_id}",
        f"ray job status --address {address} {submission_id}",
        f"ray job stop --address {address} {submission_id}",
    ]


def _client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise CionError(
            f"the Ray cluster at {address} wants a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
            f"(or ~/.ray/auth_token) to the cluster's token ({str(e).splitlines()[0]})"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise CionError(f"cannot reach the Ray job API at {address}: {e}") from None


def wait_for_job(
    client,
    submission_id: str,
    *,
    poll_s: float = 2.0,
    timeout_s: Optional[float] = None,
    echo: Callable[[str], None] = print,
) -> str:
    """Poll until the job ends, echoing new log text as it arrives; returns the terminal status name."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    while True:
        status = str(client.get_job_status(submission_id).value)
        logs = client.get_job_logs(submission_id)
        if len(logs) > shown:
            echo(redact_text(logs[shown:].rstrip("\n")))
            shown = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise CionError(
                f"job {submission_id} still {status} after {timeout_s:.0f} s; it keeps running on the cluster"
            )
        time.sleep(poll_s)


def submit_job(
    job: Job,
    job_file: str,
    overrides: Sequence[str],
    address: str,
    wait: bool = False,
    *,
    command: str = "cion",
    submission_id: Optional[str] = None,
    poll_s: float = 2.0,
    timeout_s: Optional[float] = None,
    echo: Callable[[str], None] = print,
) -> SubmittedJob:
    """Submit ``cion run <job_file> <overrides>`` with the job's runtime environment; optionally wait for it.

    With ``wait`` a job that ends FAILED or STOPPED raises ``CionError`` (the CLI exits non-zero).
    ``command`` is how the cluster's shell reaches the CLI (``cion`` in the image; ``python -m cion_dist.cli``
    on a cluster without the console script).
    """
    plain, secret_env = split_overrides(overrides)
    runtime_env = build_runtime_env(job, job_file, secret_env)
    entrypoint = build_entrypoint(job_path_on_cluster(job_file, runtime_env.get("working_dir")), plain, command)
    if not job.output.startswith(_REMOTE_PREFIXES) and not Path(job.output).is_absolute():
        log.warning(
            "output %r is relative: on the cluster it lands inside the job's working directory; "
            "use s3:// (or a shared absolute path) for results that must outlive the job",
            job.output,
        )
    client = _client(address)
    try:
        sid = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env or None,
            submission_id=submission_id,
            metadata={"cion_job": job.name, "cion_stage": job.stage, "job_file": Path(job_file).name},
        )
    except (ConnectionError, RuntimeError) as e:
        raise CionError(f"job submission to {address} failed: {redact_text(e)}") from None
    cmds = follow_commands(address, sid)
    echo(f"submitted {job.stage} job {sid} to {address}")
    echo(f"  entrypoint: {redact_text(entrypoint)}")
    secret_names = sorted(
        k
        for k, v in runtime_env.get("env_vars", {}).items()
        if (k in secret_env or is_secret_name(k)) and not _is_reference(v)
    )
    if secret_names:
        echo(f"  secrets passed as runtime_env env_vars, not on the command line: {', '.join(secret_names)}")
    refs = sorted(k for k, v in runtime_env.get("env_vars", {}).items() if _is_reference(v))
    if refs:
        echo(f"  read from the cluster's environment: {', '.join(refs)}")
    shown = {k: v for k, v in runtime_env.items() if k != "env_vars"}
    if "env_vars" in runtime_env:
        shown["env_vars"] = redact_env(
            {k: v for k, v in runtime_env["env_vars"].items() if k not in secret_env} | {k: "***" for k in secret_env}
        )
    log.debug("runtime_env: %s", shown)
    for c in cmds:
        echo(f"  {c}")
    result = SubmittedJob(sid, address, entrypoint, runtime_env, None, cmds)
    if not wait:
        return result
    result.status = wait_for_job(client, sid, poll_s=poll_s, timeout_s=timeout_s, echo=echo)
    if result.status != "SUCCEEDED":
        message = (client.get_job_info(sid).message or "").strip().splitlines()
        raise CionError(
            f"job {sid} ended {result.status}: {redact_text(message[0]) if message else 'see the logs above'}"
        )
    echo(f"job {sid} SUCCEEDED")
    return result

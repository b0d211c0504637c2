"""Checks that run before any stage starts, so a job's own faults end in one clear line, not in a task traceback.

A fault that is the job's, not one unit's (an output that cannot be written, a bucket that does not exist,
half a set of credentials, an unreachable endpoint or tracking server), would otherwise surface only once Ray
tasks run, often after minutes, and as a library traceback. Each check here is a small function registered with
``@check``; ``run_preflight(job, stages)`` runs every check that applies to the stages about to run and raises
``CionError`` (the CLI prints it as ``error: ...`` and exits 2) at the first failure. Messages never carry a
secret (``cion_dist.redact``).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence
from urllib.parse import urlparse

from cion_dist.errors import CionError
from cion_dist.redact import redact_text

log = logging.getLogger(__name__)

LOCAL_OR_S3 = "a local path or s3://bucket/prefix"
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[["Preflight"], None]
    stages: Optional[frozenset] = None  # None: every run

    def applies(self, stages: Iterable[str]) -> bool:
        return self.stages is None or bool(self.stages & set(stages))


_REGISTRY: list[Check] = []


def check(name: str, stages: Optional[Iterable[str]] = None):
    """Register a preflight check: ``fn(pf: Preflight)`` raises ``CionError`` (one line, no secret) on a fault."""

    def deco(fn: Callable[["Preflight"], None]):
        _REGISTRY[:] = [c for c in _REGISTRY if c.name != name]
        _REGISTRY.append(Check(name, fn, frozenset(stages) if stages is not None else None))
        return fn

    return deco


def registered() -> list[str]:
    return [c.name for c in _REGISTRY]


@dataclass
class Preflight:
    """What a check sees: the job, the stages about to run, and a cache of buckets already checked."""

    job: object
    stages: tuple[str, ...]
    checked_buckets: set = field(default_factory=set)


def stages_of(job) -> tuple[str, ...]:
    return tuple(job.pipeline.stages) if job.stage == "pipeline" else (job.stage,)


def run_preflight(job, stages: Optional[Sequence[str]] = None, only: Optional[Iterable[str]] = None) -> None:
    """Run the registered checks that apply; the first fault raises ``CionError``."""
    pf = Preflight(job, tuple(stages) if stages is not None else stages_of(job))
    names = set(only) if only is not None else None
    for c in list(_REGISTRY):
        if names is not None and c.name not in names:
            continue
        if c.applies(pf.stages):
            c.fn(pf)


# ---------------------------------------------------------------------------------------------------- helpers


def uri_scheme_error(uri: str, what: str) -> Optional[str]:
    """Why a URI is not one this project can write or read, or None when it is fine."""
    u = str(uri)
    if u.startswith(("s3://", "s3a://", "file://")):
        return None
    if "://" in u:
        return f"{what} {redact_text(u)!r} has an unsupported scheme {u.split('://', 1)[0]!r}: use {LOCAL_OR_S3}"
    return None


def _storage(job):
    from cion_dist.storage.fs import Storage

    return Storage(job.storage)


def _endpoint(job) -> Optional[str]:
    return job.storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> Optional[str]:
    """None when a TCP connection to the URL's host and port opens in time, else why not."""
    p = urlparse(url)
    host = p.hostname
    if not host:
        return "it names no host"
    port = p.port or (443 if p.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"


def _s3_uris(pf: Preflight) -> list[str]:
    """Every s3:// URI the job's stages will read or write (output first)."""
    job = pf.job
    uris = [job.output]
    for stage in pf.stages:
        section = getattr(job, stage, None)
        if section is None or not hasattr(section, "model_dump"):
            continue
        for v in _strings(section.model_dump()):
            uris.append(v)
    seen, out = set(), []
    for u in uris:
        if isinstance(u, str) and u.startswith(("s3://", "s3a://")) and u not in seen:
            seen.add(u)
            out.append(u)
    return out


def _strings(obj) -> Iterable[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


# ---------------------------------------------------------------------------------------------------- checks


@check("output-uri")
def _output_uri(pf: Preflight) -> None:
    """The output root is local or s3://, and a local one is a folder that can be written."""
    job = pf.job
    err = uri_scheme_error(job.output, "output")
    if err:
        raise CionError(err)
    if job.output.startswith(("s3://", "s3a://")):
        return
    path = os.path.abspath(job.output[len("file://") :] if job.output.startswith("file://") else job.output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CionError(f"output {job.output!r} is a file, not a folder: point output= at a folder (or a new path)")
    probe_dir = path
    while not os.path.exists(probe_dir):
        parent = os.path.dirname(probe_dir)
        if parent == probe_dir:
            break
        probe_dir = parent
    if os.path.exists(probe_dir) and not os.path.isdir(probe_dir):
        raise CionError(f"output {job.output!r} lies under {probe_dir}, which is a file, not a folder")
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise CionError(f"output {job.output!r} cannot be written: no write permission on {probe_dir}")


@check("storage-credentials")
def _credentials(pf: Preflight) -> None:
    """Credentials come as a complete pair, never inside the endpoint URL."""
    job = pf.job
    endpoint = _endpoint(job)
    if endpoint and "@" in (urlparse(endpoint).netloc or ""):
        raise CionError(
            f"storage endpoint {redact_text(endpoint)!r} carries credentials in the URL: put them in "
            "storage.access_key_id / storage.secret_access_key or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    if not _s3_uris(pf) or job.storage.anon:
        return
    cfg_key, cfg_secret = job.storage.access_key_id is not None, job.storage.secret_access_key is not None
    if cfg_key or cfg_secret:
        # credentials given in the job are passed as a pair; the environment does not complete them
        key, secret, where = cfg_key, cfg_secret, "storage.access_key_id / storage.secret_access_key"
    else:
        key, secret = bool(os.environ.get("AWS_ACCESS_KEY_ID")), bool(os.environ.get("AWS_SECRET_ACCESS_KEY"))
        where = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    if key != secret:
        have, lack = ("access key id", "secret access key") if key else ("secret access key", "access key id")
        raise CionError(
            f"incomplete S3 credentials: a {have} is set but no {lack} ({where}; set both, or neither "
            "to use the environment or the instance's role)"
        )


@check("storage-endpoint")
def _endpoint_reachable(pf: Preflight) -> None:
    """An explicit S3 endpoint answers TCP within a few seconds (botocore would retry for minutes)."""
    endpoint = _endpoint(pf.job)
    if not endpoint or not _s3_uris(pf):
        return
    why = _reachable(endpoint)
    if why:
        raise CionError(
            f"S3 endpoint {redact_text(endpoint)} is unreachable ({why}); check storage.endpoint_url "
            "or AWS_ENDPOINT_URL"
        )


@check("s3-buckets")
def _buckets(pf: Preflight) -> None:
    """Every bucket the job names exists and the credentials may use it (one HEAD per bucket)."""
    uris = _s3_uris(pf)
    if not uris:
        return
    import botocore.exceptions as bx

    from cion_dist.storage.fs import Storage

    st = Storage(pf.job.storage)
    kw = st._s3_kwargs()
    cfg = dict(kw.pop("config_kwargs", {}) or {})
    cfg.update(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=CONNECT_TIMEOUT_S, retries={"max_attempts": 1})
    import s3fs

    fs = s3fs.S3FileSystem(config_kwargs=cfg, skip_instance_cache=True, **kw)
    for uri in uris:
        b = _bucket(uri)
        if b in pf.checked_buckets:
            continue
        pf.checked_buckets.add(b)
        what = "output" if uri == pf.job.output else "input"
        try:
            fs.call_s3("head_bucket", Bucket=b)
        except FileNotFoundError:
            raise CionError(f"bucket {b!r} of {what} {uri} does not exist; create it first") from None
        except PermissionError as e:
            raise CionError(f"bucket {b!r} of {what} {uri}: access denied ({redact_text(e)})") from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as e:
            raise CionError(f"S3 credentials for {uri}: {redact_text(e)}") from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, OSError) as e:
            raise CionError(f"cannot reach S3 for {uri}: {redact_text(e)}") from None
        except Exception as e:  # noqa: BLE001 - whatever botocore raised, one line naming the bucket
            raise CionError(f"bucket {b!r} of {what} {uri}: {type(e).__name__}: {redact_text(e)}") from None


@check("mlflow-server")
def _mlflow(pf: Preflight) -> None:
    """A remote tracking server answers within seconds; local stores are created beside the output."""
    job = pf.job
    if not job.mlflow.enabled:
        return
    uri = job.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if uri.startswith(("http://", "https://")):
        why = _reachable(uri)
        if why:
            raise CionError(
                f"MLflow tracking server {redact_text(uri)} is unreachable ({why}); check "
                "mlflow.tracking_uri / MLFLOW_TRACKING_URI, or set mlflow.enabled=false"
            )


def probe_write(uri: str, storage) -> None:
    """Write and remove a tiny object under ``uri``: proves the output is writable with these credentials."""
    from cion_dist.storage.fs import join, write_bytes_atomic

    probe = join(uri, f"_preflight-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes_atomic(probe, b"", storage)
        fs, path = storage.fs(probe)
        fs.rm(path)
    except CionError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CionError(f"output {redact_text(uri)} cannot be written: {type(e).__name__}: {redact_text(e)}") from None


@check("output-writable")
def _output_writable(pf: Preflight) -> None:
    """An s3:// output accepts a write (after its bucket was found): permissions fail here, not after the work."""
    job = pf.job
    if job.output.startswith(("s3://", "s3a://")):
        probe_write(job.output, _storage(job))


from cion_dist import preflight_inputs  # noqa: E402,F401 - registers the checks on the files a job names

"""One run per output folder at a time: a lock held on ``<output>/_LOCK.json`` while stages run.

Two runs of one job on one output would otherwise both do all the work (and both write MLflow runs). Every
stage's ``run(job)`` holds it for its whole run (``cion_dist.stage.locked_stage``), whoever calls it; it is
re-entrant within a process, so a pipeline that holds it around all its stages runs each stage inside it.

- Local folders: an exclusive ``flock`` on the lock file. The kernel drops it when the holder dies (even by
  SIGKILL), so a crashed run never blocks the next one; the file's JSON names the holder for the message.
- ``s3://``: a lease object created with a conditional PUT (``If-None-Match: *``, so exactly one of two racing
  runs gets it), renewed by a heartbeat thread and deleted on exit. A lease whose holder died expires after
  ``LEASE_S`` seconds and may then be taken over.

The second run fails at once with ``OutputBusy`` (a ``CionError``: one ``error:`` line, exit code 2) naming the
holder, instead of queueing silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Iterator, Optional

from cion_dist.errors import CionError

log = logging.getLogger(__name__)

LOCK_NAME = "_LOCK.json"
LEASE_S = 120.0
RENEW_S = 30.0

_held: dict[str, int] = {}  # lock URI -> depth, for re-entry within this process
_held_guard = threading.Lock()


class OutputBusy(CionError):
    """Another run holds the output folder."""


def lock_uri(output: str) -> str:
    from cion_dist.storage.fs import join

    return join(output, LOCK_NAME)


def _holder(stage: str, token: str, lease_s: Optional[float] = None) -> dict:
    now = time.time()
    rec = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "stage": stage,
        "token": token,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    if lease_s is not None:
        rec["expires_at"] = now + lease_s
    return rec


def _describe(rec: dict) -> str:
    if not rec:
        return "another run"
    return (
        f"the {rec.get('stage', '?')} run of pid {rec.get('pid', '?')} on {rec.get('host', '?')} "
        f"(since {rec.get('since', '?')})"
    )


def holds(job) -> bool:
    """Whether this process holds the output lock of ``job`` now."""
    with _held_guard:
        return _held.get(lock_uri(job.output), 0) > 0


@contextlib.contextmanager
def output_lock(job, stage: str = "run", lease_s: float = LEASE_S, renew_s: float = RENEW_S) -> Iterator[str]:
    """Hold the output folder of ``job`` for the block; raises ``OutputBusy`` when another run holds it."""
    from cion_dist.storage.fs import Storage, is_s3

    uri = lock_uri(job.output)
    with _held_guard:
        depth = _held.get(uri, 0)
        if depth:
            _held[uri] = depth + 1
    if depth:
        try:
            yield uri
        finally:
            with _held_guard:
                _held[uri] -= 1
        return
    storage = Storage(job.storage)
    cm = _s3_lease(uri, storage, stage, lease_s, renew_s) if is_s3(uri) else _local_flock(uri, stage)
    with cm:
        with _held_guard:
            _held[uri] = 1
        try:
            yield uri
        finally:
            with _held_guard:
                _held.pop(uri, None)


@contextlib.contextmanager
def _local_flock(uri: str, stage: str) -> Iterator[None]:
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                rec = json.loads(os.pread(fd, 65536, 0) or b"{}")
            except ValueError:
                rec = {}
            raise OutputBusy(
                f"output {os.path.dirname(path)} is in use by {_describe(rec)}; "
                "wait for it to finish (only one run per output folder at a time)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder(stage, uuid.uuid4().hex)).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def _read_lease(fs, bucket: str, key: str) -> Optional[dict]:
    try:
        raw = fs.cat_file(f"{bucket}/{key}")
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        return {}


def _put_if_absent(fs, bucket: str, key: str, rec: dict) -> bool:
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=json.dumps(rec).encode(), IfNoneMatch="*")
        return True
    except FileExistsError:
        return False


@contextlib.contextmanager
def _s3_lease(uri: str, storage, stage: str, lease_s: float, renew_s: float) -> Iterator[None]:
    fs, _ = storage.fs(uri)
    bucket, key = _split(uri)
    token = uuid.uuid4().hex
    rec = _holder(stage, token, lease_s)
    if not _put_if_absent(fs, bucket, key, rec):
        held = _read_lease(fs, bucket, key) or {}
        if float(held.get("expires_at", 0)) > time.time():
            raise OutputBusy(
                f"output {uri.rsplit('/', 1)[0]} is in use by {_describe(held)}, lease renewed until "
                f"{time.strftime('%H:%M:%SZ', time.gmtime(held['expires_at']))}; wait for it to finish "
                "(only one run per output folder at a time)"
            )
        log.warning("taking over the expired lease %s of %s", uri, _describe(held))
        fs.call_s3("delete_object", Bucket=bucket, Key=key)
        if not _put_if_absent(fs, bucket, key, rec):
            raise OutputBusy(
                f"output {uri.rsplit('/', 1)[0]} was just taken by {_describe(_read_lease(fs, bucket, key) or {})}"
            )
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(renew_s):
            try:
                cur = _read_lease(fs, bucket, key) or {}
                if cur.get("token") != token:
                    log.error("lease %s was taken over by %s", uri, _describe(cur))
                    return
                fs.call_s3(
                    "put_object",
                    Bucket=bucket,
                    Key=key,
                    Body=json.dumps({**rec, "expires_at": time.time() + lease_s}).encode(),
                )
            except Exception as e:  # noqa: BLE001 - a missed renewal is retried; the lease has slack
                log.warning("could not renew lease %s: %s", uri, e)

    t = threading.Thread(target=renew, name="cion-lease", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)
        try:
            if (_read_lease(fs, bucket, key) or {}).get("token") == token:
                fs.call_s3("delete_object", Bucket=bucket, Key=key)
        except Exception as e:  # noqa: BLE001 - the lease then expires by itself
            log.warning("could not release lease %s: %s", uri, e)

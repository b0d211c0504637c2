"""A watchdog for the private Ray instance a command starts: when the driver dies, even by SIGKILL, the instance's
processes stop at once instead of lingering.

Ray ends the GCS and raylet of an instance ``ray.init()`` started when its driver dies, but the dashboard and
runtime-env agents and some workers outlive it by a minute or more (a ``cion run`` SIGKILLed mid-ingest: 24
processes, 4 left after 5-20 s, 2 after 60 s, none after 90 s). ``guard_private_instance`` starts this module as
a small process in its own session, reading a pipe that only the driver holds open. While the pipe is open it
notes, every ``SNAPSHOT_S`` seconds, the instance's processes: the driver's children whose command line names
the instance's session folder, and their descendants (the agents and workers, whose command lines do not). When
the pipe closes (the driver exited or was killed) it sends SIGTERM, then SIGKILL, to those still running with the
start time it noted, so a reused pid is never signalled. A ``cion up`` head, or anyone else's Ray, is no child of
this driver and is never touched; an instance its driver shut down itself ends the watchdog too.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys

log = logging.getLogger(__name__)

SNAPSHOT_S = 2.0
GRACE_S = 3.0
_pipes: list[int] = []  # write ends kept open for the driver's lifetime


def _processes(driver_pid: int, session_dir: str, seen: dict[int, float]) -> dict[int, float]:
    """pid -> start time of the instance's processes now: the driver's children whose command line names the
    session folder (GCS, raylet, dashboard, monitors) with all their descendants (agents, workers), and the
    descendants of processes noted before (the driver's children are re-parented when it dies)."""
    import psutil

    roots = []
    try:
        for c in psutil.Process(driver_pid).children():
            try:
                if any(session_dir in (a or "") for a in c.cmdline()):
                    roots.append(c)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        pass
    for pid, started in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started:
                roots.append(p)
        except psutil.NoSuchProcess:
            continue
    out: dict[int, float] = {}
    for p in roots:
        try:
            for q in [p, *p.children(recursive=True)]:
                out[q.pid] = q.create_time()
        except psutil.NoSuchProcess:
            continue
    out.pop(os.getpid(), None)
    return out


def terminate(procs: list, grace_s: float) -> None:
    """SIGTERM to ``procs`` (``psutil.Process``), then SIGKILL to those still running after ``grace_s``."""
    import psutil

    sent = []
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
            sent.append(p)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(sent, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def _stop(seen: dict[int, float]) -> int:
    """SIGTERM, then SIGKILL after ``GRACE_S``, to the noted processes still running (the same pid and start time:
    a reused pid is never signalled); returns how many."""
    import psutil

    procs = []
    for pid, started in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except psutil.NoSuchProcess:
            continue
    terminate(procs, GRACE_S)
    return len(procs)


def watch(driver_pid: int, session_dir: str, fd: int = 0) -> int:
    """Note the instance's processes until ``fd`` reads EOF, then stop those still running; returns how many."""
    seen = _processes(driver_pid, session_dir, {})
    while True:
        ready, _, _ = select.select([fd], [], [], SNAPSHOT_S)
        if ready and not os.read(fd, 4096):
            break  # the driver is gone
        now = _processes(driver_pid, session_dir, seen)
        if seen and not now:
            return 0  # the driver shut its instance down itself
        seen.update(now)
    seen.update(_processes(driver_pid, session_dir, seen))
    return _stop(seen)


def guard_private_instance() -> None:
    """Start the watchdog for the instance this process's ``ray.init()`` just started (call it only then)."""
    try:
        import ray

        session_dir = ray._private.worker._global_node.get_session_dir_path()
    except Exception:  # noqa: BLE001 - a Ray without this attribute: no watchdog, Ray's own clean-up remains
        log.debug("no session folder for the private Ray instance; not watching it", exc_info=True)
        return
    r, w = os.pipe()  # both ends non-inheritable: Ray's processes never hold the write end
    try:
        subprocess.Popen(
            [sys.executable, "-m", "cion_dist.raywatch", str(os.getpid()), session_dir],
            stdin=r,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the driver's process group does not reach it
            close_fds=True,
        )
    finally:
        os.close(r)
    _pipes.append(w)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])

"""``cion up`` / ``cion down``: one local Ray head kept running between commands.

Starting Ray costs 5-45 s on a small machine; a head started once and recorded in a cion-owned file lets every
later ``cion run`` / ``cion demo`` join it in about a second. The head gets its own ``--temp-dir`` and free ports,
so it never collides with (or is joined by) another Ray instance on the machine, and ``cion down`` stops exactly
the processes of that head (found by their session folder under the temp dir), never every Ray on the machine.

The record lives at ``$CION_CLUSTER_FILE``, else ``~/.cache/cion/cluster.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from cion_dist.errors import CionError


@dataclass
class ClusterRecord:
    address: str  # GCS address host:port, what ray.init(address=...) joins
    dashboard: str  # http://host:port, what `ray job submit --address` takes
    temp_dir: str
    num_cpus: int
    started_at: float
    auth_mode: str = "token"  # RAY_AUTH_MODE the head runs with; joiners must use the same


def join_env(rec: ClusterRecord) -> dict[str, str]:
    """Environment a process needs to join the head (``ray.init``, ``ray job submit``)."""
    return {"RAY_AUTH_MODE": rec.auth_mode}


def record_path() -> str:
    return os.environ.get("CION_CLUSTER_FILE") or os.path.join(
        os.path.expanduser("~"), ".cache", "cion", "cluster.json"
    )


def read_record() -> ClusterRecord | None:
    path = record_path()
    try:
        with open(path, encoding="utf-8") as f:
            return ClusterRecord(**json.load(f))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise CionError(f"{path}: not a cion cluster record ({e}); delete it or run `cion down`") from None


def _write_record(rec: ClusterRecord) -> None:
    path = record_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(rec), f, indent=2)
    os.replace(tmp, path)


def _reachable(address: str, timeout: float = 0.5) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def live_cluster() -> ClusterRecord | None:
    """The recorded head if its GCS still answers, else None (a stale record is left for `cion down`)."""
    rec = read_record()
    if rec is not None and os.path.isdir(rec.temp_dir) and _reachable(rec.address):
        return rec
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def up(num_cpus: int | None = None, timeout_s: float = 120.0) -> tuple[ClusterRecord, bool]:
    """Start the head unless a live one is recorded; returns (record, started_now)."""
    rec = live_cluster()
    if rec is not None:
        return rec, False
    if read_record() is not None:
        down()  # stale record: clean its leftovers first
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if ray_bin is None:
        raise CionError("the `ray` command is not on PATH (pip install 'ray[default]')")
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    temp_dir = tempfile.mkdtemp(prefix="cion-ray-")
    gcs, dash, client, agent, agent_grpc, rt_agent, metrics, node_mgr, obj_mgr = _free_ports(9)
    cmd = [
        ray_bin,
        "start",
        "--head",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        f"--num-cpus={cpus}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_agent}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}",
    ]
    from cion_dist.quiet import local_instance_env

    local_instance_env(cpus)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        _stop_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise CionError(f"ray start failed (exit {proc.returncode}):\n{tail}")
    rec = ClusterRecord(
        address=f"127.0.0.1:{gcs}",
        dashboard=f"http://127.0.0.1:{dash}",
        temp_dir=temp_dir,
        num_cpus=cpus,
        started_at=time.time(),
        auth_mode=env.get("RAY_AUTH_MODE", "token"),
    )
    _write_record(rec)
    return rec, True


def _head_pids(temp_dir: str) -> list[int]:
    """Processes of this head: their command line or open session folder names its temp dir."""
    import psutil

    pids: set[int] = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.info["pid"] != os.getpid() and any(temp_dir in (a or "") for a in p.info["cmdline"] or ()):
                pids.add(p.info["pid"])
                # the raylet's workers and agents, whose command lines need not name the folder
                pids.update(c.pid for c in p.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    pids.discard(os.getpid())
    return sorted(pids)


def _stop_processes(temp_dir: str, grace_s: float = 10.0) -> int:
    import psutil

    from cion_dist.raywatch import terminate

    pids = _head_pids(temp_dir)
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    terminate(procs, grace_s)
    return len(pids)


def down() -> ClusterRecord | None:
    """Stop the recorded head's processes, remove its temp dir and the record; None when nothing was recorded."""
    rec = read_record()
    if rec is None:
        return None
    _stop_processes(rec.temp_dir)
    shutil.rmtree(rec.temp_dir, ignore_errors=True)
    try:
        os.remove(record_path())
    except FileNotFoundError:
        pass
    return rec

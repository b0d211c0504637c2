"""This process's resident memory in MiB, read the same way on Linux and macOS (stdlib only, cheap to import)."""

from __future__ import annotations

import os
import sys


def peak_rss_mb() -> float:
    """Peak resident memory of this process: ``ru_maxrss`` is KiB on Linux but bytes on macOS."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def rss_mb() -> float:
    """Resident memory now (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0

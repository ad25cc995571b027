"""How many cores this process may use: the one count settings and runtime share."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores in this process's CPU affinity (a container's or taskset's limit), at least 1."""
    # os.cpu_count() counts the machine's cores, which a CPU-limited container cannot use.
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)

"""Small helpers shared by the benchmark's parts: statistics, memory, timing loops."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
MODELS_DIR = CACHE / "bench-models"
RESULTS_DIR = ROOT / "bench" / "results"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    vals = [v for v in values if v == v]
    return statistics.median(vals) if vals else float("nan")


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def latencies(fn: Callable[[], object], n: int, min_s: float = 0.0) -> list[float]:
    """Call fn sequentially at least n times (and for at least min_s seconds)."""
    out = []
    t_end = time.perf_counter() + min_s
    while len(out) < n or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parallel_throughput(fns: list[Callable[[], object]], duration_s: float) -> float:
    """Run each fn in its own thread in a loop for duration_s; completed calls per second."""
    return parallel_run(fns, duration_s)[0]


def parallel_run(fns: list[Callable[[], object]], duration_s: float) -> tuple[float, float]:
    """(calls per second, CPU ms of this process per call): fns each looping on a thread.

    The CPU cost per call hardly depends on what else the machine runs, so it also tells
    what the throughput would be on an idle machine (cores / CPU per call)."""
    cpu0 = cpu_seconds()
    rate, n = _parallel(fns, duration_s)
    return rate, (cpu_seconds() - cpu0) / max(n, 1) * 1e3


def _parallel(fns: list[Callable[[], object]], duration_s: float) -> tuple[float, int]:
    counts = [0] * len(fns)
    start = threading.Barrier(len(fns) + 1)
    stop_at = [0.0]

    def loop(i: int) -> None:
        fn = fns[i]
        start.wait()
        while time.perf_counter() < stop_at[0]:
            fn()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration_s
    start.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), sum(counts)


def summarize(lat: list[float]) -> dict[str, float]:
    return {
        "n": len(lat),
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "mean_ms": (sum(lat) / len(lat) * 1e3) if lat else float("nan"),
    }


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def report_head(n_cores: int, **machine: object) -> dict:
    """What every bench report starts with: when, the command, and the machine."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cores": n_cores,
            "cpu": cpu_name(),
            "python": platform.python_version(),
            **machine,
            "loadavg_at_start": os.getloadavg(),
        },
    }

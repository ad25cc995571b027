"""The process's resident memory, as the model budget measures it.

A model's estimate is the growth of the process's resident set across its load. glibc keeps
freed heap pages mapped (a second model loads into the first one's freed pages and seems to
cost nothing; an unloaded model's pages stay resident), so the free pages go back to the
system before each reading and after each unload (`malloc_trim`: a millisecond or a few).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from pathlib import Path

_STATM = Path("/proc/self/statm")
_libc_lock = threading.Lock()
_libc: list[ctypes.CDLL | None] = []


def resident_bytes() -> int:
    """This process's resident set in bytes (0 where /proc is not there)."""
    try:
        pages = int(_STATM.read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _glibc() -> ctypes.CDLL | None:
    with _libc_lock:
        if not _libc:
            lib: ctypes.CDLL | None = None
            name = ctypes.util.find_library("c")
            try:
                lib = ctypes.CDLL(name) if name else None
                if lib is not None and not hasattr(lib, "malloc_trim"):  # musl, macOS
                    lib = None
            except OSError:
                lib = None
            _libc.append(lib)
        return _libc[0]


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc; elsewhere nothing)."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def exec_with_huge_pages() -> None:
    """Run this process again (same pid, same arguments) with glibc's malloc asking for
    transparent huge pages, where the kernel offers them on request and glibc has not
    been told otherwise (GLIBC_TUNABLES read at start only; CVSERVE_HUGE_PAGES=0: never).

    Large models give their activation memory back after each run (runtime.LEAN_RUN_BYTES);
    mapped again in 4 KiB pages each run costs U2-Net-p at 320 +53% CPU (390 vs 255 ms a
    run), in 2 MiB pages about nothing (270 ms)."""
    if os.environ.get("CVSERVE_HUGE_PAGES", "1") == "0" or not sys.platform.startswith("linux"):
        return
    if not _serve_is_the_program():
        return  # called in-process (a test's CliRunner, an embedding app): never exec
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return
    try:
        if "[never]" in _THP.read_text() or ctypes.util.find_library("c") is None:
            return
    except OSError:
        return
    env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{HUGE_PAGES_TUNABLE}".lstrip(":"))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _serve_is_the_program() -> bool:
    """Whether this process was started as `cvserve serve` (the console script or
    `python -m cvserve.cli serve`), so running it again runs the same server."""
    argv = list(getattr(sys, "orig_argv", []))
    if len(argv) < 2:
        return False
    if argv[1:3] == ["-m", "cvserve.cli"]:
        rest = argv[3:]
    elif Path(argv[1]).name == "cvserve":
        rest = argv[2:]
    else:
        return False
    return bool(rest) and rest[0] == "serve"


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak() -> bool:
    """Start measuring the process's peak resident set afresh (Linux: clear_refs 5)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """The peak resident set since the last `reset_peak` (0 where unknown)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0

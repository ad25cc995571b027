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

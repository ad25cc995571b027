"""A call's state for its session runs, passed down as an argument, never a thread-local."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _always() -> bool:
    return True


@dataclass(frozen=True)
class RunContext:
    """What the engine decided for one call, handed to every run it makes.

    - `options`: the call's ONNX Runtime RunOptions (OpenVINO's backend reads the same
      flag); the engine sets its `terminate` past the deadline, and the run stops.
    - `alone()`: whether the request is the only one in flight (the engine knows; queued
      and decoding requests count). Only then may a run take the all-core session, or
      pixel work split across cores: otherwise single-threaded lanes give more images
      per second, and the all-core session's spinning threads would take the cores the
      other requests' decoding needs."""

    options: Any = None  # onnxruntime.RunOptions | None
    alone: Callable[[], bool] = _always


# In-process callers with no engine around them (the benchmark, tools, tests): no
# deadline, and alone.
IN_PROCESS = RunContext()

"""What every runtime backend hands `SessionPool`: a session with ONNX Runtime's interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Runtime = Literal["auto", "onnxruntime", "openvino"]
# f32: exact (OpenVINO is told f32 explicitly: on AMX/AVX512-BF16 CPUs its default is bf16).
# bf16: opt-in, OpenVINO only; ONNX Runtime's CPU provider stays f32.
Precision = Literal["f32", "bf16"]


@dataclass(frozen=True)
class NodeInfo:
    """An input or output as ONNX Runtime's NodeArg shows it: name, shape (ints, or a str
    for a dynamic dimension), type ("tensor(float)")."""

    name: str
    shape: list[Any]
    type: str


@dataclass(frozen=True)
class ModelMeta:
    custom_metadata_map: dict[str, str] = field(default_factory=dict)


class Session(Protocol):
    """The part of `onnxruntime.InferenceSession` cvserve uses. Thread-safe: lanes may
    share one."""

    def get_inputs(self) -> Sequence[Any]: ...

    def get_outputs(self) -> Sequence[Any]: ...

    def get_modelmeta(self) -> Any: ...

    def run(
        self, output_names: list[str] | None, feeds: dict[str, np.ndarray], run_options: Any = None
    ) -> list[np.ndarray]: ...


# make(threads, spin, runs) -> a session of the chosen runtime for the maker's file, for
# `runs` concurrent runs of `threads` threads each
# (ONNX Runtime's runs are concurrent on any session; OpenVINO's need a stream each).
SessionMaker = Callable[[int, bool, int], Session]

# open(file, threads, spin, runs, precision) -> a session of that backend.
Opener = Callable[[Path, int, bool, int, str], Session]


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    """One runtime backend's record (cvserve.models.backends.registry)."""

    name: str
    open: Opener
    version: Callable[[], str]
    available: Callable[[], bool] = _always  # installed? (an optional extra may not be)
    extra: str | None = None  # the pip extra that installs it

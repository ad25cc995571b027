"""The runtime backends, one record each (`Backend`): a new backend is one module exposing
its record as `BACKEND` plus one line in `_BACKEND_MODULES`."""

from __future__ import annotations

import importlib
from functools import cache

from cvserve.models.backends.base import Backend

_BACKEND_MODULES = (
    "cvserve.models.backends.onnxruntime",
    "cvserve.models.backends.openvino",
)
REFERENCE = "onnxruntime"  # the runtime every other one is checked against (`auto`)


@cache
def _records() -> dict[str, Backend]:
    records = (importlib.import_module(m).BACKEND for m in _BACKEND_MODULES)
    return {record.name: record for record in records}


def backend(name: str) -> Backend | None:
    return _records().get(name)


def backends() -> list[Backend]:
    """Every registered backend, the reference first."""
    return list(_records().values())


def available(name: str) -> bool:
    record = backend(name)
    return record is not None and record.available()

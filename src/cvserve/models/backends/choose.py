"""Which runtime runs a model file: `onnxruntime`, `openvino`, or `auto`.

`auto` keeps exactness: OpenVINO (f32) is taken only where every output of the model's own
check input equals ONNX Runtime's within `RTOL` relative: np.allclose(rtol=RTOL, atol=RTOL *
the output's largest magnitude), so values near zero are held to the output's own scale
(two f32 runtimes summing in another order differ by ~1e-6 of it: RetinaFace's box deltas
near 1e-5 differ by 5% of themselves, 3e-6 of the output), and only where it is also
faster (by `MARGIN`, at the lanes' thread count). The
check input is deterministic: seeded uniform values of the input's shape (dynamic dimensions:
1 for the first, `CHECK_DIM` for the others). The decision is measured once per file and
cached in `.runtime.json` beside it, keyed by the file's SHA-256, both runtimes' versions,
the thread count and the CPU, so a new file, upgrade or machine measures again.

A graph with control flow or non-maximum suppression keeps ONNX Runtime under `auto`: the
noise input seldom reaches the branches and the boxes those ops decide (coco-detect's Loop
gave the same outputs on it, and OpenVINO then gave 8 of 15 detections on the zoo photos
another class: bench/README.md).

bf16 is never chosen by `auto`: it is opt-in (`runtime_precision: bf16` in the manifest, or
the `runtime_precision` setting) and runs on OpenVINO.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvserve.errors import ModelLoadError
from cvserve.models.backends import registry
from cvserve.models.backends.base import Session, SessionMaker

log = logging.getLogger("cvserve.models")

CACHE_NAME = ".runtime.json"
RTOL = 1e-5
ATOL = 1e-12  # the floor for an all-zero output
# In the cache key: a new rule measures again.
CHECK = "allclose rtol 1e-5, atol 1e-5 x max|ref|; no control flow or NMS"
# OpenVINO's names of the ops whose outputs the check input does not exercise.
UNCHECKED_OPS = frozenset(
    {"Loop", "If", "TensorIterator", "NonMaxSuppression", "MulticlassNms", "MatrixNms"}
)
MARGIN = 0.97  # OpenVINO must take at most this fraction of ONNX Runtime's time
CHECK_DIM = 320
TIMED_RUNS = 7
TIME_BUDGET_S = 4.0  # both runtimes: fewer timed runs for a slow model

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass
class Choice:
    """The runtime a model file runs on, and why (shown in logs, bench and tests)."""

    runtime: str  # onnxruntime | openvino
    precision: str  # f32 | bf16
    reason: str
    make: SessionMaker
    measured: dict[str, Any] = field(default_factory=dict)


def _choice(path: Path, runtime: str, precision: str, reason: str) -> Choice:
    record = registry.backend(runtime)
    if record is None:
        raise ModelLoadError(f"{path.name}: unknown runtime {runtime!r}")
    if not record.available():
        raise ModelLoadError(
            f"{path.name}: runtime {runtime} needs `pip install cvserve[{record.extra}]`"
        )
    return Choice(
        runtime, precision, reason, lambda t, s, runs: record.open(path, t, s, runs, precision)
    )


def session_maker(path: Path, runtime: str, precision: str, threads: int) -> Choice:
    """The runtime for `path` (`runtime` from the manifest or settings; `threads`: the lanes')."""
    ref = registry.REFERENCE
    if precision == "bf16":
        if runtime == ref:
            return _choice(
                path, ref, "f32", "bf16 asked for, but ONNX Runtime's CPU provider runs f32"
            )
        if registry.available("openvino"):
            return _choice(path, "openvino", "bf16", "bf16 asked for (opt-in, not exact)")
        if runtime == "openvino":
            return _choice(path, runtime, "bf16", "")  # refused there: not installed
        return _choice(path, ref, "f32", "bf16 asked for, but OpenVINO is not installed")
    if runtime != "auto":
        return _choice(path, runtime, "f32", f"runtime {runtime}")
    if not registry.available("openvino"):
        return _choice(path, ref, "f32", "auto: OpenVINO is not installed")
    decision = decide(path, threads)
    choice = _choice(path, decision["runtime"], "f32", decision["reason"])
    choice.measured = decision
    return choice


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(path: Path, threads: int) -> str:
    versions = [f"{b.name} {b.version()}" for b in registry.backends() if b.available()]
    return "|".join([file_sha256(path), *versions, f"threads {threads}", _cpu(), CHECK])


def _read_cache(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / CACHE_NAME).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(folder: Path, name: str, entry: dict[str, Any]) -> None:
    data = _read_cache(folder)
    data[name] = entry
    tmp = folder / f"{CACHE_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, folder / CACHE_NAME)
    except OSError as e:  # a read-only store: measured again at the next load
        log.warning("cannot cache the runtime choice for %s: %s", name, e)
        tmp.unlink(missing_ok=True)


def check_feeds(inputs: list[Any]) -> dict[str, np.ndarray]:
    """The model's check input: deterministic values of each input's shape and type."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for node in inputs:
        shape = [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 else CHECK_DIM)
            for i, d in enumerate(node.shape)
        ]
        dtype = _NP_TYPES.get(node.type, np.float32)
        if dtype == np.bool_:
            feeds[node.name] = np.zeros(shape, np.bool_)
        elif np.issubdtype(dtype, np.integer):
            high = 256 if dtype == np.uint8 else 2
            feeds[node.name] = rng.integers(0, high, shape).astype(dtype)
        else:
            feeds[node.name] = rng.random(shape, dtype=np.float32).astype(dtype)
    return feeds


def agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> dict[str, Any]:
    """Whether `other` equals `reference` within RTOL of each value and of each output's
    scale, and by how much they differ: the largest |a - b| / max|a| per output (`max_rel`),
    |a - b| / |a| per value (`max_rel_value`, values near zero dominate it) and |a - b|."""
    inf = float("inf")
    unequal = {"equal": False, "max_rel": inf, "max_rel_value": inf, "max_abs": inf}
    if len(reference) != len(other):
        return unequal
    equal, max_rel, max_rel_value, max_abs = True, 0.0, 0.0, 0.0
    for a, b in zip(reference, other, strict=True):
        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            return unequal
        if a.size == 0:
            continue
        if a.dtype.kind in "fc":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            diff = np.abs(a64 - b64)
            scale = max(float(np.nanmax(np.abs(a64))), ATOL)
            max_abs = max(max_abs, float(np.nanmax(diff)))
            max_rel = max(max_rel, float(np.nanmax(diff)) / scale)
            value = float(np.nanmax(diff / np.maximum(np.abs(a64), ATOL)))
            max_rel_value = max(max_rel_value, value)
            atol = RTOL * scale
            equal = equal and bool(np.allclose(b64, a64, rtol=RTOL, atol=atol, equal_nan=True))
        else:
            same = bool(np.array_equal(a, b))
            equal = equal and same
            max_rel = max(max_rel, 0.0 if same else inf)
            max_rel_value = max(max_rel_value, 0.0 if same else inf)
    return {
        "equal": equal,
        "max_rel": max_rel,
        "max_rel_value": max_rel_value,
        "max_abs": max_abs,
    }


def best_ms(sessions: dict[str, Session], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Each session's fastest of a few runs (ms), taken in turn so that other work on the
    cores slows both alike; the fastest run is the least disturbed."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    spent = time.perf_counter()
    for _ in range(TIMED_RUNS):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - spent > TIME_BUDGET_S:
            break
    return {name: min(t) * 1000 for name, t in times.items()}


_locks_lock = threading.Lock()
_locks: dict[Path, threading.Lock] = {}


def decide(path: Path, threads: int) -> dict[str, Any]:
    """`auto` for one file: cached, or measured now (then cached)."""
    path = path.resolve()
    with _locks_lock:
        lock = _locks.setdefault(path, threading.Lock())
    with lock:
        key = cache_key(path, threads)
        cached = _read_cache(path.parent).get(path.name)
        if isinstance(cached, dict) and cached.get("key") == key and "runtime" in cached:
            return cached
        entry = measure(path, threads)
        entry["key"] = key
        _write_cache(path.parent, path.name, entry)
        log.info("runtime for %s: %s (%s)", path.name, entry["runtime"], entry["reason"])
        return entry


def unchecked_ops(path: Path) -> list[str]:
    """The graph's ops (OpenVINO's names) whose results the check input cannot vouch for."""
    from cvserve.models.backends.openvino import core

    try:
        model = core().read_model(str(path))
    except Exception:  # OpenVINO cannot read it: measure() says so
        return []
    return sorted({op.get_type_name() for op in model.get_ordered_ops()} & UNCHECKED_OPS)


def measure(path: Path, threads: int) -> dict[str, Any]:
    """Both runtimes on the check input: agreement, then the faster of the exact ones."""
    reference_backend = registry.backend(registry.REFERENCE)
    candidate_backend = registry.backend("openvino")
    assert reference_backend is not None and candidate_backend is not None
    unchecked = unchecked_ops(path)
    if unchecked:
        return {
            "runtime": "onnxruntime",
            "reason": f"auto: {', '.join(unchecked)} in the graph, which the check input "
            "does not exercise",
        }
    reference = reference_backend.open(path, threads, False, 1, "f32")
    feeds = check_feeds(list(reference.get_inputs()))
    try:
        expected = reference.run(None, feeds)
    except Exception as e:
        return {"runtime": "onnxruntime", "reason": f"auto: the check input does not run ({e})"}
    try:
        candidate = candidate_backend.open(path, threads, False, 1, "f32")
        got = candidate.run([o.name for o in reference.get_outputs()], feeds)
    except Exception as e:
        return {"runtime": "onnxruntime", "reason": f"auto: OpenVINO cannot run it ({e})"}
    agree = agreement(expected, got)
    entry: dict[str, Any] = {"threads": threads, "agreement": agree}
    if not agree["equal"]:
        entry.update(
            runtime="onnxruntime",
            reason=f"auto: OpenVINO f32 differs (max relative {agree['max_rel']:.2g} > {RTOL:g})",
        )
        return entry
    ms = best_ms({"onnxruntime": reference, "openvino": candidate}, feeds)
    entry["ms"] = ms
    faster = ms["openvino"] <= ms["onnxruntime"] * MARGIN
    entry["runtime"] = "openvino" if faster else "onnxruntime"
    entry["reason"] = (
        f"auto: both exact (max relative {agree['max_rel']:.2g}); "
        f"OpenVINO {ms['openvino']:.1f} ms vs ONNX Runtime {ms['onnxruntime']:.1f} ms"
    )
    return entry

"""ONNX Runtime sessions: the reference runtime, and how cvserve opens them (one arena
shared by the process, spinning only where it pays)."""

from __future__ import annotations

import threading
from pathlib import Path

import onnxruntime as ort

from cvserve.errors import ModelLoadError
from cvserve.models.backends.base import Backend, Session

_setup_lock = threading.Lock()  # once-per-process setup: the shared arena
_arena_state: list[bool] = []


def _shared_arena() -> bool:
    """Register the process-wide CPU arena once (kSameAsRequested); False if unavailable."""
    with _setup_lock:
        if not _arena_state:
            try:
                info = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                ort.create_and_register_allocator(
                    info, ort.OrtArenaCfg({"arena_extend_strategy": 1})
                )
                _arena_state.append(True)
            except Exception:  # an older ORT, or registered by someone else: no arena
                _arena_state.append(False)
        return _arena_state[0]


def make_session(path: Path, threads: int, spin: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # One arena shared by every session of the process, growing by what is asked for: a
    # per-session arena keeps each session's peak (~24 MB for YOLOv8n at 640, rounded up to
    # powers of two) resident for ever; no arena at all costs YOLOv8n-seg 17% more CPU
    # (large buffers mapped and faulted in on every run). Measured, 3 sessions of
    # YOLOv8n-seg: 189 MB per-session arenas, 91 MB none (x1.17 CPU), 120 MB shared.
    if _shared_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    else:
        opts.enable_cpu_mem_arena = False
    # Threads spinning after a run burn the core another lane or the HTTP loop needs; only
    # the all-core session used while its model is otherwise idle spins (on 2 cores,
    # waking a sleeping thread at every parallel op costs YOLOv8n 4.5 ms a run, a 224
    # classifier 1.3 ms of its 2.4).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin:
        # ...and stops spinning when its run ends: the request's own post-processing, its
        # pixel work on the other core and the HTTP loop come next (a 224 classifier's
        # split resize right after a run: 2.35 ms with threads still spinning, 1.84 without).
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ORT raises several unrelated types for bad files
        raise ModelLoadError(f"cannot load ONNX file {path.name}: {e}") from e


def open_session(path: Path, threads: int, spin: bool = False) -> Session:
    session: Session = make_session(path, threads, spin)
    return session


def version() -> str:
    return str(ort.__version__)


def _open(path: Path, threads: int, spin: bool, runs: int, precision: str) -> Session:
    # Any number of concurrent runs share one session; its CPU provider runs f32 only.
    return open_session(path, threads, spin)


BACKEND = Backend("onnxruntime", _open, version)

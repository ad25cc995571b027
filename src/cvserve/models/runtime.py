"""ONNX Runtime sessions: created with the machine's threads, handed out to inference lanes.

A model holds one `SessionPool`. With `workers` lanes, each lane owns its own session with
cores/lanes intra-op threads, so lanes run side by side without oversubscribing cores. By
default (workers = 0, auto) there is one single-threaded lane per core, all of them sharing
one session, plus one session using every core for runs that start while the model is
otherwise idle. A model whose runs need much activation memory gives it back after each
run (`LEAN_RUN_BYTES`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from cvserve.cpus import available_cores
from cvserve.models.backends import Session, session_maker
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.memory import peak_bytes, reset_peak, resident_bytes

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class RuntimeOptions:
    lanes: int = 1
    threads_per_lane: int = 1
    # > threads_per_lane: the pool also holds one session with this many threads, used by a
    # run that starts while no other run of the model is in progress. Idle, a request gets
    # every core (lowest latency); under load, single-threaded lanes side by side give the
    # most images per second (intra-op threading costs ~9% more CPU per image on YOLOv8n).
    wide_threads: int = 0
    # Which runtime runs the sessions (cvserve.models.backends): onnxruntime, openvino, or
    # auto (OpenVINO where it is exact and faster, measured once per file). bf16: opt-in.
    runtime: str = "onnxruntime"
    precision: str = "f32"


def _limit_library_threads() -> None:
    """numpy's BLAS and OpenCV to one thread, at each model load (so a BLAS loaded since,
    such as SciPy's own OpenBLAS, is held too). OpenBLAS starts a thread per core and
    lets it spin after each multi-threaded product; beside ONNX Runtime's threads and the
    lanes that spinning cost the next run dearly (YOLOv8n-seg at 640x480: 109 ms a request
    with the mask logits' (N, 32) @ (32, mh*mw) product threaded, 64 ms without). OpenCV's
    own pool splits each resize and lookup over every core, whose halves then wait behind
    the other lanes' runs (server CPU per 1280x960 image at saturation ~3 % higher), and
    saves nothing at c=1 (a letterbox 0.71 ms on one thread, 0.74 on two). The server
    parallelises across requests, inside ONNX Runtime, and in its own split pixel work
    while a request is alone; not inside numpy or OpenCV."""
    cv2.setNumThreads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except Exception:  # no threadpoolctl, or a BLAS it cannot drive: numpy's own default
        pass


_helper_lock = threading.Lock()
_helper: list[ThreadPoolExecutor] = []


def helper_threads() -> ThreadPoolExecutor:
    """Threads that take half of a request's pixel work while it is alone in flight
    (every core but the caller's)."""
    with _helper_lock:
        if not _helper:
            workers = max(1, available_cores() - 1)  # the count Settings uses (affinity)
            _helper.append(ThreadPoolExecutor(workers, thread_name_prefix="cvserve-pixels"))
        return _helper[0]


def new_run_options() -> ort.RunOptions:
    options = ort.RunOptions()
    options.log_severity_level = 4  # a run stopped on purpose is not an error to log
    return options


# A model whose first run adds more than this to the process's peak gives its activation
# memory back after each run (arena shrinkage), from that run on: U2-Net-p at 320 adds
# ~325 MB (kept, the shared arena's fragments reach ~600 MB), the MobileSAM encoder at 1024
# a few hundred, a detector at 640 ~24 MB. Kept resident, a few such models fill a small
# host (the seven zoo models: 2.1 GB); given back, each run maps its buffers again, which
# costs next to nothing in huge pages (memory.exec_with_huge_pages: U2-Net-p 270 ms of CPU
# a run against 255 kept; 390 in 4 KiB pages). Small models keep theirs (a re-mapped
# 24 MB every 40 ms run would cost a detector several per cent).
LEAN_RUN_BYTES = 64 * 1024 * 1024
_SHRINK = ("memory.enable_memory_arena_shrinkage", "cpu:0")


class SessionPool:
    """A model's sessions for `lanes` concurrent runs.

    Single-threaded lanes (the auto layout) share one session: `run` is thread-safe and
    each concurrent call runs on its caller's thread with its own RunOptions (YOLOv8n, two
    threads on one session: 26.8 images/s against 27.4 on two sessions; every session
    holds its own copy of the optimized weights). Multi-threaded lanes keep a session each
    (their intra-op pools would otherwise be shared by concurrent runs)."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        _limit_library_threads()
        self.path = path
        # The runtime backend: make(threads, spin, runs) opens a session
        # (cvserve.models.backends).
        self.choice = session_maker(
            path, options.runtime, options.precision, options.threads_per_lane
        )
        make = self.choice.make
        count = 1 if options.threads_per_lane <= 1 else options.lanes
        runs = options.lanes if count == 1 else 1  # concurrent runs each session serves
        self._sessions = [make(options.threads_per_lane, False, runs) for _ in range(count)]
        self._free: queue.SimpleQueue[Session] = queue.SimpleQueue()
        for _ in range(options.lanes if count == 1 else 1):
            for s in self._sessions:
                self._free.put(s)  # one slot per lane (the shared session: `lanes` slots)
        self._wide: Session | None = None
        if options.wide_threads > options.threads_per_lane:
            self._wide = make(options.wide_threads, True, 1)
        self._wide_free = threading.Lock()
        self._count_lock = threading.Lock()
        self._running = 0
        self.lean: bool | None = None  # None until the first run has been measured
        first = self._sessions[0]
        self.inputs = first.get_inputs()
        self.outputs = first.get_outputs()
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in self.outputs]
        self.metadata: dict[str, str] = dict(first.get_modelmeta().custom_metadata_map)

    def input_dtype(self, index: int = 0) -> type:
        return _ORT_DTYPES.get(self.inputs[index].type, np.float32)

    @contextmanager
    def session(self) -> Iterator[Session]:
        s = self._free.get()
        try:
            yield s
        finally:
            self._free.put(s)

    def _options(self, shrink: bool, ctx: RunContext) -> ort.RunOptions | None:
        options = ctx.options
        if shrink:
            if options is None:
                options = new_run_options()
            # The request's own object (its terminate must reach the run): it gives its
            # arena memory back from now on, for this model's runs and the request's next.
            options.add_run_config_entry(*_SHRINK)
        return options

    def run(self, feeds: dict[str, np.ndarray], ctx: RunContext = IN_PROCESS) -> list[np.ndarray]:
        if self.lean is None:
            return self._first_run(feeds, ctx)
        return self._run(feeds, self.lean, ctx)

    def _first_run(self, feeds: dict[str, np.ndarray], ctx: RunContext) -> list[np.ndarray]:
        """Measured: its activation memory is the peak it adds to the process. Given back
        at its end, so that a large model never keeps it (a small one keeps it next time)."""
        before = resident_bytes()
        measured = reset_peak()
        out = self._run(feeds, measured, ctx)
        if self.lean is None:
            grown = (peak_bytes() if measured else resident_bytes()) - before
            self.lean = grown > LEAN_RUN_BYTES
        return out

    def _run(self, feeds: dict[str, np.ndarray], shrink: bool, ctx: RunContext) -> list[np.ndarray]:
        with self._count_lock:
            idle = self._running == 0
            self._running += 1
        try:
            if idle and self._wide is not None:
                idle = ctx.alone()
            if idle and self._wide is not None and self._wide_free.acquire(blocking=False):
                try:
                    return self._wide.run(None, feeds, run_options=self._options(shrink, ctx))
                finally:
                    self._wide_free.release()
            with self.session() as s:
                return s.run(None, feeds, run_options=self._options(shrink, ctx))
        finally:
            with self._count_lock:
                self._running -= 1

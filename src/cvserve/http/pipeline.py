"""The request path shared by every inference route: find the model, admit the request,
decode + predict + render in ONE worker-thread hop, under a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar, Token
from typing import Any

import cv2
import numpy as np
from starlette.requests import Request

from cvserve import fastpath
from cvserve.errors import BadRequest, DeadlineExceeded, ModelNotFound, Overloaded, PayloadTooLarge
from cvserve.http.state import AppState
from cvserve.images import decode_image
from cvserve.models.base import InferParams, Model, ModelInfo
from cvserve.models.ids import parse_model_id
from cvserve.models.manifest import info_from_manifest
from cvserve.models.runtime import alone_hint, new_run_options, run_options
from cvserve.results import Prediction
from cvserve.settings import Settings


def model_info(state: AppState, model_id: str) -> ModelInfo:
    """Cheap metadata without loading the model (404 if it is not in the store)."""
    loaded = state.store.loaded(model_id)
    if loaded is not None:
        return loaded.info
    try:
        parse_model_id(model_id)
    except BadRequest:
        raise ModelNotFound(f"model {model_id} not found") from None
    if not state.store.exists(model_id):
        raise ModelNotFound(
            f"model {model_id} not found in the model store; add it with "
            f"`cvserve models import PATH --id {model_id}` or `cvserve models pull NAME`"
        )
    return info_from_manifest(model_id, state.store.manifest(model_id))


async def get_model(state: AppState, model_id: str) -> Model:
    model = state.store.loaded(model_id)
    if model is not None:
        return model
    model_info(state, model_id)  # 404 before any loading
    loop = asyncio.get_running_loop()
    # Loading runs on its own pool: a slow load never holds an inference thread. It is
    # shielded: a request that gives up waiting leaves the load going for the next one.
    future = loop.run_in_executor(state.loader, state.store.get, model_id)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, time_left(state)))
    except asyncio.TimeoutError:
        raise DeadlineExceeded(
            f"model {model_id} is still loading after {state.settings.request_timeout_s:g} s; "
            "retry shortly"
        ) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # let request.form() reuse what we already read
    return body


# -- deadlines ---------------------------------------------------------------------------
# When the request began its countdown (set by the request middleware); without one, each
# stage gets the whole request_timeout_s.
_DEADLINE: ContextVar[float | None] = ContextVar("cvserve_request_deadline", default=None)


def start_deadline(seconds: float) -> Token:
    return _DEADLINE.set(time.monotonic() + seconds)


def reset_deadline(token: Token) -> None:
    _DEADLINE.reset(token)


def time_left(state: AppState) -> float:
    at = _DEADLINE.get()
    if at is None:
        return state.settings.request_timeout_s
    return at - time.monotonic()


# -- admission ---------------------------------------------------------------------------
Listener = Callable[[str, str, float, float], None]  # (model_id, outcome, queued_s, run_s)


class Admission:
    """Per-model bound on requests admitted (queued + running): beyond it, 503 instead of
    queueing. A request keeps its slot until its worker job has finished or left the
    queue, not merely until its caller stopped waiting (a 504 frees no core), so the
    bound stays honest after deadlines."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: dict[str, int] = {}
        self.total = 0  # requests in flight for all models together
        self.running: dict[str, int] = {}
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()

    def enter(self, model_id: str) -> None:
        with self._lock:
            n = self.in_flight.get(model_id, 0)
            if n < self.limit:
                self.in_flight[model_id] = n + 1
                self.total += 1
                return
        self.notify(model_id, "overloaded", 0.0, 0.0)
        raise Overloaded(f"model {model_id} is busy ({n} requests queued); retry shortly")

    def started(self, model_id: str) -> None:
        with self._lock:
            self.running[model_id] = self.running.get(model_id, 0) + 1

    def leave(self, model_id: str, *, ran: bool = False) -> None:
        with self._lock:
            n = self.in_flight.get(model_id, 0)
            if n > 0:
                self.in_flight[model_id] = n - 1
                self.total -= 1
            if ran:
                self.running[model_id] = max(0, self.running.get(model_id, 1) - 1)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """model_id -> (queued, running)."""
        with self._lock:
            return {
                m: (max(0, n - self.running.get(m, 0)), self.running.get(m, 0))
                for m, n in self.in_flight.items()
            }

    def notify(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # metrics must never fail a request
                listener(model_id, outcome, queued_s, run_s)


def admission(state: AppState) -> Admission:
    gate = state.extras.get("admission")
    if gate is None:
        gate = Admission(state.settings.max_queue + state.settings.lanes())
        state.extras["admission"] = gate
    return gate  # type: ignore[return-value]


def _lane_executor(state: AppState, model_id: str) -> ThreadPoolExecutor:
    """Each model queues on its own threads (its lanes, plus one to decode the next image
    meanwhile), so a slow or saturated model never holds up requests to another."""
    executors: dict[str, ThreadPoolExecutor] | None = state.extras.get("lane_executors")  # type: ignore[assignment]
    if executors is None:
        executors = {}
        state.extras["lane_executors"] = executors

        async def _shutdown() -> None:
            for ex in list(executors.values()):
                await asyncio.to_thread(ex.shutdown, wait=True, cancel_futures=False)

        state.shutdown.append(_shutdown)
    ex = executors.get(model_id)
    if ex is None:
        ex = executors.setdefault(
            model_id,
            ThreadPoolExecutor(
                max_workers=state.settings.lanes() + 1,
                thread_name_prefix=f"cvserve-{model_id.replace('/', '-')[:40]}",
            ),
        )
    return ex


async def run_in_worker(state: AppState, model_id: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) on the model's worker threads, admitted by the gate, within the
    request's deadline. Past it: 504, and the ONNX Runtime run is told to stop."""
    gate = admission(state)
    gate.enter(model_id)
    options = new_run_options()
    admitted = time.perf_counter()
    timing = {"queued": 0.0, "run": 0.0}

    def work() -> Any:
        begun = time.perf_counter()
        timing["queued"] = begun - admitted
        gate.started(model_id)
        try:

            def alone() -> bool:  # the only request in flight, for any model
                return gate.total <= 1

            with run_options(options), alone_hint(alone):
                return fn(*args)
        finally:
            timing["run"] = time.perf_counter() - begun

    def done(f: Future) -> None:
        ran = not f.cancelled()
        gate.leave(model_id, ran=ran)
        if not ran:
            outcome = "cancelled"
        elif options.terminate:
            outcome = "deadline"
        else:
            outcome = "ok" if f.exception() is None else "error"
        gate.notify(model_id, outcome, timing["queued"], timing["run"])

    try:
        job = _lane_executor(state, model_id).submit(work)
    except RuntimeError:  # the executor is shut down: the server is stopping
        gate.leave(model_id)
        raise Overloaded("the server is shutting down; retry shortly") from None
    job.add_done_callback(done)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(job), timeout=max(0.0, time_left(state)))
    except asyncio.TimeoutError:
        options.terminate = True  # a queued job is dropped, a running one stops
        job.cancel()
        raise DeadlineExceeded(
            f"inference on {model_id} did not finish within {state.settings.request_timeout_s:g} s"
        ) from None
    except asyncio.CancelledError:
        options.terminate = True
        job.cancel()
        raise


def decode_and_predict(
    model: Model,
    data: bytes | np.ndarray,
    params: InferParams,
    settings: Settings,
    *,
    pixels: bool = True,
) -> tuple[np.ndarray, Prediction, float]:
    """Runs on a worker thread: decode, predict. Returns the pixels, result and elapsed s.

    With the opt-in fast decode (per request or per model) the returned pixels are the
    full-size image only when `pixels` is asked for (drawing needs them); JSON does not."""
    t0 = time.perf_counter()
    if not isinstance(data, np.ndarray) and fastpath.enabled(model, params.fast_preprocess):
        image, width, height = fastpath.decode(
            data, model, max_pixels=settings.max_image_pixels, max_side=settings.max_image_side
        )
        small = fastpath.cheap_resize(image, model)
        prediction = fastpath.rescale(model.predict(small, params), width, height)
        if pixels and image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return image, prediction, time.perf_counter() - t0
    if isinstance(data, np.ndarray):
        image = data
    else:
        image = decode_image(
            data,
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
        )
    prediction = model.predict(image, params)
    return image, prediction, time.perf_counter() - t0

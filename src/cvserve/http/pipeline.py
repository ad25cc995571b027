"""The request path shared by every inference route: find the model, admit the request,
decode + predict + render in ONE worker-thread hop, under a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request

from cvserve.errors import BadRequest, DeadlineExceeded, ModelNotFound, Overloaded, PayloadTooLarge
from cvserve.http.state import AppState
from cvserve.images import decode_image
from cvserve.models.base import InferParams, Model, ModelInfo
from cvserve.models.store import info_from_manifest, parse_model_id
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
    # Loading runs on its own pool: a slow load never holds an inference thread.
    return await loop.run_in_executor(state.loader, state.store.get, model_id)


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


class Admission:
    """Per-model bound on requests in flight: beyond it, answer 503 instead of queueing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: dict[str, int] = {}

    def enter(self, model_id: str) -> None:
        n = self.in_flight.get(model_id, 0)
        if n >= self.limit:
            raise Overloaded(f"model {model_id} is busy ({n} requests queued); retry shortly")
        self.in_flight[model_id] = n + 1

    def leave(self, model_id: str) -> None:
        self.in_flight[model_id] = max(0, self.in_flight.get(model_id, 1) - 1)


def admission(state: AppState) -> Admission:
    gate = state.extras.get("admission")
    if gate is None:
        gate = Admission(state.settings.max_queue + max(1, state.settings.workers))
        state.extras["admission"] = gate
    return gate  # type: ignore[return-value]


async def run_in_worker(state: AppState, model_id: str, fn: Callable[..., Any], *args: Any) -> Any:
    gate = admission(state)
    gate.enter(model_id)
    try:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(state.executor, fn, *args)
        try:
            return await asyncio.wait_for(future, timeout=state.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"inference did not finish within {state.settings.request_timeout_s:g} s"
            ) from None
    finally:
        gate.leave(model_id)


def decode_and_predict(
    model: Model, data: bytes | np.ndarray, params: InferParams, settings: Settings
) -> tuple[np.ndarray, Prediction, float]:
    """Runs on a worker thread: decode, predict. Returns the pixels, result and elapsed s."""
    t0 = time.perf_counter()
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

"""RayEngine: the engine contract answered by Ray Serve's model replicas, all of them.

Inference and prompts go to one replica over a handle multiplexed by model id; "what is
loaded", unload and clear go through the replicas' directory (`cvserve.ray.directory`),
which hears from every replica; the replicas' load and eviction events come back through
it to this engine's listeners. The model catalogue is read from the store directory,
which every node reads; this process never loads a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from cvserve.engine import (
    Admission,
    EngineListener,
    LoadedModel,
    Prompt,
    PromptResult,
    Readiness,
)
from cvserve.engine.deadline import time_left
from cvserve.engine.pipeline import Encoder
from cvserve.errors import CVServeError, DeadlineExceeded, ModelNotFound, Overloaded
from cvserve.models.base import InferParams, ModelInfo
from cvserve.models.ids import parse_model_id
from cvserve.models.manifest import MANIFEST_NAME
from cvserve.models.registry import info_from_manifest
from cvserve.models.store import ModelStore
from cvserve.ray.directory import POLL_S, Event
from cvserve.settings import Settings

T = TypeVar("T")
log = logging.getLogger("cvserve.ray")
# A replica that died, restarts, or is saturated: the caller may retry (503), as with a
# full local queue.
_UNAVAILABLE = (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
)
ORDER_WAIT_S = 10.0  # how long unload/clear wait for every replica to apply them


class RayEngine:
    """The ingress's engine (see the module's docstring). Its admission counts what it
    forwards, so its metrics and its 503 bound work as in one process."""

    def __init__(
        self,
        settings: Settings,
        catalogue: ModelStore,
        models: DeploymentHandle,
        directory: DeploymentHandle,
        replicas: int,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue  # read for model metadata only
        self._models = models
        self._directory = directory
        # What the replicas together may hold in flight, queued ones included.
        self.admission = Admission((settings.max_queue + settings.lanes()) * max(1, replicas))
        self._listeners: list[EngineListener] = []
        self._preloads: dict[str, asyncio.Task[None]] = {}
        self._events: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop
        self._closed = False
        self._infos: dict[str, tuple[int, ModelInfo]] = {}
        self._handles: dict[str, DeploymentHandle] = {}

    # -- the catalogue -------------------------------------------------------------------
    def model_info(self, model_id: str) -> ModelInfo:
        """From the manifest, read again only when its file changed (every request asks)."""
        try:
            parse_model_id(model_id)
        except CVServeError:
            raise ModelNotFound(f"model {model_id} not found") from None
        try:
            stamp = (self.catalogue.folder(model_id) / MANIFEST_NAME).stat().st_mtime_ns
        except OSError:
            raise ModelNotFound(
                f"model {model_id} not found in the model store; add it with "
                f"`cvserve models import PATH --id {model_id}` or `cvserve models pull NAME`"
            ) from None
        cached = self._infos.get(model_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        info = info_from_manifest(model_id, self.catalogue.manifest(model_id))
        self._infos[model_id] = (stamp, info)
        return info

    def _handle(self, model_id: str) -> DeploymentHandle:
        """The models deployment's handle for one model id, made once (Serve routes its
        calls to the replicas holding that model)."""
        handle = self._handles.get(model_id)
        if handle is None:
            handle = self._handles[model_id] = self._models.options(multiplexed_model_id=model_id)
        return handle

    def models(self) -> list[ModelInfo]:
        return self.catalogue.infos()

    # -- what the replicas hold ------------------------------------------------------------
    async def load(self, model_id: str) -> None:
        self.model_info(model_id)  # 404 here, before anything travels
        await self._call(model_id, "load")

    async def unload(self, model_id: str) -> bool:
        return await unload_everywhere(self._directory, model_id, await self.loaded())

    async def clear(self) -> None:
        await give_order(self._directory, ("clear",))

    async def loaded(self) -> list[LoadedModel]:
        self._start_events()
        result: list[LoadedModel] = await self._directory.loaded.remote()
        return result

    # -- work ----------------------------------------------------------------------------
    async def infer(
        self, model_id: str, source: bytes | np.ndarray, params: InferParams, encoder: Encoder[T]
    ) -> T:
        """The replica encodes: only the answer travels back, never pixels."""
        self.model_info(model_id)
        result: T = await self._call(model_id, "infer", source, params, encoder)
        return result

    async def segment(
        self, model_id: str, key: str, image: Callable[[], bytes], prompt: Prompt
    ) -> PromptResult:
        self.model_info(model_id)
        data = await asyncio.to_thread(image)  # the replica decodes; bytes travel, not pixels
        result: PromptResult = await self._call(model_id, "segment", key, data, prompt)
        return result

    async def _call(self, model_id: str, method: str, *args: Any) -> Any:
        self._start_events()
        gate = self.admission
        gate.enter(model_id)
        gate.started(model_id)
        started = time.perf_counter()
        outcome = "error"
        timeout = max(0.0, time_left(self.settings.request_timeout_s))
        response: DeploymentResponse = getattr(self._handle(model_id), method).remote(
            *args, timeout
        )
        try:
            result = await asyncio.wait_for(_await(response), timeout=timeout)
            outcome = "ok"
            return result
        except asyncio.TimeoutError:
            response.cancel()
            outcome = "deadline"
            raise DeadlineExceeded(
                f"inference on {model_id} did not finish within "
                f"{self.settings.request_timeout_s:g} s"
            ) from None
        except RayTaskError as e:
            cause = e.cause
            if isinstance(cause, Overloaded):
                outcome = "overloaded"
            if isinstance(cause, CVServeError):
                raise cause from None
            if isinstance(cause, _UNAVAILABLE):
                raise Overloaded(f"model {model_id} is restarting; retry shortly") from None
            raise
        except _UNAVAILABLE:
            outcome = "overloaded"
            raise Overloaded(f"model {model_id} is busy or restarting; retry shortly") from None
        except (asyncio.CancelledError, RequestCancelledError):
            response.cancel()
            outcome = "cancelled"
            raise
        finally:
            gate.leave(model_id, ran=True)
            gate.notify(model_id, outcome, 0.0, time.perf_counter() - started)

    # -- operations ----------------------------------------------------------------------
    def preload(self, model_ids: tuple[str, ...]) -> None:
        """Each model is loaded and pinned on a replica (the one Serve picks for it)."""
        self._start_events()
        for model_id in model_ids:
            if model_id not in self._preloads:
                self._preloads[model_id] = asyncio.create_task(self._pin(model_id))

    async def _pin(self, model_id: str) -> None:
        self.model_info(model_id)
        await self._handle(model_id).pin.remote(self.settings.request_timeout_s)
        log.info("preloaded model %s (pinned)", model_id)

    def readiness(self) -> Readiness:
        loading: list[str] = []
        failed: dict[str, str] = {}
        for model_id, task in self._preloads.items():
            if not task.done():
                loading.append(model_id)
            elif task.cancelled():
                failed[model_id] = "cancelled (the server is stopping)"
            elif (error := task.exception()) is not None:
                cause = error.cause if isinstance(error, RayTaskError) else error
                failed[model_id] = getattr(cause, "message", None) or repr(cause)
        return Readiness(tuple(loading), failed)

    def activity(self) -> dict[str, tuple[int, int]]:
        return self.admission.snapshot()

    def subscribe(self, listener: EngineListener) -> None:
        if not self._listeners:
            self.admission.listeners.append(self._inference)
        self._listeners.append(listener)

    def _inference(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        self._tell(lambda x: x.inference(model_id, outcome, queued_s, run_s))

    def _tell(self, event: Callable[[EngineListener], None]) -> None:
        for listener in list(self._listeners):
            with contextlib.suppress(Exception):  # a listener never fails the call
                event(listener)

    def _start_events(self) -> None:
        """The replicas' events reach the listeners through a long poll of the directory,
        started on the first call made on the serving event loop."""
        if self._events is None and not self._closed:
            self._loop = asyncio.get_running_loop()
            self._events = self._loop.create_task(self._relay_events())

    async def _relay_events(self) -> None:
        after: int | None = None  # the first answer only says where the log stands
        while True:
            try:
                newest, events = await self._directory.next_events.remote(
                    after if after is not None else 1 << 62, 0.0 if after is None else POLL_S
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # the directory restarts: try again shortly
                await asyncio.sleep(1.0)
                continue
            if after is not None:
                for event in events:
                    self._relay(event)
            after = newest

    def _relay(self, event: Event) -> None:
        if event[0] == "loaded":
            self._tell(lambda x: x.loaded(event[1], float(event[2])))
        elif event[0] == "evicted":
            self._tell(lambda x: x.evicted(event[1]))

    def close(self) -> None:
        """Called off the serving loop (the lifespan's thread): the tasks are cancelled on it."""
        self._closed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for task in [*self._preloads.values(), self._events]:
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)


async def give_order(directory: DeploymentHandle, order: tuple[str, ...]) -> None:
    """An order to every replica, through the directory; waits (bounded) till all applied it."""
    if not await directory.order.remote(order, ORDER_WAIT_S):
        log.warning("not every model replica applied %s within %.0f s", order, ORDER_WAIT_S)


async def unload_everywhere(
    directory: DeploymentHandle, model_id: str, loaded: list[LoadedModel]
) -> bool:
    """Unload the model on every replica; whether any held it (`loaded`: before)."""
    await give_order(directory, ("unload", model_id))
    return any(m.model_id == model_id for m in loaded)


async def _await(response: DeploymentResponse) -> Any:
    return await response

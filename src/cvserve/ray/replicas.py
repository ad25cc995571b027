"""The replicas' classes (made Serve deployments in cvserve.ray.app): a model replica that
runs a LocalEngine on the models multiplexed onto it and reports to the directory, and a
job-worker replica."""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from cvserve.engine import (
    Encoder,
    LocalEngine,
    Prompt,
    PromptResult,
    reset_deadline,
    start_deadline,
)
from cvserve.jobs.service import JobsService
from cvserve.models.base import InferParams
from cvserve.models.store import ModelStore
from cvserve.ray.directory import POLL_S, Event, Order
from cvserve.settings import Settings

log = logging.getLogger("cvserve.ray")


def replica_settings(settings: Settings) -> Settings:
    """A replica's own layout, the server's auto layout within its CPU share: one
    single-threaded lane per CPU, plus (with two or more) a session on all of them for a
    request that is alone. Ray sets OMP_NUM_THREADS, which ONNX Runtime ignores, so the
    threads are set here, explicitly. The model budget (`max_loaded_models`,
    `model_memory_mb`) holds in each replica, as in each plain server: it keeps a process
    clear of the OOM killer. Preloads are the ingress's to place (`RayEngine.preload`)."""
    lanes = max(1, round(settings.ray_replica_cpus))
    return settings.with_overrides(workers=lanes, intra_op_threads=1, preload=())


def replica_store(settings: Settings) -> ModelStore:
    lanes = settings.lanes()
    options = settings.runtime_options(
        lanes=lanes, threads_per_lane=1, wide_threads=lanes if lanes > 1 else 0
    )
    return ModelStore(settings.store_dir, options)


class _Held:
    """One multiplexed model. Serve drops it when it evicts the model from the replica
    (its LRU): the sessions are unloaded then, unless the model was loaded afresh
    meanwhile. It holds no reference to the model, so an unload order frees it."""

    def __init__(self, engine: LocalEngine, model_id: str, evicted: Callable[[str], None]) -> None:
        self.engine = engine
        self.model_id = model_id
        self.evicted = evicted
        model = engine.store.loaded(model_id)
        self.model = weakref.ref(model) if model is not None else None

    def __del__(self) -> None:
        held = self.model() if self.model is not None else None
        pinned = self.model_id in self.engine.residency.pinned
        if held is not None and not pinned and self.engine.store.loaded(self.model_id) is held:
            self.engine.unload_now(self.model_id)
            self.evicted(self.model_id)  # to stay within the replica's model count


class _Events:
    """The replica's engine events, kept until the next report to the directory."""

    def __init__(self, replica: ModelReplica) -> None:
        self.replica = replica
        self.pending: list[Event] = []

    def inference(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        """Counted by the ingress, which admitted the call."""

    def loaded(self, model_id: str, seconds: float) -> None:
        self.pending.append(("loaded", model_id, seconds))
        self.replica.report_soon()

    def evicted(self, model_id: str) -> None:
        self.pending.append(("evicted", model_id))
        self.replica.report_soon()


class ModelReplica:
    """Runs the engine; which model a call is for comes from its multiplexed model id."""

    def __init__(self, settings: dict[str, Any], directory: DeploymentHandle) -> None:
        self.settings = replica_settings(Settings(**settings))
        self.store = replica_store(self.settings)
        self.engine = LocalEngine(self.settings, self.store)
        self.directory = directory
        self.name = uuid.uuid4().hex
        self.events = _Events(self)
        self.engine.subscribe(self.events)
        self.applied = 0  # the directory's last order applied here
        self._loop: asyncio.AbstractEventLoop | None = None
        self._orders: asyncio.Task[None] | None = None
        self._reporting = asyncio.Lock()

    # -- the directory ---------------------------------------------------------------------
    def _follow_directory(self) -> None:
        """Started on the first call on the replica's event loop."""
        if self._orders is None:
            self._loop = asyncio.get_running_loop()
            self._orders = self._loop.create_task(self._follow_orders())

    async def _follow_orders(self) -> None:
        while True:
            try:
                await self.report()
                orders: list[tuple[int, Order]] = await self.directory.next_orders.remote(
                    self.name, self.applied, POLL_S
                )
                for seq, order in orders:
                    self._apply(order)
                    self.applied = seq
            except asyncio.CancelledError:
                raise
            except Exception:  # the directory restarts: report again shortly
                log.debug("the directory did not answer", exc_info=True)
                await asyncio.sleep(1.0)

    def _apply(self, order: Order) -> None:
        if order[0] == "unload":
            self.engine.unload_now(order[1])
        elif order[0] == "clear":
            for model_id in self.store.loaded_ids():
                self.engine.unload_now(model_id)

    async def report(self) -> None:
        """Tell the directory what this replica holds (and its new events)."""
        async with self._reporting:
            events, self.events.pending = self.events.pending, []
            loaded = await self.engine.loaded()
            await self.directory.report.remote(self.name, loaded, events, self.applied)

    def report_soon(self) -> None:
        """From any thread (loads and evictions happen on the loader threads)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self.report()))

    # -- the calls -------------------------------------------------------------------------
    async def _model(self) -> str:
        self._follow_directory()
        model_id = serve.get_multiplexed_model_id()
        await self.hold(model_id)  # type: ignore[attr-defined]  # set by cvserve.ray.app
        if self.store.loaded(model_id) is None:  # unloaded by an order, still in Serve's cache
            await self.engine.load(model_id)
            await self.report()
        return model_id

    async def _hold(self, model_id: str) -> _Held:
        await self.engine.load(model_id)
        await self.report()  # before the caller can ask what is loaded
        return _Held(self.engine, model_id, self.events.evicted)

    async def load(self, timeout_s: float) -> None:
        token = start_deadline(timeout_s)
        try:
            await self._model()  # loads it
        finally:
            reset_deadline(token)

    async def pin(self, timeout_s: float) -> None:
        token = start_deadline(timeout_s)
        try:
            model_id = await self._model()
            await self.engine.pin(model_id)
            await self.report()
        finally:
            reset_deadline(token)

    async def infer(
        self, source: bytes, params: InferParams, encoder: Encoder[Any], timeout_s: float
    ) -> Any:
        token = start_deadline(timeout_s)
        try:
            model_id = await self._model()
            return await self.engine.infer(model_id, source, params, encoder)
        finally:
            reset_deadline(token)

    async def segment(
        self, key: str, data: bytes, prompt: Prompt, timeout_s: float
    ) -> PromptResult:
        token = start_deadline(timeout_s)
        try:
            model_id = await self._model()
            return await self.engine.segment(model_id, key, lambda: data, prompt)
        finally:
            reset_deadline(token)

    async def check_health(self) -> None:
        """Serve's health probe: the lanes must still take work."""
        self._follow_directory()
        if self.engine.lanes.closed:
            raise RuntimeError("the engine's lanes are closed")


class JobReplica:
    """Job workers: they claim jobs from the shared queue (PostgreSQL across machines) and
    run each prompt through an engine of their own."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = replica_settings(Settings(**settings))
        self.engine = LocalEngine(self.settings, replica_store(self.settings))
        self.jobs = JobsService(self.settings, self.engine)
        self.jobs.start()

    def check_health(self) -> None:
        if not self.jobs.workers.running:
            raise RuntimeError("the job workers stopped")

    def __del__(self) -> None:
        try:
            self.jobs.stop()
        except Exception:  # shutting down anyway
            log.exception("stopping the job workers failed")

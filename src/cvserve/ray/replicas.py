"""The replicas' classes (made Serve deployments in cvserve.ray.app): a model replica that
runs a LocalEngine on the models multiplexed onto it, a member of the directory, and a
job-worker replica."""

from __future__ import annotations

import logging
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
from cvserve.ray.member import DirectoryMember
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


class ModelReplica:
    """Runs the engine; which model a call is for comes from its multiplexed model id."""

    def __init__(self, settings: dict[str, Any], directory: DeploymentHandle) -> None:
        self.settings = replica_settings(Settings(**settings))
        self.store = replica_store(self.settings)
        self.engine = LocalEngine(self.settings, self.store)
        self.member = DirectoryMember(self.engine, directory)

    # -- the calls -------------------------------------------------------------------------
    async def _model(self) -> str:
        self.member.follow()
        model_id = serve.get_multiplexed_model_id()
        await self.hold(model_id)  # type: ignore[attr-defined]  # set by cvserve.ray.app
        if self.store.loaded(model_id) is None:  # unloaded by an order, still in Serve's cache
            await self.engine.load(model_id)
            await self.member.report()
        return model_id

    async def _hold(self, model_id: str) -> _Held:
        await self.engine.load(model_id)
        await self.member.report()  # before the caller can ask what is loaded
        return _Held(self.engine, model_id, self.member.evicted)

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
            await self.member.report()
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
        self.member.follow()
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

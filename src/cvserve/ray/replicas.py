"""The replicas' classes (made Serve deployments in cvserve.ray.app): a model replica that
runs the engine on the models multiplexed onto it, and a job-worker replica."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from cvserve.engine import Engine, Prompt, PromptResult, Rendered, reset_deadline, start_deadline
from cvserve.jobs.service import JobsService
from cvserve.models.base import InferParams
from cvserve.models.store import ModelStore
from cvserve.params import RenderOptions
from cvserve.settings import Settings

log = logging.getLogger("cvserve.ray")


def replica_settings(settings: Settings) -> Settings:
    """A replica's own layout, the server's auto layout within its CPU share: one
    single-threaded lane per CPU, plus (with two or more) a session on all of them for a
    request that is alone. Ray sets OMP_NUM_THREADS, which ONNX Runtime ignores, so the
    threads are set here, explicitly. Serve's multiplexing (`ray_models_per_replica`, its
    LRU) decides which models a replica holds, not the plain server's model budget."""
    lanes = max(1, round(settings.ray_replica_cpus))
    return settings.with_overrides(
        workers=lanes, intra_op_threads=1, max_loaded_models=0, model_memory_mb=0, preload=()
    )


def replica_store(settings: Settings) -> ModelStore:
    lanes = settings.lanes()
    options = settings.runtime_options(
        lanes=lanes, threads_per_lane=1, wide_threads=lanes if lanes > 1 else 0
    )
    return ModelStore(settings.store_dir, options)


class _Held:
    """One multiplexed model. Serve calls `__del__` when it evicts the model (LRU); the
    sessions are closed then, unless the model was loaded afresh meanwhile."""

    def __init__(self, store: ModelStore, model_id: str) -> None:
        self.store = store
        self.model_id = model_id
        self.model = store.loaded(model_id)

    def __del__(self) -> None:
        if self.model is not None and self.store.loaded(self.model_id) is self.model:
            self.store.unload(self.model_id)
        self.model = None


class ModelReplica:
    """Runs the engine; which model a call is for comes from its multiplexed model id."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = replica_settings(Settings(**settings))
        self.store = replica_store(self.settings)
        self.engine = Engine(self.settings, self.store)

    async def _model(self) -> str:
        model_id = serve.get_multiplexed_model_id()
        await self.hold(model_id)  # type: ignore[attr-defined]  # set by cvserve.ray.app
        return model_id

    async def _hold(self, model_id: str) -> _Held:
        await self.engine.model(model_id)
        return _Held(self.store, model_id)

    async def load(self, timeout_s: float) -> None:
        await self._model()

    async def infer(
        self,
        source: bytes,
        params: InferParams,
        render: RenderOptions,
        timeout_s: float,
    ) -> Rendered:
        token = start_deadline(timeout_s)
        try:
            model_id = await self._model()
            rendered = await self.engine.infer(model_id, source, params, render)
        finally:
            reset_deadline(token)
        rendered.image = None  # never ship pixels back
        return rendered

    async def segment(
        self, key: str, data: bytes, prompt: Prompt, timeout_s: float
    ) -> PromptResult:
        token = start_deadline(timeout_s)
        try:
            model_id = await self._model()
            return await self.engine.segment(model_id, key, lambda: data, prompt)
        finally:
            reset_deadline(token)

    def check_health(self) -> None:
        """Serve's health probe: the lanes must still take work."""
        if self.engine.lanes.closed:
            raise RuntimeError("the engine's lanes are closed")


class JobReplica:
    """Job workers: they claim jobs from the shared queue (PostgreSQL across machines) and
    run each prompt through an engine of their own."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = replica_settings(Settings(**settings))
        self.store = replica_store(self.settings)
        self.engine = Engine(self.settings, self.store)
        self.jobs = JobsService(self.settings, self.engine)
        self.jobs.start()

    def ping(self) -> str:
        return "ok"

    def check_health(self) -> None:
        if not self.jobs.workers.running:
            raise RuntimeError("the job workers stopped")

    def __del__(self) -> None:
        try:
            self.jobs.stop()
        except Exception:  # shutting down anyway
            log.exception("stopping the job workers failed")

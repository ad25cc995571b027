"""The one-hop layout: Serve's HTTP proxy -> a replica that runs the doors and the models.

Each replica is a whole cvserve (the FastAPI app over a LocalEngine within its CPU share),
so an image crosses one process boundary (proxy -> replica) instead of two (proxy ->
ingress -> model replica over a handle), and nothing is serialized but the HTTP request.
Serve spreads requests over the replicas with no regard to the model, so each replica
loads what it is asked for, within the model budget: the layout for a deployment that
serves a few models to many clients. "What is loaded", unload and clear still answer for
the deployment as a whole, through the directory every replica belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from cvserve.engine import (
    Encoder,
    EngineListener,
    LoadedModel,
    LocalEngine,
    Prompt,
    PromptResult,
    Readiness,
    reset_deadline,
    start_deadline,
)
from cvserve.http.app import create_app
from cvserve.http.state import AppState, build_state
from cvserve.models.base import InferParams, ModelInfo
from cvserve.ray.engine import give_order, unload_everywhere
from cvserve.ray.member import DirectoryMember
from cvserve.ray.replicas import replica_settings, replica_store
from cvserve.ray.streams import ray_streams
from cvserve.settings import Settings

T = TypeVar("T")


class ReplicaEngine:
    """The engine contract in a colocated replica: the work runs on this replica's
    LocalEngine; what is loaded, unload and clear are the deployment's (the directory)."""

    def __init__(self, local: LocalEngine, member: DirectoryMember) -> None:
        self.local = local
        self.member = member

    def model_info(self, model_id: str) -> ModelInfo:
        return self.local.model_info(model_id)

    def models(self) -> list[ModelInfo]:
        return self.local.models()

    async def load(self, model_id: str) -> None:
        self.member.follow()
        await self.local.load(model_id)
        await self.member.report()  # before the caller can ask what is loaded

    async def unload(self, model_id: str) -> bool:
        return await unload_everywhere(self.member.directory, model_id, await self.loaded())

    async def clear(self) -> None:
        self.member.follow()
        await give_order(self.member.directory, ("clear",))

    async def loaded(self) -> list[LoadedModel]:
        self.member.follow()
        await self.member.report()
        result: list[LoadedModel] = await self.member.directory.loaded.remote()
        return result

    async def infer(
        self, model_id: str, source: bytes | np.ndarray, params: InferParams, encoder: Encoder[T]
    ) -> T:
        self.member.follow()
        return await self.local.infer(model_id, source, params, encoder)

    async def segment(
        self, model_id: str, key: str, image: Callable[[], bytes], prompt: Prompt
    ) -> PromptResult:
        self.member.follow()
        return await self.local.segment(model_id, key, image, prompt)

    def preload(self, model_ids: tuple[str, ...]) -> None:
        """Every replica serves every model: each one loads and pins the preloads."""
        self.member.follow()
        self.local.preload(model_ids)

    def readiness(self) -> Readiness:
        return self.local.readiness()

    def activity(self) -> dict[str, tuple[int, int]]:
        return self.local.activity()

    def subscribe(self, listener: EngineListener) -> None:
        self.local.subscribe(listener)

    def close(self) -> None:
        self.member.stop()
        self.local.close()


class ColocatedReplica:
    """Serves the same routes as `cvserve serve`, its models in this process."""

    def __init__(
        self,
        settings: dict[str, Any],
        directory: DeploymentHandle,
        jobs: DeploymentHandle | None,
        streams: DeploymentHandle | None,
    ) -> None:
        # Job workers run in their own replicas; this one only submits and reads jobs.
        base = replica_settings(Settings(**settings)).with_overrides(job_workers=0)
        self.settings = base.with_overrides(preload=Settings(**settings).preload)
        self.local = local = LocalEngine(self.settings, replica_store(self.settings))
        engine = ReplicaEngine(local, DirectoryMember(local, directory))
        self.state: AppState = build_state(
            self.settings, engine, ray_streams(self.settings, engine)
        )
        # Held so the job replicas and the stream workers' supervisor belong to this app.
        self.jobs, self.streams = jobs, streams
        self.engine = engine

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.settings, self.state)

    async def infer(
        self,
        source: bytes | np.ndarray,
        params: InferParams,
        encoder: Encoder[Any],
        timeout_s: float,
    ) -> Any:
        """A frame of a video stream, from a stream worker over a handle (the model id is
        the call's multiplexed model id, as on the split layout's model replicas)."""
        token = start_deadline(timeout_s)
        try:
            return await self.engine.infer(
                serve.get_multiplexed_model_id(), source, params, encoder
            )
        finally:
            reset_deadline(token)

    def check_health(self) -> None:
        """Serve's health probe: the lanes must still take work."""
        if self.local.lanes.closed:
            raise RuntimeError("the engine's lanes are closed")

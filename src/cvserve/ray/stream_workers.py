"""Video streams on Ray: stream workers, and the Serve deployment that keeps them.

A stream worker is a named Ray actor (async) running a StreamManager whose engine is a
RayEngine: each frame goes to the model replicas through the engine contract, as a photo
from the ingress does. Its streams are leased in the shared store (PostgreSQL across
machines); a worker that dies stops renewing, and another takes its streams up.

The workers are plain actors, not Serve replicas, so the ingress can reach the one running
a stream by its name (events, frames, stop). The supervisor deployment owns them: Ray
restarts a worker that dies, they end with the application, and its health probe starts a
worker's manager after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.actor import ActorHandle

from cvserve.models.store import ModelStore
from cvserve.ray.engine import RayEngine
from cvserve.settings import Settings
from cvserve.streams.api import StreamObject
from cvserve.streams.manager import StreamManager
from cvserve.streams.spec import StreamRequest

log = logging.getLogger("cvserve.ray")
NAMESPACE = "cvserve-streams"
APP_NAME = "cvserve"  # cvserve.ray.app's; repeated here so this module does not import it


def worker_name(index: int) -> str:
    return f"cvserve-stream-worker-{index}"


def worker_names(settings: Settings) -> list[str]:
    return [worker_name(i) for i in range(settings.ray_stream_workers)]


def worker_engine(settings: Settings) -> RayEngine:
    """The model replicas, as the ingress sees them (by name: the workers are not in the
    application's graph)."""
    deployment = "models" if settings.ray_layout == "split" else "cvserve"
    models = serve.get_deployment_handle(deployment, APP_NAME)
    directory = serve.get_deployment_handle("directory", APP_NAME)
    replicas = max(settings.ray_model_replicas, settings.ray_max_replicas)
    return RayEngine(settings, ModelStore(settings.store_dir), models, directory, replicas)


class StreamWorker:
    """Runs streams; the ingress's RayStreams calls it by name."""

    def __init__(self, settings: dict[str, Any], name: str) -> None:
        self.settings = Settings(**settings)
        self.name = name
        self.manager: StreamManager | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> str:
        """Idempotent: the manager opens the store and begins keeping leases."""
        async with self._lock:
            if self.manager is None:
                manager = StreamManager(self.settings, worker_engine(self.settings), self.name)
                await manager.start()
                self.manager = manager
                log.info("stream worker %s started (pid %d)", self.name, os.getpid())
        return self.name

    async def _manager(self) -> StreamManager:
        if self.manager is None:
            await self.start()
        assert self.manager is not None
        return self.manager

    def pid(self) -> int:
        return os.getpid()

    async def create(self, request: dict[str, Any]) -> StreamObject:
        manager = await self._manager()
        return await manager.create(StreamRequest.model_validate(request))

    async def get(self, stream_id: str) -> StreamObject | None:
        """The stream as it stands, if this worker holds it."""
        run = (await self._manager()).held_run(stream_id)
        return run.as_dict() if run is not None else None

    async def stop(self, stream_id: str) -> StreamObject | None:
        manager = await self._manager()
        if manager.held_run(stream_id) is None:
            return None
        return await manager.stop(stream_id)

    async def held(self) -> list[StreamObject]:
        return (await self._manager()).held()

    async def active(self) -> int:
        return (await self._manager()).active_count()

    async def frame(self, stream_id: str) -> bytes:
        return await (await self._manager()).frame(stream_id)

    async def events(self, stream_id: str, start: int | None) -> AsyncIterator[bytes]:
        async for chunk in await (await self._manager()).events(stream_id, start):
            yield chunk

    async def mjpeg(self, stream_id: str) -> AsyncIterator[bytes]:
        async for chunk in await (await self._manager()).mjpeg(stream_id):
            yield chunk


class StreamSupervisor:
    """Owns the stream workers (a Serve deployment of one replica, no CPU of its own)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        config = Settings(**settings)
        remote: Any = ray.remote(StreamWorker)
        self.workers: list[ActorHandle] = [
            remote.options(
                name=name,
                namespace=NAMESPACE,
                get_if_exists=True,
                max_restarts=-1,  # Ray restarts a worker that dies; its streams move meanwhile
                max_task_retries=0,
                max_concurrency=1000,  # every stream's events and frames are open calls
                num_cpus=0,  # decoding shares the node; inference runs on the model replicas
            ).remote(settings, name)
            for name in worker_names(config)
        ]

    async def check_health(self) -> None:
        """Serve's probe, every few seconds: (re)starts each worker's manager. A worker
        that is restarting does not fail the probe (that would restart all of them)."""
        calls = [worker.start.remote() for worker in self.workers]
        for call in calls:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call, 10.0)

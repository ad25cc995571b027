"""The `/streams` door's StreamsAPI on Ray: the store says which stream worker runs a
stream (its lease), and the call goes to that worker by name; a stream nobody runs answers
from the store. Events follow a stream across a worker's death: the listener is told
(`reconnecting`), then follows the worker that took the stream up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import ray
from ray.actor import ActorHandle
from ray.exceptions import RayError, RayTaskError

from cvserve.errors import CVServeError, TooManyRequests
from cvserve.ray.stream_workers import NAMESPACE, worker_names
from cvserve.settings import Settings
from cvserve.streams.api import StreamObject, StreamsAPI
from cvserve.streams.manager import NO_STREAM_WORKERS, StreamNotFound, no_streams
from cvserve.streams.runner import FINAL, StreamEngine, now_ms
from cvserve.streams.spec import StreamRequest
from cvserve.streams.store import StreamStore, open_stream_store
from cvserve.wire import sse

log = logging.getLogger("cvserve.ray")
CALL_S = 10.0  # a worker that does not answer a small call in this long is taken as lost
HELD_REFRESH_S = 2.0  # how fresh /metrics' view of the workers' streams is


class WorkerLost(Exception):
    """The stream worker is dead, restarting or not answering."""


class RayStreams:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: StreamStore | None = None
        self._handles: dict[str, ActorHandle] = {}
        self._held: list[StreamObject] = []
        self._refresh: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._store = await asyncio.to_thread(open_stream_store, self.settings)
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_held())

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._store is not None:
            self._store.close()

    def held(self) -> list[StreamObject]:
        return self._held

    async def _refresh_held(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self._held = [obj for objs in await self._from_all("held") for obj in objs]
            await asyncio.sleep(HELD_REFRESH_S)

    # -- workers ---------------------------------------------------------------------------
    def _handle(self, name: str) -> ActorHandle:
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:  # not created yet, or gone for good
                raise WorkerLost(name) from None
            self._handles[name] = handle
        return handle

    async def _call(self, name: str, method: str, *args: Any) -> Any:
        try:
            ref = getattr(self._handle(name), method).remote(*args)
            return await asyncio.wait_for(ref, CALL_S)
        except RayTaskError as e:
            if isinstance(e.cause, CVServeError):
                raise e.cause from None
            raise
        except (RayError, asyncio.TimeoutError):
            raise WorkerLost(name) from None

    async def _from_all(self, method: str) -> list[Any]:
        """Each answering worker's answer to `method()` (the lost ones are left out)."""
        names = worker_names(self.settings)
        answers = await asyncio.gather(
            *(self._call(name, method) for name in names), return_exceptions=True
        )
        return [a for a in answers if not isinstance(a, BaseException)]

    @property
    def store(self) -> StreamStore:
        if self._store is None:
            raise CVServeError("the streams store is not open yet", status=503)
        return self._store

    async def _owner(self, stream_id: str) -> str | None:
        return await asyncio.to_thread(self.store.owner, stream_id)

    # -- the API ---------------------------------------------------------------------------
    async def create(self, request: StreamRequest) -> StreamObject:
        names = worker_names(self.settings)
        if not names:
            raise CVServeError(NO_STREAM_WORKERS, status=501)
        active = await asyncio.to_thread(self.store.count_active)
        if active >= self.settings.max_streams:
            raise TooManyRequests(
                f"this server runs at most {self.settings.max_streams} streams at once "
                f"(--max-streams) and {active} are active; stop one (DELETE /streams/ID) first"
            )
        loads = await asyncio.gather(
            *(self._call(name, "active") for name in names), return_exceptions=True
        )
        ready = [(n, name) for name, n in zip(names, loads, strict=True) if isinstance(n, int)]
        if not ready:
            raise CVServeError("no stream worker is answering; retry shortly", status=503)
        _, name = min(ready)  # the least busy worker
        obj: StreamObject = await self._call(name, "create", request.model_dump())
        return obj

    async def get(self, stream_id: str) -> StreamObject:
        owner = await self._owner(stream_id)
        if owner is not None:
            with contextlib.suppress(WorkerLost):
                live = await self._call(owner, "get", stream_id)
                if live is not None:
                    return dict(live)
        obj = await asyncio.to_thread(self.store.get, stream_id)
        if obj is None:
            raise StreamNotFound(f"stream {stream_id} not found")
        if owner is not None and obj["status"] not in FINAL:  # its worker no longer runs it
            why = (
                f"stream worker {owner} stopped; another takes the stream up within "
                f"{self.settings.stream_lease_s:g} s"
            )
            obj.update(status="reconnecting", error=why)
        return obj

    async def objects(self) -> list[StreamObject]:
        saved = await asyncio.to_thread(self.store.objects)
        live = {obj["id"]: obj for objs in await self._from_all("held") for obj in objs}
        return [live.get(obj["id"], obj) for obj in saved]

    async def stop(self, stream_id: str) -> StreamObject:
        owner = await self._owner(stream_id)
        if owner is not None:
            with contextlib.suppress(WorkerLost):
                stopped = await self._call(owner, "stop", stream_id)
                if stopped is not None:
                    return dict(stopped)
        # Nobody runs it (its worker died, or it ended): stopped in the store, where a
        # worker taking it up would look (a lease on a stopped stream is never renewed).
        obj = await asyncio.to_thread(self.store.get, stream_id)
        if obj is None:
            raise StreamNotFound(f"stream {stream_id} not found")
        obj.update(status="stopped", updated=now_ms())
        await asyncio.to_thread(self.store.save, obj, {})
        return obj

    async def _running_owner(self, stream_id: str) -> str:
        """The worker holding the stream; 404 for an unknown stream or one nobody runs."""
        owner = await self._owner(stream_id)
        if owner is None:
            await self.get(stream_id)  # 404 for an unknown stream
            raise CVServeError(f"stream {stream_id} is not running", status=404)
        return owner

    async def frame(self, stream_id: str) -> bytes:
        owner = await self._running_owner(stream_id)
        try:
            jpeg: bytes = await self._call(owner, "frame", stream_id)
        except WorkerLost:
            msg = f"stream {stream_id} is moving to another stream worker; retry shortly"
            raise CVServeError(msg, status=503) from None
        return jpeg

    async def events(self, stream_id: str, start: int | None) -> AsyncIterator[bytes]:
        await self.get(stream_id)  # 404 before the first byte
        return self._follow(stream_id, start)

    async def mjpeg(self, stream_id: str) -> AsyncIterator[bytes]:
        return self._relay(await self._running_owner(stream_id), "mjpeg", stream_id)

    async def _relay(self, owner: str, method: str, *args: Any) -> AsyncIterator[bytes]:
        """A worker's streaming answer, chunk by chunk; raises WorkerLost if it dies."""
        try:
            refs = getattr(self._handle(owner), method).remote(*args)
            async for ref in refs:
                yield await ref
        except RayTaskError as e:
            if isinstance(e.cause, CVServeError):
                raise e.cause from None
            raise WorkerLost(owner) from None
        except RayError:
            raise WorkerLost(owner) from None

    async def _follow(self, stream_id: str, start: int | None) -> AsyncIterator[bytes]:
        """The stream's events from its worker, and on across a move to another one."""
        lost: str | None = None  # the worker that died under this listener
        while True:
            owner = await self._owner(stream_id)
            if owner is not None and (owner != lost or await self._holds(owner, stream_id)):
                try:
                    async for chunk in self._relay(owner, "events", stream_id, start):
                        yield chunk
                    return  # the stream ended (or its worker is stopping)
                except StreamNotFound:
                    pass  # the worker no longer holds it: the store says how it ended
                except WorkerLost:
                    lost, start = owner, None  # then the next worker's events, live
                    why = f"stream worker {owner} was lost; the stream moves to another worker"
                    yield _status(stream_id, "reconnecting", why)
                    continue
            obj = await asyncio.to_thread(self.store.get, stream_id)
            if obj is None or obj["status"] in FINAL:
                if obj is not None:
                    yield _status(stream_id, obj["status"], obj.get("error"))
                return
            yield sse.KEEPALIVE  # until a worker takes it up (within about a lease)
            await asyncio.sleep(self.settings.stream_lease_s / 3)

    async def _holds(self, name: str, stream_id: str) -> bool:
        try:
            return await self._call(name, "get", stream_id) is not None
        except WorkerLost:
            return False


def _status(stream_id: str, status: str, error: str | None) -> bytes:
    body = {"id": stream_id, "status": status, "error": error, "updated": now_ms()}
    return sse.encode("status", orjson.dumps(body).decode())


def ray_streams(settings: Settings, engine: StreamEngine) -> StreamsAPI:
    """The ingress's streams: on the stream workers, or none (501, saying why)."""
    if settings.ray_stream_workers > 0:
        return RayStreams(settings)
    return no_streams(
        settings,
        engine,
        "this Ray deployment runs no stream workers "
        "(--ray-stream-workers 0); on `cvserve serve`, or with workers, it does",
    )

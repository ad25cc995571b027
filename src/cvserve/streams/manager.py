"""The one owner of a server's streams: create (checked), list, get, stop, resume, close."""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from cvserve.errors import BadRequest, CVServeError, TooManyRequests
from cvserve.settings import Settings
from cvserve.streams.api import StreamObject
from cvserve.streams.feeds import mjpeg_feed, sse_feed
from cvserve.streams.frames import annotated_frame
from cvserve.streams.reader import ReaderConfig, unsupported
from cvserve.streams.runner import StreamEngine, StreamRun, now_ms
from cvserve.streams.sources import Source, check_source
from cvserve.streams.spec import StreamRequest, check_request, hosted_params
from cvserve.streams.store import StreamStore, open_stream_store

log = logging.getLogger("cvserve.streams")
# Ended streams kept in memory (events to replay, the last frame); older ones answer from
# the store, without their events.
KEEP_ENDED = 32
NO_STREAM_WORKERS = (
    "this Ray deployment runs no stream workers (--ray-stream-workers 0); `cvserve serve` "
    "runs streams, as does a Ray deployment with stream workers"
)
EXTRA_HINT = "install the streams extra: pip install 'cvserve[streams]'"


class StreamNotFound(CVServeError):
    status = 404


def missing_packages(request: StreamRequest | None = None) -> list[str]:
    """The streams extra's packages this request needs that are not installed."""
    needed = ["av"]
    if request is None or request.tracker or request.lines or request.zones:
        needed += ["supervision"] + (["trackers"] if request is None or request.tracker else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


class StreamManager:
    """Runs streams in this process, each leased in the store (renewed while it runs).
    `owner`: the name of the Ray stream worker this is; it also takes up the streams whose
    lease ran out (a worker that died). None: a plain server, which resumes the streams it
    left running (its data dir names it), never another server's on a shared database."""

    def __init__(self, settings: Settings, engine: StreamEngine, owner: str | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.owner = owner
        self._holder = owner or f"server:{socket.gethostname()}:{settings.data_dir.resolve()}"
        self._lease_ms = int(settings.stream_lease_s * 1000)
        self._runs: dict[str, StreamRun] = {}
        self._store: StreamStore | None = None
        self._closing = False
        self._keeper: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        # Why this server runs no streams (a Ray deployment without stream workers).
        self.unavailable: str | None = None

    # -- server lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store and resume the streams a stopped server left running (a worker:
        keep its leases, and take up the streams of workers that stopped renewing theirs)."""
        if self.unavailable:
            return
        self._store = await asyncio.to_thread(open_stream_store, self.settings)
        if missing_packages():
            return  # nothing can run; the rows wait for a server with the extra
        if self.owner is None:
            for obj, raw in await asyncio.to_thread(self._store.owned, self._holder):
                await self._resume(obj, raw, None)
        self._keeper = asyncio.get_running_loop().create_task(self._keep_leases())

    async def _resume(self, obj: StreamObject, raw: dict[str, Any], lost: str | None) -> None:
        """Starts a stored stream again; `lost`: the worker that ran it (None: this server)."""
        assert self._store is not None
        resumes = int(obj.get("stats", {}).get("resumes", 0)) + 1
        note = None
        if lost is not None:
            note = f"resumed on stream worker {self.owner}: {lost} stopped renewing its lease"
        try:
            request = StreamRequest.model_validate(raw)
            await self._launch(request, obj["id"], obj["created"], resumes, note)
            log.info(
                "resumed stream %s (%s)%s", obj["id"], obj["source"], f": {note}" if note else ""
            )
        except CVServeError as exc:  # the policy or the model changed meanwhile
            obj.update(status="failed", error=f"not resumed: {exc.message}", updated=now_ms())
            await asyncio.to_thread(self._store.save, obj, raw)

    async def _keep_leases(self) -> None:
        """Leases renewed a few times per lease; a stream no longer held here (stopped
        through the store, or taken up elsewhere) is halted."""
        assert self._store is not None
        store, owner = self._store, self._holder
        while not self._closing:
            try:
                mine = [sid for sid, run in self._runs.items() if not run.final]
                kept = await asyncio.to_thread(store.renew, owner, mine, self._lease_ms)
                for sid in set(mine) - kept:
                    log.warning("stream %s is no longer this worker's: halted", sid)
                    self._runs.pop(sid).halt()
                if self.owner is not None:
                    await self._adopt_orphans()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away for a moment: the next round retries
                log.exception("stream worker %s could not keep its leases", owner)
            await asyncio.sleep(self.settings.stream_lease_s / 3)

    async def _adopt_orphans(self) -> None:
        assert self._store is not None and self.owner is not None
        lease_s = self.settings.stream_lease_s
        for (obj, raw), lost in await asyncio.to_thread(self._store.orphans):
            if self.active_count() >= self.settings.max_streams:
                return
            sid = obj["id"]
            if sid in self._runs and not self._runs[sid].final:
                continue
            if lost == self.owner and time.monotonic() - self._started < 2 * lease_s:
                continue  # restarted under its old name: another worker takes these first
            claimed = await asyncio.to_thread(
                self._store.claim, sid, self.owner, self._lease_ms, expired_only=True
            )
            if claimed:
                await self._resume(obj, raw, lost or "a stopped server")

    def active_count(self) -> int:
        """Streams running here (not yet ended)."""
        return sum(1 for run in self._runs.values() if not run.final)

    async def close(self) -> None:
        """Stop every reader, leaving the streams' rows as they were (resumed at start)."""
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
        for run in list(self._runs.values()):
            run.halt()
        if self._store is not None:
            self._store.close()

    # -- the API's calls -----------------------------------------------------------------------
    async def create(self, request: StreamRequest) -> StreamObject:
        return (await self.launch(request)).as_dict()

    async def launch(self, request: StreamRequest) -> StreamRun:
        """A new stream, checked and started: its run."""
        if self.unavailable:
            raise CVServeError(self.unavailable, status=501)
        missing = missing_packages(request)
        if missing:
            raise CVServeError(
                f"video streams are not installed on this server ({', '.join(missing)} "
                f"missing): {EXTRA_HINT}",
                status=501,
            )
        active = self.active_count()
        if active >= self.settings.max_streams:
            raise TooManyRequests(
                f"this server runs at most {self.settings.max_streams} streams at once "
                f"(--max-streams) and {active} are active; stop one (DELETE /streams/ID) first"
            )
        return await self._launch(request, "s_" + secrets.token_hex(8))

    async def _launch(
        self,
        request: StreamRequest,
        stream_id: str,
        created: int | None = None,
        resumes: int = 0,
        note: str | None = None,
    ) -> StreamRun:
        info = self.engine.model_info(request.model_id)  # 404 for an unknown model
        check_request(request, info.task)
        params, render = hosted_params(request, info.task)
        source = await check_source(request.source, self.settings)
        if source.kind == "file":
            await asyncio.to_thread(_probe, source, self.settings.stream_open_timeout_s)
        settings = self.settings
        config = ReaderConfig(
            open_timeout_s=settings.stream_open_timeout_s,
            read_timeout_s=settings.stream_read_timeout_s,
            connect_deadline_s=settings.stream_connect_deadline_s,
            retry_max_s=settings.stream_retry_max_s,
            realtime=request.realtime,
        )
        run = StreamRun(
            stream_id, request, source, params, render, self.engine, config,
            settings.stream_event_buffer, self._changed, created,
            worker=self.owner, resumes=resumes, note=note,
        )  # fmt: skip
        self._forget_old()
        self._runs[stream_id] = run
        self._changed(run)
        if self._store is not None:
            await asyncio.to_thread(
                self._store.claim, stream_id, self._holder, self._lease_ms, expired_only=False
            )
        # A fresh context: the run outlives the request that started it (and its deadline).
        contextvars.Context().run(run.start)
        return run

    def _forget_old(self) -> None:
        ended = sorted((r for r in self._runs.values() if r.final), key=lambda r: r.updated)
        for run in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self._runs[run.id]

    def _changed(self, run: StreamRun) -> None:
        if self._closing or self._store is None:
            return
        try:
            self._store.save(run.as_dict(), run.request.model_dump())
        except Exception:  # a full disk must not take the stream down with it
            log.exception("could not save stream %s", run.id)

    def held_run(self, stream_id: str) -> StreamRun | None:
        return self._runs.get(stream_id)

    def run(self, stream_id: str) -> StreamRun:
        run = self._runs.get(stream_id)
        if run is None:
            raise StreamNotFound(f"stream {stream_id} not found")
        return run

    def held(self) -> list[StreamObject]:
        return [run.as_dict() for run in self._runs.values()]

    async def get(self, stream_id: str) -> StreamObject:
        run = self._runs.get(stream_id)
        if run is not None:
            return run.as_dict()
        store = self._store
        obj = await asyncio.to_thread(store.get, stream_id) if store is not None else None
        if obj is None:
            raise StreamNotFound(f"stream {stream_id} not found")
        return obj

    async def objects(self) -> list[StreamObject]:
        store = self._store
        saved = await asyncio.to_thread(store.objects) if store is not None else []
        live = {sid: run.as_dict() for sid, run in self._runs.items()}
        items = [live.pop(obj["id"], obj) for obj in saved]
        return list(live.values()) + items

    async def stop(self, stream_id: str) -> StreamObject:
        run = self._runs.get(stream_id)
        if run is None:  # a stream an earlier server run ended (or never resumed)
            obj = await self.get(stream_id)
            obj.update(status="stopped", updated=now_ms())
            if self._store is not None:
                await asyncio.to_thread(self._store.save, obj, {})
            return obj
        await run.stop()
        return run.as_dict()

    async def events(self, stream_id: str, start: int | None) -> AsyncIterator[bytes]:
        return sse_feed(self.run(stream_id), start)

    async def frame(self, stream_id: str) -> bytes:
        run = self.run(stream_id)
        if run.latest is None:
            raise CVServeError(f"stream {stream_id} has no inferred frame yet", status=404)
        return await asyncio.to_thread(annotated_frame, run, run.latest)

    async def mjpeg(self, stream_id: str) -> AsyncIterator[bytes]:
        return mjpeg_feed(self.run(stream_id))

    def threads_alive(self) -> int:
        """Reader threads still running (a stopped stream's ends within its read timeout)."""
        return sum(1 for run in self._runs.values() if run.reader_alive)


def no_streams(settings: Settings, engine: StreamEngine, why: str) -> StreamManager:
    """A manager that runs no streams: POST /streams answers 501 with the reason."""
    manager = StreamManager(settings, engine)
    manager.unavailable = why
    return manager


def _probe(source: Source, timeout_s: float) -> None:
    """A file's first frame decodes, or 400 with FFmpeg's reason (before any stream starts)."""
    import av

    try:
        with av.open(source.url, timeout=timeout_s) as container:
            if not container.streams.video:
                raise BadRequest(f"{source.shown} has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # FFmpeg knows no decoder for it
                raise BadRequest(f"{source.shown}: {unsupported(stream)}")
            for _ in container.decode(stream):
                return
            raise BadRequest(f"{source.shown} has no decodable video frames")
    except av.FFmpegError as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise BadRequest(f"cannot read {source.shown}: {source.scrub(str(why))}") from None

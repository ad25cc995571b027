"""The one owner of a server's streams: create (checked), list, get, stop, resume, close."""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import logging
import secrets
from collections.abc import AsyncIterator

from cvserve.errors import BadRequest, CVServeError, TooManyRequests
from cvserve.settings import Settings
from cvserve.streams.api import StreamObject
from cvserve.streams.feeds import mjpeg_feed, sse_feed
from cvserve.streams.frames import annotated_frame
from cvserve.streams.reader import ReaderConfig, unsupported
from cvserve.streams.runner import StreamEngine, StreamRun, now_ms
from cvserve.streams.sources import Source, check_source
from cvserve.streams.spec import StreamRequest, check_request, hosted_params
from cvserve.streams.store import DB_NAME, StreamStore

log = logging.getLogger("cvserve.streams")
# Ended streams kept in memory (events to replay, the last frame); older ones answer from
# the store, without their events.
KEEP_ENDED = 32
RAY_STREAMS = (
    "video streams run on `cvserve serve` (one process); on Ray Serve they are not available yet"
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
    def __init__(self, settings: Settings, engine: StreamEngine) -> None:
        self.settings = settings
        self.engine = engine
        self._runs: dict[str, StreamRun] = {}
        self._store: StreamStore | None = None
        self._closing = False
        # Why this server runs no streams (Ray Serve's replicas: each would resume them all).
        self.unavailable: str | None = None

    # -- server lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store and resume the streams a stopped server left running."""
        if self.unavailable:
            return
        self._store = await asyncio.to_thread(StreamStore, self.settings.data_dir / DB_NAME)
        if missing_packages():
            return  # nothing can run; the rows wait for a server with the extra
        for obj, raw in await asyncio.to_thread(self._store.active):
            try:
                request = StreamRequest.model_validate(raw)
                await self._launch(request, obj["id"], created=obj["created"])
                log.info("resumed stream %s (%s)", obj["id"], obj["source"])
            except CVServeError as exc:  # the policy or the model changed meanwhile
                obj.update(status="failed", error=f"not resumed: {exc.message}")
                self._store.save(obj, raw)

    async def close(self) -> None:
        """Stop every reader, leaving the streams' rows as they were (resumed at start)."""
        self._closing = True
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
        active = sum(1 for run in self._runs.values() if not run.final)
        if active >= self.settings.max_streams:
            raise TooManyRequests(
                f"this server runs at most {self.settings.max_streams} streams at once "
                f"(--max-streams) and {active} are active; stop one (DELETE /streams/ID) first"
            )
        return await self._launch(request, "s_" + secrets.token_hex(8))

    async def _launch(
        self, request: StreamRequest, stream_id: str, created: int | None = None
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
        )  # fmt: skip
        self._forget_old()
        self._runs[stream_id] = run
        self._changed(run)
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

    def run(self, stream_id: str) -> StreamRun:
        run = self._runs.get(stream_id)
        if run is None:
            raise StreamNotFound(f"stream {stream_id} not found")
        return run

    def runs(self) -> list[StreamRun]:
        """The streams held in memory (running, and the recently ended)."""
        return list(self._runs.values())

    def held(self) -> list[StreamObject]:
        return [run.as_dict() for run in self._runs.values()]

    async def get(self, stream_id: str) -> StreamObject:
        run = self._runs.get(stream_id)
        if run is not None:
            return run.as_dict()
        obj = self._store.get(stream_id) if self._store is not None else None
        if obj is None:
            raise StreamNotFound(f"stream {stream_id} not found")
        return obj

    async def objects(self) -> list[StreamObject]:
        saved = self._store.objects() if self._store is not None else []
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


def no_streams(settings: Settings, engine: StreamEngine) -> StreamManager:
    """A manager that runs no streams: POST /streams answers 501 with the reason."""
    manager = StreamManager(settings, engine)
    manager.unavailable = RAY_STREAMS
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

"""One stream's run: frames from its reader thread, the engine per frame, tracking, counts,
events out. The run is a task on the server's event loop; only the reader is a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson

from cvserve.engine.pipeline import Encoder, Inference
from cvserve.errors import CVServeError, DeadlineExceeded, Overloaded
from cvserve.models.base import InferParams, ModelInfo
from cvserve.params import RenderOptions
from cvserve.results import Detections, Prediction
from cvserve.streams.counting import Counting
from cvserve.streams.events import EventLog
from cvserve.streams.reader import Counters, Frame, FrameSlot, Reader, ReaderConfig
from cvserve.streams.sources import Source
from cvserve.streams.spec import StreamRequest
from cvserve.streams.stats import Latency, Rate
from cvserve.streams.tracking import Tracker, to_supervision
from cvserve.wire.hosted import prediction_json

T = TypeVar("T")
log = logging.getLogger("cvserve.streams")
FINAL = ("completed", "failed", "stopped")
# Frames of a file read as fast as it goes in the model at once (a live source: one).
FILE_IN_FLIGHT = 2


class StreamEngine(Protocol):
    """What a stream needs of the engine: a subset of `cvserve.engine.EngineAPI`."""

    def model_info(self, model_id: str) -> ModelInfo: ...

    async def infer(
        self, model_id: str, source: bytes | np.ndarray, params: InferParams, encoder: Encoder[T]
    ) -> T: ...


@dataclass(frozen=True)
class FrameResult:
    prediction: Prediction
    body: dict[str, Any]  # the hosted JSON, before tracking (which reorders and adds ids)


@dataclass(frozen=True)
class StreamEncoder:
    """The stream's encoder: the typed prediction and its hosted JSON, made on the lane (off
    the event loop; on Ray in the replica). Tracking needs every frame in order in one
    place, so the run adds tracker ids afterwards."""

    render: RenderOptions
    needs_pixels: bool = False

    def encode(self, inference: Inference) -> FrameResult:
        params = inference.params
        body = prediction_json(
            inference.prediction,
            self.render,
            confidence=params.confidence,
            keypoint_confidence=params.keypoint_confidence,
            elapsed_s=time.perf_counter() - inference.started,
        )
        return FrameResult(inference.prediction, body)


@dataclass
class Latest:
    """The newest inferred frame, drawn into a JPEG only when someone asks for it."""

    frame: Frame
    prediction: Prediction
    tracker_ids: list[int | None] | None


def now_ms() -> int:
    return int(time.time() * 1000)


class StreamRun:
    def __init__(
        self,
        stream_id: str,
        request: StreamRequest,
        source: Source,
        params: InferParams,
        render: RenderOptions,
        engine: StreamEngine,
        reader_config: ReaderConfig,
        event_capacity: int,
        on_change: Callable[[StreamRun], None],
        created: int | None = None,
        *,
        worker: str | None = None,
        resumes: int = 0,
        note: str | None = None,
    ) -> None:
        self.id = stream_id
        self.request = request
        self.source = source
        self.params = params
        self.render = render
        self.engine = engine
        self.on_change = on_change
        self.created = created or now_ms()
        self.updated = self.created
        self.worker = worker  # the Ray stream worker running it (None: this server)
        self.resumes = resumes  # times taken up again (a restarted server, a lost worker)
        # Taken up from a lost worker: `reconnecting`, saying so, until its first frame.
        self.status = "reconnecting" if note else "starting"
        self.error: str | None = note
        self.counters = Counters()
        self.inferred = 0
        self.skipped = 0  # frames taken but not inferred (model busy); the reader counts the rest
        self._ending: tuple[str, str | None] | None = None  # the reader's last word, once read
        self.rate_out, self.latency = Rate(), Latency()
        self.counting = Counting(request.lines, request.zones)
        self.tracker: Tracker | None = None
        self.events = EventLog(event_capacity)
        self.latest: Latest | None = None
        self.new_frame = asyncio.Event()  # set per inferred frame (the MJPEG door waits on it)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._slot = FrameSlot(source.live or request.realtime, self.counters, self._notify)
        self._reader = Reader(source, reader_config, self._slot, self._reader_status)
        self._task: asyncio.Task[None] | None = None

    # -- the object the API shows ----------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        c = self.counters
        return {
            "id": self.id,
            "source": self.source.shown,
            "model_id": self.request.model_id,
            "tracker": self.request.tracker,
            "realtime": self.request.realtime,
            "max_fps": self.request.max_fps,
            "worker": self.worker,
            "status": self.status,
            "error": self.error,
            "created": self.created,
            "updated": self.updated,
            "stats": {
                "frames_read": c.read,
                "frames_inferred": self.inferred,
                "frames_dropped": c.dropped + self.skipped,
                "fps_in": c.read_rate.per_second(),
                "fps_out": self.rate_out.per_second(),
                "latency_ms": self.latency.summary(),
                "reconnects": c.reconnects,
                "resumes": self.resumes,
            },
            "counts": self.counting.counts(),
        }

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def reader_alive(self) -> bool:
        return self._reader.thread.is_alive()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._reader.start()
        self._task = self._loop.create_task(self._run(), name=f"cvserve-stream-{self.id}")

    async def stop(self) -> None:
        """Stopped, at once, whatever it was doing (an ended stream becomes `stopped` too,
        its error kept)."""
        self._reader.stop()
        if self.final and self.status != "stopped":  # DELETE answers `stopped` in any state
            self.status, self.updated = "stopped", now_ms()
            self.on_change(self)
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self._set_status("stopped", None)

    def halt(self) -> None:
        """The server is stopping: end the reader and the run, keep the status (a restarted
        server resumes what was running); listeners are let go without a final status."""
        self._reader.stop()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.events.close()
        self.new_frame.set()

    def _notify(self) -> None:  # from the reader thread
        self._loop.call_soon_threadsafe(self._wake.set)

    def _reader_status(self, status: str, reason: str | None) -> None:  # reader thread
        self._loop.call_soon_threadsafe(self._from_reader, status, reason)

    def _from_reader(self, status: str, reason: str | None) -> None:
        if status in ("completed", "failed"):
            self._wake.set()  # the run drains the last frame, then ends with this status
            self._ending = (status, reason)
        else:
            self._set_status(status, reason if status == "reconnecting" else None)

    def _set_status(self, status: str, error: str | None) -> None:
        if self.final or (status == self.status and error == self.error):
            return
        self.status, self.error = status, error
        self.updated = now_ms()
        self.events.publish("status", orjson.dumps(self._status_event()).decode())
        if self.final:
            self.events.close()
            self.new_frame.set()
            if status != "stopped":
                self._reader.stop()
            log.info("stream %s %s%s", self.id, status, f": {error}" if error else "")
        self.on_change(self)

    def _status_event(self) -> dict[str, Any]:
        obj = self.as_dict()
        return {k: obj[k] for k in ("id", "status", "error", "updated", "stats", "counts")}

    # -- the loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._frames()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("stream %s failed: %s", self.id, self.source.scrub(traceback.format_exc()))
            self._set_status("failed", f"internal error: {type(exc).__name__}")
        finally:
            self._reader.stop()

    async def _frames(self) -> None:
        """Frames from the slot through the model, published in their order. A live source
        has one frame in flight (its newest is taken when the model is free); a file read
        as fast as it goes keeps FILE_IN_FLIGHT, so the model's lanes run side by side
        (one stream alone would leave all but one idle) while tracking still sees every
        frame in order."""
        next_at = 0.0
        gap = 1.0 / self.request.max_fps if self.request.max_fps else 0.0
        depth = 1 if self._slot.live else FILE_IN_FLIGHT
        pending: deque[tuple[Frame, asyncio.Task[FrameResult | None]]] = deque()
        try:
            while not self.final:
                if pending and (len(pending) >= depth or pending[0][1].done()):
                    done, task = pending.popleft()
                    self._publish(done, await task)
                    self._wake.set()  # look again: a frame may have come meanwhile
                    continue
                if pending:  # a new frame or the oldest result, whichever comes first
                    woken = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait((woken, pending[0][1]), return_when=FIRST_COMPLETED)
                    woken.cancel()
                    if not self._wake.is_set():
                        continue
                else:
                    await self._wake.wait()
                self._wake.clear()
                if gap and (wait := next_at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)  # max_fps: a live source's frames meanwhile drop
                ended = self._slot.ended  # read first: a frame put before the end is taken below
                taken = self._slot.take()
                if taken is not None:
                    next_at = time.monotonic() + gap
                    pending.append((taken, asyncio.ensure_future(self._predict(taken))))
                    self._wake.set()  # look again: the next frame may be there already
                    continue
                if self._ending is not None and ended and not pending:
                    self._set_status(*self._ending)
        finally:
            for _, task in pending:
                task.cancel()

    async def _predict(self, frame: Frame) -> FrameResult | None:
        """The frame through the engine; None when it was skipped (or the stream failed)."""
        try:
            return await self.engine.infer(
                self.request.model_id, frame.image, self.params, StreamEncoder(self.render)
            )
        except (Overloaded, DeadlineExceeded) as exc:
            self.skipped += 1  # the model is busy: this frame is skipped, not queued
            log.debug("stream %s dropped frame %d: %s", self.id, frame.index, exc.message)
            return None
        except CVServeError as exc:
            self.skipped += 1
            self._set_status("failed", f"inference failed: {exc.message}")
            return None

    def _publish(self, frame: Frame, result: FrameResult | None) -> None:
        """Tracks the frame's result, counts it and publishes its event."""
        if result is None or self.final:
            return
        prediction, event = result.prediction, result.body
        ids = self._track(prediction, event)
        self.inferred += 1
        self.rate_out.tick()
        self.latency.add((time.time() - frame.time) * 1000.0)
        event.pop("inference_id", None)
        event.pop("time", None)
        body = {"frame": frame.index, "pts": frame.pts, "time": round(frame.time, 3), **event}
        body["counts"] = self.counting.counts()
        self.events.publish("frame", orjson.dumps(body).decode(), frame=frame.index)
        self.latest = Latest(frame, prediction, ids)
        self.new_frame.set()
        self.new_frame = asyncio.Event()

    def _track(self, prediction: Prediction, event: dict[str, Any]) -> list[int | None] | None:
        """Tracks the frame's boxes and counts them: the prediction and the event's
        predictions are put in the tracker's order, each with its tracker_id."""
        det = prediction.result
        if not isinstance(det, Detections):
            return None
        if self.request.tracker is None:
            if self.counting:
                self.counting.update(to_supervision(det), tracked=False)
            return None
        if self.tracker is None:
            self.tracker = Tracker(self.request.tracker, self.params.confidence, self._reader.fps)
        order, tracked, ids = self.tracker.update(det)
        prediction.result = det.select(np.asarray(order, np.int64))
        preds = event.get("predictions", [])
        event["predictions"] = [
            preds[i] | {"tracker_id": t} for i, t in zip(order, ids, strict=True)
        ]
        self.counting.update(tracked, tracked=True)
        return ids

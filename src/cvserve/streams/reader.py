"""One reader thread per source: PyAV opens and decodes, frames go into a one-frame slot.

A live source (camera, network, a file read in real time) only ever offers its newest
frame: one the runner has not taken yet is replaced and counted dropped, never queued. A
file read as fast as the model allows blocks the reader until the runner takes its frame.
Every open and read has a timeout, so the thread never hangs; reconnects back off.
An http(s) source is read through the stream guard (`cvserve.streams.proxy`): the reader
holds a lease on it for its life, and a request the guard refused is the reason it gives.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvserve.streams.proxy import PROXY, Lease
from cvserve.streams.sources import Source
from cvserve.streams.stats import Rate

log = logging.getLogger("cvserve.streams")
FIRST_BACKOFF_S = 0.5


@dataclass(frozen=True)
class Frame:
    index: int  # position among the frames read from this source (across reconnects)
    pts: float | None  # seconds in the source
    time: float  # wall clock when it was decoded
    image: np.ndarray  # RGB uint8 (H, W, 3), what the engine takes as an array


@dataclass
class Counters:
    read: int = 0
    dropped: int = 0
    reconnects: int = 0
    read_rate: Rate = field(default_factory=Rate)  # frames decoded per second (fps_in)


class FrameSlot:
    """The hand-off between a reader thread and its runner: at most one frame."""

    def __init__(self, live: bool, counters: Counters, notify: Callable[[], None]) -> None:
        self.live = live
        self.counters = counters
        self._notify = notify
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self.closed = False  # the runner stopped taking
        self.ended = False  # the reader will put no more

    def put(self, frame: Frame) -> bool:
        """Offer a frame; False once the runner is gone (the reader should stop)."""
        with self._cond:
            if not self.live:
                while self._frame is not None and not self.closed:
                    self._cond.wait(0.5)
            if self.closed:
                return False
            if self._frame is not None:
                self.counters.dropped += 1  # stale: the newer frame wins
            self._frame = frame
        self._notify()
        return True

    def take(self) -> Frame | None:
        with self._cond:
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def end(self) -> None:
        with self._cond:
            self.ended = True
        self._notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            if self._frame is not None:
                self.counters.dropped += 1
                self._frame = None
            self._cond.notify_all()


@dataclass
class ReaderConfig:
    open_timeout_s: float
    read_timeout_s: float
    connect_deadline_s: float  # a source that never connects fails after this
    retry_max_s: float  # the most a reconnecting source waits between tries
    realtime: bool = False  # files: paced at their native rate


# Status callback: (status, reason). Statuses: running, reconnecting, completed, failed.
OnStatus = Callable[[str, str | None], None]


class Reader:
    def __init__(
        self, source: Source, config: ReaderConfig, slot: FrameSlot, on_status: OnStatus
    ) -> None:
        self.source = source
        self.config = config
        self.slot = slot
        self.on_status = on_status
        self.stop_event = threading.Event()
        self.lease: Lease | None = None  # the stream guard's, while reading an http(s) source
        self.fps: float | None = None  # the source's frame rate, once known
        self.thread = threading.Thread(target=self._run, name="cvserve-stream-reader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.slot.close()
        lease = self.lease
        if lease is not None:
            lease.cut()  # FFmpeg's reads through the guard end now, not at their timeout

    def _run(self) -> None:
        try:
            if self.source.guard is not None:
                self.lease = PROXY.lease(self.source.guard)
            self._loop()
        except Exception as exc:  # a bug must end the stream visibly, not kill it silently
            # Scrubbed: an exception's text may carry the URL, credentials included.
            log.error("stream reader for %s crashed: %s", self.source.shown,
                      self.source.scrub(traceback.format_exc()))  # fmt: skip
            self.on_status("failed", f"reader error: {self.source.scrub(str(exc))}")
        finally:
            if self.lease is not None:
                self.lease.release()
            self.slot.end()

    def _loop(self) -> None:
        import av

        config, source = self.config, self.source
        began = time.monotonic()
        connected = False
        backoff = FIRST_BACKOFF_S
        tries = 0
        while not self.stop_event.is_set():
            tries += 1
            open_s = config.open_timeout_s
            if not connected:  # a try never outlasts the connect deadline
                open_s = max(
                    0.1, min(open_s, config.connect_deadline_s - (time.monotonic() - began))
                )
            options = dict(source.options)
            if self.lease is not None:
                options["http_proxy"] = self.lease.url
                self.lease.refusals.clear()
            try:
                container = av.open(
                    source.url,
                    format=source.format,
                    options=options,
                    timeout=(open_s, config.read_timeout_s),
                )
            except (av.FFmpegError, OSError, ValueError) as exc:
                refused = self._refused()
                reason = f"cannot open {source.shown}: {refused or source.scrub(_why(exc))}"
                if not source.live or (refused and not connected):
                    self.on_status("failed", reason)  # the policy says no: retrying won't help
                    return
                waited = time.monotonic() - began
                if not connected and waited + backoff > config.connect_deadline_s:
                    self.on_status("failed", f"{reason} (gave up after {tries} tries)")
                    return
                if connected:
                    self.on_status("reconnecting", reason)
                if self.stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, config.retry_max_s)
                continue
            try:
                outcome = self._read(container)
            finally:
                container.close()
            if outcome is None:  # stopped, failed or completed: the status is set
                return
            connected = True
            backoff = FIRST_BACKOFF_S
            self.slot.counters.reconnects += 1
            self.on_status("reconnecting", outcome)

    def _read(self, container: Any) -> str | None:
        """Decode until the end; a live source's reason to reconnect, or None when done."""
        import av

        source = self.source
        if not container.streams.video:
            self.on_status("failed", f"{source.shown} has no video stream")
            return None
        stream = container.streams.video[0]
        if stream.codec_context is None:
            self.on_status("failed", f"{source.shown}: {unsupported(stream)}")
            return None
        stream.thread_type = "AUTO"  # frame threads: decoding keeps up with large frames
        rate = stream.average_rate or stream.base_rate
        self.fps = float(rate) if rate else self.fps
        self.on_status("running", None)
        started: tuple[float, float] | None = None  # (wall, pts) of the first frame, for pacing
        try:
            for frame in container.decode(stream):
                if self.stop_event.is_set():
                    return None
                pts = float(frame.time) if frame.time is not None else None
                if self.config.realtime and pts is not None:
                    started = started or (time.monotonic(), pts)
                    delay = started[0] + (pts - started[1]) - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        return None
                image = frame.to_ndarray(format="rgb24")
                counters = self.slot.counters
                item = Frame(counters.read, pts, time.time(), image)
                counters.read += 1
                counters.read_rate.tick()
                if not self.slot.put(item):
                    return None
        except av.FFmpegError as exc:
            reason = f"reading {source.shown} failed: {self._refused() or source.scrub(_why(exc))}"
            if not source.live:
                self.on_status("failed", reason)
                return None
            return reason
        if not source.live:
            self.on_status("completed", None)
            return None
        return f"{source.shown} ended"

    def _refused(self) -> str | None:
        """The newest reason the stream guard refused one of this source's requests."""
        if self.lease is None or not self.lease.refusals:
            return None
        return self.source.scrub(self.lease.refusals[-1]).replace(self.lease.token, "***")


def unsupported(stream: Any) -> str:
    tag = str(getattr(stream, "codec_tag", "") or "").strip("\x00 ") or "unknown"
    return f"its video codec (tag {tag!r}) cannot be decoded by this server"


def _why(exc: BaseException) -> str:
    """FFmpeg's words without the file name PyAV appends (the caller shows its own)."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror) if strerror else type(exc).__name__

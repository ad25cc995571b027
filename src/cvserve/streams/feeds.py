"""A running stream as bytes for HTTP: its Server-Sent Events and its MJPEG parts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from cvserve.streams.frames import annotated_frame
from cvserve.streams.runner import StreamRun
from cvserve.wire import sse

MJPEG_BOUNDARY = "cvserveframe"


def live_status(run: StreamRun) -> bytes:
    """The first event of a live listener: where the stream stands."""
    obj = run.as_dict()
    return sse.encode(
        "status", orjson.dumps({k: obj[k] for k in ("id", "status", "error")}).decode()
    )


async def sse_feed(run: StreamRun, start: int | None) -> AsyncIterator[bytes]:
    after = run.events.start_after(start)
    if start is None and not run.events.closed:  # live: first where the stream stands
        yield live_status(run)
    async for event in run.events.follow(after):
        yield sse.KEEPALIVE if event is None else event.sse()


def mjpeg_part(jpeg: bytes) -> bytes:
    head = f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
    return f"{head}Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n"


async def mjpeg_feed(run: StreamRun) -> AsyncIterator[bytes]:
    sent = None
    while True:
        latest = run.latest
        if latest is not None and latest is not sent:
            jpeg = await asyncio.to_thread(annotated_frame, run, latest)
            sent = latest
            yield mjpeg_part(jpeg)
        if run.final or run.events.closed:  # ended, or the server is stopping
            return
        waiter = run.new_frame
        try:
            await asyncio.wait_for(waiter.wait(), 15.0)
        except asyncio.TimeoutError:
            continue

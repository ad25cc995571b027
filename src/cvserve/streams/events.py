"""A stream's recent events, for Server-Sent Events listeners that come and go.

Lives on the event loop. Each event gets a sequence number; a bounded deque keeps the last
`capacity` frame events (and the status events among them), so a listener can replay from
a frame index, then wait for live ones. Frame events carry their frame index as SSE `id:`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cvserve.wire import sse


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str  # "frame" | "status"
    frame: int | None  # the frame index, for frame events
    data: str  # JSON text

    def sse(self) -> bytes:
        return sse.encode(self.kind, self.data, self.frame)


class EventLog:
    def __init__(self, capacity: int) -> None:
        # Status events are few; room for them on top of `capacity` frame events.
        self._events: deque[Event] = deque(maxlen=capacity + 64)
        self._seq = 0
        self._changed = asyncio.Event()
        self.closed = False  # the final status is in: listeners finish after it

    def publish(self, kind: str, data: str, frame: int | None = None) -> None:
        self._seq += 1
        self._events.append(Event(self._seq, kind, frame, data))
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        # A fresh Event per round: every waiter of the old one wakes, later ones wait anew.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def start_after(self, frame: int | None) -> int:
        """The sequence number to replay after: the events from frame index `frame` on,
        all buffered ones for None on an ended stream, else only live ones."""
        if frame is None:
            return 0 if self.closed else self._seq
        for event in self._events:
            if event.kind == "frame" and event.frame is not None and event.frame >= frame:
                return event.seq - 1
        return self._seq  # nothing buffered from there on: live from now

    async def follow(self, after: int, keepalive_s: float = 15.0) -> AsyncIterator[Event | None]:
        """Events with seq > `after`, then live ones until closed; None now and then while
        idle (the caller sends an SSE comment, so proxies keep the connection open)."""
        while True:
            fresh = [e for e in self._events if e.seq > after]
            for event in fresh:
                yield event
                after = event.seq
            if self.closed and not any(e.seq > after for e in self._events):
                return
            changed = self._changed
            if any(e.seq > after for e in self._events):
                continue
            try:
                await asyncio.wait_for(changed.wait(), keepalive_s)
            except asyncio.TimeoutError:
                yield None

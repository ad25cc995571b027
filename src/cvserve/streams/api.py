"""What the doors need of a server's streams: the local manager and Ray's stream workers
both answer it, so `/streams` (and its metrics) is one door over either."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from cvserve.streams.spec import StreamRequest

StreamObject = dict[str, Any]  # the stream object of SPEC.md section 9


class StreamsAPI(Protocol):
    async def start(self) -> None:
        """Open the store; take up the streams a stopped server (or worker) left running."""

    async def close(self) -> None:
        """Stop the readers, leaving the streams' rows to be resumed."""

    async def create(self, request: StreamRequest) -> StreamObject: ...

    async def get(self, stream_id: str) -> StreamObject: ...

    async def objects(self) -> list[StreamObject]:
        """Every stream the store knows, newest first (live ones as they stand now)."""

    async def stop(self, stream_id: str) -> StreamObject:
        """Stopped at once, whatever its state; its final object."""

    async def events(self, stream_id: str, start: int | None) -> AsyncIterator[bytes]:
        """Server-Sent Events from frame `start` on (None: live); 404 before the first byte."""

    async def frame(self, stream_id: str) -> bytes:
        """The newest annotated frame as a JPEG (404 before the first inferred frame)."""

    async def mjpeg(self, stream_id: str) -> AsyncIterator[bytes]:
        """multipart/x-mixed-replace parts, one per newly inferred frame, until it ends."""

    def held(self) -> list[StreamObject]:
        """The streams this server holds in memory, for /metrics (no I/O)."""

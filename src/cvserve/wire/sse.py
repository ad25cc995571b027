"""Server-Sent Events, both directions: the server's encoder (stream events) and the SDK's
parser. One module, so the two cannot drift apart."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

KEEPALIVE = b": keepalive\n\n"  # a comment line: clients ignore it, proxies see traffic


def encode(kind: str, data: str, event_id: int | str | None = None) -> bytes:
    """One event: `event:`, `id:` (when given) and one `data:` line of JSON text."""
    head = f"event: {kind}\n"
    if event_id is not None:
        head += f"id: {event_id}\n"
    if "\n" in data:
        raise ValueError("SSE data is one line of JSON here")
    return f"{head}data: {data}\n\n".encode()


@dataclass(frozen=True)
class SSEEvent:
    event: str  # "frame" | "status" (SSE's default is "message")
    id: str | None
    data: Any  # the decoded JSON


def parse(lines: Iterable[str]) -> Iterator[SSEEvent]:
    """Events from a response's text lines (line endings stripped), as the SSE spec reads
    them: blank line ends an event, `:` starts a comment, data lines are joined."""
    kind: str = "message"
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SSEEvent(kind, event_id, json.loads("\n".join(data)))
            kind, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            kind = value
        elif field == "id":
            event_id = value
        elif field == "data":
            data.append(value)

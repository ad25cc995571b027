"""The one bounded request-body reader: 413 as soon as a body passes its limit."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from cvserve.errors import BadRequest, PayloadTooLarge

JSON_LIMIT = 1 << 20  # bodies that carry only JSON fields, no image


def check_declared_length(request: Request, limit: int) -> None:
    """413 before reading when Content-Length already says the body is too large."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise BadRequest("invalid Content-Length header") from None
    if size > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = JSON_LIMIT) -> Any:
    """The body parsed as JSON (any JSON value), within `limit` bytes."""
    raw = await read_body(request, limit)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body must be JSON") from None


async def read_json_object(request: Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    body = await read_json(request, limit)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body

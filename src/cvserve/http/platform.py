"""What the data platform's routes share: their error shape, auth, and small parsers.

Errors here use the platform's shape `{"error": {"code", "message", "missing"?}}`; with API
keys configured, a missing key is 401 and a wrong one 403, both in that shape.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from cvserve.errors import BadRequest
from cvserve.http.auth import KeyChecker
from cvserve.http.errors import PlatformError, classify, platform_response
from cvserve.jobs.segment import validation_message

BASE = "/api/v1/projects/{project}"
CDF_VERSIONS = ("beta", "alpha")  # alpha releases carry the beta features as well

M = TypeVar("M", bound=BaseModel)


class PlatformRoute(APIRoute):
    """Every error raised in these routes, FastAPI's own included, in the platform's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except Exception as e:
                return platform_response(classify(e, request.url.path))

        return handler


def authorise(keys: KeyChecker, request: Request) -> None:
    key = KeyChecker.key_from(request)
    if keys.required:
        if not key:
            raise PlatformError(401, "Unauthorized: send `Authorization: Bearer KEY` or `api-key`")
        if not keys.valid(key):
            raise PlatformError(403, "User is not authorized to access this resource")
    # The jobs API shares the per-key (or per-address) rate limit of the inference routes.
    keys.limit(request, key)


def require_beta(request: Request) -> None:
    version = request.headers.get("cdf-version", "").strip().lower()
    # `beta`, or a dated release of it such as `20230101-beta`.
    if version.rsplit("-", 1)[-1] not in CDF_VERSIONS:
        raise BadRequest("this endpoint is available only with the header `cdf-version: beta`")


def int_id(value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{what} must be an integer, got {value!r}") from None
    if n < 1:
        raise BadRequest(f"{what} must be positive")
    return n


def parse(model: type[M], body: Any) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise BadRequest(validation_message(e)) from None


def query_limit(request: Request, default: int = 100, maximum: int = 1000) -> int:
    """`?limit=N`: an integer 1..maximum (400 naming `limit` otherwise)."""
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise BadRequest(f"limit must be an integer from 1 to {maximum}, got {raw!r}") from None
    if not 1 <= n <= maximum:
        raise BadRequest(f"limit must be from 1 to {maximum}, got {n}")
    return n


_CURSOR_PREFIX = "cvs1:"


def encode_cursor(last_id: int) -> str:
    """An opaque cursor: the next page starts below `last_id`."""
    raw = f"{_CURSOR_PREFIX}{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def query_cursor(request: Request) -> int | None:
    """`?cursor=C` from a previous page's `nextCursor` (400 naming `cursor` otherwise)."""
    raw = request.query_params.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(text)
        n = int(text.removeprefix(_CURSOR_PREFIX))
        if n < 1:
            raise ValueError(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest(
            f"cursor {raw!r} is not a cursor this server gave out: pass a nextCursor as is"
        ) from None
    return n

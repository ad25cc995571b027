"""One error classification, two renderers: the hosted `{"message"}` shape and the data
platform's `{"error": {"code", "message", ...}}`. Status, message, headers and whether to
log are decided once, in `classify`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cvserve.errors import CVServeError, Unauthorized
from cvserve.http.responses import json_response

log = logging.getLogger("cvserve.http")

# The hosted API's own spelling of its 401 (no key) and 403 (wrong key) body.
UNAUTHORIZED_BODY = {"Message": "User is not authorized to access this resource"}


class PlatformError(CVServeError):
    """An error whose platform body carries extra fields (`missing`, `duplicated`)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message, status=status)
        self.extra = extra


@dataclass(frozen=True)
class ErrorReply:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    unauthorized: bool = False  # the hosted API answers these in its own fixed body


def validation_text(errors: Any) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def classify(exc: BaseException, path: str) -> ErrorReply:
    """What any exception raised while serving `path` answers, logged where it is a fault."""
    if isinstance(exc, CVServeError):
        if exc.status >= 500 and exc.status not in (503, 504):
            log.error("server fault on %s: %s", path, exc.message)
        headers = {}
        retry_after = getattr(exc, "retry_after_s", None)  # 503 Overloaded, 429 RateLimited
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        extra = exc.extra if isinstance(exc, PlatformError) else {}
        return ErrorReply(
            exc.status, exc.message, headers, extra, unauthorized=isinstance(exc, Unauthorized)
        )
    if isinstance(exc, RequestValidationError):
        return ErrorReply(400, validation_text(exc.errors()))
    if isinstance(exc, StarletteHTTPException):
        return ErrorReply(exc.status_code, str(exc.detail))
    log.error("unhandled error on %s", path, exc_info=exc)
    return ErrorReply(500, "internal server error")


def hosted_response(reply: ErrorReply) -> Response:
    if reply.unauthorized:
        return json_response(UNAUTHORIZED_BODY, status=reply.status)
    return json_response({"message": reply.message}, status=reply.status, headers=reply.headers)


def platform_response(reply: ErrorReply) -> Response:
    body = {"error": {"code": reply.status, "message": reply.message, **reply.extra}}
    return json_response(body, status=reply.status, headers=reply.headers)

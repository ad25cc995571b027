"""Request ids, structured access logs, and each request's deadline.

- Every response carries `X-Request-ID` (the caller's, when it sends a sane one; else a
  fresh uuid4 hex). Log records made while serving a request carry it as `request_id`.
- One JSON access-log line per request on the `cvserve.access` logger: request id, method,
  path WITHOUT the query string (`api_key` travels there), route, status, duration.
- The request's deadline (settings.request_timeout_s) starts here; the engine spends what
  is left of it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cvserve.engine import reset_deadline, start_deadline
from cvserve.http.responses import json_response

if TYPE_CHECKING:
    from cvserve.http.state import AppState

REQUEST_ID: ContextVar[str] = ContextVar("cvserve_request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_log = logging.getLogger("cvserve.access")


# -- logging -----------------------------------------------------------------------------
class RequestIdFilter(logging.Filter):
    """Adds `request_id` (or '-') to every record, so formats may use %(request_id)s."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "info") -> None:
    """Root logging for `cvserve serve`: one stderr handler whose lines carry request ids."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# -- the middleware ----------------------------------------------------------------------
class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would break streaming and context variables)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.metrics = state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SANE_ID.match(incoming) else uuid.uuid4().hex
        id_token = REQUEST_ID.set(request_id)
        deadline_token = start_deadline(self.state.settings.request_timeout_s)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Unhandled: answer here so the 500 carries the request id (the outer error
            # middleware sees the response started, logs the exception and re-raises).
            if status == 0:
                await json_response(
                    {"message": "internal server error", "request_id": request_id},
                    status=500,
                )(scope, receive, send_with_id)
            status = status or 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "?")
            self.metrics.observe_request(method, route, status, elapsed)
            _log_access(request_id, method, scope, route, status, elapsed)
            REQUEST_ID.reset(id_token)
            reset_deadline(deadline_token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _log_access(
    request_id: str, method: str, scope: Scope, route: str, status: int, elapsed: float
) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    line = {
        "request_id": request_id,
        "method": method,
        "path": scope.get("path", ""),  # never the query string: api_key lives there
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
        "client": client[0] if client else None,
    }
    access_log.info(orjson.dumps(line).decode())


def install(app: Any, state: AppState) -> None:
    """Called by create_app: the request-context middleware."""
    app.add_middleware(RequestContextMiddleware, state=state)

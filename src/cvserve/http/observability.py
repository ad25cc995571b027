"""Request ids, structured access logs, and Prometheus metrics at GET /metrics.

- Every response carries `X-Request-ID` (the caller's, when it sends a sane one; else a
  fresh uuid4 hex). Log records made while serving a request carry it as `request_id`.
- One JSON access-log line per request on the `cvserve.access` logger: request id, method,
  path WITHOUT the query string (`api_key` travels there), route, status, duration.
- The request's deadline (settings.request_timeout_s) starts here; the inference
  pipeline spends what is left of it.
- Metrics live in a per-app CollectorRegistry, never the process-global one: requests by
  route and status, latency by route, per-model queue wait, inference time, outcomes,
  queue depth and requests running, loaded models, and jobs by status when the jobs
  service (state.extras["jobs"], with `.queue.counts()`) is present.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import orjson
from fastapi import APIRouter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cvserve.http.pipeline import admission, reset_deadline, start_deadline
from cvserve.http.responses import json_response
from cvserve.http.state import AppState

REQUEST_ID: ContextVar[str] = ContextVar("cvserve_request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_log = logging.getLogger("cvserve.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METRICS_KEY = "metrics"


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


# -- metrics -----------------------------------------------------------------------------
class Metrics:
    def __init__(self, state: AppState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cvserve_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cvserve_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "cvserve_inference_duration_seconds",
            "Worker time per image (decode, predict, render) by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "cvserve_queue_wait_seconds",
            "Time an admitted image waited for a worker, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "cvserve_inference",
            "Inference jobs by model and outcome (ok, error, deadline, cancelled, overloaded)",
            ["model", "outcome"],
            registry=r,
        )
        r.register(_StateCollector(state))
        admission(state).listeners.append(self.observe_inference)

    def observe_inference(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        self.outcomes.labels(model_id, outcome).inc()
        if outcome in ("ok", "error", "deadline"):
            self.queue_wait.labels(model_id).observe(queued_s)
            self.inference.labels(model_id).observe(run_s)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read at scrape time from the live state."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily(
            "cvserve_model_queue_depth", "Admitted images waiting for a worker", labels=["model"]
        )
        running = GaugeMetricFamily(
            "cvserve_model_in_flight", "Images being processed on a worker", labels=["model"]
        )
        for model_id, (q, r) in sorted(admission(self.state).snapshot().items()):
            queued.add_metric([model_id], q)
            running.add_metric([model_id], r)
        yield queued
        yield running
        loaded = GaugeMetricFamily("cvserve_models_loaded", "Models loaded in memory")
        loaded.add_metric([], sum(1 for m in self.state.store.ids() if self.state.store.loaded(m)))
        yield loaded
        counts = _job_counts(self.state)
        if counts is not None:
            jobs = GaugeMetricFamily("cvserve_jobs", "Segment jobs by status", labels=["status"])
            for status in ("Queued", "Running", "Completed", "Failed"):
                jobs.add_metric([status], counts.get(status, 0))
            for status, n in sorted(counts.items()):
                if status not in ("Queued", "Running", "Completed", "Failed"):
                    jobs.add_metric([status], n)
            yield jobs


def _job_counts(state: AppState) -> dict[str, int] | None:
    """The jobs module's hook: state.extras["jobs"].queue.counts() -> {status: n}."""
    service = state.extras.get("jobs")
    counts = getattr(getattr(service, "queue", None), "counts", None)
    if not callable(counts):
        return None
    try:
        return {str(k): int(v) for k, v in counts().items()}
    except Exception:  # a scrape must not fail because the jobs database is busy
        return None


def metrics(state: AppState) -> Metrics:
    found = state.extras.get(METRICS_KEY)
    if found is None:
        found = Metrics(state)
        state.extras[METRICS_KEY] = found
    return found  # type: ignore[return-value]


# -- the middleware ----------------------------------------------------------------------
class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would break streaming and context variables)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics(state)

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


# -- the router --------------------------------------------------------------------------
def build_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["system"])
    registry = metrics(state)

    @router.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        state.keys.check(request)
        # Off the event loop: the jobs gauge reads SQLite, which may wait on a writer.
        body = await asyncio.to_thread(registry.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router

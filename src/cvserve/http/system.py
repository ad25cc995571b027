"""Liveness (/healthz), readiness (/readiness), server info and the Prometheus metrics."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from cvserve import __version__
from cvserve.http.responses import json_response
from cvserve.http.state import AppState


def build_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["system"])
    server_id = str(uuid.uuid4())

    @router.get(
        "/healthz",
        summary="Liveness: the process answers",
        description="200 while the server runs, loading or not; no API key.",
    )
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @router.get(
        "/readiness",
        summary="Readiness: the preloaded models are loaded and the job store is open",
        description='503 `{"status": "starting", "waiting_for": [...]}` (or `"failed"`, '
        'with `"failed": {model: reason}`, when a preload failed) until then, 200 '
        '`{"status": "ready"}` after; no API key.',
    )
    async def readiness() -> Response:
        ready = state.engine.readiness()
        loading, failed = ready.loading, dict(ready.failed)
        waiting = [f"models: {', '.join(loading)}"] if loading else []
        if not state.jobs_ready.is_set():
            waiting.append("job store")
        if failed:
            body = {"status": "failed", "waiting_for": waiting, "failed": failed}
            return json_response(body, status=503)
        if waiting:
            return json_response({"status": "starting", "waiting_for": waiting}, status=503)
        return json_response({"status": "ready"})

    @router.get("/info")
    async def info() -> Response:
        return json_response({"name": "cvserve", "version": __version__, "uuid": server_id})

    @router.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics(request: Request) -> Response:
        state.keys.check(request)
        body = await state.metrics.exposition()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router

"""Health, server info and the Prometheus metrics."""

from __future__ import annotations

import asyncio
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

    @router.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @router.get("/info")
    async def info() -> Response:
        return json_response({"name": "cvserve", "version": __version__, "uuid": server_id})

    @router.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics(request: Request) -> Response:
        state.keys.check(request)
        # Off the event loop: the jobs gauge reads SQLite, which may wait on a writer.
        body = await asyncio.to_thread(state.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router

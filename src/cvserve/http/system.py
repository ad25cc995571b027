"""Health and server info."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
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

    return router

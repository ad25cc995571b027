"""Builds the ASGI app from a Settings object. Nothing global at import time."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from cvserve import __version__
from cvserve.errors import CVServeError
from cvserve.http import docs, files, hosted, infer, observability, segment, streams, system, web
from cvserve.http.errors import classify, hosted_response
from cvserve.http.state import AppState, build_state
from cvserve.settings import Settings

__all__ = ["build_state", "create_app"]

log = logging.getLogger("cvserve.http")

# Order matters: the catch-all hosted route `/{dataset}/{version}` comes last.
_DOORS = (system, infer, files, segment, web, docs, streams, hosted)


def create_app(settings: Settings, state: AppState | None = None) -> FastAPI:
    state = state or build_state(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # In the background: /readiness answers 503 until they are loaded.
        state.engine.preload(settings.preload)
        # Opens the job store and resumes jobs a crashed server left running.
        await asyncio.to_thread(state.jobs.start)
        state.jobs_ready.set()
        await state.streams.start()  # resumes the streams a stopped server left running
        try:
            yield
        finally:
            state.jobs_ready.clear()
            await state.streams.close()
            try:
                await asyncio.to_thread(state.jobs.stop)
            except Exception:
                log.exception("stopping the job workers failed")
            await asyncio.to_thread(state.engine.close)

    app = FastAPI(
        title="cvserve",
        version=__version__,
        description="Self-hosted computer-vision inference server speaking the hosted API.",
        lifespan=lifespan,
        docs_url=None,  # cvserve.http.docs serves /docs with its assets, no CDN
        redoc_url=None,
    )
    app.state.cvserve = state
    routers = [door.build_router(state) for door in _DOORS]
    for router in routers:
        app.include_router(router)
    # Innermost (added first): the hosted route's requests skip the router.
    routes = [r for r in app.routes if hasattr(r, "path")] + [r for x in routers for r in x.routes]
    app.add_middleware(hosted.HostedFastPath, state=state, routes=routes)
    app.add_middleware(CollapseSlashes)
    observability.install(app, state)  # request ids, access log, deadline
    _install_error_handlers(app)
    _document_400_not_422(app)
    return app


def _document_400_not_422(app: FastAPI) -> None:
    """Validation errors answer 400 (see the handlers below), so the document says so."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for path in spec.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = spec.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


class CollapseSlashes:
    """ASGI middleware: `//seg/1` is `/seg/1`. The official package's InstanceSegmentation-
    and SemanticSegmentationModel build `f"{local}/{project}/{version}"`, and `local` is
    documented with a trailing slash ("http://localhost:9001/")."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "//" in scope.get("path", ""):
            scope = dict(scope)
            scope["path"] = re.sub(r"/{2,}", "/", scope["path"])
            if isinstance(scope.get("raw_path"), bytes):
                scope["raw_path"] = re.sub(rb"/{2,}", b"/", scope["raw_path"])
        await self.app(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    async def hosted_error(request: Request, exc: Exception) -> Response:
        return hosted_response(classify(exc, request.url.path))

    for kind in (CVServeError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, hosted_error)

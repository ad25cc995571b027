"""Builds the ASGI app from a Settings object. Nothing global at import time."""

from __future__ import annotations

import importlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from cvserve import __version__
from cvserve.errors import CVServeError, Unauthorized
from cvserve.http import observability
from cvserve.http.auth import UNAUTHORIZED_BODY, KeyChecker
from cvserve.http.ratelimit import RateLimiter
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.settings import Settings

log = logging.getLogger("cvserve.http")

# Each module exposes build_router(state) -> APIRouter. Order matters: the catch-all
# hosted route `/{dataset}/{version}` comes last.
_ROUTER_MODULES = (
    "cvserve.http.system",
    "cvserve.http.infer",
    "cvserve.http.observability",
    "cvserve.http.vision",
    "cvserve.http.web",
    "cvserve.http.hosted",
)


def build_state(settings: Settings, store: ModelStore | None = None) -> AppState:
    options = RuntimeOptions(
        lanes=settings.lanes(),
        threads_per_lane=settings.threads_per_lane(),
        wide_threads=settings.wide_threads(),
    )
    store = store or ModelStore(settings.store_dir, options)
    return AppState(
        settings=settings,
        store=store,
        keys=KeyChecker(settings.api_keys, RateLimiter(settings.rate_limit_per_minute)),
        executor=ThreadPoolExecutor(
            max_workers=max(2, settings.lanes() + 2), thread_name_prefix="cvserve-infer"
        ),
        loader=ThreadPoolExecutor(max_workers=2, thread_name_prefix="cvserve-load"),
    )


def create_app(settings: Settings, state: AppState | None = None) -> FastAPI:
    state = state or build_state(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        for hook in state.startup:
            await hook()
        try:
            yield
        finally:
            for hook in reversed(state.shutdown):
                try:
                    await hook()
                except Exception:  # keep shutting down the rest
                    log.exception("shutdown hook failed")
            state.executor.shutdown(wait=True, cancel_futures=False)
            state.loader.shutdown(wait=False, cancel_futures=True)
            state.store.close()

    app = FastAPI(
        title="cvserve",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.cvserve = state
    app.add_middleware(CollapseSlashes)
    observability.install(app, state)  # request ids, access log, deadline, metrics
    _install_error_handlers(app)
    for module_name in _ROUTER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # optional part not present in this build
            raise
        app.include_router(module.build_router(state))
    return app


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


def error_response(exc: CVServeError) -> Response:
    if isinstance(exc, Unauthorized):
        return json_response(UNAUTHORIZED_BODY, status=403)
    headers = {}
    retry_after = getattr(exc, "retry_after_s", None)  # 503 Overloaded, 429 RateLimited
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return json_response({"message": exc.message}, status=exc.status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CVServeError)
    async def _cvserve_error(request: Request, exc: CVServeError) -> Response:
        if exc.status >= 500 and exc.status not in (503, 504):
            log.error("server fault on %s: %s", request.url.path, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
            parts.append(
                f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", "invalid")
            )
        return json_response({"message": "; ".join(parts) or "invalid request"}, status=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return json_response({"message": str(exc.detail)}, status=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return json_response({"message": "internal server error"}, status=500)


def get_state(app: Any) -> AppState:
    return app.state.cvserve

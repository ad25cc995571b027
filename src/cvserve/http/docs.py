"""`/docs`: Swagger UI over `/openapi.json`, its script, stylesheet and icon served by this
server from the `fastapi-offline` wheel (MIT), never from a CDN: the page works on an
air-gapped machine, like the web page at `/`."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import Response

from cvserve.errors import ModelNotFound
from cvserve.http.state import AppState

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
PREFIX = "/_docs"  # like /_web/: a leading underscore never starts a model id


@lru_cache(maxsize=len(ASSETS))
def _load(name: str) -> tuple[bytes, str]:
    # The wheel's files do not change while the server runs: read each once.
    data = resources.files("fastapi_offline").joinpath("static").joinpath(name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def build_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["docs"], include_in_schema=False)

    @router.get("/docs")
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="cvserve - API docs",
            swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/favicon.png",
        )

    @router.get(PREFIX + "/{name}")
    async def asset(name: str, request: Request) -> Response:
        media = ASSETS.get(name)
        if media is None:
            raise ModelNotFound(f"no such docs asset: {name}")
        data, etag = _load(name)
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=media, headers=headers)

    return router

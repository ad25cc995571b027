"""The web page at `/`: pick a model, drop an image or use the webcam, see what it sees.

Plain HTML/JS/CSS from `cvserve/web/` (no build step, no CDN). Assets live under `/_web/`:
a leading underscore can never start a model id, so they never shadow the hosted route.
`/_web/config.json` tells the page whether API keys are required, where SAM prompts go, and
the annotator's palette; `/models` gives each model's classes, keypoint names and skeleton.
The page copies none of it, so what it draws matches the server's `format=image`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from cvserve import __version__
from cvserve.errors import ModelNotFound
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.models.base import InferParams, Task
from cvserve.render.annotate import KEYPOINT_COLOR_OFFSET, PALETTE

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    # The streams page (its own files: the image page's app.js stays as it is).
    "streams.html": "text/html; charset=utf-8",
    "streams.js": "text/javascript; charset=utf-8",
    "streams.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Everything the page needs comes from this server; camera frames never leave the page
# except to it. `blob:`/`data:` images are the user's own picks and decoded masks.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


@lru_cache(maxsize=16)
def _load(name: str, mtime_ns: int) -> tuple[bytes, str]:
    data = (WEB_DIR / name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def asset(name: str, request: Request) -> Response:
    media = ASSETS.get(name)
    path = WEB_DIR / name
    if media is None or not path.is_file():
        raise ModelNotFound(f"no such page asset: {name}")
    data, etag = _load(name, path.stat().st_mtime_ns)
    headers = {"ETag": etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = CSP
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media, headers=headers)


def _slider_defaults() -> dict[str, dict[str, int]]:
    """The hosted route's own defaults per task, in the page's percent sliders."""
    out: dict[str, dict[str, int]] = {}
    for task in Task:
        d = InferParams.defaults_for(task)
        out[task.value] = {"confidence": round(d.confidence * 100), "overlap": round(d.iou * 100)}
    return out


def build_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["web"], include_in_schema=False)

    @router.get("/")
    async def index(request: Request) -> Response:
        return asset("index.html", request)

    @router.get("/favicon.ico")
    async def favicon() -> Response:
        return RedirectResponse("/_web/favicon.svg", status_code=308)

    @router.get("/_web/config.json")
    async def config() -> Response:
        return json_response(
            {
                "name": "cvserve",
                "version": __version__,
                "keys_required": state.keys.required,
                "sam_route": "/api/v1/projects/{project}/context/vision/segment/sync",
                # Class i (box, mask, label, semantic id) is palette[i % len(palette)];
                # keypoint k is palette[(k + keypoint_color_offset) % len(palette)].
                "palette": PALETTE.tolist(),
                "keypoint_color_offset": KEYPOINT_COLOR_OFFSET,
                "defaults": _slider_defaults(),
            }
        )

    @router.get("/_web/{name}")
    async def static(name: str, request: Request) -> Response:
        return asset(name, request)

    return router

"""/streams: video streams with tracking (SPEC.md section 9). A thin door over StreamManager.

Keys as on the hosted route (`state.keys.check`: a missing key 401, a wrong one 403, the
hosted body), errors in the hosted `{"message"}` shape; events as Server-Sent Events, frames as JPEG and MJPEG.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cvserve.errors import BadRequest
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.streams.feeds import MJPEG_BOUNDARY
from cvserve.streams.metrics import StreamsCollector
from cvserve.streams.spec import StreamRequest

_ERROR = {"content": {"application/json": {"example": {"message": "why"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request: source refused, bad params, tracker on a non-detector"}
    | _ERROR,
    401: {"description": "Missing API key (when keys are configured)"},
    403: {"description": "Wrong API key"},
    404: {"description": "Unknown stream or model"} | _ERROR,
    429: {"description": "Too many streams (--max-streams)"} | _ERROR,
    501: {"description": "The streams extra is not installed"} | _ERROR,
}
_STREAM_EXAMPLE = {
    "id": "s_0123456789abcdef",
    "source": "rtsp://***@cam.local/1",
    "model_id": "coco-detect/1",
    "tracker": "bytetrack",
    "status": "running",
    "error": None,
    "created": 1765000000000,
    "updated": 1765000001000,
    "stats": {
        "frames_read": 120, "frames_inferred": 100, "frames_dropped": 20, "fps_in": 25.0,
        "fps_out": 20.8, "latency_ms": {"p50": 40.1, "p95": 61.0}, "reconnects": 0,
    },
    "counts": {"lines": {"door": {"in": {"person": 3}, "out": {}}}, "zones": {}},
}  # fmt: skip
_OBJECT = {"content": {"application/json": {"example": _STREAM_EXAMPLE}}}


def build_router(state: AppState) -> APIRouter:
    def check_key(request: Request) -> None:
        state.keys.check(request)

    # A router dependency: the key is checked before the body is parsed (401 before 400).
    router = APIRouter(tags=["streams"], dependencies=[Depends(check_key)])
    manager = state.streams
    with contextlib.suppress(ValueError):  # this state's app was built before: it is in
        state.metrics.registry.register(StreamsCollector(manager))

    @router.post(
        "/streams",
        status_code=201,
        summary="Start a video stream",
        responses={201: {"description": "The stream object"} | _OBJECT, **_ERRORS},
    )
    async def start_stream(body: StreamRequest) -> Response:
        return json_response(await manager.create(body), status=201)

    @router.get("/streams", summary="List streams", responses={**_ERRORS})
    async def list_streams() -> Response:
        return json_response({"items": await manager.objects()})

    @router.get("/streams/{stream_id}", summary="A stream", responses={200: _OBJECT, **_ERRORS})
    async def get_stream(stream_id: str) -> Response:
        return json_response(await manager.get(stream_id))

    @router.delete(
        "/streams/{stream_id}",
        summary="Stop a stream (any state); answers its final object",
        responses={200: _OBJECT, **_ERRORS},
    )
    async def stop_stream(stream_id: str) -> Response:
        return json_response(await manager.stop(stream_id))

    @router.get(
        "/streams/{stream_id}/events",
        summary="Server-Sent Events: `frame` per inferred frame (id: its index), `status`",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS},
    )
    async def stream_events(
        stream_id: str,
        request: Request,
        from_: int | None = Query(None, alias="from", ge=0, description="Replay from frame N"),
    ) -> Response:
        start = from_
        last = request.headers.get("last-event-id")
        if start is None and last:
            try:
                start = int(last) + 1
            except ValueError:
                raise BadRequest(f"Last-Event-ID must be a frame index, got {last!r}") from None
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        feed = await manager.events(stream_id, start)
        return StreamingResponse(feed, media_type="text/event-stream", headers=headers)

    @router.get(
        "/streams/{stream_id}/frame.jpg",
        summary="The newest annotated frame",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **_ERRORS},
    )
    async def stream_frame(stream_id: str) -> Response:
        jpeg = await manager.frame(stream_id)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @router.get(
        "/streams/{stream_id}/mjpeg",
        summary="Annotated frames as multipart/x-mixed-replace (MJPEG)",
        response_class=StreamingResponse,
        responses={200: {"content": {"multipart/x-mixed-replace": {}}}, **_ERRORS},
    )
    async def stream_mjpeg(stream_id: str) -> Response:
        media = f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}"
        feed = await manager.mjpeg(stream_id)
        return StreamingResponse(feed, media_type=media, headers={"Cache-Control": "no-cache"})

    return router

"""JSON routes of the official `inference-sdk` (default mode): /infer/{task}, /model/*."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cvserve.encoders import HostedAnswer, json_array
from cvserve.engine import EngineAPI, LoadedModel
from cvserve.errors import BadRequest, ModelNotFound
from cvserve.http.body import read_json_object
from cvserve.http.inputs import fetch_url
from cvserve.http.openapi import INFER_DOC, MODEL_ID_BODY
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.images import decode_base64
from cvserve.models.base import ModelInfo, Task
from cvserve.params import parse_infer

ROUTE_TASKS = {
    "object_detection": Task.OBJECT_DETECTION,
    "instance_segmentation": Task.INSTANCE_SEGMENTATION,
    "classification": Task.CLASSIFICATION,
    "keypoints_detection": Task.KEYPOINT_DETECTION,
    "semantic_segmentation": Task.SEMANTIC_SEGMENTATION,
}
MAX_IMAGES_PER_REQUEST = 16


async def _image_bytes(state: AppState, image: Any) -> bytes:
    if isinstance(image, str):
        return decode_base64(image)
    if not isinstance(image, dict):
        raise BadRequest('field image must be {"type": "base64", "value": ...} or a list of them')
    kind, value = image.get("type"), image.get("value")
    if not isinstance(value, str):
        raise BadRequest("field image.value must be a string")
    if kind == "base64":
        return decode_base64(value)
    if kind == "url":
        return await fetch_url(state, value)
    if kind == "numpy":  # a pickled array: unpickling runs the sender's code, so never
        raise BadRequest(
            "image type 'numpy' (a serialized array) is not accepted and never unpickled; "
            "use base64 (of a JPEG, PNG, WebP, BMP, TIFF or GIF file) or url"
        )
    raise BadRequest(f"image type {kind!r} is not accepted; use base64 or url")


def _model_id(body: dict[str, Any]) -> str:
    model_id = body.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise BadRequest("field model_id is required (DATASET/VERSION)")
    return model_id


async def _registry(engine: EngineAPI) -> dict[str, Any]:
    """The official SDK's view: the loaded models, each with its task and input size."""
    held = {m.model_id for m in await engine.loaded()}
    models = []
    for info in engine.models():
        if info.model_id not in held:
            continue
        models.append(
            {
                "model_id": info.model_id,
                "task_type": info.task.value,
                "batch_size": 1,
                "input_height": (info.input_size or (0, 0))[1],
                "input_width": (info.input_size or (0, 0))[0],
            }  # fmt: skip
        )
    return {"models": models}


def _listed(info: ModelInfo, held: dict[str, LoadedModel]) -> dict[str, Any]:
    """A /models entry; a loaded model's also says what its load took (time, memory)."""
    entry = dict(info.as_dict(), loaded=info.model_id in held)
    loaded = held.get(info.model_id)
    if loaded is not None:
        entry["load_seconds"] = round(loaded.load_seconds, 4)
        entry["resident_bytes"] = loaded.resident_bytes
        entry["pinned"] = loaded.pinned
    return entry


def build_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["inference-sdk"])
    engine = state.engine

    @router.post("/infer/{task_route}", **INFER_DOC)
    async def infer(task_route: str, request: Request) -> Response:
        task = ROUTE_TASKS.get(task_route)
        if task is None:
            raise ModelNotFound(
                f"unknown task route /infer/{task_route}; known: {', '.join(ROUTE_TASKS)}"
            )
        body = await read_json_object(request, state.settings.max_body_bytes)
        state.keys.check(request, body.get("api_key"))
        model_id = _model_id(body)
        info = engine.model_info(model_id)
        if info.task is not task:
            raise BadRequest(f"model {model_id} is a {info.task.value} model, not {task.value}")
        params, render = parse_infer(body, task)
        images = body.get("image")
        if images is None:
            raise BadRequest("field image is required")
        many = isinstance(images, list)
        items = images if many else [images]
        if not items or len(items) > MAX_IMAGES_PER_REQUEST:
            raise BadRequest(f"send between 1 and {MAX_IMAGES_PER_REQUEST} images per request")
        payloads = [await _image_bytes(state, item) for item in items]
        encoder = HostedAnswer(render, visualization_key=True)
        answers = await asyncio.gather(
            *(engine.infer(model_id, data, params, encoder) for data in payloads)
        )
        content = json_array(answers) if many else answers[0].content
        return Response(content, media_type="application/json")

    @router.get("/model/registry")
    async def registry(request: Request) -> Response:
        state.keys.check(request)
        return json_response(await _registry(engine))

    @router.post("/model/add", summary="Load a model", openapi_extra={"requestBody": MODEL_ID_BODY})
    async def add(request: Request) -> Response:
        body = await read_json_object(request, state.settings.max_body_bytes)
        state.keys.check(request, body.get("api_key"))
        await engine.load(_model_id(body))
        return json_response(await _registry(engine))

    @router.post(
        "/model/remove", summary="Unload a model", openapi_extra={"requestBody": MODEL_ID_BODY}
    )
    async def remove(request: Request) -> Response:
        body = await read_json_object(request, state.settings.max_body_bytes)
        state.keys.check(request, body.get("api_key"))
        await engine.unload(_model_id(body))
        return json_response(await _registry(engine))

    @router.post("/model/clear")
    async def clear(request: Request) -> Response:
        state.keys.check(request)
        await engine.clear()
        return json_response(await _registry(engine))

    @router.get("/models")
    async def list_models(request: Request) -> Response:
        state.keys.check(request)
        held = {m.model_id: m for m in await engine.loaded()}
        return json_response({"models": [_listed(i, held) for i in engine.models()]})

    return router

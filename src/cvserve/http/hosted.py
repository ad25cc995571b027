"""POST|GET /{dataset}/{version}: the hosted inference route, for every task."""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cvserve.http.inputs import image_from_request
from cvserve.http.pipeline import decode_and_predict, get_model, model_info, run_in_worker
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.models.base import InferParams, Model
from cvserve.params import RenderOptions, parse_hosted
from cvserve.render.annotate import annotated_jpeg
from cvserve.settings import Settings
from cvserve.wire.hosted import prediction_json


def _infer_and_render(
    model: Model, data: bytes, params: InferParams, render: RenderOptions, settings: Settings
) -> tuple[dict | None, bytes | None]:
    """Worker-thread body: decode, predict, and build the JSON and/or annotated JPEG."""
    t0 = time.perf_counter()
    image, prediction, _ = decode_and_predict(
        model, data, params, settings, pixels=render.format != "json"
    )
    jpeg = None
    if render.format != "json":
        jpeg = annotated_jpeg(image, prediction, params, render)
    body = None
    if render.format != "image":
        body = prediction_json(
            prediction,
            render,
            confidence=params.confidence,
            keypoint_confidence=params.keypoint_confidence,
            elapsed_s=time.perf_counter() - t0,
        )
        if jpeg is not None:
            body["visualization"] = base64.b64encode(jpeg).decode("ascii")
    return body, jpeg


def build_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["hosted"])

    async def hosted_inference(dataset: str, version: str, request: Request) -> Response:
        state.keys.check(request)
        model_id = f"{dataset}/{version}"
        info = model_info(state, model_id)
        params, render = parse_hosted(request.query_params, info.task)
        data = await image_from_request(request, state)
        model = await get_model(state, model_id)
        body, jpeg = await run_in_worker(
            state, model_id, _infer_and_render, model, data, params, render, state.settings
        )
        if render.format == "image":
            return Response(jpeg, media_type="image/jpeg")
        return json_response(body)

    # One handler, two operations: GET takes ?image=URL, POST a body (distinct OpenAPI ids).
    for method in ("POST", "GET"):
        router.add_api_route(
            "/{dataset}/{version}",
            hosted_inference,
            methods=[method],
            operation_id=f"hosted_inference_{method.lower()}",
        )
    return router

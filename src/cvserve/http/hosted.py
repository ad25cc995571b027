"""POST|GET /{dataset}/{version}: the hosted inference route, for every task."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cvserve.http.inputs import image_from_request
from cvserve.http.openapi import HOSTED_GET, HOSTED_POST
from cvserve.http.responses import json_response
from cvserve.http.state import AppState
from cvserve.params import parse_hosted


def build_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["hosted"])
    engine = state.engine

    async def hosted_inference(dataset: str, version: str, request: Request) -> Response:
        state.keys.check(request)
        model_id = f"{dataset}/{version}"
        info = engine.model_info(model_id)
        params, render = parse_hosted(request.query_params, info.task)
        data = await image_from_request(request, state)
        rendered = await engine.infer(model_id, data, params, render)
        if render.format == "image":
            return Response(rendered.jpeg, media_type="image/jpeg")
        return json_response(rendered.body)

    # One handler, two operations: GET takes ?image=URL, POST a body (distinct OpenAPI ids).
    for method, doc in (("POST", HOSTED_POST), ("GET", HOSTED_GET)):
        router.add_api_route(
            "/{dataset}/{version}",
            hosted_inference,
            methods=[method],
            operation_id=f"hosted_inference_{method.lower()}",
            **doc,
        )
    return router

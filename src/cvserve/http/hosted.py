"""POST|GET /{dataset}/{version}: the hosted inference route, for every task.

The route is registered with FastAPI (its OpenAPI operations, and every request FastAPI
routes to it), and `HostedFastPath` hands the requests that can only be this route straight
to the same handler: the hosted route is the catch-all that comes last, so FastAPI would
first try every other route and solve the handler's parameters for each image (about half
of the event loop's time per request, bench/README.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from cvserve.encoders import HostedAnswer
from cvserve.http.errors import classify, hosted_response
from cvserve.http.inputs import image_from_request
from cvserve.http.openapi import HOSTED_GET, HOSTED_POST
from cvserve.http.state import AppState
from cvserve.params import parse_hosted

PATH = "/{dataset}/{version}"
Handler = Callable[[str, str, Request], Awaitable[Response]]


def make_handler(state: AppState) -> Handler:
    engine = state.engine

    async def hosted_inference(dataset: str, version: str, request: Request) -> Response:
        state.keys.check(request)
        model_id = f"{dataset}/{version}"
        info = engine.model_info(model_id)
        params, render = parse_hosted(request.query_params, info.task)
        data = await image_from_request(request, state)
        answer = await engine.infer(model_id, data, params, HostedAnswer(render))
        return Response(answer.content, media_type=answer.media_type)

    return hosted_inference


def build_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["hosted"])
    hosted_inference = make_handler(state)
    # One handler, two operations: GET takes ?image=URL, POST a body (distinct OpenAPI ids).
    for method, doc in (("POST", HOSTED_POST), ("GET", HOSTED_GET)):
        router.add_api_route(
            PATH,
            hosted_inference,
            methods=[method],
            operation_id=f"hosted_inference_{method.lower()}",
            **doc,
        )
    return router


def first_segments(routes: Iterable[BaseRoute]) -> frozenset[str]:
    """The literal first path segments of every route but the hosted one: a two-segment
    path starting with one of them may be another route's, so FastAPI decides it."""
    taken = set()
    for route in routes:
        path = getattr(route, "path", "")
        if path == PATH:
            continue
        head = path.lstrip("/").split("/", 1)[0]
        if "{" in head:
            raise ValueError(f"route {path} would shadow the hosted route {PATH}")
        taken.add(head)
    return frozenset(taken)


def hosted_route(routes: Iterable[BaseRoute], method: str) -> APIRoute:
    for route in routes:
        if isinstance(route, APIRoute) and route.path == PATH and method in (route.methods or ()):
            return route
    raise LookupError(f"no {method} {PATH} route")


class HostedFastPath:
    """ASGI: a GET or POST to `/{dataset}/{version}` whose first segment no other route
    starts with goes straight to the hosted handler, with the scope FastAPI's router would
    give it (`route` labels its metrics and access log) and the hosted error bodies."""

    def __init__(self, app: ASGIApp, state: AppState, routes: list[BaseRoute]) -> None:
        self.app = app
        self.handler = make_handler(state)
        self.taken = first_segments(routes)
        self.routes = {m: hosted_route(routes, m) for m in ("GET", "POST")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("method", "")) if scope["type"] == "http" else None
        parts = _two_segments(scope.get("path", "")) if route is not None else None
        if route is None or parts is None or parts[0] in self.taken:
            await self.app(scope, receive, send)
            return
        dataset, version = parts
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {"dataset": dataset, "version": version}
        try:
            response = await self.handler(dataset, version, Request(scope, receive))
        except Exception as exc:  # the hosted route's error handlers (see app.py)
            response = hosted_response(classify(exc, scope["path"]))
        await response(scope, receive, send)


def _two_segments(path: str) -> tuple[str, str] | None:
    """`/a/b` -> (a, b); anything else (a trailing slash, one or three segments): None."""
    if path.count("/") != 2 or not path.startswith("/"):
        return None
    dataset, _, version = path[1:].partition("/")
    return (dataset, version) if dataset and version else None

"""The hosted route's fast path: `/{dataset}/{version}` requests reach the hosted handler
without FastAPI's router, with the same answers, errors, request ids and metrics labels,
and every path another route might own still goes through FastAPI."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from cvserve.http import hosted
from tests.conftest import add_model, build_client, make_store
from tests.support.synthetic import constant_model, png_bytes, ultralytics_meta, yolo_head

B64 = base64.b64encode(png_bytes(np.zeros((48, 64, 3), np.uint8)))
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("fastpath")
    store = make_store(tmp)
    head = yolo_head([(320, 320, 100, 100)], [[0.9]], candidates=4)
    meta = ultralytics_meta("detect", ["thing"])
    add_model(store, "ok/1", constant_model(tmp / "m.onnx", [head], metadata=meta))
    with build_client(make_store(tmp)) as c:
        yield c


def _fast_path(client: TestClient) -> hosted.HostedFastPath:
    """The middleware instance in the built stack (built on the first request)."""
    client.get("/healthz")
    layer: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while layer is not None and not isinstance(layer, hosted.HostedFastPath):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, hosted.HostedFastPath), "HostedFastPath is not in the stack"
    return layer


def test_hosted_requests_skip_the_router(client: TestClient, monkeypatch) -> None:
    fast = _fast_path(client)
    routed: list[str] = []
    inner = fast.app

    async def spy(scope, receive, send):
        routed.append(scope["path"])
        await inner(scope, receive, send)

    monkeypatch.setattr(fast, "app", spy)
    answer = client.post("/ok/1", content=B64, headers=FORM)
    assert answer.status_code == 200
    assert [p["class"] for p in answer.json()["predictions"]] == ["thing"]
    assert answer.headers["X-Request-ID"]
    missing = client.post("/nope/1", content=B64, headers=FORM)
    assert missing.status_code == 404 and "nope/1" in missing.json()["message"]
    assert routed == []  # neither went through FastAPI's router
    # Paths another route may own, other methods and other shapes: FastAPI decides.
    assert client.get("/model/registry").status_code == 200
    slash = client.post("/ok/1/", content=B64, headers=FORM, follow_redirects=False)
    assert slash.status_code == 307  # FastAPI's redirect, as before
    assert client.head("/ok/1").status_code == 405
    assert routed == ["/model/registry", "/ok/1/", "/ok/1"]


def test_the_same_answer_with_and_without_the_fast_path(client: TestClient, monkeypatch) -> None:
    fast = _fast_path(client)
    with_fast = client.post("/ok/1", content=B64, headers=FORM, params={"confidence": 10})
    monkeypatch.setattr(fast, "taken", frozenset({"ok"}))  # now FastAPI routes /ok/1
    routed = client.post("/ok/1", content=B64, headers=FORM, params={"confidence": 10})
    strip = ("inference_id", "time", "detection_id")

    def stable(body: dict) -> dict:
        body = {k: v for k, v in body.items() if k not in strip}
        body["predictions"] = [
            {k: v for k, v in p.items() if k not in strip} for p in body["predictions"]
        ]
        return body

    assert with_fast.status_code == routed.status_code == 200
    assert stable(with_fast.json()) == stable(routed.json())
    bad = {"confidence": "high"}
    a = client.post("/ok/1", content=B64, headers=FORM, params=bad)
    monkeypatch.setattr(fast, "taken", frozenset())
    b = client.post("/ok/1", content=B64, headers=FORM, params=bad)
    assert a.status_code == b.status_code == 400 and a.json() == b.json()


def test_fast_path_requests_keep_their_route_label(client: TestClient) -> None:
    client.post("/ok/1", content=B64, headers=FORM)
    metrics = client.get("/metrics").text
    assert 'route="/{dataset}/{version}",status="200"' in metrics


def test_another_route_with_a_parameter_first_would_shadow_it() -> None:
    router = APIRouter()
    router.add_api_route("/{anything}/x", lambda: None)
    with pytest.raises(ValueError, match="shadow"):
        hosted.first_segments(router.routes)
    taken = hosted.first_segments(APIRouter(routes=[]).routes)
    assert taken == frozenset()


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("/a/b", ("a", "b")),
        ("/a/b/", None),
        ("/a", None),
        ("/a/b/c", None),
        ("//b", None),
        ("/a/", None),
    ],
)
def test_two_segments(path: str, parts: tuple[str, str] | None) -> None:
    assert hosted._two_segments(path) == parts

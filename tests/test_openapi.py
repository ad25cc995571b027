"""/openapi.json and /docs tell the truth about the routes that parse their own inputs: the
hosted route's query parameters, body forms and per-task response shapes, /infer/*'s JSON
body, and the platform routes' bodies and header. Malformed values still get a 400 that
names the parameter, never FastAPI's 422."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import add_model
from tests.support.synthetic import rect_finder_model, ultralytics_meta

HOSTED_PARAMETERS = {
    "confidence",
    "overlap",
    "classes",
    "format",
    "stroke",
    "labels",
    "max_detections",
    "keypoint_confidence",
    "name",
    "response_mask_format",
    "image",
    "fast",
    "api_key",
}


@pytest.fixture
def client(tmp_path, store, make_client) -> TestClient:  # type: ignore[no-untyped-def]
    add_model(
        store,
        "det/1",
        rect_finder_model(tmp_path / "d.onnx", metadata=ultralytics_meta("detect", ["a"])),
    )
    return make_client(store)


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def test_hosted_route_documents_its_parameters_bodies_and_answers(spec: dict[str, Any]) -> None:
    route = spec["paths"]["/{dataset}/{version}"]
    for method in ("post", "get"):
        params = {p["name"]: p for p in route[method]["parameters"]}
        assert set(params) >= HOSTED_PARAMETERS, set(params) ^ HOSTED_PARAMETERS
        assert params["format"]["schema"]["enum"] == ["json", "image", "image_and_json"]
        assert params["response_mask_format"]["schema"]["enum"] == ["polygon", "rle"]
        assert all(p["in"] == "query" for n, p in params.items() if n in HOSTED_PARAMETERS)
        assert params["dataset"]["in"] == params["version"]["in"] == "path"
        ok = route[method]["responses"]["200"]["content"]
        assert set(ok) == {"application/json", "image/jpeg"}
        shapes = [s["title"] for s in ok["application/json"]["schema"]["oneOf"]]
        assert len(shapes) == 4 and any("classification" in s.lower() for s in shapes)
        assert {"400", "404", "413", "503"} <= set(route[method]["responses"])
        assert "422" not in route[method]["responses"]
    forms = route["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "application/x-www-form-urlencoded"} <= set(
        forms
    )
    assert "requestBody" not in route["get"]
    detection = spec["paths"]["/{dataset}/{version}"]["post"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]["oneOf"][0]
    box = detection["properties"]["predictions"]["items"]["properties"]
    assert {
        "x",
        "y",
        "width",
        "height",
        "confidence",
        "class",
        "class_id",
        "points",
        "keypoints",
    } <= set(box)


def test_infer_and_platform_routes_document_their_bodies(spec: dict[str, Any]) -> None:
    infer = spec["paths"]["/infer/{task_route}"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model_id", "image"]
    assert {"confidence", "iou_threshold", "visualize_predictions", "class_filter"} <= set(
        body["properties"]
    )
    base = "/api/v1/projects/{project}"
    files = spec["paths"][f"{base}/files"]["post"]
    assert "name" in files["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "201" in files["responses"]
    upload = spec["paths"][f"{base}/files/upload"]["post"]["requestBody"]["content"]
    assert "file" in upload["multipart/form-data"]["schema"]["properties"]
    segment = spec["paths"][f"{base}/context/vision/segment"]["post"]
    schema = segment["requestBody"]["content"]["application/json"]["schema"]
    assert {"items", "points", "boundingBox"} <= set(schema["properties"])
    assert "$ref" not in str(schema)  # inlined: the document has no $defs for it
    assert "cdf-version" in {p["name"] for p in segment["parameters"]}
    assert "409" in files["responses"]


def test_docs_page_and_malformed_values_are_400_naming_them(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    r = client.post("/det/1", params={"confidence": "abc"}, content=b"x")
    assert r.status_code == 400 and "confidence" in r.json()["message"]
    r = client.post("/det/1", params={"max_detections": "1.5"}, content=b"x")
    assert r.status_code == 400 and "max_detections" in r.json()["message"]
    r = client.post("/infer/object_detection", json={"model_id": "det/1", "image": 3})
    assert r.status_code == 400 and "image" in r.json()["message"]
    r = client.post("/api/v1/projects/p/files", json={"name": ""})
    assert r.status_code == 400 and "name" in r.json()["error"]["message"]

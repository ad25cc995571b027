"""One parameter spec, every door: the same malformed value is refused with the same message
by the hosted route, `/infer/*` and `cvserve predict` (each naming the parameter as that door
calls it), and the same valid values mean the same knobs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cvserve.cli import app
from cvserve.models.store import ModelStore
from cvserve.params import PARAM, PARAMS, parse_hosted, parse_infer
from cvserve.tasks import Task
from tests.conftest import add_model, build_client, make_store
from tests.support.synthetic import rect_finder_model, ultralytics_meta

# (parameter, the value as a query string, the same value as a JSON field)
MALFORMED: list[tuple[str, str, Any]] = [
    ("confidence", "abc", "abc"),
    ("confidence", "-1", -1),
    ("confidence", "101", 101),
    ("confidence", "nan", "nan"),
    ("confidence", "inf", "inf"),
    ("confidence", "true", True),
    ("overlap", "x", "x"),
    ("overlap", "150", 150),
    ("max_detections", "0", 0),
    ("max_detections", "abc", "abc"),
    ("max_detections", "1.5", 1.5),
    ("max_detections", "100000000", 100000000),
    ("max_detections", "-3", -3),
    ("max_detections", "[1]", [1]),
    ("keypoint_confidence", "high", "high"),
    ("keypoint_confidence", "-3", -3),
    ("response_mask_format", "bitmap", "bitmap"),
    ("stroke", "-1", -1),
    ("stroke", "thick", "thick"),
    ("stroke", "2.5", 2.5),
    ("stroke", "101", 101),
    ("labels", "maybe", "maybe"),
    ("labels", "2", 2),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("doors")
    store = make_store(root)
    meta = ultralytics_meta("detect", ["a"])
    add_model(store, "det/1", rect_finder_model(root / "d.onnx", metadata=meta))
    return store


@pytest.fixture(scope="module")
def client(store: ModelStore) -> Iterator[TestClient]:
    with build_client(store) as c:
        yield c


@pytest.fixture(scope="module")
def model_dir(store: ModelStore) -> Path:
    return store.root


def _hosted(client: TestClient, name: str, raw: str) -> str:
    r = client.post("/det/1", params={name: raw}, content=b"x")
    assert r.status_code == 400, r.text
    return str(r.json()["message"])


def _infer(client: TestClient, field: str, value: Any) -> str:
    image = {"type": "base64", "value": "QUJD"}
    body = {"model_id": "det/1", "image": image, field: value}
    r = client.post("/infer/object_detection", content=json.dumps(body))
    assert r.status_code == 400, r.text
    return str(r.json()["message"])


def _cli(model_dir: Path, flag: str, raw: str) -> str:
    args = ["predict", str(model_dir / "no-images"), "-m", "det/1", "--models-dir", str(model_dir)]
    r = CliRunner().invoke(app, [*args, flag, raw], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    return " ".join(r.output.split()).removeprefix("error: ")


@pytest.mark.parametrize(("name", "text", "json_value"), MALFORMED)
def test_a_malformed_value_gets_the_same_message_on_every_door(
    client: TestClient, model_dir: Path, name: str, text: str, json_value: Any
) -> None:
    param = PARAM[name]
    # Each door names the parameter as its callers do; the rest of the message is the same.
    messages = {"hosted": _hosted(client, name, text).replace(name, "<p>")}
    if param.body is not None:
        messages["/infer"] = _infer(client, param.body, json_value).replace(param.body, "<p>")
    if param.flag is not None:
        messages["cli"] = _cli(model_dir, param.flag, text).replace(param.flag, "<p>")
    assert len(messages) >= 2, f"{name} is on one door only"
    assert len(set(messages.values())) == 1, messages
    assert messages["hosted"].startswith("parameter <p> must be "), messages


def test_where_names_agree_the_messages_are_identical(client: TestClient) -> None:
    for name in ("confidence", "max_detections", "keypoint_confidence"):
        assert _hosted(client, name, "abc") == _infer(client, name, "abc")


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ({}, {}),
        ({"confidence": "25", "overlap": "0.5"}, {"confidence": 25, "iou_threshold": 0.5}),
        ({"confidence": "best"}, {"confidence": "default"}),
        ({"max_detections": "7"}, {"max_detections": 7}),
        ({"classes": "a,b"}, {"class_filter": ["a", "b"]}),
        ({"keypoint_confidence": "60"}, {"keypoint_confidence": 0.6}),
        ({"format": "image_and_json"}, {"visualize_predictions": True}),
        ({"stroke": "4", "labels": "true"}, {"visualization_stroke_width": 4, "visualization_labels": True}),
        ({"response_mask_format": "rle"}, {"response_mask_format": "rle"}),
    ],
)  # fmt: skip
def test_valid_values_mean_the_same_on_both_routes(query: dict, body: dict) -> None:
    assert parse_hosted(query, Task.INSTANCE_SEGMENTATION) == parse_infer(
        body, Task.INSTANCE_SEGMENTATION
    )


def test_openapi_and_cli_are_read_off_the_spec(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    hosted = {p["name"]: p for p in doc["paths"]["/{dataset}/{version}"]["post"]["parameters"]}
    infer = doc["paths"]["/infer/{task_route}"]["post"]["requestBody"]["content"]
    fields = infer["application/json"]["schema"]["properties"]
    usage = " ".join(CliRunner().invoke(app, ["predict", "--help"]).output.split())
    for param in PARAMS:
        if param.hosted:
            assert hosted[param.name]["description"] == param.description
        if param.body is not None:
            assert fields[param.body]["description"] == param.description
        if param.flag is not None:
            assert param.flag in usage

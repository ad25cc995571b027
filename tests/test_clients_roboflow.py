"""The official `roboflow` package's model classes against a live `cvserve serve`.

`ObjectDetectionModel(key, "ws/proj/1", local="http://HOST:PORT/")` and the Instance-,
Classification- and KeypointDetection- equivalents take `local=`; SemanticSegmentationModel
has no `local=` and reads the env var SEMANTIC_SEGMENTATION_URL at predict time. None of
the constructors calls the cloud (tests/support/client_driver.py refuses and records any
non-loopback connection). What they send:
- ObjectDetectionModel: `POST {local}{proj}/{ver}?api_key&name&overlap&confidence&stroke&
  labels&format[&classes]`, body the PNG as base64, form-urlencoded.
- Classification/KeypointDetectionModel: same with a q90 JPEG; classification sends no
  thresholds at all, keypoints only `confidence`.
- InstanceSegmentation/SemanticSegmentationModel: `POST {local}/{proj}/{ver}?api_key&
  confidence` (a double slash when local ends in "/"), multipart part `file`, a q90 JPEG.
Their `.predict(...).json()` must carry the hosted route's predictions, and `.save()`
must draw them onto the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.engines import ENGINES, clients_server
from tests.support.official_clients import (
    IMAGE_SIZE,
    clients_python,
    run_driver,
    strip_volatile,
)

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module", params=ENGINES)  # the local engine, then Ray's
def server(request):
    return clients_server(request, request.param)


@pytest.fixture(scope="module")
def rf(server, tmp_path_factory):
    python = clients_python()
    if python is None:
        pytest.skip("could not build .cache/clients-venv (inference-sdk, roboflow)")
    out = tmp_path_factory.mktemp("roboflow")
    png = str(server.images["png"])
    local = server.url + "/"
    base = {"kind": "roboflow", "api_key": server.api_key, "image": png}
    jobs: dict[str, dict[str, Any]] = {
        "det": {
            **base, "cls": "ObjectDetectionModel", "model": "ws/det/1", "init": {"local": local},
            "predict": {"confidence": 40, "overlap": 30}, "save": str(out / "det.jpg"),
        },
        "det classes": {
            **base, "cls": "ObjectDetectionModel", "model": "ws/det/1", "init": {"local": local},
            "predict": {"confidence": 30, "overlap": 90, "classes": "person,dog"},
        },
        "seg": {
            **base, "cls": "InstanceSegmentationModel", "model": "ws/seg/1",
            "init": {"local": local}, "predict": {"confidence": 40}, "save": str(out / "seg.jpg"),
        },
        "seg no slash": {
            **base, "cls": "InstanceSegmentationModel", "model": "ws/seg/1",
            "init": {"local": server.url}, "predict": {"confidence": 80},
        },
        "cls": {
            **base, "cls": "ClassificationModel", "model": "ws/cls/1", "init": {"local": local},
            "save": str(out / "cls.jpg"),
        },
        "mcls": {
            **base, "cls": "ClassificationModel", "model": "ws/mcls/1", "init": {"local": local},
        },
        "pose": {
            **base, "cls": "KeypointDetectionModel", "model": "ws/pose/1",
            "init": {"local": local}, "predict": {"confidence": 40}, "save": str(out / "pose.jpg"),
        },
        "sem": {
            **base, "cls": "SemanticSegmentationModel", "model": "ws/sem/1",
            "env": {"SEMANTIC_SEGMENTATION_URL": local}, "predict": {"confidence": 50},
            "save": str(out / "sem.jpg"),
        },
    }  # fmt: skip
    results, blocked = run_driver(python, list(jobs.values()), env={"HOME": str(out)})
    assert blocked == [], f"the roboflow package tried to reach {blocked}"
    by_name = dict(zip(jobs, results, strict=True))

    def get(name: str) -> tuple[dict[str, Any], str | None]:
        res = by_name[name]
        assert res["ok"], f"{name}: {res.get('error')}\n{res.get('trace')}"
        return res["result"], jobs[name].get("save")

    return get


def hosted(server, model_id: str, **params: Any) -> dict[str, Any]:
    return strip_volatile(server.hosted(model_id, server.images["png"], **params))


def client_predictions(body: dict[str, Any]) -> list[dict[str, Any]]:
    """PredictionGroup.json() -> the server's prediction dicts (the client adds image_path
    and prediction_type to each)."""
    assert body["image"] == {"width": str(IMAGE_SIZE[0]), "height": str(IMAGE_SIZE[1])} or (
        list(body["image"]) == list(IMAGE_SIZE)
    )
    return strip_volatile(body["predictions"])


def load_rgb(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_object_detection(rf, server):
    body, _ = rf("det")
    assert (
        client_predictions(body)
        == hosted(server, "det/1", confidence=40, overlap=30)["predictions"]
    )
    assert [p["class"] for p in body["predictions"]] == ["person", "car", "car"]
    assert all(p["prediction_type"] == "ObjectDetectionModel" for p in body["predictions"])
    body, _ = rf("det classes")
    want = hosted(server, "det/1", confidence=30, overlap=90, classes="person,dog")
    assert client_predictions(body) == want["predictions"]
    assert [p["class"] for p in body["predictions"]] == ["person", "person", "dog"]


def test_instance_segmentation(rf, server):
    body, _ = rf("seg")
    assert client_predictions(body) == hosted(server, "seg/1", confidence=40)["predictions"]
    assert [p["class"] for p in body["predictions"]] == ["blob", "disc"]
    # local= without the trailing slash builds a clean URL too.
    body, _ = rf("seg no slash")
    assert client_predictions(body) == hosted(server, "seg/1", confidence=80)["predictions"]
    assert [p["class"] for p in body["predictions"]] == ["blob"]


def test_classification(rf, server):
    body, _ = rf("cls")
    (pred,) = client_predictions(body)
    assert pred == hosted(server, "cls/1")
    assert pred["top"] == "dog"
    body, _ = rf("mcls")
    (pred,) = client_predictions(body)
    assert pred == hosted(server, "mcls/1")
    assert pred["predicted_classes"] == ["red", "blue"]


def test_keypoint_detection(rf, server):
    body, _ = rf("pose")
    assert client_predictions(body) == hosted(server, "pose/1", confidence=40)["predictions"]
    assert [len(p["keypoints"]) for p in body["predictions"]] == [17, 17]


def test_semantic_segmentation(rf, server):
    body, _ = rf("sem")
    (pred,) = client_predictions(body)
    assert pred == hosted(server, "sem/1", confidence=50)
    assert pred["class_map"] == {"0": "background", "1": "sky", "2": "ground"}


def test_save_draws_boxes(rf, server):
    original = load_rgb(str(server.images["png"]))
    for name in ("det", "pose"):
        body, path = rf(name)
        saved = load_rgb(path)
        assert saved.shape == original.shape  # same size, an image
        diff = np.abs(saved - original).sum(axis=2)
        p = body["predictions"][0]
        top = int(p["y"] - p["height"] / 2)
        x0, x1 = int(p["x"] - p["width"] / 2), int(p["x"] + p["width"] / 2)
        left_edge = diff[top + 40 : top + 200, x0]  # the box's left side, below the label
        assert left_edge.mean() > 100, f"{name}: no box drawn at x={x0}"
        far = diff[-60:, :60]  # a corner no prediction reaches: only JPEG noise
        assert far.mean() < 20
        assert x1 > x0


def test_save_draws_outlines_and_masks(rf, server):
    original = load_rgb(str(server.images["png"]))
    body, path = rf("seg")
    saved = load_rgb(path)
    assert saved.shape == original.shape
    diff = np.abs(saved - original).sum(axis=2)
    xs = [pt["x"] for pt in body["predictions"][0]["points"]]
    ys = [pt["y"] for pt in body["predictions"][0]["points"]]
    x_left, y_mid = int(min(xs)), int((min(ys) + max(ys)) / 2)
    assert diff[y_mid - 5 : y_mid + 5, x_left].mean() > 100  # on the outline
    assert diff[y_mid - 5 : y_mid + 5, x_left + 20].mean() < 40  # inside: untouched

    body, path = rf("sem")
    saved = load_rgb(path)
    assert saved.shape == original.shape
    diff = np.abs(saved - original).sum(axis=2)
    # mask_image keeps class>0 pixels and darkens background (class 0) ones: the model
    # puts sky in input rows 0..280 (image rows 0..300) and background at input 280..360.
    assert diff[20:280].mean() < 20
    assert diff[320:400].mean() > 100

    body, path = rf("cls")
    saved = Image.open(path)
    # The client pads 100 px around the image to write "top | confidence" above it.
    assert saved.size == (IMAGE_SIZE[0] + 200, IMAGE_SIZE[1] + 200)

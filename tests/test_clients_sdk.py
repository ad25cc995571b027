"""The official `inference-sdk` (InferenceHTTPClient) against a live `cvserve serve`.

Default mode (v1, any non-hosted api_url): GET /model/registry, POST /model/add when the
model is not loaded, then POST /infer/{task} with JSON (fractions, class_filter, ...).
v0 mode (`select_api_v0()`): POST /{dataset}/{version}?api_key=..&confidence=..&overlap=..
with the raw base64 image as the body under `Content-Type: application/json`.
Every answer must equal the hosted route's for the same image and thresholds.

The SDK runs in its own venv (see tests/support/official_clients.py), through
tests/support/client_driver.py, all jobs in one process to keep this fast.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.support.engines import ENGINES, clients_server
from tests.support.official_clients import (
    IMAGE_SIZE,
    clients_python,
    run_driver,
    strip_volatile,
)

pytestmark = pytest.mark.timeout(400)

V1_MODELS = ["det/1", "seg/1", "pose/1", "cls/1", "mcls/1"]
ALL_MODELS = [*V1_MODELS, "sem/1"]


@pytest.fixture(scope="module", params=ENGINES)  # the local engine, then Ray's
def server(request):
    return clients_server(request, request.param)


@pytest.fixture(scope="module")
def run(server):
    """name -> driver result, for every SDK job below (one client process)."""
    python = clients_python()
    if python is None:
        pytest.skip("could not build .cache/clients-venv (inference-sdk, roboflow)")
    png, jpg = str(server.images["png"]), str(server.images["jpg"])
    base = {"kind": "sdk", "api_url": server.url, "api_key": server.api_key}
    jobs: dict[str, dict[str, Any]] = {}
    for m in ALL_MODELS:
        jobs[f"v1 {m}"] = {**base, "model_id": m, "image": {"path": png}}
        jobs[f"v0 {m}"] = {**base, "mode": "v0", "model_id": m, "image": {"path": png}}
    jobs["v1 numpy"] = {**base, "model_id": "det/1", "image": {"numpy": jpg}}
    jobs["v1 pil"] = {**base, "model_id": "pose/1", "image": {"pil": jpg}}
    jobs["v1 thresholds"] = {
        **base,
        "model_id": "det/1",
        "image": {"path": png},
        "config": {"confidence_threshold": 0.3, "iou_threshold": 0.9, "class_filter": ["person", "dog"]},
    }  # fmt: skip
    jobs["v1 max_detections"] = {
        **base, "model_id": "det/1", "image": {"path": png}, "config": {"max_detections": 1},
    }  # fmt: skip
    jobs["v1 keypoint_confidence"] = {
        **base,
        "model_id": "pose/1",
        "image": {"path": png},
        "config": {"keypoint_confidence_threshold": 0.5, "confidence_threshold": 0.7},
    }
    jobs["v1 rle"] = {
        **base, "model_id": "seg/1", "image": {"path": png},
        "config": {"response_mask_format": "rle"},
    }  # fmt: skip
    jobs["v1 cls threshold"] = {
        **base, "model_id": "mcls/1", "image": {"path": png},
        "config": {"confidence_threshold": 0.25},
    }  # fmt: skip
    for word in ("default", "best"):
        for mode in ("v0", "v1"):
            jobs[f"{mode} confidence {word}"] = {
                **base, "mode": mode, "model_id": "det/1", "image": {"path": png},
                "config": {"confidence_threshold": word},
            }  # fmt: skip
    for m in ("det/1", "pose/1"):
        # The SDK shrinks the image to the model's input size (from /model/registry) and
        # scales the predictions back up.
        jobs[f"v1 downsized {m}"] = {
            **base, "model_id": m, "image": {"path": png},
            "config": {"client_downsizing_disabled": False},
        }  # fmt: skip
    jobs["v1 batch"] = {
        **base, "model_id": "det/1", "image": {"list": [{"path": png}, {"path": jpg}]},
        "config": {"max_batch_size": 2},
    }  # fmt: skip
    jobs["v1 header key"] = {
        **base, "model_id": "cls/1", "image": {"path": png},
        "config": {"api_key_transport": "header"},
    }  # fmt: skip
    jobs["v1 visualize"] = {
        **base, "model_id": "det/1", "image": {"path": png},
        "config": {"visualize_predictions": True},
    }  # fmt: skip
    jobs["v1 bad key"] = {**base, "api_key": "wrong", "model_id": "det/1", "image": {"path": png}}
    jobs["v1 unknown model"] = {**base, "model_id": "nope/7", "image": {"path": png}}
    jobs["v0 thresholds"] = {
        **base,
        "mode": "v0",
        "model_id": "det/1",
        "image": {"path": png},
        "config": {"confidence_threshold": 0.3, "iou_threshold": 0.9, "class_filter": ["car"]},
    }  # fmt: skip
    jobs["v0 keypoint_confidence"] = {
        **base, "mode": "v0", "model_id": "pose/1", "image": {"path": png},
        "config": {"keypoint_confidence_threshold": 0.5},
    }  # fmt: skip
    jobs["v0 numpy"] = {**base, "mode": "v0", "model_id": "seg/1", "image": {"numpy": jpg}}
    jobs["v0 image_and_json"] = {
        **base, "mode": "v0", "model_id": "det/1", "image": {"path": png},
        "config": {"format": "image_and_json"},
    }  # fmt: skip
    jobs["v0 bad key"] = {
        **base, "mode": "v0", "api_key": "wrong", "model_id": "det/1", "image": {"path": png},
    }  # fmt: skip
    jobs["server info"] = {**base, "call": "get_server_info"}
    jobs["registry"] = {**base, "call": "list_loaded_models"}
    results, blocked = run_driver(python, list(jobs.values()))
    assert blocked == [], f"the SDK tried to reach {blocked}"
    out = dict(zip(jobs, results, strict=True))

    def get(name: str, ok: bool = True) -> Any:
        res = out[name]
        if ok:
            assert res["ok"], f"{name}: {res.get('error')}\n{res.get('trace')}"
            return res["result"]
        assert not res["ok"], f"{name} should have failed: {res.get('result')}"
        return res

    return get


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    if body.get("visualization") is None:
        body.pop("visualization", None)
    return strip_volatile(body)


def hosted(server, model_id: str, **params: Any) -> dict[str, Any]:
    return comparable(server.hosted(model_id, server.images["png"], **params))


@pytest.mark.parametrize("model_id", V1_MODELS)
def test_default_mode_matches_hosted(run, server, model_id):
    got = comparable(run(f"v1 {model_id}"))
    assert got == hosted(server, model_id)
    assert got["image"] == {"width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1]}


def test_default_mode_refuses_semantic_segmentation_client_side(run):
    # inference-sdk 1.8.3 has no /infer route for semantic segmentation: it raises before
    # sending the image (after reading the task from /model/registry). v0 mode works.
    err = run("v1 sem/1", ok=False)
    assert err["type"] == "ModelTaskTypeNotSupportedError"
    assert "semantic-segmentation" in err["error"]


@pytest.mark.parametrize("model_id", ALL_MODELS)
def test_v0_mode_matches_hosted(run, server, model_id):
    assert comparable(run(f"v0 {model_id}")) == hosted(server, model_id)


def test_predictions_are_the_expected_ones(run):
    det = run("v1 det/1")["predictions"]
    assert [(p["class"], p["confidence"]) for p in det] == [
        ("person", 0.92),
        ("car", 0.71),
        ("car", 0.55),
    ]
    # Model-input box (120, 120)-(280, 360) -> image pixels through the 2/3 letterbox.
    assert (det[0]["x"], det[0]["y"], det[0]["width"], det[0]["height"]) == (300, 240, 240, 360)
    seg = run("v1 seg/1")["predictions"]
    assert [p["class"] for p in seg] == ["blob", "disc"] and all(len(p["points"]) > 3 for p in seg)
    pose = run("v1 pose/1")["predictions"]
    assert [len(p["keypoints"]) for p in pose] == [17, 17]
    cls = run("v1 cls/1")
    assert cls["top"] == "dog" and cls["confidence"] == 0.7
    mcls = run("v1 mcls/1")
    assert mcls["predicted_classes"] == ["red", "blue"]


def test_numpy_and_pil_inputs(run, server):
    # The SDK re-encodes arrays as JPEG; the synthetic models answer the same regardless.
    assert comparable(run("v1 numpy")) == hosted(server, "det/1")
    assert comparable(run("v1 pil")) == hosted(server, "pose/1")
    assert comparable(run("v0 numpy")) == hosted(server, "seg/1")


def test_thresholds_and_class_filter(run, server):
    got = comparable(run("v1 thresholds"))
    assert got == hosted(server, "det/1", confidence=0.3, overlap=0.9, classes="person,dog")
    assert [p["class"] for p in got["predictions"]] == ["person", "person", "dog"]
    assert len(run("v1 max_detections")["predictions"]) == 1
    got = comparable(run("v1 keypoint_confidence"))
    assert got == hosted(server, "pose/1", confidence=0.7, keypoint_confidence=0.5)
    assert [len(p["keypoints"]) for p in got["predictions"]] == [13]
    assert comparable(run("v1 cls threshold")) == hosted(server, "mcls/1", confidence=0.25)
    assert run("v1 cls threshold")["predicted_classes"] == ["red", "green", "blue"]


def test_confidence_default_and_best_words(run, server):
    # InferenceConfiguration types confidence_threshold as float | "best" | "default".
    for word in ("default", "best"):
        for mode in ("v0", "v1"):
            assert comparable(run(f"{mode} confidence {word}")) == hosted(server, "det/1")


def test_v0_thresholds(run, server):
    # v0 sends confidence/overlap as query fractions. inference-sdk 1.8.3 has no v0 mapping
    # for class_filter (to_legacy_call_parameters), so it never reaches the server.
    got = comparable(run("v0 thresholds"))
    assert got == hosted(server, "det/1", confidence=0.3, overlap=0.9)
    got = comparable(run("v0 keypoint_confidence"))
    assert got == hosted(server, "pose/1", keypoint_confidence=0.5)


def test_rle_masks(run, server):
    got = comparable(run("v1 rle"))
    assert got == hosted(server, "seg/1", response_mask_format="rle")
    assert all(p["rle"]["size"] == [IMAGE_SIZE[1], IMAGE_SIZE[0]] for p in got["predictions"])


@pytest.mark.parametrize("model_id", ["det/1", "pose/1"])
def test_client_downsizing_is_undone(run, server, model_id):
    got = run(f"v1 downsized {model_id}")
    want = hosted(server, model_id)
    assert got["image"] == want["image"]
    assert len(got["predictions"]) == len(want["predictions"])
    for g, w in zip(got["predictions"], want["predictions"], strict=True):
        assert g["class"] == w["class"] and g["confidence"] == w["confidence"]
        for k in ("x", "y", "width", "height"):
            assert g[k] == pytest.approx(w[k], abs=0.05)
        for gk, wk in zip(g.get("keypoints", []), w.get("keypoints", []), strict=True):
            assert (gk["x"], gk["y"]) == (
                pytest.approx(wk["x"], abs=0.05),
                pytest.approx(wk["y"], abs=0.05),
            )


def test_batch_of_images(run, server):
    got = run("v1 batch")
    assert isinstance(got, list) and len(got) == 2
    assert comparable(got[0]) == hosted(server, "det/1")
    assert [p["class"] for p in got[1]["predictions"]] == ["person", "car", "car"]


def test_api_key_in_authorization_header(run, server):
    assert comparable(run("v1 header key")) == hosted(server, "cls/1")


def test_visualization_is_a_jpeg(run):
    vis = run("v1 visualize")["visualization"]
    assert base64.b64decode(vis)[:3] == b"\xff\xd8\xff"
    vis = run("v0 image_and_json")["visualization"]
    assert base64.b64decode(vis)[:3] == b"\xff\xd8\xff"


def test_errors_reach_the_caller(run):
    for name in ("v1 bad key", "v0 bad key"):
        err = run(name, ok=False)
        assert err["type"] == "HTTPCallErrorError" and err["status_code"] == 403
    err = run("v1 unknown model", ok=False)
    assert err["type"] == "HTTPCallErrorError" and err["status_code"] == 404
    assert "nope/7" in err["api_message"]


def test_info_and_registry(run):
    info = run("server info")
    assert info["name"] == "cvserve" and info["version"] and info["uuid"]
    models = {m["model_id"]: m for m in run("registry")["models"]}
    assert models["det/1"]["task_type"] == "object-detection"
    assert models["seg/1"]["task_type"] == "instance-segmentation"
    assert models["pose/1"]["task_type"] == "keypoint-detection"
    assert models["cls/1"]["task_type"] == "classification"
    assert models["sem/1"]["task_type"] == "semantic-segmentation"
    assert (models["det/1"]["input_width"], models["det/1"]["input_height"]) == (640, 640)

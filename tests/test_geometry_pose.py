"""Keypoint detection: a pose head with kpt_shape [17, 3] whose keypoints are known."""

from __future__ import annotations

import numpy as np
import pytest

from cvserve.keypoint_sets import COCO_KEYPOINTS
from tests.conftest import add_model, hosted
from tests.support.synthetic import (
    constant_model,
    letterbox_reference,
    peer_layout,
    png_bytes,
    ultralytics_meta,
    yolo_head,
)

WIDTH, HEIGHT = 1280, 720


def _scene(width=WIDTH, height=HEIGHT):
    r, left, top = letterbox_reference(width, height, 640, 640)
    box = (200.0, 100.0, 600.0, 700.0)
    # keypoints spread over the box, confidences 0.05, 0.10, ... 0.85
    kps = [(210.0 + 22.5 * k, 110.0 + 33.0 * k, 0.05 * (k + 1)) for k in range(17)]
    extra = []
    for x, y, c in kps:
        extra += [x * r + left, y * r + top, c]
    x1, y1, x2, y2 = (v * r + o for v, o in zip(box, (left, top, left, top), strict=True))
    head = yolo_head(
        [((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)], [[0.9]], [extra], candidates=32
    )
    return head, box, kps


def test_keypoints_land_on_exact_image_pixels(tmp_path, store, make_client):
    head, box, kps = _scene()
    meta = ultralytics_meta("pose", ["person"], kpt_shape="[17, 3]")
    add_model(store, "pose/1", constant_model(tmp_path / "pose.onnx", [head], metadata=meta))
    assert store.manifest("pose/1").postprocess["kpt_shape"] == [17, 3]
    client = make_client(store)
    body = hosted(client, "pose/1", png_bytes(np.zeros((HEIGHT, WIDTH, 3), np.uint8)))
    (pred,) = body["predictions"]
    assert pred["class"] == "person"
    assert pred["x"] == pytest.approx(400.0) and pred["width"] == pytest.approx(400.0)
    assert pred["y"] == pytest.approx(400.0) and pred["height"] == pytest.approx(600.0)
    got = pred["keypoints"]
    assert len(got) == 17
    for k, (kp, (x, y, c)) in enumerate(zip(got, kps, strict=True)):
        assert set(kp) >= {"x", "y", "confidence", "class_id", "class_name", "class"}
        assert (kp["x"], kp["y"]) == (pytest.approx(x, abs=0.011), pytest.approx(y, abs=0.011))
        assert kp["confidence"] == pytest.approx(c, abs=1e-4)
        assert kp["class_id"] == k
        assert kp["class_name"] == kp["class"] == COCO_KEYPOINTS[k]


def test_keypoint_confidence_drops_low_ones(tmp_path, store, make_client):
    head, _, kps = _scene()
    meta = ultralytics_meta("pose", ["person"], kpt_shape="[17, 3]")
    add_model(store, "pose/1", constant_model(tmp_path / "pose.onnx", [head], metadata=meta))
    client = make_client(store)
    img = png_bytes(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    for value in ("50", "0.5"):
        (pred,) = hosted(client, "pose/1", img, keypoint_confidence=value)["predictions"]
        ids = [kp["class_id"] for kp in pred["keypoints"]]
        assert ids == [k for k, (_, _, c) in enumerate(kps) if c >= 0.5 - 1e-6]
        assert all(kp["confidence"] >= 0.5 for kp in pred["keypoints"])
    (pred,) = hosted(client, "pose/1", img, keypoint_confidence=0)["predictions"]
    assert len(pred["keypoints"]) == 17


def test_peer_layout_keypoint_names(tmp_path, store, make_client):
    """The peer's keypoints_metadata.json names the keypoints (here 3 of them, stretch)."""
    names = ["top", "middle", "bottom"]
    pts = [(100.0, 50.0, 0.9), (120.0, 300.0, 0.8), (130.0, 600.0, 0.2)]
    extra = [v for p in pts for v in p]
    head = yolo_head([(320.0, 320.0, 200.0, 600.0)], [[0.9]], [extra], candidates=8)
    weights = constant_model(tmp_path / "kp.onnx", [head])
    folder = peer_layout(
        tmp_path / "peer",
        weights,
        task="keypoint-detection",
        class_names=["helmet"],
        keypoints=names,
        edges=[(0, 1), (1, 2)],
    )
    add_model(store, "kp/2", folder)
    client = make_client(store)
    # 1280 x 320 with "Stretch to" 640 x 640: x halves, y doubles
    body = hosted(client, "kp/2", png_bytes(np.zeros((320, 1280, 3), np.uint8)))
    (pred,) = body["predictions"]
    assert pred["class"] == "helmet"
    assert [
        (kp["class_name"], kp["class"], kp["class_id"], kp["x"], kp["y"])
        for kp in pred["keypoints"]
    ] == [
        ("top", "top", 0, 200.0, 25.0),
        ("middle", "middle", 1, 240.0, 150.0),
        ("bottom", "bottom", 2, 260.0, 300.0),
    ]

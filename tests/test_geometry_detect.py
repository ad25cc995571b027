"""Object detection geometry and post-processing, to the pixel, on synthetic ONNX models.

Constant-output models pin the decoding arithmetic (letterbox / stretch inversion, NMS,
thresholds, filters); the rect-finder model (a real graph that locates the bright region
of its input) checks that preprocessing actually put the pixels where the inverse assumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cvserve.models.base import InferParams
from tests.conftest import add_model, hosted
from tests.support.synthetic import (
    constant_model,
    letterbox_gains,
    letterbox_reference,
    peer_layout,
    png_bytes,
    rect_finder_model,
    rect_image,
    ultralytics_meta,
    yolo_head,
)

NAMES = ["cat", "dog", "bird"]
SIZES = [(640, 480), (480, 640), (1920, 1080), (37, 901), (64, 48), (641, 3)]


def _detect_model(tmp_path: Path, boxes_in, scores, name="det.onnx", candidates=16, imgsz=640):
    head = yolo_head(boxes_in, scores, candidates=candidates)
    meta = ultralytics_meta("detect", NAMES, imgsz=imgsz)
    return constant_model(tmp_path / name, [head], input_shape=(1, 3, imgsz, imgsz), metadata=meta)


def _xyxy_to_cxcywh(b):
    x1, y1, x2, y2 = b
    return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


def _boxes_of(body):
    return [
        (
            p["x"] - p["width"] / 2,
            p["y"] - p["height"] / 2,
            p["x"] + p["width"] / 2,
            p["y"] + p["height"] / 2,
        )
        for p in body["predictions"]
    ]


# -- letterbox ------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_letterbox_inversion_is_exact(tmp_path, store, make_client, width, height):
    r, left, top = letterbox_reference(width, height, 640, 640)
    gx, gy = letterbox_gains(width, height, 640, 640)  # per axis, as Ultralytics 8.4 inverts
    targets = [  # image-pixel boxes: an inner one and the whole image
        (0.2 * width, 0.3 * height, 0.7 * width, 0.9 * height),
        (0.0, 0.0, float(width), float(height)),
    ]
    boxes_in = [
        _xyxy_to_cxcywh((x1 * gx + left, y1 * gy + top, x2 * gx + left, y2 * gy + top))
        for x1, y1, x2, y2 in targets
    ]
    scores = [[0.9, 0, 0], [0, 0.8, 0]]
    add_model(store, "lb/1", _detect_model(tmp_path, boxes_in, scores))

    model = store.get("lb/1")
    pred = model.predict(np.zeros((height, width, 3), np.uint8), InferParams())
    assert (pred.width, pred.height) == (width, height)
    np.testing.assert_allclose(pred.result.xyxy, np.array(targets), atol=2e-3 * max(1, 1 / r))

    client = make_client(store)
    body = hosted(client, "lb/1", png_bytes(np.zeros((height, width, 3), np.uint8)))
    assert body["image"] == {"width": width, "height": height}
    assert [p["class"] for p in body["predictions"]] == ["cat", "dog"]
    assert [p["class_id"] for p in body["predictions"]] == [0, 1]
    for got, want in zip(_boxes_of(body), targets, strict=True):
        np.testing.assert_allclose(got, want, atol=0.011)
    full = body["predictions"][1]
    assert (full["x"], full["y"]) == (pytest.approx(width / 2), pytest.approx(height / 2))
    assert (full["width"], full["height"]) == (pytest.approx(width), pytest.approx(height))


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_letterbox_pixels_land_where_the_inverse_says(tmp_path, store, make_client, width, height):
    """The rect-finder sees the preprocessed tensor: its box mapped back must be the
    white rectangle drawn in the image, to within one model-input pixel."""
    rect = (int(0.25 * width), int(0.4 * height), int(0.75 * width) + 1, int(0.8 * height) + 1)
    meta = ultralytics_meta("detect", ["blob"])
    add_model(store, "rf/1", rect_finder_model(tmp_path / "rf.onnx", metadata=meta))
    client = make_client(store)
    body = hosted(client, "rf/1", png_bytes(rect_image(width, height, rect)))
    assert body["image"] == {"width": width, "height": height}
    (pred,) = body["predictions"]
    assert pred["class"] == "blob" and pred["confidence"] == pytest.approx(0.9)
    r, _, _ = letterbox_reference(width, height, 640, 640)
    tol = 1.0 / r + 0.05  # one model-input pixel, in image pixels
    np.testing.assert_allclose(_boxes_of(body)[0], rect, atol=tol)


# -- stretch ------------------------------------------------------------------------------------


def _stretch_config(path: Path, size=(320, 256)) -> Path:
    path.write_text(
        json.dumps(
            {
                "task": "object-detection",
                "family": "yolo",
                "weights": "model.onnx",
                "class_names": NAMES,
                "preprocess": {"resize": "stretch", "size": list(size)},
                "postprocess": {"format": "v8"},
            }
        )
    )
    return path


@pytest.mark.parametrize(("width", "height"), [(640, 480), (37, 901)])
def test_stretch_config_inversion(tmp_path, store, make_client, width, height):
    in_w, in_h = 320, 256
    target = (0.1 * width, 0.2 * height, 0.6 * width, 0.95 * height)
    sx, sy = in_w / width, in_h / height
    box_in = _xyxy_to_cxcywh((target[0] * sx, target[1] * sy, target[2] * sx, target[3] * sy))
    onnx_path = constant_model(
        tmp_path / "model.onnx",
        [yolo_head([box_in], [[0, 0, 0.7]], candidates=4)],
        input_shape=(1, 3, in_h, in_w),
    )
    add_model(store, "st/1", onnx_path, config=_stretch_config(tmp_path / "cfg.json"))
    client = make_client(store)
    body = hosted(client, "st/1", png_bytes(np.zeros((height, width, 3), np.uint8)))
    (pred,) = body["predictions"]
    assert pred["class"] == "bird"
    np.testing.assert_allclose(_boxes_of(body)[0], target, atol=0.011)


def test_stretch_peer_layout_pixels(tmp_path, store, make_client):
    """Peer layout with "Stretch to": the rect-finder's box maps back to the rectangle."""
    weights = rect_finder_model(tmp_path / "rf.onnx", input_hw=(256, 320))
    folder = peer_layout(
        tmp_path / "peer",
        weights,
        task="object-detection",
        class_names=["blob"],
        resize="Stretch to",
        size=(320, 256),
    )
    add_model(store, "peer-st/3", folder)
    client = make_client(store)
    width, height = 1000, 300
    rect = (100, 60, 700, 240)
    body = hosted(client, "peer-st/3", png_bytes(rect_image(width, height, rect)))
    (pred,) = body["predictions"]
    assert pred["class"] == "blob"
    tol = np.array([width / 320, height / 256] * 2) + 0.05
    assert np.all(np.abs(np.array(_boxes_of(body)[0]) - rect) <= tol)


# -- NMS, thresholds, filters ----------------------------------------------------------------


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _nms_client(tmp_path, store, make_client, boxes_xyxy, scores):
    boxes = [_xyxy_to_cxcywh(b) for b in boxes_xyxy]
    add_model(store, "nms/1", _detect_model(tmp_path, boxes, scores))
    return make_client(store)


BLACK_640 = None


def _black_640() -> bytes:
    global BLACK_640
    if BLACK_640 is None:
        BLACK_640 = png_bytes(np.zeros((640, 640, 3), np.uint8))
    return BLACK_640


@pytest.mark.parametrize(("dx", "merged"), [(53, True), (55, False)])
@pytest.mark.parametrize("overlap", ["30", "0.3"])
def test_nms_same_class_by_true_iou(tmp_path, store, make_client, dx, merged, overlap):
    a = (100.0, 100.0, 200.0, 200.0)
    b = (100.0 + dx, 100.0, 200.0 + dx, 200.0)
    iou = _iou(a, b)
    assert (iou > 0.3) is merged and abs(iou - 0.3) < 0.01  # just above / just below
    client = _nms_client(tmp_path, store, make_client, [a, b], [[0.9, 0, 0], [0.8, 0, 0]])
    body = hosted(client, "nms/1", _black_640(), overlap=overlap)
    got = _boxes_of(body)
    if merged:
        assert len(got) == 1
        np.testing.assert_allclose(got[0], a, atol=0.01)  # the higher score survives
        assert body["predictions"][0]["confidence"] == pytest.approx(0.9)
    else:
        assert len(got) == 2


def test_nms_uses_iou_not_containment(tmp_path, store, make_client):
    """A small box inside a big one has IoU 0.25 (< 0.3) though it is fully covered."""
    big, small = (100.0, 100.0, 300.0, 300.0), (150.0, 150.0, 250.0, 250.0)
    client = _nms_client(tmp_path, store, make_client, [big, small], [[0.9, 0, 0], [0.8, 0, 0]])
    assert len(hosted(client, "nms/1", _black_640())["predictions"]) == 2
    assert len(hosted(client, "nms/1", _black_640(), overlap=20)["predictions"]) == 1


def test_nms_never_merges_different_classes(tmp_path, store, make_client):
    box = (100.0, 100.0, 200.0, 200.0)
    scores = [[0.9, 0, 0], [0, 0.8, 0], [0, 0, 0.7], [0.6, 0, 0]]
    client = _nms_client(tmp_path, store, make_client, [box] * 4, scores)
    body = hosted(client, "nms/1", _black_640())
    assert [p["class"] for p in body["predictions"]] == ["cat", "dog", "bird"]
    # overlap=100 disables merging entirely: every box is kept, sorted by confidence
    body = hosted(client, "nms/1", _black_640(), overlap=100)
    assert [p["confidence"] for p in body["predictions"]] == [0.9, 0.8, 0.7, 0.6]


def _spread_boxes(n):
    return [(20.0 + 60 * i, 20.0, 60.0 + 60 * i, 60.0) for i in range(n)]


def test_confidence_percent_equals_fraction(tmp_path, store, make_client):
    scores = [[0.39, 0, 0], [0.41, 0, 0], [0, 0.6, 0], [0, 0, 0.95]]
    client = _nms_client(tmp_path, store, make_client, _spread_boxes(4), scores)
    confs = lambda body: [p["confidence"] for p in body["predictions"]]  # noqa: E731
    default = hosted(client, "nms/1", _black_640())
    assert confs(default) == [0.95, 0.6, 0.41]
    for value in ("40", "0.4", "40.0"):
        assert confs(hosted(client, "nms/1", _black_640(), confidence=value)) == confs(default)
    assert confs(hosted(client, "nms/1", _black_640(), confidence=50)) == [0.95, 0.6]
    assert confs(hosted(client, "nms/1", _black_640(), confidence="0.5")) == [0.95, 0.6]
    assert len(hosted(client, "nms/1", _black_640(), confidence=0)["predictions"]) == 4
    assert confs(hosted(client, "nms/1", _black_640(), confidence=99)) == []


def test_classes_filter(tmp_path, store, make_client):
    scores = [[0.9, 0, 0], [0, 0.8, 0], [0, 0, 0.7], [0.6, 0, 0]]
    client = _nms_client(tmp_path, store, make_client, _spread_boxes(4), scores)

    def classes(**q):
        return [p["class"] for p in hosted(client, "nms/1", _black_640(), **q)["predictions"]]

    assert classes() == ["cat", "dog", "bird", "cat"]
    assert classes(classes="cat") == ["cat", "cat"]
    assert classes(classes="bird,dog") == ["dog", "bird"]
    assert classes(classes=" dog , bird ") == ["dog", "bird"]
    assert classes(classes="zebra") == []
    assert classes(classes="") == ["cat", "dog", "bird", "cat"]


def test_max_detections(tmp_path, store, make_client):
    scores = [[0.5 + 0.05 * i, 0, 0] for i in range(8)]
    client = _nms_client(tmp_path, store, make_client, _spread_boxes(8), scores)
    assert len(hosted(client, "nms/1", _black_640())["predictions"]) == 8
    body = hosted(client, "nms/1", _black_640(), max_detections=3)
    assert [p["confidence"] for p in body["predictions"]] == [0.85, 0.8, 0.75]
    body = hosted(client, "nms/1", _black_640(), max_detections=1)
    assert len(body["predictions"]) == 1


def test_full_size_head_many_candidates(tmp_path, store, make_client):
    """A real-size [1, 7, 8400] head: thousands of overlapping low boxes, a few good ones."""
    rng = np.random.default_rng(0)
    n = 8400
    head = np.zeros((1, 4 + 3, n), np.float32)
    head[0, 0] = rng.uniform(50, 590, n)
    head[0, 1] = rng.uniform(50, 590, n)
    head[0, 2:4] = rng.uniform(10, 60, (2, n))
    head[0, 4:] = rng.uniform(0, 0.3, (3, n))  # all below the default threshold
    head[0, :, 0] = [320, 320, 100, 100, 0.97, 0, 0]
    head[0, :, 1] = [322, 321, 100, 100, 0.91, 0, 0]  # merges into the first
    head[0, :, 2] = [320, 320, 100, 100, 0, 0.88, 0]  # other class: kept
    meta = ultralytics_meta("detect", NAMES)
    add_model(store, "big/1", constant_model(tmp_path / "big.onnx", [head], metadata=meta))
    client = make_client(store)
    body = hosted(client, "big/1", _black_640())
    assert [(p["class"], p["confidence"]) for p in body["predictions"]] == [
        ("cat", 0.97),
        ("dog", 0.88),
    ]
    body = hosted(client, "big/1", _black_640(), confidence=1, max_detections=50)
    assert len(body["predictions"]) == 50


# -- other export layouts -------------------------------------------------------------------------


def test_end2end_export(tmp_path, store, make_client):
    """[1, 300, 6] = (x1, y1, x2, y2, score, class) in input pixels, NMS done in-graph."""
    width, height = 1280, 720
    r, left, top = letterbox_reference(width, height, 640, 640)
    rows = np.zeros((1, 300, 6), np.float32)
    targets = [(100.0, 50.0, 400.0, 300.0), (640.0, 360.0, 1280.0, 720.0), (10, 10, 20, 20)]
    for i, ((x1, y1, x2, y2), s, c) in enumerate(
        zip(targets, (0.92, 0.81, 0.3), (1, 2, 0), strict=True)
    ):
        rows[0, i] = [x1 * r + left, y1 * r + top, x2 * r + left, y2 * r + top, s, c]
    meta = ultralytics_meta("detect", NAMES, end2end="True")
    add_model(store, "e2e/1", constant_model(tmp_path / "e2e.onnx", [rows], metadata=meta))
    assert store.manifest("e2e/1").postprocess["format"] == "end2end"
    client = make_client(store)
    img = png_bytes(np.zeros((height, width, 3), np.uint8))
    body = hosted(client, "e2e/1", img)
    assert [(p["class"], p["confidence"]) for p in body["predictions"]] == [
        ("dog", 0.92),
        ("bird", 0.81),
    ]
    for got, want in zip(_boxes_of(body), targets[:2], strict=True):
        np.testing.assert_allclose(got, want, atol=0.011)
    assert [p["class"] for p in hosted(client, "e2e/1", img, classes="bird")["predictions"]] == [
        "bird"
    ]
    assert len(hosted(client, "e2e/1", img, max_detections=1)["predictions"]) == 1
    assert len(hosted(client, "e2e/1", img, confidence=25)["predictions"]) == 3


def test_v5_layout_objectness(tmp_path, store, make_client):
    """YOLOv5 (anchor) exports: [1, N, 5 + nc] rows with objectness x class score."""
    rows = np.zeros((1, 32, 5 + 3), np.float32)
    rows[0, 0] = [100, 100, 50, 50, 0.9, 0.1, 0.95, 0.0]  # dog: 0.9 * 0.95 = 0.855
    rows[0, 1] = [300, 300, 50, 50, 0.5, 0.9, 0.0, 0.0]  # cat: 0.45
    rows[0, 2] = [500, 500, 50, 50, 0.3, 0.9, 0.0, 0.0]  # cat: 0.27 (below 0.4)
    weights = constant_model(tmp_path / "v5.onnx", [rows])
    folder = peer_layout(
        tmp_path / "peer5",
        weights,
        task="object-detection",
        class_names=NAMES,
        resize="Stretch to",
        model_type="yolov5s",
    )
    add_model(store, "v5/1", folder)
    assert store.manifest("v5/1").postprocess["format"] == "v5"
    client = make_client(store)
    body = hosted(client, "v5/1", _black_640())
    got = [(p["class"], p["confidence"], p["x"], p["y"]) for p in body["predictions"]]
    assert got == [("dog", 0.855, 100.0, 100.0), ("cat", 0.45, 300.0, 300.0)]

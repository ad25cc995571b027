"""Semantic segmentation: [1, C, H, W] logits and [1, 1, H, W] foreground probability.

The model's output plane is a known label map; each image pixel's expected class is the
label under its centre mapped into the plane (through letterbox or stretch). Pixels
whose neighbourhood in the plane is not uniform (edges) are left out of the comparison.
"""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from tests.conftest import add_model, hosted
from tests.support.synthetic import constant_model, letterbox_reference, peer_layout, png_bytes


def _decode_mask(b64: str) -> np.ndarray:
    raw = base64.b64decode(b64)
    assert raw.startswith(b"\x89PNG")
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 2, "segmentation_mask must be single channel"
    return img


def _labels(plane_hw, regions):
    """A label map: 0 everywhere, then each (class, x0, y0, x1, y1) rectangle in cells."""
    lab = np.zeros(plane_hw, np.int64)
    for c, x0, y0, x1, y1 in regions:
        lab[y0:y1, x0:x1] = c
    return lab


def _logits(labels, num_classes, strong=6.0, weak_region=None):
    out = np.zeros((1, num_classes, *labels.shape), np.float32)
    for c in range(num_classes):
        out[0, c][labels == c] = strong
    if weak_region is not None:  # nearly flat logits: the best class is < 50 % sure
        x0, y0, x1, y1 = weak_region
        out[0, :, y0:y1, x0:x1] = 0.0
        out[0, num_classes - 1, y0:y1, x0:x1] = 0.3
    return out


def _expected(labels, width, height, transform, margin=2):
    """(expected class per image pixel, where it is safe to compare)."""
    ph, pw = labels.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    px, py = transform(xs, ys)  # plane coordinates (cells)
    ix = np.clip(np.floor(px).astype(int), 0, pw - 1)
    iy = np.clip(np.floor(py).astype(int), 0, ph - 1)
    k = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    lab8 = labels.astype(np.uint8)
    uniform = cv2.erode(lab8, k) == cv2.dilate(lab8, k)
    return labels[iy, ix], uniform[iy, ix]


def _config(tmp_path, names, resize="letterbox", size=(128, 128), post=None):
    cfg = {
        "task": "semantic-segmentation",
        "family": "semantic",
        "weights": "model.onnx",
        "class_names": names,
        "preprocess": {"resize": resize, "size": list(size), "pad_value": 0},
        "postprocess": post or {},
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("plane", [128, 32])  # full input resolution, and 1/4
def test_multiclass_logits_letterbox(tmp_path, store, make_client, plane):
    names = ["background", "road", "car"]
    s = plane / 32  # regions given on a 32-cell grid
    q = lambda *v: [int(x * s) for x in v]  # noqa: E731
    labels = _labels(
        (plane, plane), [(1, *q(0, 8, 16, 24)), (2, *q(16, 16, 32, 24)), (1, *q(20, 8, 28, 12))]
    )
    weak = q(2, 20, 8, 23)
    logits = _logits(labels, 3, weak_region=weak)
    path = constant_model(tmp_path / "model.onnx", [logits], input_shape=(1, 3, 128, 128))
    add_model(store, "sem/1", path, config=_config(tmp_path, names))
    client = make_client(store)
    width, height = 256, 128  # letterbox: 128 x 64 placed at top = 32
    r, left, top = letterbox_reference(width, height, 128, 128)
    assert (r, left, top) == (0.5, 0, 32)
    k = plane / 128

    def to_plane(x, y):
        return (x * r + left) * k, (y * r + top) * k

    body = hosted(client, "sem/1", png_bytes(np.zeros((height, width, 3), np.uint8)))
    assert body["image"] == {"width": width, "height": height}
    assert body["class_map"] == {"0": "background", "1": "road", "2": "car"}
    mask = _decode_mask(body["segmentation_mask"])
    assert mask.shape == (height, width)
    weak_labels = labels.copy()
    wx0, wy0, wx1, wy1 = weak
    weak_labels[wy0:wy1, wx0:wx1] = 0  # below the 50 % default: background
    margin = 2 if plane > 32 else 1
    want, safe = _expected(weak_labels, width, height, to_plane, margin)
    assert safe.mean() > 0.4
    np.testing.assert_array_equal(mask[safe], want[safe])
    assert set(np.unique(mask).tolist()) == {0, 1, 2}
    assert body["present_class_ids"] == [0, 1, 2]
    conf = _decode_mask(body["confidence_mask"])
    assert conf.shape == (height, width)

    # a lower threshold lets the weak region keep its (best) class, 2
    body = hosted(client, "sem/1", png_bytes(np.zeros((height, width, 3), np.uint8)), confidence=30)
    mask = _decode_mask(body["segmentation_mask"])
    want, safe = _expected(labels_with(labels, weak, 2), width, height, to_plane, margin)
    np.testing.assert_array_equal(mask[safe], want[safe])


def labels_with(labels, region, value):
    out = labels.copy()
    x0, y0, x1, y1 = region
    out[y0:y1, x0:x1] = value
    return out


def test_many_classes_nearest(tmp_path, store, make_client):
    """More than 8 classes take the argmax-then-nearest path; ids stay exact (stretch)."""
    names = [f"c{i}" for i in range(12)]
    regions = [
        (i, (i % 4) * 8, (i // 4) * 10, (i % 4) * 8 + 8, (i // 4) * 10 + 10) for i in range(12)
    ]
    labels = _labels((32, 32), regions)
    path = constant_model(
        tmp_path / "model.onnx", [_logits(labels, 12)], input_shape=(1, 3, 128, 128)
    )
    add_model(store, "many/1", path, config=_config(tmp_path, names, resize="stretch"))
    client = make_client(store)
    width, height = 300, 200

    def to_plane(x, y):
        return x * 32 / width, y * 32 / height

    body = hosted(client, "many/1", png_bytes(np.zeros((height, width, 3), np.uint8)))
    mask = _decode_mask(body["segmentation_mask"])
    assert mask.shape == (height, width)
    want, safe = _expected(labels, width, height, to_plane, margin=1)
    np.testing.assert_array_equal(mask[safe], want[safe])
    assert len(body["class_map"]) == 12


def _foreground_model(tmp_path, plane=64):
    prob = np.full((1, 1, plane, plane), 0.2, np.float32)
    prob[0, 0, 16:48, 8:40] = 0.9  # object
    prob[0, 0, 16:48, 44:56] = 0.45  # doubtful
    return prob


def test_foreground_probability_peer_layout(tmp_path, store, make_client):
    weights = constant_model(
        tmp_path / "w.onnx", [_foreground_model(tmp_path)], input_shape=(1, 3, 64, 64)
    )
    folder = peer_layout(
        tmp_path / "peer",
        weights,
        task="semantic-segmentation",
        class_names=["background", "person"],
        size=(64, 64),
    )
    add_model(store, "fg/1", folder)
    client = make_client(store)
    width, height = 640, 320  # stretch: x / 10, y / 5 into the plane

    def to_plane(x, y):
        return x * 64 / width, y * 64 / height

    obj = np.zeros((64, 64), np.int64)
    obj[16:48, 8:40] = 1
    img = png_bytes(np.zeros((height, width, 3), np.uint8))
    body = hosted(client, "fg/1", img)
    assert body["class_map"] == {"0": "background", "1": "person"}
    mask = _decode_mask(body["segmentation_mask"])
    assert mask.shape == (height, width)
    want, safe = _expected(obj, width, height, to_plane)
    np.testing.assert_array_equal(mask[safe], want[safe])

    both = obj.copy()
    both[16:48, 44:56] = 1
    mask = _decode_mask(hosted(client, "fg/1", img, confidence=40)["segmentation_mask"])
    want, safe = _expected(both, width, height, to_plane)
    np.testing.assert_array_equal(mask[safe], want[safe])
    mask = _decode_mask(hosted(client, "fg/1", img, confidence=95)["segmentation_mask"])
    assert mask.max() == 0

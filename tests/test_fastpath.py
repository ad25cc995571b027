"""The opt-in fast preprocessing (`?fast=true`, or `preprocess.fast_decode` per model):
JPEGs decoded DCT-scaled, Pillow-resized models resized by OpenCV instead. Results stay in
the full photo's pixels and agree with the exact path; without the opt-in nothing changes."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import cvserve.models.preprocess as pre
from cvserve.engine import fastpath
from tests.conftest import add_model, hosted
from tests.support.synthetic import (
    jpeg_bytes,
    png_bytes,
    rect_finder_model,
    rect_image,
    ultralytics_meta,
)


def _mean_classifier(path, size: int = 224):
    """Two classes whose probabilities are the mean of the input's red channel and 1 - it:
    an answer that depends on every pixel the model sees."""
    nodes = [
        helper.make_node("Slice", ["images", "s0", "s1", "s1"], ["red"]),
        helper.make_node("ReduceMean", ["red"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["one", "m"], ["rest"]),
        helper.make_node("Concat", ["m", "rest"], ["flat"], axis=0),
        helper.make_node("Reshape", ["flat", "shape"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1], np.int64), "s1"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _gradient_photo(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    red = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    return np.stack([red, (yy * 255 // max(h - 1, 1)).astype(np.uint8), red // 2], -1)


def test_reduce_factor_never_decodes_below_what_the_model_resizes_to():
    assert fastpath.reduce_factor(1920, 1080, (640, 640), "letterbox") == 2
    assert fastpath.reduce_factor(1920, 1080, (224, 224), "center-crop") == 4
    assert fastpath.reduce_factor(4000, 3000, (224, 224), "center-crop") == 8
    assert fastpath.reduce_factor(640, 480, (640, 640), "letterbox") == 1
    assert fastpath.reduce_factor(1920, 1080, (512, 512), "stretch") == 2
    assert fastpath.reduce_factor(1920, 1080, (0, 0), "none") == 1
    for w, h in [(1920, 1080), (1080, 1920), (3000, 4000), (777, 333)]:
        for size in [(640, 640), (224, 224), (320, 256)]:
            f = fastpath.reduce_factor(w, h, size, "letterbox")
            r = min(size[0] / w, size[1] / h)
            assert -(-w // f) >= w * r and -(-h // f) >= h * r


def test_fast_detection_lands_on_the_full_photo(tmp_path, store, make_client, monkeypatch):
    meta = ultralytics_meta("detect", ["thing"])
    add_model(store, "det/1", rect_finder_model(tmp_path / "det.onnx", metadata=meta))
    client = make_client(store)
    photo = jpeg_bytes(rect_image(1920, 1080, (400, 300, 1400, 900)), quality=95)
    exact = hosted(client, "det/1", photo)["predictions"][0]
    reductions = []
    original = fastpath.decode_image
    monkeypatch.setattr(
        fastpath,
        "decode_image",
        lambda data, **k: reductions.append(k.get("reduce", 1)) or original(data, **k),
    )
    fast = hosted(client, "det/1", photo, fast="true")["predictions"][0]
    assert reductions == [2]  # decoded at 960x540 for the 640 input
    for key in ("x", "y", "width", "height"):
        assert abs(fast[key] - exact[key]) <= 6.0, (key, fast, exact)
    # the box is the rectangle, in the full photo's pixels
    assert abs(exact["x"] - 900) <= 3 and abs(exact["width"] - 1000) <= 6
    # a PNG has no DCT to scale: the fast flag decodes it exactly
    png = png_bytes(rect_image(1920, 1080, (400, 300, 1400, 900)))
    p_fast = hosted(client, "det/1", png, fast="true")["predictions"][0]
    p_exact = hosted(client, "det/1", png)["predictions"][0]
    assert {k: p_fast[k] for k in ("x", "y", "width", "height")} == {
        k: p_exact[k] for k in ("x", "y", "width", "height")
    }


def _classifier_store(tmp_path, store, *, fast_decode: bool = False):
    cfg = {
        "task": "classification",
        "family": "classifier",
        "weights": "model.onnx",
        "class_names": ["red", "rest"],
        "postprocess": {"activation": "none"},
        "preprocess": {
            "resize": "center-crop",
            "interpolation": "pil-bilinear",
            "fast_decode": fast_decode,
        },
    }
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg))
    add_model(store, "cls/1", _mean_classifier(tmp_path / "model.onnx"), config=config)


@pytest.mark.parametrize("w,h", [(1920, 1080), (640, 480), (1080, 1920)])
def test_fast_classifier_skips_pillow_and_agrees(tmp_path, store, make_client, monkeypatch, w, h):
    _classifier_store(tmp_path, store)
    client = make_client(store)
    photo = jpeg_bytes(_gradient_photo(w, h), quality=95)
    calls = []
    original = pre._pil_bilinear
    monkeypatch.setattr(pre, "_pil_bilinear", lambda *a, **k: calls.append(1) or original(*a, **k))
    exact = hosted(client, "cls/1", photo)
    assert calls, "the exact path resizes with Pillow"
    calls.clear()
    fast = hosted(client, "cls/1", photo, fast="true")
    assert calls == [], "the fast path leaves nothing for Pillow to resize"
    assert fast["image"] == exact["image"] == {"width": w, "height": h}
    red_exact = {p["class"]: p["confidence"] for p in exact["predictions"]}["red"]
    red_fast = {p["class"]: p["confidence"] for p in fast["predictions"]}["red"]
    # the centre crop's mean red level, through two different resizes
    assert abs(red_fast - red_exact) < 0.01
    assert 0.3 < red_exact < 0.7


def test_per_model_fast_decode_and_exact_default(tmp_path, store, make_client, monkeypatch):
    _classifier_store(tmp_path, store, fast_decode=True)
    client = make_client(store)
    calls = []
    original = pre._pil_bilinear
    monkeypatch.setattr(pre, "_pil_bilinear", lambda *a, **k: calls.append(1) or original(*a, **k))
    hosted(client, "cls/1", jpeg_bytes(_gradient_photo(1920, 1080)))
    assert calls == []  # the model's own opt-in applies to every request


def test_fast_visualization_is_full_size(tmp_path, store, make_client):
    meta = ultralytics_meta("detect", ["thing"])
    add_model(store, "det/1", rect_finder_model(tmp_path / "det.onnx", metadata=meta))
    client = make_client(store)
    photo = jpeg_bytes(rect_image(1920, 1080, (400, 300, 1400, 900)))
    r = client.post(
        "/det/1",
        params={"fast": "true", "format": "image"},
        content=base64.b64encode(photo),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (1920, 1080)

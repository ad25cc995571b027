"""Classification, single- and multi-label, from Ultralytics metadata, a cvserve.json config,
and the peer layout (MULTICLASS), with softmax/sigmoid applied only to logits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import add_model, hosted
from tests.support.synthetic import constant_model, jpeg_bytes, peer_layout, ultralytics_meta

IMG = jpeg_bytes(np.full((113, 210, 3), 90, np.uint8))


def _config(tmp_path, names, *, multilabel=False, activation=None, name="cfg.json"):
    cfg = {
        "task": "classification",
        "family": "classifier",
        "weights": "model.onnx",
        "class_names": names,
        "multilabel": multilabel,
        "preprocess": {"resize": "stretch", "size": [224, 224]},
    }
    if activation:
        cfg["postprocess"] = {"activation": activation}
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def test_single_label_from_ultralytics_metadata(tmp_path, store, make_client):
    names = ["illustration", "real-image", "sketch"]
    probs = np.array([[0.2851, 0.7049, 0.01]], np.float32)
    meta = ultralytics_meta("classify", names, imgsz=224)
    path = constant_model(
        tmp_path / "cls.onnx", [probs], input_shape=(1, 3, 224, 224), metadata=meta
    )
    add_model(store, "cls/1", path)
    client = make_client(store)
    body = hosted(client, "cls/1", IMG, name="cropped-images-1.jpg")
    assert body["image"] == {"width": 210, "height": 113}
    assert [(p["class"], p["confidence"], p["class_id"]) for p in body["predictions"]] == [
        ("real-image", 0.7049, 1),
        ("illustration", 0.2851, 0),
        ("sketch", 0.01, 2),
    ]
    assert body["top"] == "real-image"
    assert body["confidence"] == 0.7049
    assert body["image_path"] == "cropped-images-1.jpg"
    assert body["prediction_type"] == "ClassificationModel"
    assert isinstance(body["time"], float)


def test_softmax_applied_to_logits_only(tmp_path, store, make_client):
    names = ["a", "b", "c"]
    logits = np.array([[2.0, 1.0, -1.0]], np.float32)
    path = constant_model(tmp_path / "model.onnx", [logits], input_shape=(1, 3, 224, 224))
    add_model(store, "logits/1", path, config=_config(tmp_path, names))
    client = make_client(store)
    body = hosted(client, "logits/1", IMG)
    e = np.exp([2.0, 1.0, -1.0])
    want = e / e.sum()
    assert [p["class"] for p in body["predictions"]] == ["a", "b", "c"]
    assert [p["confidence"] for p in body["predictions"]] == [round(float(v), 4) for v in want]
    assert sum(p["confidence"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-3)


def _multi_check(body, want: dict[str, float], predicted: list[str]):
    assert isinstance(body["predictions"], dict)
    assert set(body["predictions"]) == set(want)
    for name, conf in want.items():
        assert body["predictions"][name]["confidence"] == pytest.approx(conf, abs=1e-4)
    assert body["predicted_classes"] == predicted
    assert body["prediction_type"] == "ClassificationModel"
    assert "top" not in body


def test_multilabel_via_config(tmp_path, store, make_client):
    names = ["dent", "severe", "scratch", "rust"]
    probs = np.array([[0.5253, 0.5804, 0.1, 0.5]], np.float32)  # probabilities: kept as is
    path = constant_model(tmp_path / "model.onnx", [probs], input_shape=(1, 3, 224, 224))
    add_model(store, "ml/1", path, config=_config(tmp_path, names, multilabel=True))
    client = make_client(store)
    body = hosted(client, "ml/1", IMG, name="car-model-343.jpg")
    want = dict(zip(names, [0.5253, 0.5804, 0.1, 0.5], strict=True))
    _multi_check(body, want, ["dent", "severe", "rust"])  # rust: exactly at the threshold
    assert body["image_path"] == "car-model-343.jpg"
    _multi_check(hosted(client, "ml/1", IMG, confidence=55), want, ["severe"])
    _multi_check(hosted(client, "ml/1", IMG, confidence="0.05"), want, names)


def test_multilabel_peer_layout_with_logits(tmp_path, store, make_client):
    names = ["cat", "dog", "hat"]
    logits = np.array([[2.0, -3.0, 0.5]], np.float32)  # logits: sigmoid applied
    weights = constant_model(tmp_path / "w.onnx", [logits], input_shape=(1, 3, 224, 224))
    folder = peer_layout(
        tmp_path / "peer",
        weights,
        task="classification",
        class_names=names,
        multiclass=True,
        size=(224, 224),
        model_type="vit",
    )
    add_model(store, "peerml/1", folder)
    info = store.manifest("peerml/1")
    assert info.multilabel is True
    client = make_client(store)
    body = hosted(client, "peerml/1", IMG)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want = {n: sig(v) for n, v in zip(names, [2.0, -3.0, 0.5], strict=True)}
    _multi_check(body, want, ["cat", "hat"])


def test_single_label_peer_layout(tmp_path, store, make_client):
    names = ["no", "yes"]
    weights = constant_model(
        tmp_path / "w.onnx", [np.array([[0.25, 0.75]], np.float32)], input_shape=(1, 3, 224, 224)
    )
    folder = peer_layout(
        tmp_path / "peer", weights, task="classification", class_names=names, size=(224, 224)
    )
    add_model(store, "peer1/1", folder)
    client = make_client(store)
    body = hosted(client, "peer1/1", IMG)
    assert body["top"] == "yes" and body["confidence"] == 0.75
    assert [p["class"] for p in body["predictions"]] == ["yes", "no"]
    assert body["image_path"] == ""  # no name sent

"""`cvserve models quantize`: a small convolutional classifier built with onnx.helper is
quantized to int8; the result must load, be smaller, hold int8 weights, and agree with the
float model on the photos it was calibrated on."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cvserve.errors import BadRequest
from cvserve.models.base import InferParams, Task
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.results import Detections
from cvserve.tools.quantize import (
    box_agreement,
    int8_id,
    quantize_model,
    runtime_for_quantize,
)

SIDE = 32  # input is (1, 3, SIDE, SIDE)
WIDTH = 64  # channels of the two 3x3 convolutions (most of the weights: what int8 shrinks)
CLASSES = ["red", "green", "blue", "grey"]


def _classifier(path: Path, seed: int = 0) -> None:
    """conv3x3 -> relu -> conv3x3 -> relu -> global average -> gemm: four logits."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    inits = [
        init("w1", (WIDTH, 3, 3, 3), 0.3),
        init("b1", (WIDTH,), 0.05),
        init("w2", (WIDTH, WIDTH, 3, 3), 0.05),
        init("b2", (WIDTH,), 0.05),
        init("w3", (len(CLASSES), WIDTH), 1.0),
        init("b3", (len(CLASSES),), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(CLASSES)])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_model(root: Path, model_id: str = "tiny/1", **manifest: object) -> None:
    folder = root / model_id
    folder.mkdir(parents=True)
    _classifier(folder / "model.onnx")
    body = {
        "task": "classification",
        "family": "classifier",
        "class_names": CLASSES,
        "preprocess": {"resize": "stretch", "size": [SIDE, SIDE]},
        "postprocess": {"activation": "softmax"},
        **manifest,
    }
    (folder / "cvserve.json").write_text(json.dumps(body))


def _photos(n: int = 8) -> list[np.ndarray]:
    """Smooth colour fields with noise: varied enough to calibrate every channel."""
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:48, 0:64].astype(np.float32)
    out = []
    for i in range(n):
        base = rng.uniform(0, 255, 3)
        tilt = rng.uniform(-2, 2, 3)
        img = base + tilt * (xs if i % 2 else ys)[..., None] + rng.normal(0, 12, (48, 64, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    _write_model(tmp_path)
    return ModelStore(tmp_path, runtime_for_quantize())


def _int8_initializers(path: Path) -> list[str]:
    model = onnx.load(str(path))
    return [t.name for t in model.graph.initializer if t.data_type == TensorProto.INT8]


def test_static_int8_loads_is_smaller_and_agrees(store: ModelStore) -> None:
    photos = _photos()
    report = quantize_model(store, "tiny/1", photos, repeats=2)
    assert report.model_id == "tiny/1-int8" == int8_id("tiny/1")
    assert report.method == "static" and report.photos == len(photos)
    out = store.folder(report.model_id) / "model.onnx"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": np.zeros((1, 3, SIDE, SIDE), np.float32)})
    assert logits.shape == (1, len(CLASSES))
    assert len(_int8_initializers(out)) >= 2  # both convolutions' weights
    float_bytes = (store.folder("tiny/1") / "model.onnx").stat().st_size
    assert out.stat().st_size < 0.5 * float_bytes
    assert report.int8_mb < report.float_mb
    assert report.float_ms > 0 and report.int8_ms > 0 and report.speedup > 0
    agreement = report.agreement
    assert set(agreement) == {"top1_agreement", "max_abs_score_diff"}
    assert agreement["top1_agreement"] >= 0.75
    assert 0.0 <= agreement["max_abs_score_diff"] < 0.1
    manifest = store.manifest(report.model_id)
    assert manifest.source["quantized_from"] == "tiny/1"
    assert manifest.source["quantization"] == f"int8 static, calibrated on {len(photos)} photos"
    # The int8 model is a stored model like any other, and the float one is kept.
    assert store.get(report.model_id).predict(
        photos[0], InferParams.defaults_for(Task.CLASSIFICATION)
    ).result.scores.shape == (4,)
    assert store.exists("tiny/1")


def test_dynamic_needs_no_calibration(store: ModelStore) -> None:
    report = quantize_model(store, "tiny/1", _photos(2), method="dynamic", repeats=1)
    assert report.method == "dynamic"
    assert store.manifest(report.model_id).source["quantization"] == "int8 dynamic"
    assert _int8_initializers(store.folder(report.model_id) / "model.onnx")


def test_refusals(store: ModelStore, tmp_path: Path) -> None:
    photos = _photos(2)
    with pytest.raises(BadRequest, match="static or dynamic"):
        quantize_model(store, "tiny/1", photos, method="fp4")
    with pytest.raises(BadRequest, match="at least one photo"):
        quantize_model(store, "tiny/1", [])
    quantize_model(store, "tiny/1", photos, repeats=1)
    with pytest.raises(BadRequest, match="already exists"):
        quantize_model(store, "tiny/1", photos, repeats=1)
    quantize_model(store, "tiny/1", photos, repeats=1, replace=True)  # --replace overwrites
    _write_model(tmp_path, "pair/1", files={"encoder": "model.onnx"})
    with pytest.raises(BadRequest, match="multi-file"):
        quantize_model(ModelStore(tmp_path, RuntimeOptions()), "pair/1", photos)
    assert not store.exists("pair/1-int8")


def test_box_agreement() -> None:
    def dets(*boxes: tuple[float, float, float, float, int]) -> Detections:
        arr = np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4)
        return Detections(
            arr, np.ones(len(boxes), np.float32), np.array([b[4] for b in boxes]), ["a", "b"]
        )

    same = dets((0, 0, 10, 10, 0), (20, 20, 30, 30, 1))
    assert box_agreement(same, same) == (1.0, 1.0)
    shifted = dets((0, 0, 10, 10, 0), (20, 25, 30, 30, 1))  # IoU 0.5: still matched
    f1, iou = box_agreement(same, shifted)
    assert f1 == 1.0 and iou == pytest.approx(0.75)
    other_class = dets((0, 0, 10, 10, 1))
    assert box_agreement(dets((0, 0, 10, 10, 0)), other_class)[0] == 0.0
    f1, iou = box_agreement(dets(), dets())
    assert f1 == 1.0 and iou != iou  # nothing to match: full agreement, no IoU


# -- the installed folder's mode -------------------------------------------------------------
@pytest.fixture()
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_the_int8_folder_has_the_normal_mode(store: ModelStore, umask: None, mask: int) -> None:
    """Not mkdtemp's 0700: 0777 less the umask, as any folder (and the float model's)."""
    os.umask(mask)
    report = quantize_model(store, "tiny/1", _photos(2), repeats=1)
    mode = stat.S_IMODE(store.folder(report.model_id).stat().st_mode)
    assert mode == 0o777 & ~mask

"""`cvserve models quantize`: a small convolutional classifier built with onnx.helper is
quantized to int8; the result must load, be smaller, hold int8 weights, and agree with the
float model on the photos it was calibrated on. Small graphs with the zoo's troubles: an
NMS-like Loop reading a tensor ONNX Runtime would abort on (coco-detect), a MoveNet with a
dynamic input (people-pose), a segmenter int8 breaks (salient); none is ever installed
unless it loads in a process of its own and agrees (or `force`)."""

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
from typer.testing import CliRunner

import cvserve.tools.quantize.graph as quantize
from cvserve.errors import BadRequest
from cvserve.models.base import InferParams, Task
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.results import Detections
from cvserve.tools.quantize import (
    AGREEMENT_FLOORS,
    QuantizeRefused,
    below_floor,
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


def _staging_left(root: Path) -> list[Path]:
    return sorted(root.glob(".staging-*"))


def _manifest(folder: Path, **body: object) -> None:
    (folder / "cvserve.json").write_text(json.dumps(body))


# -- a subgraph reading a quantized tensor (coco-detect's NMS Loop) --------------------------
def _loop_classifier(path: Path) -> None:
    """conv -> relu -> pool -> conv -> Reshape, whose output only a Loop's body reads (by
    name, as a TensorFlow SSD's NMS reads its scores), then + 1 after the Loop (as the
    SSD's class ids): four scores."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 4], np.int64), "shape"),
        numpy_helper.from_array(np.array(1, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["probs_2d"], ["step"]),  # an outer-scope tensor
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("step", TensorProto.FLOAT, [1, 4]),
        ],
    )
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["pooled"], name="pool"),
        helper.make_node("Conv", ["pooled", "w2"], ["c2"], name="conv2"),
        helper.make_node("Reshape", ["c2", "shape"], ["probs_2d"], name="reshape_in"),
        helper.make_node("Loop", ["trips", "go"], ["stacked"], name="loop", body=body),
        helper.make_node("Reshape", ["stacked", "shape"], ["flat_scores"], name="reshape_out"),
        helper.make_node("Add", ["flat_scores", "one"], ["scores"], name="plus_one"),
    ]
    graph = helper.make_graph(
        nodes,
        "loop-classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture()
def loop_store(tmp_path: Path) -> ModelStore:
    folder = tmp_path / "loop" / "1"
    folder.mkdir(parents=True)
    _loop_classifier(folder / "model.onnx")
    _manifest(
        folder,
        task="classification",
        family="classifier",
        class_names=CLASSES,
        preprocess={"resize": "stretch", "size": [SIDE, SIDE]},
        postprocess={"activation": "none"},
    )
    return ModelStore(tmp_path, runtime_for_quantize())


def test_a_tensor_a_subgraph_reads_stays_float(loop_store: ModelStore) -> None:
    """ONNX Runtime 1.32 aborts (SIGABRT) loading the QDQ graph where a DequantizeLinear
    feeds the Reshape the Loop reads: the conv making that tensor stays float."""
    graph = onnx.load(str(loop_store.folder("loop/1") / "model.onnx"))
    assert quantize._subgraph_fed_nodes(graph) == ["conv2", "reshape_in"]
    # After the last convolution everything is decoding and stays float, the Loop's inputs
    # and what follows it included; the convolutions only the Loop's body reads do not.
    head = quantize._head_nodes(graph)
    assert {"plus_one", "reshape_out", "loop", "reshape_in"} <= set(head)
    assert "conv1" not in head and "conv2" not in head
    report = quantize_model(loop_store, "loop/1", _photos(), repeats=1)
    out = loop_store.folder(report.model_id) / "model.onnx"
    assert {n for n in _int8_initializers(out) if n.endswith("_quantized")} == {"w1_quantized"}
    assert report.agreement["top1_agreement"] >= AGREEMENT_FLOORS["top1_agreement"]
    assert loop_store.get(report.model_id).predict(_photos(1)[0], InferParams()).result


def test_an_int8_model_onnx_runtime_aborts_on_is_not_installed(
    loop_store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the exclusion the int8 file aborts ONNX Runtime: proved in a process of its
    own, so this one lives, says why, and installs nothing."""
    monkeypatch.setattr(quantize, "_subgraph_fed_nodes", lambda model: [])
    with pytest.raises(QuantizeRefused) as info:
        quantize_model(loop_store, "loop/1", _photos(), repeats=1)
    message = info.value.message
    if "loaded in a separate process" not in message:  # pragma: no cover - another ORT
        pytest.skip(f"this ONNX Runtime ({ort.__version__}) loads the pattern: {message}")
    assert message.startswith("loop/1-int8 not installed: the int8 model does not load and run")
    assert "signal 6, SIGABRT" in message
    assert not loop_store.exists("loop/1-int8") and not _staging_left(loop_store.root)


def test_an_int8_model_that_fails_to_load_is_not_installed(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(src: Path, dst: Path, *args: object, **kwargs: object) -> None:
        dst.write_bytes(b"not an onnx file")

    monkeypatch.setattr(quantize, "quantize_file", broken)
    with pytest.raises(QuantizeRefused, match=r"the process failed \(exit status 1\): .*ONNX"):
        quantize_model(store, "tiny/1", _photos(2), repeats=1)
    assert not store.exists("tiny/1-int8") and not _staging_left(store.root)


# -- a MoveNet with a dynamic input (people-pose) --------------------------------------------
def _pose_rows() -> np.ndarray:
    """MultiPose [1, 6, 56]: two people (17 x (y, x, score), box, score), four empty rows."""
    rows = np.zeros((6, 56), np.float32)
    for person, (y0, x0) in enumerate([(0.1, 0.1), (0.3, 0.5)]):
        kp = np.stack(
            [np.linspace(y0, y0 + 0.4, 17), np.linspace(x0, x0 + 0.3, 17), np.full(17, 0.8)], 1
        )
        rows[person, :51] = kp.reshape(-1)
        rows[person, 51:56] = [y0, x0, y0 + 0.4, x0 + 0.3, 0.9]
    return rows[None]


def _movenet(path: Path) -> None:
    """int32 NHWC input of any size -> conv -> relu -> pool -> gemm: the pose rows plus a
    little of the picture (the gemm's weights are tiny: int8 moves nothing that counts)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.1).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal((6 * 56, 8)) * 1e-5).astype(np.float32), "g"),
        numpy_helper.from_array(_pose_rows().reshape(-1), "rows"),
        numpy_helper.from_array(np.array([1, 6, 56], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "g", "rows"], ["flat_rows"], name="head", transB=1),
        helper.make_node("Reshape", ["flat_rows", "shape"], ["output_0"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-movenet",
        [helper.make_tensor_value_info("input", TensorProto.INT32, [1, "h", "w", 3])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, [1, 6, 56])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_a_dynamic_movenet_calibrates_at_its_own_input_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No input size in the manifest (people-pose's): each photo is calibrated at the size
    MoveNet's own preprocessing gives it (longer side `input_side`, multiples of 32)."""
    folder = tmp_path / "pose" / "1"
    folder.mkdir(parents=True)
    _movenet(folder / "model.onnx")
    _manifest(
        folder,
        task="keypoint-detection",
        family="movenet",
        class_names=["person"],
        preprocess={
            "resize": "letterbox",
            "size": None,
            "pad_value": 0,
            "pad_align": "top-left",
            "layout": "nhwc",
            "dtype": "int32",
            "scale": 1 / 255,
            "interpolation": "linear",
        },  # fmt: skip
        postprocess={"input_side": 64},
    )
    store = ModelStore(tmp_path, runtime_for_quantize())
    wide = [np.ascontiguousarray(np.concatenate([p, p], axis=1)[:32]) for p in _photos(2)]
    photos = _photos(3) + wide  # 48x64 and 32x128
    seen: list[tuple[int, ...]] = []
    real = quantize.quantize_file

    def spy(src: Path, dst: Path, method: str, name: str, tensors: list, **kw: object) -> None:
        seen.extend(t.shape for t in tensors)
        real(src, dst, method, name, tensors, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(quantize, "quantize_file", spy)
    report = quantize_model(store, "pose/1", photos, repeats=1)
    # Longer side 64, then up to multiples of 32: 64x48 -> 64x64, 128x32 -> 64x16 -> 64x32.
    assert seen == [(1, 64, 64, 3)] * 3 + [(1, 32, 64, 3)] * 2
    model = store.get("pose/1")
    assert seen == [model.preprocess(p)[0].shape for p in photos]  # type: ignore[attr-defined]
    assert report.agreement["box_f1_iou50"] == 1.0
    quant = store.get(report.model_id).predict(photos[0], InferParams()).result
    assert isinstance(quant, Detections) and len(quant) == 2 and quant.keypoints is not None


def test_a_model_whose_preprocessing_fails_is_refused(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvserve.models.generic import Classifier

    def fails(self: Classifier, image: np.ndarray) -> tuple[np.ndarray, object]:
        raise ValueError("no input size")

    monkeypatch.setattr(Classifier, "preprocess", fails)
    with pytest.raises(QuantizeRefused, match=r"tiny/1: cannot calibrate: .*ValueError: no input"):
        quantize_model(store, "tiny/1", _photos(2), repeats=1)
    assert not store.exists("tiny/1-int8") and not _staging_left(store.root)


# -- semantic segmentation: agreement measured and enforced (salient) ------------------------
def _segmenter(path: Path, spread: float) -> None:
    """Foreground where red is above the middle: a 1x1 conv puts red (about -2..2) beside
    `spread` x green in one tensor, whose one int8 scale must then cover +-2 x `spread`; a
    float 1x1 conv and a sigmoid read red back. spread 1: int8 agrees; 500: red is lost."""
    w1 = np.zeros((2, 3, 1, 1), np.float32)
    w1[0, 0], w1[1, 1] = 1.0, spread
    w2 = np.array([8.0, 0.0], np.float32).reshape(1, 2, 1, 1)
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["feat"], name="mix"),
        helper.make_node("Conv", ["feat", "w2"], ["logit"], name="read"),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="prob"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-segmenter",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1, SIDE, SIDE])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _seg_store(root: Path, spread: float) -> ModelStore:
    folder = root / "seg" / "1"
    folder.mkdir(parents=True)
    _segmenter(folder / "model.onnx", spread)
    _manifest(
        folder,
        task="semantic-segmentation",
        family="semantic",
        class_names=["background", "foreground"],
        preprocess={
            "resize": "stretch",
            "size": [SIDE, SIDE],
            "scale": 1 / 255,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },  # fmt: skip
        postprocess={"kind": "foreground"},
    )
    return ModelStore(root, runtime_for_quantize())


def _split_photos(n: int = 6) -> list[np.ndarray]:
    """Red rising across each photo: foreground on one side, of a varying share."""
    rng = np.random.default_rng(2)
    xs = np.linspace(0, 255, 64, dtype=np.float32)[None, :]
    out = []
    for i in range(n):
        red = np.clip(xs + (i - n / 2) * 20 + rng.normal(0, 4, (48, 64)), 0, 255)
        rest = rng.uniform(0, 255, (48, 64, 2))
        out.append(np.dstack([red, rest]).astype(np.uint8))
    return out


def test_semantic_agreement_is_measured(tmp_path: Path) -> None:
    store = _seg_store(tmp_path, spread=1.0)
    report = quantize_model(store, "seg/1", _split_photos(), repeats=1)
    agreement = report.agreement
    assert {"fg_iou_mean", "fg_iou_min", "pixel_agreement", "max_abs_confidence_diff"} == set(
        agreement
    )
    assert agreement["fg_iou_mean"] >= 0.95 and agreement["pixel_agreement"] >= 0.95
    assert report.below_floor == [] and store.exists("seg/1-int8")


def test_semantic_int8_that_disagrees_is_refused_unless_forced(tmp_path: Path) -> None:
    """salient's case: written, loads, masks wrong. Refused with the numbers; --force
    installs it, and its manifest says so."""
    store = _seg_store(tmp_path, spread=500.0)
    photos = _split_photos()
    with pytest.raises(
        QuantizeRefused, match=r"seg/1-int8 not installed: it agrees too little"
    ) as info:
        quantize_model(store, "seg/1", photos, repeats=1)
    assert "fg_iou_mean" in info.value.message and "--force" in info.value.message
    assert not store.exists("seg/1-int8") and not _staging_left(store.root)
    report = quantize_model(store, "seg/1", photos, repeats=1, force=True)
    assert report.agreement["fg_iou_mean"] < AGREEMENT_FLOORS["fg_iou_mean"]
    assert report.below_floor and report.below_floor[0].startswith("fg_iou_mean ")
    note = store.manifest("seg/1-int8").source["quantization"]
    assert "installed by --force below the agreement floor (fg_iou_mean" in note


def test_below_floor() -> None:
    assert below_floor({"box_f1_iou50": 0.95, "matched_box_iou": 0.5}) == []
    assert below_floor({"box_f1_iou50": 0.85}) == ["box_f1_iou50 0.850 < 0.9"]
    assert below_floor({"top1_agreement": float("nan")}) == ["top1_agreement nan < 0.9"]
    assert below_floor({"fg_iou_mean": 0.95, "pixel_agreement": 0.5}) == [
        "pixel_agreement 0.500 < 0.9"
    ]
    assert below_floor({"instances": 0.0}) == ["no agreement measured on these photos"]
    assert set(AGREEMENT_FLOORS.values()) == {0.9}


def test_cli_refuses_and_forces(tmp_path: Path) -> None:
    from cvserve.cli import app
    from tests.support.synthetic import png_bytes

    _seg_store(tmp_path / "models", spread=500.0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(_split_photos()):
        (photos / f"{i}.png").write_bytes(png_bytes(p))
    args = ["models", "quantize", "seg/1", "--models-dir", str(tmp_path / "models")]
    args += ["--photos", str(photos)]
    refused = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert refused.exit_code == 2, refused.output
    assert "seg/1-int8 not installed: it agrees too little" in refused.output
    forced = CliRunner().invoke(app, [*args, "--force"], env={"COLUMNS": "200"})
    assert forced.exit_code == 0, forced.output
    assert "agreement with the float model on 6 photos: fg_iou_mean" in forced.output
    assert "installed by --force below the agreement floor" in forced.output


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

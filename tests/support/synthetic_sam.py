"""A tiny SAM-shaped ONNX encoder/decoder pair whose masks are known exactly.

Same input/output names and shapes as segment-anything's standard export (see
cvserve.models.sam). The decoder ignores the image and paints, in original image pixels:
- a disc of radius `radius` around every foreground point (label 1),
- the box given by the corner points (labels 2 and 3), when there is one.
Logits are positive inside, negative outside; `iou_predictions` is always `score`.

The encoder does real, pointless work (`encoder_work` 4096x256x256 MatMuls) so that the
embedding cache has a measurable effect; `decoder_work` does the same for the decoder, to
make jobs slow in the crash test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODEL_ID = "mobilesam/1"
OPSET = 17
BIG = 1.0e6


def _const(
    name: str, value: np.ndarray | float | int, dtype: type = np.float32
) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _matmul_chain(nodes: list, inits: list, src: str, steps: int, prefix: str) -> str:
    """`steps` MatMul+Tanh on a [4096, 256] tensor with one orthogonal weight (norms stay sane)."""
    if steps <= 0:
        return src
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((256, 256)))
    inits.append(_const(f"{prefix}_w", q.astype(np.float32)))
    cur = src
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [cur, f"{prefix}_w"], [f"{prefix}_mm{i}"]))
        nodes.append(helper.make_node("Tanh", [f"{prefix}_mm{i}"], [f"{prefix}_t{i}"]))
        cur = f"{prefix}_t{i}"
    return cur


def build_encoder(work: int = 12) -> onnx.ModelProto:
    nodes: list = []
    inits: list = [
        _const("conv_w", np.full((256, 3, 1, 1), 1.0 / 3.0)),
        _const("shape_flat", [256, 4096], np.int64),
        _const("shape_out", [1, 256, 64, 64], np.int64),
    ]
    nodes += [
        helper.make_node(
            "AveragePool", ["images"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]
        ),
        helper.make_node("Conv", ["pooled", "conv_w"], ["feat"]),  # [1, 256, 64, 64]
        helper.make_node("Reshape", ["feat", "shape_flat"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["rows"], perm=[1, 0]),  # [4096, 256]
    ]
    out = _matmul_chain(nodes, inits, "rows", work, "enc")
    nodes += [
        helper.make_node("Transpose", [out], ["cols"], perm=[1, 0]),
        helper.make_node("Reshape", ["cols", "shape_out"], ["image_embeddings"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic_sam_encoder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 1024, 1024])],
        [helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, 256, 64, 64])],
        inits,
    )
    return _finish(graph)


def build_decoder(radius: float = 20.0, score: float = 0.9, work: int = 0) -> onnx.ModelProto:
    n = helper.make_node
    inits: list = [
        _const("big", BIG),
        _const("neg_big", -BIG),
        _const("r2", radius * radius),
        _const("one024", 1024.0),
        _const("zero_i", 0, np.int64),
        _const("one_i", 1, np.int64),
        _const("idx0", [0], np.int64),
        _const("idx1", [1], np.int64),
        _const("lab_fg", 1.0),
        _const("lab_tl", 2.0),
        _const("lab_br", 3.0),
        _const("shape_n11", [-1, 1, 1], np.int64),
        _const("shape_h1", [-1, 1], np.int64),
        _const("shape_1w", [1, -1], np.int64),
        _const("shape_11hw", [1, 1, 0, 0], np.int64),
        _const("score", [[score]]),
        _const("zero_f", 0.0),
        _const("shape_flat", [256, 4096], np.int64),
    ]
    nodes = [
        # Image size and the 1024-frame -> pixel scale.
        n("Gather", ["orig_im_size", "idx0"], ["h_f"], axis=0),
        n("Gather", ["orig_im_size", "idx1"], ["w_f"], axis=0),
        n("Max", ["h_f", "w_f"], ["long_f"]),
        n("Div", ["long_f", "one024"], ["scale"]),
        n("Cast", ["h_f"], ["h_i1"], to=TensorProto.INT64),
        n("Cast", ["w_f"], ["w_i1"], to=TensorProto.INT64),
        n("Squeeze", ["h_i1"], ["h_i"]),
        n("Squeeze", ["w_i1"], ["w_i"]),
        n("Range", ["zero_i", "h_i", "one_i"], ["ys_i"]),
        n("Range", ["zero_i", "w_i", "one_i"], ["xs_i"]),
        n("Cast", ["ys_i"], ["ys_f"], to=TensorProto.FLOAT),
        n("Cast", ["xs_i"], ["xs_f"], to=TensorProto.FLOAT),
        n("Reshape", ["ys_f", "shape_h1"], ["ys"]),  # [H, 1]
        n("Reshape", ["xs_f", "shape_1w"], ["xs"]),  # [1, W]
        # Prompt points back in image pixels: [N].
        n("Mul", ["point_coords", "scale"], ["pc_px"]),
        n("Split", ["pc_px"], ["px3", "py3"], axis=2),
        n("Reshape", ["px3", "shape_n11"], ["px"]),  # [N, 1, 1]
        n("Reshape", ["py3", "shape_n11"], ["py"]),
        n("Reshape", ["point_labels", "shape_n11"], ["lab"]),
        # Discs around foreground points: max over N of r^2 - d^2.
        n("Sub", ["xs", "px"], ["dx"]),
        n("Sub", ["ys", "py"], ["dy"]),
        n("Mul", ["dx", "dx"], ["dx2"]),
        n("Mul", ["dy", "dy"], ["dy2"]),
        n("Add", ["dx2", "dy2"], ["d2"]),  # [N, H, W]
        n("Sub", ["r2", "d2"], ["disc"]),
        n("Equal", ["lab", "lab_fg"], ["is_fg"]),
        n("Where", ["is_fg", "disc", "neg_big"], ["disc_fg"]),
        n("ReduceMax", ["disc_fg"], ["disc_max"], axes=[0], keepdims=0),  # [H, W]
        # Box from the corner points (absent: corners at -BIG, so the box is empty).
        n("Equal", ["lab", "lab_tl"], ["is_tl"]),
        n("Equal", ["lab", "lab_br"], ["is_br"]),
        n("Where", ["is_tl", "px", "neg_big"], ["x1s"]),
        n("Where", ["is_tl", "py", "neg_big"], ["y1s"]),
        n("Where", ["is_br", "px", "neg_big"], ["x2s"]),
        n("Where", ["is_br", "py", "neg_big"], ["y2s"]),
        n("ReduceMax", ["x1s"], ["x1"], keepdims=0),
        n("ReduceMax", ["y1s"], ["y1"], keepdims=0),
        n("ReduceMax", ["x2s"], ["x2"], keepdims=0),
        n("ReduceMax", ["y2s"], ["y2"], keepdims=0),
        n("Sub", ["xs", "x1"], ["bl"]),
        n("Sub", ["x2", "xs"], ["br"]),
        n("Sub", ["ys", "y1"], ["bt"]),
        n("Sub", ["y2", "ys"], ["bb"]),
        n("Min", ["bl", "br"], ["bx"]),  # [1, W]
        n("Min", ["bt", "bb"], ["by"]),  # [H, 1]
        n("Min", ["bx", "by"], ["box"]),  # [H, W]
        n("Max", ["disc_max", "box"], ["logits"]),
        n("Unsqueeze", ["logits", "idx0"], ["logits3"]),
        n("Unsqueeze", ["logits3", "idx0"], ["masks_pre"]),
    ]
    # Optional busy work on the embedding, folded into the score as +0 so it is not pruned.
    nodes += [n("Reshape", ["image_embeddings", "shape_flat"], ["emb_flat"])]
    nodes += [n("Transpose", ["emb_flat"], ["emb_rows"], perm=[1, 0])]
    busy = _matmul_chain(nodes, inits, "emb_rows", work, "dec")
    nodes += [
        n("ReduceMean", [busy], ["busy_mean"], keepdims=0),
        n("Mul", ["busy_mean", "zero_f"], ["busy_zero"]),
        n("Add", ["score", "busy_zero"], ["iou_predictions"]),
        n("Add", ["masks_pre", "busy_zero"], ["masks"]),
        n("Identity", ["mask_input"], ["low_res_masks"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic_sam_decoder",
        [
            helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, 256, 64, 64]),
            helper.make_tensor_value_info("point_coords", TensorProto.FLOAT, [1, "num_points", 2]),
            helper.make_tensor_value_info("point_labels", TensorProto.FLOAT, [1, "num_points"]),
            helper.make_tensor_value_info("mask_input", TensorProto.FLOAT, [1, 1, 256, 256]),
            helper.make_tensor_value_info("has_mask_input", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("orig_im_size", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, 1, "h", "w"]),
            helper.make_tensor_value_info("iou_predictions", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("low_res_masks", TensorProto.FLOAT, [1, 1, 256, 256]),
        ],
        inits,
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_sam_model(
    store_root: Path,
    model_id: str = MODEL_ID,
    *,
    encoder_work: int = 12,
    decoder_work: int = 0,
    radius: float = 20.0,
    score: float = 0.9,
) -> Path:
    """Write the pair plus cvserve.json into `<store_root>/<model_id>/`; returns the folder."""
    folder = store_root / model_id
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(build_encoder(encoder_work), folder / "encoder.onnx")
    onnx.save(build_decoder(radius, score, decoder_work), folder / "decoder.onnx")
    manifest = {
        "format": 1,
        "task": "promptable-segmentation",
        "family": "sam",
        "files": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
        "preprocess": {"resize": "fit", "size": [1024, 1024]},
        "source": {"notes": "synthetic SAM-shaped test model"},
    }
    (folder / "cvserve.json").write_text(json.dumps(manifest, indent=2))
    return folder


def expected_mask(
    height: int,
    width: int,
    points: list[tuple[float, float, int]] = (),
    box: tuple[float, float, float, float] | None = None,
    radius: float = 20.0,
) -> np.ndarray:
    """What the synthetic decoder paints, in image pixels (up to the 1024-frame rounding)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.zeros((height, width), bool)
    for x, y, label in points:
        if label == 1:
            out |= (xs - x) ** 2 + (ys - y) ** 2 < radius * radius
    if box is not None:
        x1, y1, x2, y2 = box
        out |= (xs > x1) & (xs < x2) & (ys > y1) & (ys < y2)
    return out

"""Small ONNX models built with onnx.helper whose outputs are known exactly.

Each graph takes the real input shape and returns fixed tensors (plus 0 * a reduction of
the input, so the input is genuinely consumed), which lets tests assert decoding, NMS,
mask and keypoint geometry to the pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def constant_model(
    path: Path,
    outputs: list[np.ndarray],
    *,
    input_shape: tuple[int, ...] = (1, 3, 640, 640),
    input_name: str = "images",
    metadata: dict[str, str] | None = None,
    output_names: list[str] | None = None,
    input_dtype: int = TensorProto.FLOAT,
) -> Path:
    names = output_names or [f"output{i}" for i in range(len(outputs))]
    nodes = []
    inits = []
    # zero = ReduceSum(input) * 0, shaped [1] -> broadcast-added to each output.
    nodes.append(helper.make_node("Cast", [input_name], ["x_f"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("ReduceSum", ["x_f"], ["x_sum"], keepdims=0))
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero_c"))
    nodes.append(helper.make_node("Mul", ["x_sum", "zero_c"], ["zero"]))
    graph_outputs = []
    for i, (name, arr) in enumerate(zip(names, outputs, strict=True)):
        arr = np.asarray(arr, np.float32)
        inits.append(numpy_helper.from_array(arr, f"const{i}"))
        nodes.append(helper.make_node("Add", [f"const{i}", "zero"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info(input_name, input_dtype, list(input_shape))],
        graph_outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ultralytics_meta(task: str, names: list[str], imgsz: int = 640, **extra: str) -> dict[str, str]:
    meta = {
        "description": f"synthetic YOLO {task}",
        "author": "cvserve tests",
        "task": task,
        "stride": "32",
        "batch": "1",
        "imgsz": f"[{imgsz}, {imgsz}]",
        "names": repr(dict(enumerate(names))),
    }
    meta.update(extra)
    return meta


def yolo_head(
    boxes_cxcywh: list[tuple[float, float, float, float]],
    class_scores: list[list[float]],
    extra: list[list[float]] | None = None,
    candidates: int = 8400,
) -> np.ndarray:
    """A [1, 4 + nc + extra, N] head with the given candidates first and zeros after."""
    nc = len(class_scores[0])
    ne = len(extra[0]) if extra else 0
    out = np.zeros((1, 4 + nc + ne, candidates), np.float32)
    for i, (box, scores) in enumerate(zip(boxes_cxcywh, class_scores, strict=True)):
        out[0, :4, i] = box
        out[0, 4 : 4 + nc, i] = scores
        if extra:
            out[0, 4 + nc :, i] = extra[i]
    return out

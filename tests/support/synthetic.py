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
        graph_outputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape))
        )
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


# -- geometry references -------------------------------------------------------------------


def letterbox_reference(width: int, height: int, in_w: int, in_h: int) -> tuple[float, int, int]:
    """(gain, left, top) of Ultralytics' LetterBox(center=True) for an image of width x height.

    Written out independently of cvserve: r = min(in_h / h, in_w / w); the resized image is
    round(w * r) x round(h * r), placed at round(d - 0.1) where d is half the free space.
    """
    r = min(in_h / height, in_w / width)
    new_w, new_h = int(round(width * r)), int(round(height * r))
    left = int(round((in_w - new_w) / 2 - 0.1))
    top = int(round((in_h - new_h) / 2 - 0.1))
    return r, left, top


def letterbox_gains(width: int, height: int, in_w: int, in_h: int) -> tuple[float, float]:
    """(gain_x, gain_y) = (new_w / w, new_h / h): how the letterbox resize really scales each
    axis, and what Ultralytics 8.4's scale_boxes/scale_coords invert with."""
    r = min(in_h / height, in_w / width)
    return int(round(width * r)) / width, int(round(height * r)) / height


# -- model builders --------------------------------------------------------------------------


def _save(
    nodes: list,
    inits: list,
    inputs: list,
    outputs: list,
    path: Path,
    metadata: dict[str, str] | None,
) -> Path:
    graph = helper.make_graph(nodes, "synthetic", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def rect_finder_model(
    path: Path,
    *,
    input_hw: tuple[int, int] = (640, 640),
    num_classes: int = 1,
    score: float = 0.9,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A real (if tiny) detector: finds the bright region of the input tensor.

    It thresholds channel 0 at 0.5 (white on black; letterbox grey 114/255 stays below),
    takes the first/last bright column and row, and emits one YOLO-v8 candidate
    [1, 4 + nc, 1] = (cx, cy, w, h, score for class 0, zeros) in model-input pixels. So the
    box the server reports depends only on where preprocessing put the image's pixels,
    which makes it a ground truth for letterbox/stretch/EXIF handling.
    """
    h, w = input_hw
    f = TensorProto.FLOAT
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1], np.int64), "s1"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([2.0], np.float32), "two"),
        numpy_helper.from_array(
            np.array([score] + [0.0] * (num_classes - 1), np.float32), "scores"
        ),
        numpy_helper.from_array(np.array([1, 4 + num_classes, 1], np.int64), "out_shape"),
    ]
    nodes = [
        helper.make_node("Slice", ["images", "s0", "s1", "s1"], ["c0"]),
        helper.make_node("Greater", ["c0", "half"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["m"], to=f),
        helper.make_node("ReduceMax", ["m"], ["col"], axes=[0, 1, 2], keepdims=0),
        helper.make_node("ReduceMax", ["m"], ["row"], axes=[0, 1, 3], keepdims=0),
    ]
    for axis_name, profile in (("x", "col"), ("y", "row")):
        nodes += [
            helper.make_node("ArgMax", [profile], [f"{axis_name}1i"], axis=0, keepdims=1),
            helper.make_node(
                "ArgMax", [profile], [f"{axis_name}2i"], axis=0, keepdims=1, select_last_index=1
            ),
            helper.make_node("Cast", [f"{axis_name}1i"], [f"{axis_name}1"], to=f),
            helper.make_node("Cast", [f"{axis_name}2i"], [f"{axis_name}2l"], to=f),
            helper.make_node("Add", [f"{axis_name}2l", "one"], [f"{axis_name}2"]),
            helper.make_node("Add", [f"{axis_name}1", f"{axis_name}2"], [f"{axis_name}s"]),
            helper.make_node("Div", [f"{axis_name}s", "two"], [f"c{axis_name}"]),
            helper.make_node("Sub", [f"{axis_name}2", f"{axis_name}1"], [f"d{axis_name}"]),
        ]
    nodes += [
        helper.make_node("Concat", ["cx", "cy", "dx", "dy", "scores"], ["flat"], axis=0),
        helper.make_node("Reshape", ["flat", "out_shape"], ["output0"]),
    ]
    return _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("images", f, [1, 3, h, w])],
        [helper.make_tensor_value_info("output0", f, [1, 4 + num_classes, 1])],
        path,
        metadata,
    )


def disc_proto(size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A (mh, mw) prototype plane: signed distance to a disc (positive inside), in cells.

    Cell (i, j) is sampled at its centre (j + 0.5, i + 0.5); bilinear upsampling of a
    smooth distance keeps the zero level set on the analytic circle.
    """
    mh, mw = size
    ys, xs = np.mgrid[0:mh, 0:mw].astype(np.float32) + 0.5
    return (radius - np.hypot(xs - centre[0], ys - centre[1])).astype(np.float32)


def rect_proto(size: tuple[int, int], xyxy: tuple[float, float, float, float]) -> np.ndarray:
    """A (mh, mw) plane: distance inside an axis-aligned rectangle (negative outside)."""
    mh, mw = size
    ys, xs = np.mgrid[0:mh, 0:mw].astype(np.float32) + 0.5
    x0, y0, x1, y1 = xyxy
    return np.minimum.reduce([xs - x0, x1 - xs, ys - y0, y1 - ys]).astype(np.float32)


def seg_protos(planes: list[np.ndarray], num_masks: int = 32) -> np.ndarray:
    """[1, num_masks, mh, mw] prototypes: the given planes first, zeros after."""
    mh, mw = planes[0].shape
    out = np.zeros((1, num_masks, mh, mw), np.float32)
    for i, p in enumerate(planes):
        out[0, i] = p
    return out


def one_hot(index: int, size: int = 32, value: float = 1.0) -> list[float]:
    v = [0.0] * size
    v[index] = value
    return v


# -- the peer's local model layout -------------------------------------------------------------


def peer_layout(
    folder: Path,
    weights: Path,
    *,
    task: str,
    class_names: list[str],
    resize: str = "Stretch to",
    size: tuple[int, int] = (640, 640),
    multiclass: bool = False,
    model_type: str = "yolov8n",
    keypoints: list[str] | None = None,
    edges: list[tuple[int, int]] | None = None,
    class_map: bool = True,
    class_names_file: bool = True,
) -> Path:
    """Write the peer's folder: weights.onnx, environment.json (PREPROCESSING as a JSON
    *string*, CLASS_MAP, MULTICLASS), model_type.json, class_names.txt,
    keypoints_metadata.json."""
    import json
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, folder / "weights.onnx")
    preprocessing = {
        "auto-orient": {"enabled": True},
        "resize": {"width": size[0], "height": size[1], "enabled": True, "format": resize},
    }
    env: dict[str, object] = {
        "PREPROCESSING": json.dumps(preprocessing),
        "MULTICLASS": multiclass,
        "COLORS": {n: "#FF0000" for n in class_names},
    }
    if class_map:
        env["CLASS_MAP"] = {str(i): n for i, n in enumerate(class_names)}
    (folder / "environment.json").write_text(json.dumps(env))
    (folder / "model_type.json").write_text(
        json.dumps({"project_task_type": task, "model_type": model_type})
    )
    if class_names_file:
        (folder / "class_names.txt").write_text("\n".join(class_names) + "\n")
    if keypoints is not None:
        meta = [
            {
                "object_class_id": 0,
                "object_class_name": class_names[0],
                "keypoints": {str(i): n for i, n in enumerate(keypoints)},
                "edges": [{"from": a, "to": b} for a, b in edges or []],
            }
        ]
        (folder / "keypoints_metadata.json").write_text(json.dumps(meta))
    return folder


# -- images ----------------------------------------------------------------------------------


def rect_image(
    width: int, height: int, xyxy: tuple[int, int, int, int] | None = None, value: int = 255
) -> np.ndarray:
    """A black RGB image with a filled rectangle [x0, x1) x [y0, y1) of `value`."""
    img = np.zeros((height, width, 3), np.uint8)
    if xyxy is not None:
        x0, y0, x1, y1 = xyxy
        img[y0:y1, x0:x1] = value
    return img


def png_bytes(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 95, orientation: int | None = None) -> bytes:
    """A JPEG of the pixels as stored; `orientation` adds an EXIF Orientation tag."""
    import io

    from PIL import Image

    img = Image.fromarray(rgb)
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format="JPEG", quality=quality)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()

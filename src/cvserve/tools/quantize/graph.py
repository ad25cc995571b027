"""Which nodes of a graph stay float, and ONNX Runtime's quantizer run on the rest."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cvserve.errors import BadRequest

if TYPE_CHECKING:  # onnx is the optional `quantize` extra, imported when quantizing
    import onnx


# The ops of a conv backbone, SiLU (Sigmoid, Mul) included: leaving those float costs a
# dequantize/quantize pair around every conv (measured: x1.09 instead of x1.7 on YOLOv8n).
# The head's decoding stays float by name (see _head_nodes), so no tensor that mixes value
# ranges (pixel coordinates and 0..1 scores) is ever quantized.
_OPS = [
    "Conv", "MatMul", "Gemm", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Split", "Slice",
]  # fmt: skip


def _head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay float: for Ultralytics heads, every node of the head
    module except its 3x3 convolutions (the final 1x1 convs, DFL, box decoding, the Concat
    that mixes pixel coordinates with 0..1 scores); for other graphs, the last
    Conv/Gemm/MatMul before each output and every node after it (the decoding: anchors,
    sigmoid, class ids), including what a Loop's body reads (an SSD's NMS) and what follows
    the Loop (coco-detect's class id + 1: quantized, its F1 fell to 0.46), though not the
    convolutions only such a body reads (the SSD's class convolutions: int8 at no loss)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    head = [n.name for n in graph.node if "/dfl/" in n.name or "dfl" in n.name.lower()]
    # Ultralytics names head nodes /model.<last>/...: keep its final 1x1 convs float.
    last = _last_module_index(graph)
    if last is not None:
        prefix = f"/model.{last}/"
        for n in graph.node:
            if n.name.startswith(prefix) and not (n.op_type == "Conv" and _kernel(n) == 3):
                head.append(n.name)
    else:
        for out in graph.output:
            seen: set[tuple[str, bool]] = set()
            stack = [(out.name, False)]  # (tensor, reached through a subgraph)
            while stack:
                t, inside = stack.pop()
                n = producers.get(t)
                if n is None or (n.name, inside) in seen:
                    continue
                seen.add((n.name, inside))
                if n.op_type in ("Conv", "Gemm", "MatMul"):
                    if not inside:
                        head.append(n.name)
                    continue
                head.append(n.name)
                stack.extend((i, inside) for i in n.input)
                stack.extend((i, True) for i in _outer_names(n))
    return sorted(set(head))


# The ops ONNX Runtime's QDQPropagationTransformer moves a DequantizeLinear forward past
# (onnxruntime/core/optimizer/qdq_transformer/qdq_propagation.cc, CanNodePropagate).
_PROPAGATES = frozenset(("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice"))


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """The tensors of the enclosing graph that `node`'s subgraphs (a Loop's or Scan's
    body, an If's branches) read by name: inputs the node does not list."""
    import onnx

    names: set[str] = set()
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            subs = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            subs = list(attr.graphs)
        else:
            continue
        for sub in subs:
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            local |= {o for n in sub.node for o in n.output}
            for n in sub.node:
                names |= {i for i in n.input if i and i not in local}
                names |= {i for i in _outer_names(n) if i not in local}
    return names


def _subgraph_fed_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay float because a subgraph reads what they make.

    ONNX Runtime (1.32) aborts loading a QDQ graph where a DequantizeLinear feeds an op it
    propagates DQ past (Slice, Reshape, ...) whose output a subgraph reads: it rewires the
    edge to the Loop as if the tensor were one of the Loop's listed inputs (an index past
    their end: `stl_vector.h: Assertion '__n < this->size()'`, SIGABRT). A TensorFlow SSD
    (coco-detect) is such a graph: Sigmoid -> Slice -> its NMS Loop. So no tensor on such
    a path (from what a subgraph reads, back through the propagating ops, to the first
    other op's output) is quantized: every node making or reading one is excluded. Constants
    (initializers, Constant nodes) carry no activation's Q/DQ and are left out."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    keep: set[str] = set()
    stack = [name for n in graph.node for name in _outer_names(n)]
    while stack:
        t = stack.pop()
        if t in keep or t in constants:
            continue
        keep.add(t)
        n = producers.get(t)
        if n is not None and n.op_type in _PROPAGATES and n.input:
            stack.append(n.input[0])
    return sorted(
        n.name for n in graph.node if keep.intersection(n.output) or keep.intersection(n.input)
    )


def _last_module_index(graph: onnx.GraphProto) -> int | None:
    idx: list[int] = []
    for n in graph.node:
        if n.name.startswith("/model."):
            part = n.name.split("/")[1].split(".")[1]
            if part.isdigit():
                idx.append(int(part))
    return max(idx) if idx else None


def _kernel(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "kernel_shape":
            return int(a.ints[0])
    return 0


class _Reader:
    """CalibrationDataReader over preprocessed photos."""

    def __init__(self, name: str, tensors: list[np.ndarray]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter([{name: t} for t in tensors])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_file(
    src: Path,
    dst: Path,
    method: str,
    input_name: str,
    tensors: list[np.ndarray],
    *,
    op_types: list[str] | None = None,
    keep_head_float: bool = True,
) -> None:
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:  # onnx is optional
        raise BadRequest(
            f"quantizing needs the onnx package ({e}); pip install 'cvserve[quantize]'"
        ) from e
    pre = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation; quantize the original instead
        shutil.copy2(src, pre)
    try:
        proto = onnx.load(str(pre), load_external_data=False)
        opset = max(
            (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0
        )
        changed = False
        if opset < 13:  # per-channel QDQ needs DequantizeLinear's axis (opset 13)
            from onnx import version_converter

            proto = version_converter.convert_version(proto, 13)
            changed = True
        for i, node in enumerate(proto.graph.node):  # exclusions name nodes: all need one
            if not node.name:
                node.name, changed = f"{node.op_type}_{i}", True
        if changed:
            onnx.save(proto, str(pre))
        exclude = _head_nodes(proto) if keep_head_float else []
        exclude = sorted(set(exclude) | set(_subgraph_fed_nodes(proto)))
        ops = op_types or _OPS
        if method == "dynamic":
            quantize_dynamic(
                str(pre),
                str(dst),
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_exclude=exclude,
                op_types_to_quantize=ops,
            )
        else:
            quantize_static(
                str(pre),
                str(dst),
                _Reader(input_name, tensors),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=exclude,
                op_types_to_quantize=ops,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    finally:
        pre.unlink(missing_ok=True)

"""Models for the model-budget and readiness tests: classifiers that hold a known amount of
memory while loaded, and one that takes seconds to load.

Both answer like `hostile_support.add_classifier` (cat 0.7, dog 0.2, bird 0.1). The weight
is read through a Gather whose index comes from the input, so ONNX Runtime cannot fold it
away at load: it stays resident as long as the session does.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper, numpy_helper

from cvserve.models.manifest import Manifest, Preprocess

SIDE = 64
PROBS = np.array([[0.7, 0.2, 0.1]], np.float32)


def _classifier(
    path: Path, nodes: list[NodeProto], inits: list[onnx.TensorProto], tail: str
) -> None:
    """A graph: the given nodes reduce the input to the scalar `tail`; the output is
    PROBS + 0 * tail."""
    nodes = [
        *nodes,
        helper.make_node("Mul", [tail, "zero_c"], ["zero"]),
        helper.make_node("Add", ["probs", "zero"], ["output0"]),
    ]
    inits = [
        *inits,
        numpy_helper.from_array(np.zeros((), np.float32), "zero_c"),
        numpy_helper.from_array(PROBS, "probs"),
    ]
    graph = helper.make_graph(
        nodes,
        "budget",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(PROBS.shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _install(root: Path, model_id: str) -> Path:
    folder = root / model_id
    folder.mkdir(parents=True, exist_ok=True)
    Manifest(
        task="classification",
        family="classifier",
        class_names=["cat", "dog", "bird"],
        preprocess=Preprocess(resize="center-crop", size=(SIDE, SIDE)),
    ).write(folder)
    return folder / "model.onnx"


def add_weighty_classifier(root: Path, model_id: str, mb: int, seed: int = 0) -> None:
    """A classifier whose session holds `mb` MiB of weights (random, so no page is shared
    or compressible)."""
    big = np.random.default_rng(seed).standard_normal(mb * 2**20 // 4).astype(np.float32)
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["x_sum"], keepdims=0),
        helper.make_node("Mul", ["x_sum", "zero_c"], ["x_zero"]),
        helper.make_node("Cast", ["x_zero"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["big", "index"], ["picked"], axis=0),
    ]
    _classifier(_install(root, model_id), nodes, [numpy_helper.from_array(big, "big")], "picked")


def _chain(path: Path, length: int) -> None:
    nodes = [helper.make_node("ReduceSum", ["images"], ["x0"], keepdims=0)]
    inits = []
    for i in range(length):
        inits.append(numpy_helper.from_array(np.array(float(i % 7), np.float32), f"c{i}"))
        nodes.append(helper.make_node("Add" if i % 2 else "Mul", [f"x{i}", f"c{i}"], [f"x{i + 1}"]))
    _classifier(path, nodes, inits, f"x{length}")


def add_slow_loading_classifier(root: Path, model_id: str, seconds: float) -> None:
    """A classifier whose session takes about `seconds` to build: a chain of thousands of
    scalar nodes through ONNX Runtime's graph optimisers (calibrated on this machine)."""
    import onnxruntime as ort

    path = _install(root, model_id)
    probe = 3000
    _chain(path, probe)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    began = time.perf_counter()
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    per_node = (time.perf_counter() - began) / probe
    _chain(path, max(probe, int(seconds / per_node)))

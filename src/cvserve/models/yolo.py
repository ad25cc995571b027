"""Ultralytics YOLO exports (v5u, v8, v11 and end2end): detect, segment, pose.

Raw head layout: [1, 4 + nc + extra, N] with boxes as (cx, cy, w, h) in model-input
pixels and sigmoid class scores; `extra` is 32 mask coefficients (segment) or K*3
keypoint values (pose). End2end exports emit [1, N, 6 + extra] = (x1, y1, x2, y2,
score, class) after NMS inside the graph. Classification exports use the generic
"classifier" family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvserve.errors import ModelLoadError
from cvserve.geometry import cxcywh_to_xyxy
from cvserve.keypoint_sets import default_names, default_skeleton
from cvserve.models.base import InferParams, Task
from cvserve.models.context import IN_PROCESS, RunContext
from cvserve.models.manifest import Manifest
from cvserve.models.nms import nms
from cvserve.models.onnx_model import OnnxModel
from cvserve.models.registry import FamilyOptions, family
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.yolo_masks import clip_box_masks, proto_masks
from cvserve.results import Detections, Prediction

MAX_CANDIDATES = 30_000  # Ultralytics' max_nms: cap on boxes entering NMS


class YoloOptions(FamilyOptions):
    format: str = "v8"  # the head's layout: v8 (v5u, v11 alike) or end2end
    num_masks: int = 32  # mask coefficients per box (instance segmentation)
    kpt_shape: list[int] | None = None  # (keypoints, values per keypoint) of a pose head


class YoloModel(OnnxModel):
    def __init__(self, model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions):
        super().__init__(model_id, manifest, folder, options)
        post = YoloOptions.read(model_id, manifest.postprocess)
        self.layout = post.format
        self.num_classes = len(manifest.class_names)
        self.num_masks = post.num_masks if self.task is Task.INSTANCE_SEGMENTATION else 0
        kpt_shape = post.kpt_shape or [0, 3]
        self.kpt_count, self.kpt_dims = int(kpt_shape[0]), int(kpt_shape[1])
        if self.task is Task.KEYPOINT_DETECTION and self.kpt_count == 0:
            raise ModelLoadError(f"model {model_id}: pose model without postprocess.kpt_shape")
        self.keypoint_names = list(manifest.keypoint_names) or default_names(self.kpt_count)
        self.skeleton = [(a, b) for a, b in manifest.skeleton] or default_skeleton(self.kpt_count)
        if self.num_classes == 0:
            raise ModelLoadError(f"model {model_id}: no class names")
        self._check_outputs(model_id)

    def _check_outputs(self, model_id: str) -> None:
        """Refuse at load time (so at import) a graph that cannot match the manifest, rather
        than failing every request: e.g. 80 class names for a 3-class head, no prototypes."""
        outputs = self.pool.outputs
        need = 2 if self.num_masks else 1
        if len(outputs) < need:
            raise ModelLoadError(
                f"model {model_id}: expected {need} outputs (detections"
                f"{' and mask prototypes' if self.num_masks else ''}), the graph has {len(outputs)}"
            )
        width = (6 if self.layout == "end2end" else 4 + self.num_classes) + self.extra
        if self.layout == "v5":
            width += 1
        dims = [d for d in outputs[0].shape[-2:] if isinstance(d, int)]
        if len(outputs[0].shape) >= 2 and len(dims) == 2 and width not in dims:
            raise ModelLoadError(
                f"model {model_id}: output shape {outputs[0].shape} has no axis of {width} "
                f"values per candidate ({self.num_classes} classes, layout {self.layout})"
            )
        if self.num_masks:
            proto = outputs[1].shape
            if len(proto) != 4 or (isinstance(proto[1], int) and proto[1] != self.num_masks):
                raise ModelLoadError(
                    f"model {model_id}: mask prototypes must be [1, {self.num_masks}, H, W], "
                    f"the graph gives {proto}"
                )

    @property
    def extra(self) -> int:
        return self.num_masks + self.kpt_count * self.kpt_dims

    def predict(
        self, image: np.ndarray, params: InferParams, ctx: RunContext = IN_PROCESS
    ) -> Prediction:
        tensor, transform = self.preprocess(image, ctx)
        outputs = self.run(tensor, ctx)
        h, w = image.shape[:2]
        rows = self._rows(outputs[0])
        if self.layout == "end2end":
            xyxy, scores, class_id, extra = self._decode_end2end(rows, params)
        else:
            xyxy, scores, class_id, extra = self._decode_raw(rows, params)
        if scores.size == 0:
            return Prediction(self._empty(), w, h)
        boxes_img = transform.boxes_to_image(xyxy)
        det = Detections(
            xyxy=boxes_img,
            confidence=scores.astype(np.float32),
            class_id=class_id.astype(np.int64),
            class_names=self.class_names,
        )
        if self.num_masks:
            protos = np.asarray(outputs[1][0], np.float32)
            coef = extra[:, : self.num_masks].astype(np.float32)
            masks = proto_masks(coef, protos, boxes_img, transform, self.input_size)
            det.masks = clip_box_masks(masks, w, h)
        if self.kpt_count:
            k = extra[:, self.num_masks :].reshape(-1, self.kpt_count, self.kpt_dims)
            kp = np.ones((k.shape[0], self.kpt_count, 3), np.float32)
            kp[..., :2] = transform.points_to_image(k[..., :2])
            np.clip(kp[..., 0], 0, w, out=kp[..., 0])
            np.clip(kp[..., 1], 0, h, out=kp[..., 1])
            if self.kpt_dims == 3:
                kp[..., 2] = k[..., 2]
            det.keypoints = kp
            det.keypoint_names = self.keypoint_names
            det.skeleton = self.skeleton
        if det.masks is not None:
            # As Ultralytics' segment predictor does: an instance whose mask has no pixel is
            # dropped (it would have an empty outline and RLE).
            keep = np.array([m.mask.any() for m in det.masks], bool)
            if not keep.all():
                det = det.select(keep)
        return Prediction(det, w, h)

    def _empty(self) -> Detections:
        det = Detections.empty(self.class_names)
        if self.num_masks:
            det.masks = []
        if self.kpt_count:
            det.keypoints = np.zeros((0, self.kpt_count, 3), np.float32)
            det.keypoint_names = self.keypoint_names
            det.skeleton = self.skeleton
        return det

    def _rows(self, out: np.ndarray) -> np.ndarray:
        """One row per candidate, whichever way round the export put its axes."""
        out = np.asarray(out)[0]
        width = (6 if self.layout == "end2end" else 4 + self.num_classes) + self.extra
        if self.layout == "v5":
            width += 1
        if out.shape[-1] == width:
            return out
        if out.shape[0] == width:
            return out.T
        raise ModelLoadError(
            f"unexpected YOLO output shape {out.shape}: expected {width} values per candidate "
            f"for {self.num_classes} classes"
        )

    def _class_keep(self, class_id: np.ndarray, params: InferParams) -> np.ndarray | None:
        if not params.class_filter:
            return None
        allowed = [i for i, n in enumerate(self.class_names) if n in params.class_filter]
        return np.isin(class_id, allowed)

    def _decode_raw(
        self, rows: np.ndarray, params: InferParams
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        nc = self.num_classes
        offset = 5 if self.layout == "v5" else 4
        # Class scores candidate-minor ((nc, N), the export's own contiguous layout when the
        # head is [1, 4+nc+extra, N]): argmax/max along axis 0 then run over contiguous rows.
        cls = rows.T[offset : offset + nc]
        if self.layout == "v5":
            cls = cls * rows.T[4:5]
        scores = cls.max(0)  # a vectorised reduction over rows; argmax only for survivors
        idx = np.flatnonzero(scores > params.confidence)
        class_id = cls[:, idx].argmax(0)
        class_keep = self._class_keep(class_id, params)
        if class_keep is not None:
            idx, class_id = idx[class_keep], class_id[class_keep]
        if idx.size > MAX_CANDIDATES:
            order = np.argsort(-scores[idx], kind="stable")[:MAX_CANDIDATES]
            idx, class_id = idx[order], class_id[order]
        rows, scores = rows[idx], scores[idx]
        xyxy = cxcywh_to_xyxy(rows[:, :4]).astype(np.float32)
        keep_idx = nms(xyxy, scores, class_id, params.iou, max_keep=params.max_detections)
        extra = rows[keep_idx, offset + nc :]
        return xyxy[keep_idx], scores[keep_idx], class_id[keep_idx], extra

    def _decode_end2end(
        self, rows: np.ndarray, params: InferParams
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        scores = rows[:, 4]
        class_id = rows[:, 5].astype(np.int64)
        keep = scores > params.confidence
        class_keep = self._class_keep(class_id, params)
        if class_keep is not None:
            keep &= class_keep
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-scores[idx], kind="stable")[: params.max_detections]]
        return rows[idx, :4].astype(np.float32), scores[idx], class_id[idx], rows[idx, 6:]


@family("yolo", options=YoloOptions, quantize="tensor")
def load_yolo(
    model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions
) -> YoloModel:
    return YoloModel(model_id, manifest, folder, options)

"""How far the int8 model agrees with the float one on the photos, in the task's terms."""

from __future__ import annotations

from typing import Any

import numpy as np

from cvserve.geometry import mask_iou, match_boxes
from cvserve.models.base import InferParams, Model
from cvserve.results import Classification, Detections, Prediction, SemanticMask


def compare(model: Model, quant: Model, photos: list[np.ndarray]) -> dict[str, float]:
    """Agreement of the int8 model's predictions with the float model's on the photos, in
    the task's terms: boxes (detection, keypoints), top-1 (classification), foreground IoU
    and per-pixel classes (semantic segmentation). See AGREEMENT_FLOORS."""
    task = model.task
    params = InferParams.defaults_for(task)
    if task.detection_like:
        params = InferParams(confidence=0.25, iou=0.45)
    f1s, ious, top1, diffs = [], [], [], []
    fg_ious, same_pixels, conf_diffs = [], [], []
    for p in photos:
        a: Prediction = model.predict(p, params)
        b: Prediction = quant.predict(p, params)
        if isinstance(a.result, Detections) and isinstance(b.result, Detections):
            f1, miou = box_agreement(a.result, b.result)
            f1s.append(f1)
            if miou == miou:
                ious.append(miou)
        elif isinstance(a.result, Classification) and isinstance(b.result, Classification):
            top1.append(float(np.argmax(a.result.scores) == np.argmax(b.result.scores)))
            diffs.append(float(np.abs(a.result.scores - b.result.scores).max()))
        elif isinstance(a.result, SemanticMask) and isinstance(b.result, SemanticMask):
            ma, mb = a.result.class_map, b.result.class_map
            fg_ious.append(mask_iou(ma != 0, mb != 0))  # class 0: background
            same_pixels.append(float(np.count_nonzero(ma == mb) / max(1, ma.size)))
            conf_diffs.append(float(np.abs(a.result.confidence - b.result.confidence).max()))
    out: dict[str, float] = {}
    if f1s:
        out["box_f1_iou50"] = float(np.mean(f1s))
        out["matched_box_iou"] = float(np.mean(ious)) if ious else float("nan")
    if top1:
        out["top1_agreement"] = float(np.mean(top1))
        out["max_abs_score_diff"] = float(np.max(diffs))
    if fg_ious:
        out["fg_iou_mean"] = float(np.mean(fg_ious))
        out["fg_iou_min"] = float(np.min(fg_ious))
        out["pixel_agreement"] = float(np.mean(same_pixels))
        out["max_abs_confidence_diff"] = float(np.max(conf_diffs))
    return out


def box_agreement(a: Detections, b: Detections, thr: float = 0.5) -> tuple[float, float]:
    """Greedy one-to-one matching (same class, IoU >= thr): (F1, mean IoU of matches)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0, float("nan")
    ious = [iou for _, _, iou in match_boxes(a.xyxy, a.class_id, b.xyxy, b.class_id, thr)]
    f1 = 2 * len(ious) / (len(a) + len(b))
    return f1, float(np.mean(ious)) if ious else float("nan")


def sam_agreement(model: Any, quant: Any, photos: list[np.ndarray]) -> dict[str, float]:
    """Mask IoU, int8 against float, for a centre point and a centre box on each photo."""
    point_ious, box_ious = [], []
    for p in photos:
        h, w = p.shape[:2]
        ea, eb = model.embed(p), quant.embed(p)
        pt = np.array([[w / 2, h / 2]], np.float32)
        box = np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.8], np.float32)
        point_ious.append(mask_iou(model.segment(ea, pt)[0], quant.segment(eb, pt)[0]))
        box_ious.append(mask_iou(model.segment(ea, box=box)[0], quant.segment(eb, box=box)[0]))
    return {
        "point_mask_iou_mean": float(np.mean(point_ious)),
        "point_mask_iou_min": float(np.min(point_ious)),
        "box_mask_iou_mean": float(np.mean(box_ious)),
        "box_mask_iou_min": float(np.min(box_ious)),
    }


def composite_agreement(model: Model, quant: Model, photos: list[np.ndarray]) -> dict[str, float]:
    """Instance mask IoU, int8 SAM against float, on the float detector's boxes (the
    detector is the same model in both, so the boxes are too)."""
    ious: list[float] = []
    for p in photos:
        a, b = model.predict(p, InferParams()).result, quant.predict(p, InferParams()).result
        assert isinstance(a, Detections) and isinstance(b, Detections)
        h, w = p.shape[:2]
        for ma, mb in zip(a.masks or [], b.masks or [], strict=True):
            ious.append(mask_iou(ma.full(w, h), mb.full(w, h)))
    if not ious:
        return {}
    return {
        "instances": float(len(ious)),
        "instance_mask_iou_mean": float(np.mean(ious)),
        "instance_mask_iou_min": float(np.min(ious)),
    }

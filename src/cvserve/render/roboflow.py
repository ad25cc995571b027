"""Results -> the hosted API's JSON shapes, with the seeds' field names."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import numpy as np

from cvserve.images import encode_png
from cvserve.masks import outline, rle_encode
from cvserve.params import RenderOptions
from cvserve.results import Classification, Detections, Prediction, SemanticMask


def _r(v: float, nd: int = 2) -> float:
    return round(float(v), nd)


def round4(values: np.ndarray) -> list[float]:
    """[round(v, 4) for v in values], the same floats, without a Python call per value.

    A double is a dyadic rational, so v * 10**4 is never exactly halfway between integers:
    the correctly rounded result is the nearest integer k, and k / 1e4 (one correctly
    rounded division) is the double round() returns. Only where float64 rounding of
    v * 1e4 could land on the wrong side of a half is round() itself asked."""
    v = np.asarray(values, np.float64)
    scaled = v * 1e4
    out = np.rint(scaled) / 1e4
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, not near a half; rint kept it
        near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    if near_half.any():
        for i in np.flatnonzero(near_half).tolist():
            out[i] = round(float(v[i]), 4)
    return out.tolist()


def detections_json(
    det: Detections,
    width: int,
    height: int,
    options: RenderOptions,
    keypoint_confidence: float = 0.0,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    xyxy = det.xyxy.astype(np.float64)
    for i in range(len(det)):
        x1, y1, x2, y2 = xyxy[i]
        pred: dict[str, Any] = {
            "x": _r((x1 + x2) / 2),
            "y": _r((y1 + y2) / 2),
            "width": _r(x2 - x1),
            "height": _r(y2 - y1),
            "confidence": _r(det.confidence[i], 4),
            "class": det.name_of(i),
            "class_id": int(det.class_id[i]),
            "detection_id": str(uuid.uuid4()),
        }
        if det.masks is not None:
            mask = det.masks[i]
            pts = outline(mask)
            pred["points"] = [{"x": _r(x, 1), "y": _r(y, 1)} for x, y in pts.tolist()]
            pred["mask_format"] = options.mask_format
            if options.mask_format == "rle":
                pred["rle"] = rle_encode(mask, width, height)
        if det.keypoints is not None:
            kps = []
            for k, (kx, ky, kc) in enumerate(det.keypoints[i].tolist()):
                if kc < keypoint_confidence:
                    continue
                name = det.keypoint_names[k] if k < len(det.keypoint_names) else str(k)
                kps.append(
                    {
                        "x": _r(kx),
                        "y": _r(ky),
                        "confidence": _r(kc, 4),
                        "class_id": k,
                        "class_name": name,
                        "class": name,
                    }
                )
            pred["keypoints"] = kps
        out.append(pred)
    return out


def classification_json(cls: Classification, options: RenderOptions, threshold: float) -> dict:
    scores = cls.scores.astype(np.float64)
    if cls.multilabel:
        rounded = round4(scores)
        preds = {
            name: {"confidence": rounded[i], "class_id": i}
            for i, name in enumerate(cls.class_names)
        }
        predicted = [n for i, n in enumerate(cls.class_names) if scores[i] >= threshold]
        return {
            "predictions": preds,
            "predicted_classes": predicted,
            "image_path": options.image_name or "",
            "prediction_type": "ClassificationModel",
        }
    order = np.argsort(-scores, kind="stable")
    ranked = round4(scores[order])
    names = cls.class_names
    preds_list = [
        {"class": names[i], "class_id": i, "confidence": c}
        for i, c in zip(order.tolist(), ranked, strict=True)
    ]
    top = preds_list[0] if preds_list else {"class": "", "confidence": 0.0}
    return {
        "predictions": preds_list,
        "top": top["class"],
        "confidence": top["confidence"],
        "image_path": options.image_name or "",
        "prediction_type": "ClassificationModel",
    }


def semantic_json(sem: SemanticMask) -> dict[str, Any]:
    mask = sem.class_map
    if mask.dtype != np.uint8 and mask.max(initial=0) < 256:
        mask = mask.astype(np.uint8)
    confidence = np.clip(sem.confidence * 255.0 + 0.5, 0, 255).astype(np.uint8)
    present = np.unique(mask)
    return {
        "segmentation_mask": base64.b64encode(encode_png(mask)).decode("ascii"),
        "class_map": {str(i): name for i, name in enumerate(sem.class_names)},
        "confidence_mask": base64.b64encode(encode_png(confidence)).decode("ascii"),
        "present_class_ids": [int(c) for c in present.tolist()],
    }


def prediction_json(
    prediction: Prediction,
    options: RenderOptions,
    *,
    confidence: float,
    keypoint_confidence: float = 0.0,
    elapsed_s: float = 0.0,
) -> dict[str, Any]:
    """The full hosted response body for one image."""
    result = prediction.result
    body: dict[str, Any] = {"inference_id": str(uuid.uuid4()), "time": round(elapsed_s, 6)}
    body["image"] = {"width": prediction.width, "height": prediction.height}
    if isinstance(result, Detections):
        body["predictions"] = detections_json(
            result, prediction.width, prediction.height, options, keypoint_confidence
        )
    elif isinstance(result, Classification):
        body.update(classification_json(result, options, confidence))
    elif isinstance(result, SemanticMask):
        body.update(semantic_json(result))
    return body

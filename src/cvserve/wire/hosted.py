"""The hosted inference API's JSON, both ways: results -> the seeds' field names (the
server's encoder, `prediction_json`) and a response body -> typed results again (the SDK's
decoder, `prediction_from_json`, with the COCO RLE decoder `rle_decode`).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from cvserve.images import encode_png
from cvserve.keypoint_sets import default_skeleton
from cvserve.masks import outline, rle_encode
from cvserve.params import RenderOptions
from cvserve.results import (
    BoxMask,
    Classification,
    Detections,
    Prediction,
    Result,
    SemanticMask,
)


# -- encoder: typed results -> JSON -------------------------------------------------------
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


# -- decoder: JSON -> typed results -------------------------------------------------------
def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string or list counts) -> full boolean mask (H, W)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        runs: list[int] = []
        s = counts.encode("ascii")
        p = 0
        while p < len(s):
            x, k, more = 0, 0, True
            while more:
                c = s[p] - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(runs) > 2:
                x += runs[-2]
            runs.append(x)
    else:
        runs = [int(c) for c in counts]
    flat = np.zeros(height * width, dtype=bool)
    pos, value = 0, False
    for n in runs:
        if value:
            flat[pos : pos + n] = True
        pos += n
        value = not value
    return flat.reshape(width, height).T


def _polygon_mask(points: Sequence[dict[str, Any]], width: int, height: int) -> BoxMask:
    pts = np.array([[float(p["x"]), float(p["y"])] for p in points], np.float64)
    if len(pts) < 3:
        return BoxMask(0, 0, np.zeros((0, 0), bool))
    x0 = int(max(0, np.floor(pts[:, 0].min())))
    y0 = int(max(0, np.floor(pts[:, 1].min())))
    x1 = int(min(width, np.ceil(pts[:, 0].max()) + 1))
    y1 = int(min(height, np.ceil(pts[:, 1].max()) + 1))
    if x1 <= x0 or y1 <= y0:
        return BoxMask(0, 0, np.zeros((0, 0), bool))
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shifted = np.round(pts - [x0, y0]).astype(np.int32)
    cv2.fillPoly(canvas, [shifted], 1)
    return BoxMask(x0, y0, canvas.astype(bool))


def _box_mask_from_full(full: np.ndarray) -> BoxMask:
    ys, xs = np.nonzero(full)
    if len(xs) == 0:
        return BoxMask(0, 0, np.zeros((0, 0), bool))
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    return BoxMask(x0, y0, full[y0:y1, x0:x1].copy())


def _names_by_id(pairs: Iterable[tuple[int | None, str]]) -> tuple[list[str], dict[str, int]]:
    """Class names indexed by class id (ids missing from the answer get placeholders)."""
    by_id: dict[int, str] = {}
    unnamed: list[str] = []
    for cid, name in pairs:
        if cid is not None and cid >= 0:
            by_id.setdefault(int(cid), name)
        elif name not in unnamed:
            unnamed.append(name)
    size = max(by_id, default=-1) + 1
    names = [by_id.get(i, str(i)) for i in range(size)]
    for name in unnamed:
        if name not in names:
            names.append(name)
    return names, {n: i for i, n in enumerate(names)}


def _detections_from_json(body: dict[str, Any], width: int, height: int) -> Detections:
    preds = body.get("predictions") or []
    names, index = _names_by_id(
        (p.get("class_id") if isinstance(p.get("class_id"), int) else None, str(p.get("class")))
        for p in preds
    )
    n = len(preds)
    xyxy = np.zeros((n, 4), np.float32)
    conf = np.zeros((n,), np.float32)
    cls = np.zeros((n,), np.int64)
    masks: list[BoxMask] | None = [] if any("points" in p or "rle" in p for p in preds) else None
    has_kps = any("keypoints" in p for p in preds)
    kp_count = 0
    kp_names: dict[int, str] = {}
    if has_kps:
        for p in preds:
            for k in p.get("keypoints") or []:
                kid = int(k.get("class_id", 0))
                kp_count = max(kp_count, kid + 1)
                kp_names.setdefault(kid, str(k.get("class_name", k.get("class", kid))))
    keypoints = np.zeros((n, kp_count, 3), np.float32) if has_kps else None
    for i, p in enumerate(preds):
        x, y, w, h = (float(p[k]) for k in ("x", "y", "width", "height"))
        xyxy[i] = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        conf[i] = float(p.get("confidence", 0.0))
        cls[i] = index[str(p.get("class"))]
        if masks is not None:
            if isinstance(p.get("rle"), dict):
                masks.append(_box_mask_from_full(rle_decode(p["rle"])))
            else:
                masks.append(_polygon_mask(p.get("points") or [], width, height))
        if keypoints is not None:
            for k in p.get("keypoints") or []:
                kid = int(k.get("class_id", 0))
                keypoints[i, kid] = (float(k["x"]), float(k["y"]), float(k.get("confidence", 1)))
    return Detections(
        xyxy=xyxy,
        confidence=conf,
        class_id=cls,
        class_names=names,
        masks=masks,
        keypoints=keypoints,
        keypoint_names=[kp_names.get(i, str(i)) for i in range(kp_count)],
        skeleton=default_skeleton(kp_count),
    )


def _classification_from_json(body: dict[str, Any]) -> Classification:
    preds = body.get("predictions")
    if isinstance(preds, dict):  # multi-label
        items = [
            (v.get("class_id"), str(k), float(v.get("confidence", 0))) for k, v in preds.items()
        ]
        multilabel = True
    else:
        items = [
            (p.get("class_id"), str(p.get("class")), float(p.get("confidence", 0)))
            for p in preds or []
        ]
        multilabel = False
    names, index = _names_by_id((cid if isinstance(cid, int) else None, n) for cid, n, _ in items)
    scores = np.zeros((len(names),), np.float32)
    for _, name, c in items:
        scores[index[name]] = c
    return Classification(scores=scores, class_names=names, multilabel=multilabel)


def _png(b64: str) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(b64), np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("could not decode a mask PNG in the response")
    return img if img.ndim == 2 else img[:, :, 0]


def _semantic_from_json(body: dict[str, Any]) -> SemanticMask:
    class_map = _png(body["segmentation_mask"])
    if body.get("confidence_mask"):
        confidence = _png(body["confidence_mask"]).astype(np.float32) / 255.0
    else:
        confidence = np.ones(class_map.shape, np.float32)
    cmap = body.get("class_map") or {}
    size = max((int(k) for k in cmap), default=int(class_map.max(initial=0))) + 1
    names = [str(cmap.get(str(i), i)) for i in range(size)]
    return SemanticMask(class_map=class_map, confidence=confidence, class_names=names)


def task_of(body: dict[str, Any]) -> str:
    """Which task a hosted response answers, from its fields alone."""
    if "segmentation_mask" in body:
        return "semantic-segmentation"
    if body.get("prediction_type") == "ClassificationModel" or "top" in body:
        return "classification"
    preds = body.get("predictions")
    if isinstance(preds, dict) or "predicted_classes" in body:
        return "classification"
    preds = preds or []
    if any("keypoints" in p for p in preds):
        return "keypoint-detection"
    if any("points" in p or "rle" in p for p in preds):
        return "instance-segmentation"
    return "object-detection"


def prediction_from_json(body: dict[str, Any]) -> Prediction:
    """A hosted-API response -> `cvserve.results.Prediction` (for drawing or converting)."""
    image = body.get("image") or {}
    width, height = int(image.get("width", 0)), int(image.get("height", 0))
    task = task_of(body)
    result: Result
    if task == "semantic-segmentation":
        result = _semantic_from_json(body)
        height, width = result.class_map.shape[:2]
    elif task == "classification":
        result = _classification_from_json(body)
    else:
        result = _detections_from_json(body, width, height)
    return Prediction(result=result, width=width, height=height)

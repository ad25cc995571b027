"""Results drawn over the image: boxes, labels, masks, keypoints, semantic colours, classes."""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from cvserve.images import encode_jpeg
from cvserve.params import RenderOptions
from cvserve.results import Classification, Detections, Prediction, SemanticMask

# A fixed, high-contrast palette (RGB) so a class keeps its colour across images.
PALETTE = np.array(
    [
        (255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49),
        (72, 249, 10), (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187),
        (44, 153, 168), (0, 194, 255), (52, 69, 147), (100, 115, 255), (0, 24, 236),
        (132, 56, 255), (82, 0, 133), (203, 56, 255), (255, 149, 200), (255, 55, 199),
    ],
    dtype=np.uint8,
)  # fmt: skip
# Keypoint k is drawn in colour(k + KEYPOINT_COLOR_OFFSET), so it stands out from its box.
KEYPOINT_COLOR_OFFSET = 3


class Thresholds(Protocol):
    """What drawing reads of a request's `InferParams` (render/ sits below models/)."""

    @property
    def confidence(self) -> float: ...

    @property
    def keypoint_confidence(self) -> float: ...


def color(i: int) -> tuple[int, int, int]:
    c = PALETTE[int(i) % len(PALETTE)]
    return int(c[0]), int(c[1]), int(c[2])


def _label(img: np.ndarray, text: str, x: int, y: int, rgb: tuple[int, int, int]) -> None:
    scale = max(0.4, min(img.shape[:2]) / 1000.0)
    thickness = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    y0 = max(y - th - base - 2, 0)
    cv2.rectangle(img, (x, y0), (x + tw + 4, y0 + th + base + 2), rgb, -1)
    cv2.putText(img, text, (x + 2, y0 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), thickness, cv2.LINE_AA)  # fmt: skip


def draw_detections(
    img: np.ndarray, det: Detections, stroke: int, labels: bool, keypoint_confidence: float = 0.0
) -> None:
    if det.masks is not None:
        for i, m in enumerate(det.masks):
            h, w = m.mask.shape
            if h == 0 or w == 0:
                continue
            region = img[m.y0 : m.y0 + h, m.x0 : m.x0 + w]
            tint = np.array(color(det.class_id[i]), np.float32)
            region[m.mask] = (region[m.mask] * 0.55 + tint * 0.45).astype(np.uint8)
    for i in range(len(det)):
        x1, y1, x2, y2 = (int(round(v)) for v in det.xyxy[i])
        rgb = color(det.class_id[i])
        if stroke > 0:
            cv2.rectangle(img, (x1, y1), (x2, y2), rgb, stroke)
        if labels:
            _label(img, f"{det.name_of(i)} {det.confidence[i]:.2f}", x1, y1, rgb)
        if det.keypoints is not None:
            kps = det.keypoints[i]
            radius = max(2, stroke + 1)
            for a, b in det.skeleton:
                if kps[a, 2] >= keypoint_confidence and kps[b, 2] >= keypoint_confidence:
                    pa = (int(kps[a, 0]), int(kps[a, 1]))
                    pb = (int(kps[b, 0]), int(kps[b, 1]))
                    cv2.line(img, pa, pb, rgb, max(1, stroke), cv2.LINE_AA)
            for k, (kx, ky, kc) in enumerate(kps.tolist()):
                if kc >= keypoint_confidence:
                    dot = color(k + KEYPOINT_COLOR_OFFSET)
                    cv2.circle(img, (int(kx), int(ky)), radius, dot, -1, cv2.LINE_AA)


def draw_semantic(img: np.ndarray, sem: SemanticMask) -> None:
    ids = sem.class_map.astype(np.int64)
    colours = np.array([color(i) for i in range(int(ids.max(initial=0)) + 1)], np.float32)
    overlay = colours[ids]
    fg = ids > 0
    img[fg] = (img[fg] * 0.5 + overlay[fg] * 0.5).astype(np.uint8)


def draw_classification(img: np.ndarray, cls: Classification, threshold: float) -> None:
    order = np.argsort(-cls.scores)
    if cls.multilabel:
        shown = [i for i in order if cls.scores[i] >= threshold][:5]
    else:
        shown = list(order[:3])
    y = 4
    for i in shown:
        text = f"{cls.class_names[i]} {cls.scores[i]:.2f}"
        scale = max(0.5, min(img.shape[:2]) / 800.0)
        (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y += th + base + 4
        _label(img, text, 4, y, color(i))


def annotate(
    image: np.ndarray,
    prediction: Prediction,
    *,
    stroke: int = 1,
    labels: bool = False,
    confidence: float = 0.5,
    keypoint_confidence: float = 0.0,
) -> np.ndarray:
    """A copy of the RGB image with the prediction drawn on it."""
    img = np.ascontiguousarray(image.copy())
    result = prediction.result
    if isinstance(result, Detections):
        draw_detections(img, result, stroke, labels, keypoint_confidence)
    elif isinstance(result, SemanticMask):
        draw_semantic(img, result)
    elif isinstance(result, Classification):
        draw_classification(img, result, confidence)
    return img


def annotated_jpeg(
    image: np.ndarray, prediction: Prediction, params: Thresholds, render: RenderOptions
) -> bytes:
    """The `format=image` / `visualization` JPEG: the prediction drawn with the request's options."""
    drawn = annotate(
        image,
        prediction,
        stroke=render.stroke,
        labels=render.labels,
        confidence=params.confidence,
        keypoint_confidence=params.keypoint_confidence,
    )
    return encode_jpeg(drawn)

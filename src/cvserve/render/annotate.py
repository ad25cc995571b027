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


Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), image pixels


def _font(shape: tuple[int, ...]) -> tuple[float, int]:
    scale = max(0.4, min(shape[:2]) / 1000.0)
    return scale, max(1, int(round(scale * 2)))


def _label_size(text: str, shape: tuple[int, ...]) -> tuple[int, int]:
    scale, thickness = _font(shape)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    return tw + 4, th + base + 2


def _fit(x: int, y: int, w: int, h: int, width: int, height: int) -> Rect:
    """The label's rectangle moved (not cut) to lie inside the image where it fits."""
    x = min(max(x, 0), max(width - w, 0))
    y = min(max(y, 0), max(height - h, 0))
    return x, y, x + w, y + h


def _overlaps(rects: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """Total area each of `rects` (n, 4) shares with the rectangles `placed` (k, 4)."""
    w = np.minimum(rects[:, None, 2], placed[None, :, 2]) - np.maximum(
        rects[:, None, 0], placed[None, :, 0]
    )
    h = np.minimum(rects[:, None, 3], placed[None, :, 3]) - np.maximum(
        rects[:, None, 1], placed[None, :, 1]
    )
    return (np.clip(w, 0, None) * np.clip(h, 0, None)).sum(axis=1)


def layout_labels(
    boxes: np.ndarray, sizes: list[tuple[int, int]], shape: tuple[int, ...]
) -> list[Rect]:
    """Where each box's label goes: inside the image and off the labels already placed.

    Boxes are placed most confident first (the caller's order), each at the first spot that
    overlaps no earlier label: above the box's top-left corner, inside it, below it, then
    the right-hand corners; else the spot that overlaps least. Overlapping boxes (a cup in
    a bowl) share corners, so their labels would otherwise be drawn over each other.
    """
    height, width = shape[:2]
    placed = np.zeros((len(sizes), 4), np.int64)
    for n, ((x1, y1, x2, y2), (w, h)) in enumerate(zip(boxes.tolist(), sizes, strict=True)):
        x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
        spots = [
            (x1, y1 - h), (x1, y1), (x1, y2), (x1, y2 - h),
            (x2 - w, y1 - h), (x2 - w, y1), (x2 - w, y2), (x2 - w, y2 - h),
        ]  # fmt: skip
        rects = np.array([_fit(x, y, w, h, width, height) for x, y in spots], np.int64)
        costs = _overlaps(rects, placed[:n])
        placed[n] = rects[int(np.argmin(costs))]  # argmin: the first free spot, if any
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in placed.tolist()]


def _label(img: np.ndarray, text: str, rect: Rect, rgb: tuple[int, int, int]) -> None:
    scale, thickness = _font(img.shape)
    x0, y0, x1, y1 = rect
    (_, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), rgb, -1)
    cv2.putText(img, text, (x0 + 2, y0 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), thickness, cv2.LINE_AA)  # fmt: skip


def draw_detections(
    img: np.ndarray, det: Detections, stroke: int, labels: bool, keypoint_confidence: float = 0.0
) -> None:
    # Least confident first, so the most confident box, mask and label end up on top.
    order = np.argsort(det.confidence, kind="stable")
    if det.masks is not None:
        for i in order:
            m = det.masks[i]
            h, w = m.mask.shape
            if h == 0 or w == 0:
                continue
            region = img[m.y0 : m.y0 + h, m.x0 : m.x0 + w]
            tint = np.array(color(det.class_id[i]), np.float32)
            region[m.mask] = (region[m.mask] * 0.55 + tint * 0.45).astype(np.uint8)
    for i in order:
        x1, y1, x2, y2 = (int(round(v)) for v in det.xyxy[i])
        rgb = color(det.class_id[i])
        if stroke > 0:
            cv2.rectangle(img, (x1, y1), (x2, y2), rgb, stroke)
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
    if labels:  # after every box and keypoint: a label is never drawn over
        for i, text, rect in reversed(detection_labels(det, img.shape)):
            _label(img, text, rect, color(det.class_id[i]))


def detection_labels(det: Detections, shape: tuple[int, ...]) -> list[tuple[int, str, Rect]]:
    """(detection index, text, rectangle) of each label, most confident first."""
    order = np.argsort(-det.confidence, kind="stable").tolist()
    texts = [f"{det.name_of(i)} {det.confidence[i]:.2f}" for i in order]
    rects = layout_labels(det.xyxy[order], [_label_size(t, shape) for t in texts], shape)
    return list(zip(order, texts, rects, strict=True))


def draw_semantic(img: np.ndarray, sem: SemanticMask) -> None:
    ids = sem.class_map.astype(np.int64)
    colours = np.array([color(i) for i in range(int(ids.max(initial=0)) + 1)], np.float32)
    overlay = colours[ids]
    fg = ids > 0
    img[fg] = (img[fg] * 0.5 + overlay[fg] * 0.5).astype(np.uint8)


def draw_classification(img: np.ndarray, cls: Classification, threshold: float) -> None:
    order = np.argsort(-cls.scores)
    # Only classes at or above the request's confidence, as the web page draws them.
    limit = 5 if cls.multilabel else 3
    shown = [i for i in order if cls.scores[i] >= threshold][:limit]
    y = 4
    for i in shown:  # one under the other from the top-left corner
        text = f"{cls.class_names[i]} {cls.scores[i]:.2f}"
        w, h = _label_size(text, img.shape)
        rect = _fit(4, y, w, h, img.shape[1], img.shape[0])
        _label(img, text, rect, color(i))
        y += h + 2


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

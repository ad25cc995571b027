"""Box and mask geometry shared by NMS, the int8 agreement checks and the benchmarks: one
IoU, one greedy box matching, one box-format conversion (boxes are xyxy unless named)."""

from __future__ import annotations

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against many."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """(n, n) IoU matrix of xyxy boxes; the same arithmetic as box_iou, so the same values."""
    x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = areas[:, None] + areas[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of one shape; two empty masks agree (1.0)."""
    union = int(np.count_nonzero(a | b))
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def match_boxes(
    a_xyxy: np.ndarray,
    a_class: np.ndarray,
    b_xyxy: np.ndarray,
    b_class: np.ndarray,
    thr: float = 0.5,
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (i in a, j in b, IoU): same class, IoU >= thr, a's boxes
    in order (highest score first), each taking b's best free box (the first of equals)."""
    free = np.ones(len(b_xyxy), bool)
    out: list[tuple[int, int, float]] = []
    for i in range(len(a_xyxy)):
        if not free.any():
            break
        ious = np.where(free & (b_class == a_class[i]), box_iou(a_xyxy[i], b_xyxy), 0.0)
        j = int(np.argmax(ious))
        best = float(ious[j])
        if best > 0 and best >= thr:
            free[j] = False
            out.append((i, j, best))
    return out


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) centre-and-size boxes -> (N, 4) corner boxes, in the input's dtype."""
    centre, half = boxes[:, :2], boxes[:, 2:4] / 2
    return np.concatenate([centre - half, centre + half], axis=1)

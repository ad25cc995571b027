"""Per-class non-maximum suppression by true IoU (greedy, highest score first)."""

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


# Up to this many candidates, all pairwise IoUs are computed at once (n^2 float64: 8 MB at
# 1000) and the greedy pass only reads rows; beyond, IoUs are computed per kept box.
_MATRIX_MAX = 1000


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


def _nms_matrix(
    sorted_boxes: np.ndarray, iou: float, max_keep: int, order: np.ndarray
) -> np.ndarray:
    over = pairwise_iou(sorted_boxes) > iou
    n = len(order)
    suppressed = np.zeros(n, bool)
    keep: list[int] = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_keep:
            break
        suppressed |= over[i]
    return order[np.asarray(keep, np.int64)].astype(np.int64)


def nms(
    xyxy: np.ndarray,
    scores: np.ndarray,
    class_id: np.ndarray | None,
    iou: float,
    max_keep: int = 300,
) -> np.ndarray:
    """Indices kept, sorted by descending score. Boxes of different classes never suppress
    each other (they are shifted apart, as torchvision's batched_nms does)."""
    n = len(scores)
    if n == 0:
        return np.zeros((0,), np.int64)
    boxes = xyxy.astype(np.float64, copy=True)
    if class_id is not None and n > 1:
        span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
        boxes += (class_id.astype(np.float64) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    if n <= _MATRIX_MAX:
        return _nms_matrix(boxes[order], iou, max_keep, order)
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou]
    return np.asarray(keep, np.int64)

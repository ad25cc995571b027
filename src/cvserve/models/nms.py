"""Per-class non-maximum suppression by true IoU (greedy, highest score first)."""

from __future__ import annotations

import numpy as np

from cvserve.geometry import box_iou, pairwise_iou

# After _LOOP_FIRST boxes kept one at a time, if at most _MATRIX_MAX candidates remain, all
# their pairwise IoUs are computed at once (n^2 float64: 8 MB at 1000) and the greedy pass
# only reads rows; beyond, IoUs are computed per kept box.
_MATRIX_MAX = 1000
_LOOP_FIRST = 8


def _greedy(boxes: np.ndarray, order: np.ndarray, iou: float, max_keep: int) -> np.ndarray:
    """Greedy NMS over `order` (indices into boxes, best first): the indices kept.

    The first boxes are taken one at a time (each removes its cluster, so a crowd of
    candidates around a few objects shrinks fast); if many remain after that, the rest is
    done from one pairwise IoU matrix. Both compute the same IoUs, so the same decisions."""
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        if len(keep) >= _LOOP_FIRST and order.size <= _MATRIX_MAX:
            return np.concatenate(
                [np.asarray(keep, np.int64), _matrix(boxes, order, iou, max_keep - len(keep))]
            )
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou]
    return np.asarray(keep, np.int64)


def _matrix(boxes: np.ndarray, order: np.ndarray, iou: float, max_keep: int) -> np.ndarray:
    over = pairwise_iou(boxes[order]) > iou
    suppressed = np.zeros(order.size, bool)
    kept: list[int] = []
    for i in range(order.size):
        if suppressed[i]:
            continue
        kept.append(i)
        if len(kept) >= max_keep:
            break
        suppressed |= over[i]
    return order[np.asarray(kept, np.int64)].astype(np.int64)


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
    if class_id is None or n < 2:
        return _greedy(boxes, order, iou, max_keep)
    classes, inverse = np.unique(class_id[order], return_inverse=True)
    if classes.size == 1:
        return _greedy(boxes, order, iou, max_keep)
    # Shifted apart, boxes of two classes never overlap: each class's greedy pass is
    # independent, so run it per class (n_c^2 IoUs instead of n^2) on the same shifted
    # coordinates (the same arithmetic, so the same decisions), then merge by score.
    kept = np.zeros(n, bool)
    for c in range(classes.size):
        members = order[inverse == c]  # this class, still best first
        kept[_greedy(boxes, members, iou, max_keep)] = True
    return order[kept[order]][:max_keep].astype(np.int64)

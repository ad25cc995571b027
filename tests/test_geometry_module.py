"""cvserve.geometry: the one IoU, greedy matching and box conversion NMS, the int8 agreement
checks and the benchmarks share."""

from __future__ import annotations

import numpy as np
import pytest

from cvserve.geometry import box_iou, cxcywh_to_xyxy, mask_iou, match_boxes, pairwise_iou


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 80, (n, 2))
    wh = rng.uniform(0, 40, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _scalar_iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _scalar_match(a, ca, b, cb, thr):  # type: ignore[no-untyped-def]
    """The loop the quantize agreement and the benchmark each had before."""
    used: set[int] = set()
    out = []
    for i in range(len(a)):
        best, best_j = 0.0, -1
        for j in range(len(b)):
            if j not in used and ca[i] == cb[j]:
                iou = _scalar_iou(a[i], b[j])
                if iou > best:
                    best, best_j = iou, j
        if best >= thr:
            used.add(best_j)
            out.append((i, best_j, best))
    return out


def test_box_iou_known_values() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], float)
    assert box_iou(boxes[0], boxes).tolist() == pytest.approx([1.0, 50 / 150, 0.0, 0.0])
    assert np.array_equal(pairwise_iou(boxes)[0], box_iou(boxes[0], boxes))


@pytest.mark.parametrize("seed", range(20))
def test_match_boxes_is_the_old_greedy_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _boxes(rng, int(rng.integers(0, 15))), _boxes(rng, int(rng.integers(0, 15)))
    b[: len(a) // 2] = a[: len(b[: len(a) // 2])]  # some exact duplicates: ties
    ca, cb = rng.integers(0, 3, len(a)), rng.integers(0, 3, len(b))
    for thr in (0.1, 0.3, 0.5):  # (thr 0 matched "no box" in the old loop: never used)
        assert match_boxes(a, ca, b, cb, thr) == _scalar_match(a, ca, b, cb, thr)


def test_mask_iou_and_conversion() -> None:
    m = np.zeros((4, 4), bool)
    m[:2] = True
    assert mask_iou(m, m) == 1.0 and mask_iou(m, ~m) == 0.0
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    got = cxcywh_to_xyxy(np.array([[10, 20, 4, 6]], np.float32))
    assert got.tolist() == [[8, 17, 12, 23]] and got.dtype == np.float32

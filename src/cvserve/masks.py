"""Mask formats: a mask -> its outline polygons, or COCO compressed RLE.

One contour extractor serves both outline kinds: the hosted JSON's single polygon per
instance (`outline`, of a `BoxMask`) and the platform JSON's every-part polygons
(`outlines`, of a full-size mask, simplified).
"""

from __future__ import annotations

import cv2
import numpy as np

from cvserve.results import BoxMask

SIMPLIFY_PX = 1.0  # Douglas-Peucker tolerance: drops staircase vertices, keeps the shape


def external_contours(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """OpenCV's outer contours of a 2-D mask (nonzero is inside), each (K, 1, 2) int32 in
    the mask's pixels, vertices only at direction changes (CHAIN_APPROX_SIMPLE)."""
    pixels = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)  # bool: no copy
    contours, _ = cv2.findContours(pixels, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return tuple(contours)


def outline(mask: BoxMask) -> np.ndarray:
    """The largest external contour as (P, 2) float32 image pixels; empty if no pixels."""
    if mask.mask.size == 0 or not mask.mask.any():
        return np.zeros((0, 2), np.float32)
    contours = external_contours(mask.mask)
    if not contours:
        return np.zeros((0, 2), np.float32)
    best = max(contours, key=cv2.contourArea)
    pts = best.reshape(-1, 2).astype(np.float32)
    pts[:, 0] += mask.x0
    pts[:, 1] += mask.y0
    return pts


def outlines(mask: np.ndarray, simplify_px: float = SIMPLIFY_PX) -> list[np.ndarray]:
    """Outer contours of a bool mask (H, W) as float32 (K, 2) pixel polygons, largest area
    first, each simplified by `simplify_px` and with at least 3 vertices."""
    found: list[tuple[float, np.ndarray]] = []
    for c in external_contours(mask):
        poly = cv2.approxPolyDP(c, simplify_px, True) if simplify_px > 0 else c
        if len(poly) < 3:
            poly = c
        if len(poly) < 3:  # a pixel or a thin line: outline its bounding rectangle
            x, y, w, h = cv2.boundingRect(c)
            poly = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        pts = poly.reshape(-1, 2).astype(np.float32)
        found.append((float(cv2.contourArea(c)) + len(c) * 1e-6, pts))
    found.sort(key=lambda a: -a[0])
    return [p for _, p in found]


def rle_encode(mask: BoxMask, width: int, height: int) -> dict[str, object]:
    """COCO compressed RLE of the mask in a full width x height image (column-major)."""
    counts = _rle_counts(mask, width, height)
    return {"size": [height, width], "counts": _compress_counts(counts)}


def _rle_counts(mask: BoxMask, width: int, height: int) -> np.ndarray:
    """Column-major run lengths of the mask in the full image, zeros first.

    Only the box is looked at: each box column changes value where its padded difference
    is nonzero, and a change at box row r of box column c sits at flat index
    (x0 + c) * height + y0 + r. The runs are the gaps between those positions."""
    h, w = mask.mask.shape
    total = width * height
    if h == 0 or w == 0:
        return np.array([total], np.int64)
    m = mask.mask.view(np.uint8) if mask.mask.dtype == bool else mask.mask.astype(np.uint8)
    change = np.diff(m, axis=0, prepend=np.uint8(0), append=np.uint8(0))  # (h + 1, w)
    rows, cols = np.nonzero(change)
    if rows.size == 0:
        return np.array([total], np.int64)
    pos = np.sort((cols.astype(np.int64) + mask.x0) * height + mask.y0 + rows)
    # A column that ends on the image's last row inside the mask and a next column that
    # starts inside it change at the same index: the two changes cancel.
    dup = np.flatnonzero(pos[1:] == pos[:-1])
    if dup.size:
        pos = np.delete(pos, np.concatenate((dup, dup + 1)))
    if pos.size and pos[-1] == total:  # the last pixel is in the mask: no change after it
        pos = pos[:-1]
    return np.diff(np.concatenate(([0], pos, [total])))


def _compress_counts(counts: np.ndarray) -> str:
    """pycocotools' LEB128-like string encoding of run lengths (rleToString), vectorised:
    each count (minus the count two before it, from the third on) is written as 5-bit
    groups, low first, +48, bit 0x20 on every group but the last; the last is the first
    group after which the remaining bits are all sign (0 or -1, and bit 0x10 agrees)."""
    counts = np.asarray(counts, np.int64)
    x = counts.copy()
    x[3:] -= counts[1:-2]
    # Enough groups for the widest value and its sign bit.
    groups = max(1, -(-(int(np.abs(x).max(initial=0)).bit_length() + 1) // 5))
    shifts = np.arange(groups, dtype=np.int64) * 5
    rest = x[:, None] >> shifts  # (M, groups): the value still to write before each group
    group = rest & 0x1F
    after = rest >> 5
    done = np.where(group & 0x10, after == -1, after == 0)
    n = np.argmax(done, axis=1) + 1  # groups per count
    keep = np.arange(groups) < n[:, None]
    chars = group + 48
    chars[np.arange(groups) < (n - 1)[:, None]] += 0x20  # "more follows"
    return chars[keep].astype(np.uint8).tobytes().decode("ascii")

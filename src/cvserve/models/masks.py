"""Instance masks: prototype masks -> per-box bitmaps, outlines, and COCO RLE.

Masks are computed only inside their boxes (a 1920x1080 image with 100 instances never
allocates 100 full-size planes), which keeps post-processing in the millisecond range.
"""

from __future__ import annotations

import cv2
import numpy as np

from cvserve.models.preprocess import Transform
from cvserve.results import BoxMask


def proto_masks(
    coefficients: np.ndarray,
    protos: np.ndarray,
    boxes_img: np.ndarray,
    transform: Transform,
    input_size: tuple[int, int],
) -> list[BoxMask]:
    """YOLO-style masks: sigmoid(coef @ protos), cropped to each box, upsampled bilinearly.

    coefficients (N, 32); protos (32, mh, mw) over the model input (in_w, in_h);
    boxes_img (N, 4) xyxy in image pixels. Each mask covers exactly its (integer) box.
    """
    n = coefficients.shape[0]
    c, mh, mw = protos.shape
    in_w, in_h = input_size
    flat = protos.reshape(c, -1)
    out: list[BoxMask] = []
    # Image pixel (x, y) centre maps to input coords x*s + pad, then to proto coords * (mw/in_w).
    kx, ky = mw / in_w, mh / in_h
    for i in range(n):
        x1, y1, x2, y2 = boxes_img[i]
        bx0, by0 = int(np.floor(x1)), int(np.floor(y1))
        bx1, by1 = int(np.ceil(x2)), int(np.ceil(y2))
        bw, bh = max(bx1 - bx0, 1), max(by1 - by0, 1)
        # The proto window covering the box (+1 cell margin for bilinear support).
        px0 = (bx0 * transform.scale_x + transform.pad_x) * kx
        py0 = (by0 * transform.scale_y + transform.pad_y) * ky
        px1 = (bx1 * transform.scale_x + transform.pad_x) * kx
        py1 = (by1 * transform.scale_y + transform.pad_y) * ky
        wx0, wy0 = max(int(np.floor(px0)) - 1, 0), max(int(np.floor(py0)) - 1, 0)
        wx1, wy1 = min(int(np.ceil(px1)) + 1, mw), min(int(np.ceil(py1)) + 1, mh)
        if wx1 <= wx0 or wy1 <= wy0:
            out.append(BoxMask(bx0, by0, np.zeros((bh, bw), bool)))
            continue
        win = protos[:, wy0:wy1, wx0:wx1].reshape(c, -1)
        logits = (coefficients[i] @ win).reshape(wy1 - wy0, wx1 - wx0)
        # Sample the window at each box pixel centre (align_corners=False convention). The
        # map is affine and separable (x' = a x + b, y' = c y + d), so warpAffine computes
        # it on the fly: same fixed-point bilinear as remap, without two full-size maps.
        ax, ay = transform.scale_x * kx, transform.scale_y * ky
        bx = ((bx0 + 0.5) * transform.scale_x + transform.pad_x) * kx - 0.5 - wx0
        by = ((by0 + 0.5) * transform.scale_y + transform.pad_y) * ky - 0.5 - wy0
        sampled = cv2.warpAffine(
            logits.astype(np.float32, copy=False),
            np.array([[ax, 0.0, bx], [0.0, ay, by]], np.float64),
            (bw, bh),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        out.append(BoxMask(bx0, by0, sampled > 0.0))  # sigmoid(v) > 0.5  <=>  v > 0
    del flat
    return out


def clip_box_masks(masks: list[BoxMask], width: int, height: int) -> list[BoxMask]:
    """Trim masks to the image bounds."""
    out = []
    for m in masks:
        x0, y0 = max(m.x0, 0), max(m.y0, 0)
        h, w = m.mask.shape
        x1, y1 = min(m.x0 + w, width), min(m.y0 + h, height)
        if x1 <= x0 or y1 <= y0:
            out.append(BoxMask(x0, y0, np.zeros((0, 0), bool)))
            continue
        out.append(BoxMask(x0, y0, m.mask[y0 - m.y0 : y1 - m.y0, x0 - m.x0 : x1 - m.x0]))
    return out


def outline(mask: BoxMask) -> np.ndarray:
    """The largest external contour as (P, 2) float32 image pixels; empty if no pixels."""
    if mask.mask.size == 0 or not mask.mask.any():
        return np.zeros((0, 2), np.float32)
    contours, _ = cv2.findContours(
        mask.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return np.zeros((0, 2), np.float32)
    best = max(contours, key=cv2.contourArea)
    pts = best.reshape(-1, 2).astype(np.float32)
    pts[:, 0] += mask.x0
    pts[:, 1] += mask.y0
    return pts


def all_outlines(mask: np.ndarray, min_area: float = 1.0) -> list[np.ndarray]:
    """Every external contour of a full-size boolean mask, largest first."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    contours = [c for c in contours if cv2.contourArea(c) >= min_area or len(c) >= 3]
    contours.sort(key=cv2.contourArea, reverse=True)
    return [c.reshape(-1, 2).astype(np.float32) for c in contours]


def rle_encode(mask: BoxMask, width: int, height: int) -> dict[str, object]:
    """COCO compressed RLE of the mask in a full width x height image (column-major)."""
    counts = _rle_counts(mask, width, height)
    return {"size": [height, width], "counts": _compress_counts(counts)}


def _rle_counts(mask: BoxMask, width: int, height: int) -> list[int]:
    h, w = mask.mask.shape
    if h == 0 or w == 0 or not mask.mask.any():
        return [width * height]
    # Column-major flattening touches only the box columns; other columns are zero runs.
    cols = np.zeros((height, w), dtype=bool)
    cols[mask.y0 : mask.y0 + h, :] = mask.mask
    flat = cols.T.reshape(-1)
    start = mask.x0 * height
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(edges).tolist()
    if flat[0]:
        runs.insert(0, 0)
    runs[0] += start
    tail = (width - mask.x0 - w) * height
    if len(runs) % 2 == 1:  # ends with a zero run
        runs[-1] += tail
    elif tail:
        runs.append(tail)
    return runs


def _compress_counts(counts: list[int]) -> str:
    """pycocotools' LEB128-like string encoding of run lengths."""
    out = bytearray()
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(ch + 48)
    return out.decode("ascii")

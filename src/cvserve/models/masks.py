"""Instance masks: prototype masks -> per-box bitmaps, outlines, and COCO RLE.

Masks are computed only inside their boxes (a 1920x1080 image with 100 instances never
allocates 100 full-size planes), which keeps post-processing in the millisecond range.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from cvserve.models.preprocess import Transform
from cvserve.results import BoxMask


def _bilinear_taps(pos: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear (align_corners=False) taps at source positions: clamp below at 0,
    the upper neighbour clamped to the last index. Returns (i0, i1, weight of i1)."""
    pos = np.maximum(pos, 0.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, pos - i0


def _axis_taps(
    out_len: int, proto_len: int, f: int, crop: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """1-D taps of Ultralytics' native mask path on one axis: for each output pixel, the
    (out_len, T) prototype indices and weights (T = 2 or 4; repeated indices add up).

    The proto axis is upsampled f times (F.interpolate, scale_factor=f), cropped to
    [crop0, crop0 + crop_len) and resized to out_len pixels (F.interpolate, size=out_len);
    both bilinear, so composing the two 1-D maps gives each output pixel its weights over
    the prototype cells."""
    p = np.arange(out_len, dtype=np.float64)
    crop0, crop_len = crop
    # Stage 2: output pixel -> position in the cropped, upsampled grid.
    u0, u1, lu = _bilinear_taps((p + 0.5) * (crop_len / out_len) - 0.5, crop_len)
    taps: list[tuple[np.ndarray, np.ndarray]] = []
    for u, wu in ((u0 + crop0, 1.0 - lu), (u1 + crop0, lu)):
        # Stage 1: upsampled index -> prototype cells.
        if f == 1:
            taps.append((np.minimum(u, proto_len - 1), wu))
            continue
        j0, j1, lj = _bilinear_taps((u + 0.5) / f - 0.5, proto_len)
        taps += [(j0, wu * (1.0 - lj)), (j1, wu * lj)]
    idx = np.stack([t[0] for t in taps], axis=1)
    wts = np.stack([t[1] for t in taps], axis=1).astype(np.float32)
    return idx, wts


def _native_layout(
    transform: Transform, mh: int, mw: int, in_w: int, in_h: int
) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(f, (x crop0, len), (y crop0, len)) of the upsampled prototype grid that holds the
    image. For Ultralytics' centred letterbox, exactly process_mask_native + scale_masks'
    arithmetic; otherwise the transform's content box at prototype resolution."""
    w, h = transform.width, transform.height
    gain = min(in_h / h, in_w / w)
    new_w, new_h = round(w * gain), round(h * gain)
    left, top = round((in_w - new_w) / 2 - 0.1), round((in_h - new_h) / 2 - 0.1)
    centred = transform.content == (left, top, left + new_w, top + new_h)
    if centred and in_w == 4 * mw and in_h == 4 * mh:
        pad = (4 * mh - max(round(h * gain), 1)) | (4 * mw - max(round(w * gain), 1))
        f = 4 // math.gcd(4, pad | pad // 2)
        g = min(mh * f / h, mw * f / w)
        cw, ch = max(round(w * g), 1), max(round(h * g), 1)
        x0, y0 = round((mw * f - cw) / 2 - 0.1), round((mh * f - ch) / 2 - 0.1)
        return f, (x0, cw), (y0, ch)
    cx0, cy0, cx1, cy1 = transform.content
    kx, ky = mw / in_w, mh / in_h
    x0, y0 = int(round(cx0 * kx)), int(round(cy0 * ky))
    cw = max(int(round(cx1 * kx)) - x0, 1)
    ch = max(int(round(cy1 * ky)) - y0, 1)
    return 1, (x0, cw), (y0, ch)


def proto_masks(
    coefficients: np.ndarray,
    protos: np.ndarray,
    boxes_img: np.ndarray,
    transform: Transform,
    input_size: tuple[int, int],
) -> list[BoxMask]:
    """YOLO-style masks, bit-for-bit the arithmetic of Ultralytics' native-resolution path
    (`retina_masks=True`: ops.process_mask_native): logits coef @ protos, upsampled to the
    image bilinearly, thresholded at 0 (sigmoid > 0.5), cropped to the box the way
    ops.crop_mask does (pixel columns x1 <= c < x2, rows y1 <= r < y2).

    coefficients (N, 32); protos (32, mh, mw) over the model input (in_w, in_h);
    boxes_img (N, 4) xyxy in image pixels. Only each box's pixels are computed, as two
    small separable products, so big images with many instances stay cheap.
    """
    n = coefficients.shape[0]
    c, mh, mw = protos.shape
    in_w, in_h = input_size
    out: list[BoxMask] = []
    if n == 0:
        return out
    f, xcrop, ycrop = _native_layout(transform, mh, mw, in_w, in_h)
    ix, wx = _axis_taps(transform.width, mw, f, xcrop)
    iy, wy = _axis_taps(transform.height, mh, f, ycrop)
    x_lo, x_hi = ix.min(1), ix.max(1) + 1
    y_lo, y_hi = iy.min(1), iy.max(1) + 1
    for i in range(n):
        x1, y1, x2, y2 = (float(v) for v in boxes_img[i])
        bx0 = min(max(math.ceil(x1), 0), transform.width)
        by0 = min(max(math.ceil(y1), 0), transform.height)
        bx1 = min(max(math.ceil(x2), bx0), transform.width)
        by1 = min(max(math.ceil(y2), by0), transform.height)
        if bx1 == bx0 or by1 == by0:
            out.append(BoxMask(bx0, by0, np.zeros((by1 - by0, bx1 - bx0), bool)))
            continue
        jx0, jx1 = int(x_lo[bx0]), int(x_hi[bx1 - 1])  # the prototype window of the box
        jy0, jy1 = int(y_lo[by0]), int(y_hi[by1 - 1])
        win = protos[:, jy0:jy1, jx0:jx1].reshape(c, -1)
        logits = (coefficients[i] @ win).reshape(jy1 - jy0, jx1 - jx0)
        # Each pixel mixes only 2-4 prototype cells per axis: apply those taps (rows, then
        # columns) instead of dense weight products that are almost all zeros.
        ty, tw = iy[by0:by1] - jy0, wy[by0:by1]
        rows = logits[ty[:, 0]] * tw[:, :1]
        for t in range(1, ty.shape[1]):
            rows += logits[ty[:, t]] * tw[:, t : t + 1]
        tx, txw = ix[bx0:bx1] - jx0, wx[bx0:bx1]
        sampled = rows[:, tx[:, 0]] * txw[:, 0]
        for t in range(1, tx.shape[1]):
            sampled += rows[:, tx[:, t]] * txw[:, t]
        out.append(BoxMask(bx0, by0, sampled > 0.0))  # sigmoid > 0.5
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

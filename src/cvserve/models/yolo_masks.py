"""YOLO instance masks: prototype masks -> per-box bitmaps, exactly as Ultralytics samples
them. (What a mask becomes on the wire, outlines and COCO RLE, is `cvserve.masks`.)

Masks are computed only inside their boxes (a 1920x1080 image with 100 instances never
allocates 100 full-size planes), which keeps post-processing in the millisecond range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


# A cell is "surely inside" only if every logit it mixes is above this: the products with
# nonnegative weights then stay normal floats, so their sum is > 0 (no underflow to 0).
_SURELY_POSITIVE = 1e-30


@dataclass(frozen=True)
class _AxisRuns:
    """One axis of the mask sampling: per-pixel taps, grouped into runs of consecutive
    pixels that mix the same prototype cells (only their weights differ)."""

    idx: np.ndarray  # (P, T) prototype index of each tap
    wts: np.ndarray  # (P, T) float32 weights, >= 0, summing to 1
    lo: np.ndarray  # (P,) first prototype index a pixel touches
    hi: np.ndarray  # (P,) one past its last
    start: np.ndarray  # (R + 1,) first pixel of each run, then P
    run_of: np.ndarray  # (P,) the run of each pixel

    @classmethod
    def build(cls, idx: np.ndarray, wts: np.ndarray) -> _AxisRuns:
        change = np.flatnonzero(np.any(idx[1:] != idx[:-1], axis=1)) + 1
        start = np.concatenate(([0], change, [idx.shape[0]]))
        run_of = np.repeat(np.arange(start.size - 1), np.diff(start))
        return cls(idx, wts, idx.min(1), idx.max(1) + 1, start, run_of)

    def window(self, b0: int, b1: int) -> tuple[int, int]:
        """The prototype index range that pixels [b0, b1) touch."""
        return int(self.lo[b0]), int(self.hi[b1 - 1])

    def box_runs(self, b0: int, b1: int, j0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The runs over pixels [b0, b1), clipped to them: box-relative starts, lengths,
        and tap indices relative to the prototype window that starts at j0."""
        r0, r1 = int(self.run_of[b0]), int(self.run_of[b1 - 1]) + 1
        edges = np.clip(self.start[r0 : r1 + 1], b0, b1) - b0
        return edges[:-1], np.diff(edges), self.idx[edges[:-1] + b0] - j0


BoxSampler = Callable[
    [np.ndarray, "_AxisRuns", "_AxisRuns", tuple[int, int, int, int], tuple[int, int]], np.ndarray
]


def proto_masks(
    coefficients: np.ndarray,
    protos: np.ndarray,
    boxes_img: np.ndarray,
    transform: Transform,
    input_size: tuple[int, int],
    sample: BoxSampler | None = None,
) -> list[BoxMask]:
    """YOLO-style masks, bit-for-bit the arithmetic of Ultralytics' native-resolution path
    (`retina_masks=True`: ops.process_mask_native): logits coef @ protos, upsampled to the
    image bilinearly, thresholded at 0 (sigmoid > 0.5), cropped to the box the way
    ops.crop_mask does (pixel columns x1 <= c < x2, rows y1 <= r < y2).

    coefficients (N, 32); protos (32, mh, mw) over the model input (in_w, in_h);
    boxes_img (N, 4) xyxy in image pixels.

    Only each box's pixels are decided, and most without arithmetic: bilinear weights are
    nonnegative, so a block of pixels that mixes only positive logits is inside and one
    that mixes only logits <= 0 is outside. Just the blocks on the mask's edge are sampled,
    with the same float32 operations in the same order as sampling every pixel
    (`sample_every_pixel`, the reference `sample` for tests), so the result is identical.
    """
    n = coefficients.shape[0]
    c, mh, mw = protos.shape
    in_w, in_h = input_size
    out: list[BoxMask] = []
    if n == 0:
        return out
    f, xcrop, ycrop = _native_layout(transform, mh, mw, in_w, in_h)
    xs = _AxisRuns.build(*_axis_taps(transform.width, mw, f, xcrop))
    ys = _AxisRuns.build(*_axis_taps(transform.height, mh, f, ycrop))
    boxes = [_pixel_box(b, transform.width, transform.height) for b in boxes_img]
    windows = [
        (*xs.window(x0, x1), *ys.window(y0, y1)) if x1 > x0 and y1 > y0 else None
        for x0, y0, x1, y1 in boxes
    ]
    logits_of = _logits(coefficients, protos, windows)
    for i, (bx0, by0, bx1, by1) in enumerate(boxes):
        window = windows[i]
        if window is None:
            out.append(BoxMask(bx0, by0, np.zeros((by1 - by0, bx1 - bx0), bool)))
            continue
        jx0, _, jy0, _ = window
        mask = (sample or _box_mask)(logits_of(i), xs, ys, (bx0, by0, bx1, by1), (jx0, jy0))
        out.append(BoxMask(bx0, by0, mask))
    return out


def _logits(
    coefficients: np.ndarray,
    protos: np.ndarray,
    windows: list[tuple[int, int, int, int] | None],
) -> Callable[[int], np.ndarray]:
    """i -> instance i's mask logits over its window (x0, x1, y0, y1) of prototype cells.

    Big windows: one matrix product for every instance over the whole grid, cheaper than
    copying each window out of the (32, mh, mw) planes. Many small ones: per window."""
    c, mh, mw = protos.shape
    coefficients = np.asarray(coefficients, np.float32)
    area = sum((w[1] - w[0]) * (w[3] - w[2]) for w in windows if w is not None)
    if 4 * area >= len(windows) * mh * mw:
        flat = np.ascontiguousarray(protos, np.float32).reshape(c, mh * mw)
        grid = (coefficients @ flat).reshape(-1, mh, mw)

        def from_grid(i: int) -> np.ndarray:
            x0, x1, y0, y1 = windows[i]  # type: ignore[misc]  # called only for i with a window
            return grid[i, y0:y1, x0:x1]

        return from_grid

    def per_window(i: int) -> np.ndarray:
        x0, x1, y0, y1 = windows[i]  # type: ignore[misc]  # called only for i with a window
        win = protos[:, y0:y1, x0:x1].reshape(c, -1)
        return (coefficients[i] @ win).reshape(y1 - y0, x1 - x0)

    return per_window


def _pixel_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """ops.crop_mask's pixel range of an xyxy box: x1 <= c < x2, y1 <= r < y2, in image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    bx0 = min(max(math.ceil(x1), 0), width)
    by0 = min(max(math.ceil(y1), 0), height)
    return bx0, by0, min(max(math.ceil(x2), bx0), width), min(max(math.ceil(y2), by0), height)


def _box_mask(
    logits: np.ndarray,
    xs: _AxisRuns,
    ys: _AxisRuns,
    box: tuple[int, int, int, int],
    origin: tuple[int, int],
) -> np.ndarray:
    bx0, by0, bx1, by1 = box
    jx0, jy0 = origin
    x_start, x_len, x_idx = xs.box_runs(bx0, bx1, jx0)
    y_start, y_len, y_idx = ys.box_runs(by0, by1, jy0)
    # Each (row run, column run) cell mixes the logits at y_idx x x_idx.
    g = logits[y_idx.T]  # (Ty, Ry, window width)
    cell_min = g.min(0)[:, x_idx.T].min(1)  # (Ry, Rx)
    cell_max = g.max(0)[:, x_idx.T].max(1)
    inside = cell_min > _SURELY_POSITIVE
    unsure = ~inside & (cell_max > 0.0)
    x_run = xs.run_of[bx0:bx1] - xs.run_of[bx0]
    y_run = ys.run_of[by0:by1] - ys.run_of[by0]
    mask = np.take(np.take(inside, x_run, axis=1), y_run, axis=0)
    if unsure.any():
        a, b = np.nonzero(unsure)
        ty, wy = ys.idx[by0:by1] - jy0, ys.wts[by0:by1]
        wx = xs.wts[bx0:bx1]
        rr, r_ok = _cell_pixels(y_start[a], y_len[a], by1 - by0)  # (K, Ly)
        cc, c_ok = _cell_pixels(x_start[b], x_len[b], bx1 - bx0)  # (K, Lx)
        # rows[r, j] = sum over y taps of logits * weight, exactly as a full row pass does,
        # but only at the cells' rows and their run's prototype columns.
        cols = x_idx[b][:, None, :]  # (K, 1, Tx)
        rows = logits[ty[rr, 0][..., None], cols] * wy[rr, 0][..., None]
        for t in range(1, ty.shape[1]):
            rows += logits[ty[rr, t][..., None], cols] * wy[rr, t][..., None]
        # (K, Ly, Tx) -> (K, Ly, Lx): the column taps, in the same order.
        vals = rows[:, :, None, 0] * wx[cc, 0][:, None, :]
        for t in range(1, wx.shape[1]):
            vals += rows[:, :, None, t] * wx[cc, t][:, None, :]
        ok = r_ok[:, :, None] & c_ok[:, None, :]
        flat = rr[:, :, None] * (bx1 - bx0) + cc[:, None, :]
        mask.reshape(-1)[flat[ok]] = vals[ok] > 0.0  # sigmoid > 0.5
    return mask


def _cell_pixels(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets of each cell along one axis, padded to the longest: (K, L) and valid."""
    steps = np.arange(int(length.max()))
    ok = steps < length[:, None]
    return np.minimum(start[:, None] + steps, size - 1), ok


def sample_every_pixel(
    logits: np.ndarray,
    xs: _AxisRuns,
    ys: _AxisRuns,
    box: tuple[int, int, int, int],
    origin: tuple[int, int],
) -> np.ndarray:
    """The reference box sampler: every box pixel with its 2-4 taps per axis (rows, then
    columns), no shortcut. proto_masks(..., sample=sample_every_pixel) is what the
    block decisions of _box_mask must reproduce bit for bit."""
    bx0, by0, bx1, by1 = box
    jx0, jy0 = origin
    ty, tw = ys.idx[by0:by1] - jy0, ys.wts[by0:by1]
    rows = logits[ty[:, 0]] * tw[:, :1]
    for t in range(1, ty.shape[1]):
        rows += logits[ty[:, t]] * tw[:, t : t + 1]
    tx, txw = xs.idx[bx0:bx1] - jx0, xs.wts[bx0:bx1]
    sampled = rows[:, tx[:, 0]] * txw[:, 0]
    for t in range(1, tx.shape[1]):
        sampled += rows[:, tx[:, t]] * txw[:, t]
    return sampled > 0.0


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

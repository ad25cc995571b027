"""Image -> input tensor, and the exact inverse for coordinates.

Letterbox follows Ultralytics' arithmetic (round(dw - 0.1) on each side, pad 114,
INTER_LINEAR) so the pixels the model sees match its reference preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from cvserve.models.manifest import Preprocess
from cvserve.models.runtime import helper_threads

# Center crop resizes the short side first; past this many times the input's area the
# intermediate image is skipped (extreme aspect ratios would allocate gigabytes).
MAX_CROP_GROWTH = 16
# Below this many bytes of pixels a split costs more in hand-offs than it saves.
_SPLIT_MIN_BYTES = 200_000
_CV_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class Transform:
    """Maps model-input coordinates back to input-image pixels: x_img = (x_in - pad_x) / sx."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int  # input image size
    height: int
    # The region of the model input that holds image pixels (x0, y0, x1, y1).
    content: tuple[int, int, int, int]

    def boxes_to_image(self, xyxy: np.ndarray, clip: bool = True) -> np.ndarray:
        out = np.empty_like(xyxy, dtype=np.float32)
        out[:, 0::2] = (xyxy[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (xyxy[:, 1::2] - self.pad_y) / self.scale_y
        if clip:
            np.clip(out[:, 0::2], 0, self.width, out=out[:, 0::2])
            np.clip(out[:, 1::2], 0, self.height, out=out[:, 1::2])
        return out

    def points_to_image(self, xy: np.ndarray) -> np.ndarray:
        """xy (..., 2) in model input pixels -> image pixels (not clipped)."""
        out = np.empty(xy.shape, dtype=np.float32)
        out[..., 0] = (xy[..., 0] - self.pad_x) / self.scale_x
        out[..., 1] = (xy[..., 1] - self.pad_y) / self.scale_y
        return out


def _resize(
    image: np.ndarray,
    w: int,
    h: int,
    interpolation: str,
    cols: tuple[int, int] | None = None,
    split: bool = True,
) -> np.ndarray:
    """The image resized to (w, h); only output columns cols[0]:cols[1] if given. `split`:
    the request is alone in flight, so pixel work may take a second core."""
    if image.shape[1] == w and image.shape[0] == h:
        out = image
    elif interpolation == "pil-bilinear":
        # Matches torchvision/PIL reference pipelines (antialiased bilinear).
        return _pil_bilinear(image, w, h, cols or (0, w), split)
    else:
        out = cv2.resize(image, (w, h), interpolation=_CV_INTERP[interpolation])
    return out if cols is None else out[:, cols[0] : cols[1]]


def _pil_bilinear(
    image: np.ndarray, w: int, h: int, cols: tuple[int, int], split: bool = True
) -> np.ndarray:
    """Pillow's antialiased bilinear resize, output columns cols[0]:cols[1].

    While the request is alone in flight, the work is split across two cores. Pillow
    resizes in two separable passes on 8-bit data (horizontal into a clipped 8-bit image,
    then vertical), each output pixel depending only on its own row or column, with
    coefficients that depend only on the sizes. So the horizontal pass is run on two row
    bands, the vertical one on two column bands (only the wanted columns): the same
    arithmetic on the same values, the same bytes (tests/test_preprocess_exact.py)."""
    height, width = image.shape[:2]
    c0, c1 = cols
    if image.size < _SPLIT_MIN_BYTES or not split:
        return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))[
            :, c0:c1
        ]

    def horizontal(r0: int, r1: int) -> np.ndarray:
        band = Image.fromarray(image[r0:r1])
        return np.asarray(band.resize((w, r1 - r0), Image.Resampling.BILINEAR))

    def vertical(k0: int, k1: int) -> np.ndarray:
        band = Image.fromarray(np.ascontiguousarray(mid[:, c0 + k0 : c0 + k1]))
        return np.asarray(band.resize((k1 - k0, h), Image.Resampling.BILINEAR))

    mid = image if w == width else _in_halves(horizontal, height, axis=0)
    if h == height:
        return mid[:, c0:c1]
    return _in_halves(vertical, c1 - c0, axis=1)


def _in_halves(work: Callable[[int, int], np.ndarray], size: int, axis: int) -> np.ndarray:
    """work(0, m) here and work(m, size) on a helper thread, joined along axis."""
    m = size // 2
    if m == 0:
        return work(0, size)
    other = helper_threads().submit(work, m, size)
    first = work(0, m)
    return np.concatenate([first, other.result()], axis=axis)


def letterbox_geometry(
    width: int, height: int, in_w: int, in_h: int, align: str = "center"
) -> tuple[float, int, int, int, int]:
    """(ratio, new_w, new_h, left, top) exactly as Ultralytics' LetterBox computes them."""
    r = min(in_h / height, in_w / width)
    # max(1, ...): a 1 x 20000 image must not shrink to zero pixels wide.
    new_w, new_h = max(1, int(round(width * r))), max(1, int(round(height * r)))
    if align == "top-left":
        return r, new_w, new_h, 0, 0
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    return r, new_w, new_h, int(round(dw - 0.1)), int(round(dh - 0.1))


def prepare_tensor(
    image: np.ndarray,
    spec: Preprocess,
    in_w: int,
    in_h: int,
    dtype: type | None = None,
    split: bool = True,
) -> tuple[np.ndarray, Transform]:
    """prepare() then to_tensor(), the letterboxed float32 NCHW case in one pass: each
    resized plane goes through its value table straight into its place in the tensor and
    only the border is filled with the pad value's (no padded uint8 canvas in between)."""
    planar = (
        spec.resize in ("letterbox", "fit")
        and spec.layout == "nchw"
        and np.dtype(dtype if dtype is not None else spec.dtype) == np.float32
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
    )
    if not planar:
        pixels, transform = prepare(image, spec, in_w, in_h, split)
        return to_tensor(pixels, spec, dtype), transform
    resized, transform = _letterbox_resize(image, spec, in_w, in_h, split)
    left, top, right, bottom = transform.content
    out = np.empty((1, 3, in_h, in_w), np.float32)
    fill = channel_values(spec)[:, int(spec.pad_value), None, None]  # (3, 1, 1)
    planes = out[0]
    planes[:, :top] = fill
    planes[:, bottom:] = fill
    planes[:, top:bottom, :left] = fill
    planes[:, top:bottom, right:] = fill
    _write_planes(resized, spec, planes[:, top:bottom, left:right])
    return out, transform


def _letterbox_resize(
    image: np.ndarray, spec: Preprocess, in_w: int, in_h: int, split: bool
) -> tuple[np.ndarray, Transform]:
    """The resized image before padding, and the letterbox's inverse transform."""
    h, w = image.shape[:2]
    r, new_w, new_h, left, top = letterbox_geometry(w, h, in_w, in_h, spec.pad_align)
    resized = np.ascontiguousarray(_resize(image, new_w, new_h, spec.interpolation, None, split))
    # The resize maps w -> new_w and h -> new_h exactly, so each axis inverts with its own
    # gain (as Ultralytics 8.4's scale_boxes/scale_coords do; the single gain r was
    # off by up to half a model pixel on the rounded side).
    t = Transform(new_w / w, new_h / h, left, top, w, h, (left, top, left + new_w, top + new_h))
    return resized, t


def center_crop_resize_size(w: int, h: int, in_w: int, in_h: int) -> tuple[int, int]:
    """The size the short-side resize of a center crop produces (torchvision's Resize(int)
    arithmetic: the short side becomes the target exactly, the long side is truncated)."""
    if w <= h:
        return in_w, max(in_h, int(in_w * h / w))
    return max(in_w, int(in_h * w / h)), in_h


def prepare(
    image: np.ndarray, spec: Preprocess, in_w: int, in_h: int, split: bool = True
) -> tuple[np.ndarray, Transform]:
    """Resize/pad an RGB uint8 image to (in_h, in_w, 3) uint8 and return the inverse transform."""
    h, w = image.shape[:2]
    if spec.resize == "letterbox" or spec.resize == "fit":
        resized, t = _letterbox_resize(image, spec, in_w, in_h, split)
        left, top, right, bottom = t.content
        # One pass: the border is written around the resized pixels (no full + copy).
        pad = int(spec.pad_value)
        canvas = cv2.copyMakeBorder(
            resized,
            top,
            in_h - bottom,
            left,
            in_w - right,
            cv2.BORDER_CONSTANT,
            value=(pad, pad, pad),
        )
        return canvas, t
    if spec.resize == "stretch":
        resized = _resize(image, in_w, in_h, spec.interpolation, None, split)
        return resized, Transform(in_w / w, in_h / h, 0, 0, w, h, (0, 0, in_w, in_h))
    if spec.resize == "center-crop":
        # Resize the short side to the input size, then crop the centre (classifiers).
        # torchvision's Resize(int) arithmetic: the short side becomes the target exactly,
        # the long side is truncated; CenterCrop rounds its offsets.
        new_w, new_h = center_crop_resize_size(w, h, in_w, in_h)
        r = new_w / w if w <= h else new_h / h
        if new_w * new_h > MAX_CROP_GROWTH * in_w * in_h:
            return _center_crop_first(image, in_w, in_h, r, spec.interpolation, split)
        left, top = int(round((new_w - in_w) / 2.0)), int(round((new_h - in_h) / 2.0))
        cols = (left, left + in_w)
        resized = _resize(image, new_w, new_h, spec.interpolation, cols, split)
        crop = resized[top : top + in_h]
        return crop, Transform(r, r, -left, -top, w, h, (0, 0, in_w, in_h))
    # "none": the model takes the image as is (dynamic input).
    return image, Transform(1.0, 1.0, 0, 0, w, h, (0, 0, w, h))


def _center_crop_first(
    image: np.ndarray, in_w: int, in_h: int, r: float, interpolation: str, split: bool
) -> tuple[np.ndarray, Transform]:
    """Center crop for extreme aspect ratios: crop the source region first, then resize it,
    so a 1 x 20000 image never becomes a 64 x 1280000 intermediate."""
    h, w = image.shape[:2]
    cw, ch = min(w, max(1, int(round(in_w / r)))), min(h, max(1, int(round(in_h / r))))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = _resize(image[y0 : y0 + ch, x0 : x0 + cw], in_w, in_h, interpolation, None, split)
    sx, sy = in_w / cw, in_h / ch
    return crop, Transform(sx, sy, -x0 * sx, -y0 * sy, w, h, (0, 0, in_w, in_h))


def channel_values(spec: Preprocess) -> np.ndarray:
    """(3, 256) float32: the value each uint8 level becomes, per channel in `color` order,
    by the reference arithmetic in float32. A scale of 1/255 is a division by 255, as
    Ultralytics (`im /= 255`) and torchvision (`ToTensor`) do it: multiplying by
    float32(1/255) instead differs in the last bit for 126 of the 256 levels."""
    return _channel_values(spec.scale, spec.mean, spec.std)


@lru_cache(maxsize=64)
def _channel_values(
    scale: float, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> np.ndarray:
    levels = np.arange(256, dtype=np.float32)
    out = np.empty((3, 256), np.float32)
    for c in range(3):
        if scale == 1.0 / 255.0:
            v = levels / np.float32(255.0)
        elif scale != 1.0:
            v = levels * np.float32(scale)
        else:
            v = levels.copy()
        if mean[c]:
            v -= np.float32(mean[c])
        if std[c] != 1.0:
            v /= np.float32(std[c])
        out[c] = v
    out.flags.writeable = False
    return out


def _planar_float32(pixels: np.ndarray, spec: Preprocess) -> np.ndarray:
    """HWC uint8 -> [1, C, H, W] float32, each plane mapped through its channel's 256-entry
    table straight into the result: every value is exactly the reference arithmetic's,
    at the cost of one table lookup per element."""
    h, w, channels = pixels.shape
    out = np.empty((1, channels, h, w), np.float32)
    _write_planes(pixels, spec, out[0])
    return out


def _write_planes(pixels: np.ndarray, spec: Preprocess, dst: np.ndarray) -> None:
    """HWC uint8 pixels -> dst (3, H, W) float32 (a view), in model colour order, each
    plane through its channel's value table."""
    planes = cv2.split(pixels)
    if spec.color == "bgr":
        planes = planes[::-1]
    table = channel_values(spec)
    for c, plane in enumerate(planes):
        written = cv2.LUT(plane, table[c : c + 1], dst=dst[c])
        if not np.shares_memory(written, dst[c]):  # OpenCV could not write in place
            dst[c] = written


def to_tensor(pixels: np.ndarray, spec: Preprocess, dtype: type | None = None) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> a batch of one in the model's layout, colour order and scale."""
    target_name = np.dtype(dtype).name if dtype is not None else spec.dtype
    if (
        target_name == "float32"
        and spec.layout == "nchw"
        and pixels.dtype == np.uint8
        and pixels.ndim == 3
        and pixels.shape[2] == 3
    ):
        return _planar_float32(pixels, spec)
    if spec.color == "bgr":
        pixels = pixels[..., ::-1]
    target = (
        dtype
        or {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int32": np.int32}[
            spec.dtype
        ]
    )
    arr: np.ndarray
    if target in (np.uint8, np.int32):
        arr = pixels.astype(target, copy=False)
    elif pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        # channel_values is in model colour order, and pixels were flipped to it above.
        arr = np.stack([channel_values(spec)[c][pixels[..., c]] for c in range(3)], axis=-1)
        if target is not np.float32:
            arr = arr.astype(target)
    else:
        arr = pixels.astype(np.float32)
        if spec.scale == 1.0 / 255.0:
            arr /= np.float32(255.0)
        elif spec.scale != 1.0:
            arr *= np.float32(spec.scale)
        if any(spec.mean):
            arr -= np.asarray(spec.mean, np.float32)
        if any(s != 1.0 for s in spec.std):
            arr /= np.asarray(spec.std, np.float32)
        if target is not np.float32:
            arr = arr.astype(target)
    if spec.layout == "nchw":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[None])

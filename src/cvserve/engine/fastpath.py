"""The opt-in preprocessing shortcuts: JPEG decoding straight to a smaller size, and
OpenCV's area resize in place of Pillow's antialiased one.

libjpeg's DCT scaling decodes a JPEG at 1/2, 1/4 or 1/8 of its size for a fraction of the
cost. When the model's input is much smaller than the photo (a 1920x1080 frame for a 640
detector), the model then resizes from that smaller image instead of the full one. Models
whose reference resize is Pillow's antialiased bilinear (torchvision-style classifiers)
are resized with OpenCV's INTER_AREA instead, several times cheaper. The pixels the model
sees then differ slightly from the reference preprocessing, which is why this is off by
default and enabled per request (`?fast=true`) or per model (`preprocess.fast_decode` in
cvserve.json); the benchmark reports the speed-up and the agreement with the exact path.
The DCT factor is chosen so the decoded image is never smaller than what the model
resizes it to, and results are mapped back to the full photo's pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from cvserve.images import decode_image, open_header, sniff
from cvserve.models.base import Model
from cvserve.models.preprocess import MAX_CROP_GROWTH, center_crop_resize_size
from cvserve.results import BoxMask, Detections, Prediction, SemanticMask

_ORIENTATION = 0x0112


def enabled(model: Model, requested: bool) -> bool:
    if requested:
        return True
    spec = getattr(getattr(model, "manifest", None), "preprocess", None)
    return bool(getattr(spec, "fast_decode", False))


def reduce_factor(width: int, height: int, input_size: tuple[int, int] | None, resize: str) -> int:
    """The largest of 8, 4, 2 that keeps the decoded image at least as large as the image
    the model's preprocessing resizes it to (1: no shortcut)."""
    if not input_size or not input_size[0] or not input_size[1]:
        return 1
    in_w, in_h = input_size
    if resize == "center-crop":
        r = max(in_w / width, in_h / height)  # the short side becomes the input size
    elif resize == "stretch":
        r = 0.0  # each axis on its own
    else:
        r = min(in_w / width, in_h / height)
    need_w, need_h = (in_w, in_h) if resize == "stretch" else (width * r, height * r)
    for f in (8, 4, 2):
        if math.ceil(width / f) >= need_w and math.ceil(height / f) >= need_h:
            return f
    return 1


def decode(
    data: bytes, model: Model, *, max_pixels: int, max_side: int
) -> tuple[np.ndarray, int, int]:
    """(pixels, full width, full height): pixels possibly DCT-reduced, EXIF-oriented."""
    if sniff(data) != "jpeg":
        image = decode_image(data, max_pixels=max_pixels, max_side=max_side)
        return image, image.shape[1], image.shape[0]
    try:
        pil = open_header(data, "jpeg")
        w, h = pil.size
        orientation = int(pil.getexif().get(_ORIENTATION, 1))
    except Exception:  # let the exact decoder produce the proper error
        image = decode_image(data, max_pixels=max_pixels, max_side=max_side)
        return image, image.shape[1], image.shape[0]
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    spec = getattr(getattr(model, "manifest", None), "preprocess", None)
    resize = getattr(spec, "resize", "letterbox")
    f = reduce_factor(w, h, model.info.input_size, resize)
    image = decode_image(data, max_pixels=max_pixels, max_side=max_side, reduce=f)
    return image, w, h


def cheap_resize(image: np.ndarray, model: Model) -> np.ndarray:
    """For a model whose reference resize is Pillow's antialiased bilinear, the image
    already at the size that resize would produce, by OpenCV's INTER_AREA; the model's own
    preprocessing then has nothing left to resize. Other models: the image unchanged."""
    spec = getattr(getattr(model, "manifest", None), "preprocess", None)
    size = model.info.input_size
    if getattr(spec, "interpolation", None) != "pil-bilinear" or not size or not all(size):
        return image
    assert spec is not None  # its interpolation was read just above
    h, w = image.shape[:2]
    if spec.resize == "center-crop":
        new_w, new_h = center_crop_resize_size(w, h, *size)
    elif spec.resize == "stretch":
        new_w, new_h = size
    else:
        return image
    if (new_w, new_h) == (w, h) or new_w * new_h > MAX_CROP_GROWTH * size[0] * size[1]:
        return image
    # INTER_AREA averages when shrinking; enlarging, it is bilinear.
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)


def rescale(prediction: Prediction, width: int, height: int) -> Prediction:
    """A prediction made on a reduced image, in the full image's pixels."""
    if prediction.width == width and prediction.height == height:
        return prediction
    sx, sy = width / prediction.width, height / prediction.height
    result = prediction.result
    if isinstance(result, Detections):
        xyxy = result.xyxy * np.array([sx, sy, sx, sy], np.float32)
        np.clip(xyxy[:, 0::2], 0, width, out=xyxy[:, 0::2])
        np.clip(xyxy[:, 1::2], 0, height, out=xyxy[:, 1::2])
        keypoints = None
        if result.keypoints is not None:
            keypoints = result.keypoints.copy()
            keypoints[..., 0] *= sx
            keypoints[..., 1] *= sy
        masks = None
        if result.masks is not None:
            masks = [_scale_mask(m, sx, sy, width, height) for m in result.masks]
        result = Detections(
            xyxy=xyxy,
            confidence=result.confidence,
            class_id=result.class_id,
            class_names=result.class_names,
            masks=masks,
            keypoints=keypoints,
            keypoint_names=result.keypoint_names,
            skeleton=result.skeleton,
        )
    elif isinstance(result, SemanticMask):
        result = SemanticMask(
            cv2.resize(result.class_map, (width, height), interpolation=cv2.INTER_NEAREST),
            cv2.resize(result.confidence, (width, height), interpolation=cv2.INTER_LINEAR),
            result.class_names,
        )
    return Prediction(result, width, height)


def _scale_mask(m: BoxMask, sx: float, sy: float, width: int, height: int) -> BoxMask:
    h, w = m.mask.shape
    x0, y0 = int(math.floor(m.x0 * sx)), int(math.floor(m.y0 * sy))
    x1 = min(int(math.ceil((m.x0 + w) * sx)), width)
    y1 = min(int(math.ceil((m.y0 + h) * sy)), height)
    if h == 0 or w == 0 or x1 <= x0 or y1 <= y0:
        return BoxMask(x0, y0, np.zeros((0, 0), bool))
    big = cv2.resize(m.mask.view(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    return BoxMask(x0, y0, big.astype(bool))

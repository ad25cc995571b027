"""Image inputs -> the bytes the SDK uploads: paths, URLs, encoded bytes, numpy arrays
(OpenCV's BGR order unless told "rgb") and PIL images; and bytes -> RGB for drawing."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ImageLike = Any  # str | os.PathLike | bytes | np.ndarray | PIL.Image.Image


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _encode_array(array: np.ndarray, channels: str) -> bytes:
    """An image array -> PNG (lossless) bytes; `channels` says how colour arrays are ordered."""
    import cv2

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and channels.lower() == "rgb":
        code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        arr = cv2.cvtColor(arr, code)
    elif arr.ndim not in (2, 3):
        raise ValueError(f"expected an image array (H, W) or (H, W, C), got shape {arr.shape}")
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("could not encode the image array")
    return buf.tobytes()


def _encode_pil(image: Any) -> bytes:
    buf = io.BytesIO()
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _is_pil(value: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        return False
    return isinstance(value, Image.Image)


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded bytes -> RGB uint8, EXIF-oriented exactly as the server sees them."""
    from cvserve.images import decode_image

    return decode_image(data)


def image_bytes(
    image: ImageLike, channels: str, download: Callable[[str], bytes]
) -> tuple[bytes, bytes | np.ndarray]:
    """(bytes to upload, what to keep for drawing later); `download` fetches an http(s) URL."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return data, data
    if isinstance(image, np.ndarray):
        data = _encode_array(image, channels)
        return data, data
    if _is_pil(image):
        data = _encode_pil(image)
        return data, data
    if is_url(image):
        data = download(str(image))
        return data, data
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        data = path.read_bytes()
        return data, data
    raise TypeError(
        f"unsupported image type {type(image).__name__}: give a path, URL, bytes, "
        "numpy array or PIL image"
    )

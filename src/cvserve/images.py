"""Bytes -> RGB pixels (EXIF-oriented, size-capped), and the base64 forms clients send.

The header is read before any pixel is allocated, so decompression bombs are refused
cheaply. JPEGs decode with libjpeg-turbo (simplejpeg); everything else with OpenCV,
falling back to Pillow for formats OpenCV lacks.
"""

from __future__ import annotations

import binascii
import io
import re
import struct

import cv2
import numpy as np
import pybase64
import simplejpeg
from PIL import Image, UnidentifiedImageError

from cvserve import native_log
from cvserve.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
_DATA_URI = re.compile(rb"^\s*data:[^,;]*(;[^,]*)?,", re.IGNORECASE)
_B64_JUNK = b" \t\n\r\x0b\x0c"  # what \s matches in bytes: line wrapping, spaces
_EXIF_ORIENTATION = 0x0112
_PIL_FORMAT = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "webp": "WEBP",
}
# What Image.open turns into "cannot identify image file" when a plugin's header parse fails.
_HEADER_ERRORS = (SyntaxError, IndexError, TypeError, struct.error)


ACCEPTED = (
    "send JPEG, PNG, WebP, BMP, TIFF or GIF file bytes, or base64 text of one "
    "(a data: URI prefix and line breaks are fine)"
)
# Image formats this server recognises but does not decode: those are a 415, not a 400.
_UNSUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"8BPS", "Photoshop"),
)
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}


def not_an_image(data: bytes) -> BadRequest | UnsupportedMediaType:
    """The error for bytes that are no image this server decodes, saying what it accepts.

    A recognised image format it cannot decode is a 415; anything else (text, a PDF, a
    serialized numpy array as `image_type=numpy` clients send) is a 400. Nothing is ever
    unpickled: a pickle runs code of the sender's choosing.
    """
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return UnsupportedMediaType(
            f"{_HEIF_BRANDS[data[8:12]]} images are not supported; {ACCEPTED}"
        )
    for magic, name in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            return UnsupportedMediaType(f"{name} images are not supported; {ACCEPTED}")
    pickled = len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5  # PROTO opcode
    if data.startswith(b"\x93NUMPY") or pickled:
        return BadRequest(
            "serialized arrays (numpy .npy or pickle, image_type=numpy) are not accepted and "
            f"never unpickled; {ACCEPTED}"
        )
    return BadRequest(f"the image is neither a supported image nor base64 of one; {ACCEPTED}")


def sniff(data: bytes) -> str | None:
    """Image format from magic bytes, or None."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_base64(text: bytes | str) -> bytes:
    """Base64 (standard or url-safe, any line wrapping, optional data: URI prefix) -> bytes."""
    raw = text.encode("latin-1", "replace") if isinstance(text, str) else text
    if raw and len(raw) % 4 == 0:
        # What nearly every client sends: one clean, padded base64 string. SIMD decode
        # (50x the standard library's) without copying it first. Anything else (a data:
        # URI, line wrapping, url-safe, unpadded, percent-encoded) fails validation here.
        try:
            return pybase64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            pass  # the careful path below
    m = _DATA_URI.match(raw)
    if m:
        raw = raw[m.end() :]
    raw = raw.translate(None, _B64_JUNK)  # a C loop: ~30x faster than a regex on 400 KB
    if not raw:
        raise BadRequest("no image in the request: send base64 text, a file, or ?image=URL")
    # A percent-encoded body (%2B, %2F, %3D): '%' is not in any base64 alphabet, so one
    # anywhere means percent-encoding (its first escape may come late in the text).
    if b"%" in raw:
        from urllib.parse import unquote_to_bytes

        raw = unquote_to_bytes(raw)
    if b"-" in raw or b"_" in raw:
        raw = raw.replace(b"-", b"+").replace(b"_", b"/")
    pad = (-len(raw)) % 4
    if pad == 3:
        raise BadRequest("request body is not valid base64 (bad length)")
    try:
        return pybase64.b64decode(raw + b"=" * pad, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest("request body is neither an image nor valid base64 image data") from e


def _check_size(width: int, height: int, max_pixels: int, max_side: int) -> None:
    if width <= 0 or height <= 0:
        raise BadRequest(f"image has an empty size ({width}x{height})")
    if width > max_side or height > max_side:
        raise PayloadTooLarge(
            f"image is {width}x{height} pixels; each side may be at most {max_side}"
        )
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )


def open_header(data: bytes, kind: str) -> Image.Image:
    """A lazy Pillow image for `data` of a sniffed `kind`: header parsed, no pixels read.

    Calls the format's plugin directly instead of `Image.open`, which would apply Pillow's
    process-wide bomb guard (`Image.MAX_IMAGE_PIXELS`): the caller checks the size against
    its own per-request limits, and the SDK's host process keeps Pillow's guard as it is."""
    fmt = _PIL_FORMAT[kind]
    Image.preinit()
    if fmt not in Image.OPEN:
        Image.init()
    factory, _accept = Image.OPEN[fmt]
    try:
        return factory(io.BytesIO(data), "")
    except _HEADER_ERRORS as e:
        raise UnidentifiedImageError(f"cannot identify {fmt} image") from e


def _orientation(pil: Image.Image) -> int:
    try:
        return int(pil.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # corrupt EXIF must not fail an otherwise good image
        return 1


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 2:
        return rgb[:, ::-1]
    if orientation == 3:
        return rgb[::-1, ::-1]
    if orientation == 4:
        return rgb[::-1]
    if orientation == 5:
        return rgb.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(rgb, -1)
    if orientation == 7:  # transverse: mirror across the anti-diagonal
        return rgb[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(rgb, 1)
    return rgb


def decode_image(
    data: bytes, *, max_pixels: int = 80_000_000, max_side: int = 20_000, reduce: int = 1
) -> np.ndarray:
    """Decode an encoded image into a contiguous RGB uint8 array (H, W, 3), EXIF-oriented.

    `reduce` (1, 2, 4, 8) lets JPEGs decode straight to a smaller size with libjpeg's DCT
    scaling: an opt-in speed shortcut that changes the pixels the model sees.
    """
    if not data:
        raise BadRequest("image is empty (0 bytes)")
    kind = sniff(data)
    if kind is None:
        raise not_an_image(data)
    try:
        pil = open_header(data, kind)
        width, height = pil.size
    except Image.DecompressionBombError as e:  # a GIF frame larger than its screen, say
        raise PayloadTooLarge(f"{kind.upper()} image is too large: {e}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadRequest(f"cannot read {kind.upper()} header: image is corrupt or truncated") from e
    except Exception as e:  # hostile headers trip odd errors deep in Pillow's parsers
        raise BadRequest(f"cannot read {kind.upper()} header: image is malformed") from e
    _check_size(width, height, max_pixels, max_side)
    # A PNG's EXIF may follow the pixels: Pillow decodes the whole image to find it, so only
    # ask when an eXIf chunk is there at all. A TIFF's Orientation is applied by Pillow
    # itself when it loads the pixels (TiffImageFile.load_end), so not again here.
    has_exif = kind in ("jpeg", "webp") or (kind == "png" and b"eXIf" in data)
    orientation = _orientation(pil) if has_exif else 1
    rgb = _decode_pixels(data, kind, pil, reduce)
    if orientation != 1:
        rgb = _apply_orientation(rgb, orientation)
    return np.ascontiguousarray(rgb)


def _decode_pixels(data: bytes, kind: str, pil: Image.Image, reduce: int) -> np.ndarray:
    if kind == "jpeg":
        try:
            if reduce > 1:
                w, h = pil.size
                return simplejpeg.decode_jpeg(
                    data, colorspace="RGB", min_width=-(-w // reduce), min_height=-(-h // reduce)
                )
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except (ValueError, RuntimeError):
            pass  # CMYK and odd JPEGs: fall through to the general decoders
    # TIFFs go to Pillow: OpenCV's TIFF decoder applies the Orientation tag even when told
    # to ignore it, and not the same way on every build.
    if kind in ("png", "bmp", "webp", "jpeg"):
        buf = np.frombuffer(data, np.uint8)
        # Orientation is applied by us (from the header we already read), not by OpenCV.
        try:
            with native_log.decoding():  # libpng/libjpeg print on corrupt data: see there
                img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        except cv2.error:
            img = None
        if img is not None:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    try:
        # A fresh handle: a failed earlier load (e.g. reading EXIF) leaves `pil` half-read,
        # and a second load() on it would hand back blank pixels instead of failing.
        fresh = open_header(data, kind)
        with native_log.decoding():  # libtiff prints on corrupt data
            fresh.load()
        return np.asarray(fresh.convert("RGB"))
    except Image.DecompressionBombError as e:  # Pillow's own cap, over 2x MAX_IMAGE_PIXELS
        raise PayloadTooLarge(f"{kind.upper()} image is too large for its decoder: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise BadRequest(f"cannot decode {kind.upper()} image: data is corrupt or truncated") from e
    except Exception as e:  # hostile data trips odd errors deep in Pillow's decoders
        raise BadRequest(f"cannot decode {kind.upper()} image: data is malformed") from e


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB")


def encode_png(gray_or_rgb: np.ndarray) -> bytes:
    arr = gray_or_rgb
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()

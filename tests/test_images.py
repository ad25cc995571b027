"""Image bytes -> RGB pixels: every format, channel order, EXIF orientation (checked against
Pillow's own exif_transpose), size caps before decoding, and the base64 forms."""

from __future__ import annotations

import base64
import io
import urllib.parse
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from cvserve.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from cvserve.images import decode_base64, decode_image, encode_jpeg, encode_png, sniff


def _pattern(width=48, height=32) -> np.ndarray:
    """Four coloured quadrants: orientation and RGB order mistakes are visible."""
    img = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    img[:h2, :w2] = (255, 0, 0)
    img[:h2, w2:] = (0, 255, 0)
    img[h2:, :w2] = (0, 0, 255)
    img[h2:, w2:] = (255, 255, 255)
    return img


def _encode(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


LOSSLESS = ["PNG", "BMP", "TIFF", "WEBP_LOSSLESS", "GIF"]


@pytest.mark.parametrize("fmt", LOSSLESS)
def test_lossless_formats_decode_exactly(fmt):
    rgb = _pattern()
    kw = {"lossless": True} if fmt == "WEBP_LOSSLESS" else {}
    data = _encode(rgb, fmt.split("_")[0], **kw)
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_rgb_order():
    rgb = _pattern(64, 64)
    out = decode_image(_encode(rgb, "JPEG", quality=95)).astype(int)
    assert out.shape == rgb.shape
    assert np.abs(out[8, 8] - (255, 0, 0)).max() < 30  # red stays red (not BGR)
    assert np.abs(out[8, 56] - (0, 255, 0)).max() < 30
    assert np.abs(out[56, 8] - (0, 0, 255)).max() < 30


def test_grayscale_palette_rgba_and_16bit():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = decode_image(_encode(gray, "PNG"))
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 2], gray)

    pal = Image.fromarray(_pattern()).convert("P", palette=Image.ADAPTIVE, colors=4)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue()), _pattern())

    rgba = np.dstack([_pattern(), np.full((32, 48), 255, np.uint8)])
    np.testing.assert_array_equal(decode_image(_encode(rgba, "PNG")), _pattern())

    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    buf = io.BytesIO()
    deep.save(buf, format="PNG")
    out = decode_image(buf.getvalue())
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and out.min() == 255


def test_cmyk_jpeg():
    cmyk = Image.fromarray(_pattern(64, 64)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    out = decode_image(buf.getvalue()).astype(int)
    assert out.shape == (64, 64, 3)
    assert np.abs(out[8, 8] - (255, 0, 0)).max() < 40


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_matches_pillow(orientation, fmt):
    rgb = _pattern(48, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    data = _encode(rgb, fmt, exif=exif.tobytes(), **kw)
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    out = decode_image(data)
    assert out.shape == want.shape
    if orientation in (5, 6, 7, 8):
        assert out.shape[:2] == (48, 32)
    if fmt == "JPEG":
        assert np.abs(out.astype(int) - want.astype(int)).mean() < 3
    else:
        np.testing.assert_array_equal(out, want)


def test_corrupt_exif_is_ignored():
    data = _encode(_pattern(), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff")
    assert decode_image(data).shape == (32, 48, 3)


def test_size_caps_refuse_before_decoding():
    big = _encode(np.zeros((100, 300, 3), np.uint8), "PNG")
    with pytest.raises(PayloadTooLarge):
        decode_image(big, max_pixels=20_000)
    with pytest.raises(PayloadTooLarge):
        decode_image(big, max_side=200)
    assert decode_image(big, max_pixels=30_000, max_side=300).shape == (100, 300, 3)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", BadRequest),
        (b"hello world", BadRequest),  # no image at all: 400 (SPEC 1)
        (b"%PDF-1.7", BadRequest),
        (b"\x00\x00\x00\x1cftypheic" + bytes(20), UnsupportedMediaType),  # an image, not decoded
        (b"\x89PNG\r\n\x1a\n" + bytes(20), BadRequest),
        (b"\xff\xd8\xff" + bytes(20), BadRequest),
        (b"GIF89a" + bytes(10), BadRequest),
        (b"BM" + bytes(10), BadRequest),
    ],
)
def test_bad_bytes(data, error):
    with pytest.raises(error):
        decode_image(data)


def test_truncated_images_never_crash():
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"):
        data = _encode(_pattern(64, 64), fmt)
        for cut in (len(data) // 3, len(data) // 2, len(data) - 8):
            try:
                out = decode_image(data[:cut])
            except (BadRequest, UnsupportedMediaType):
                continue
            assert out.shape == (64, 64, 3)  # a partial decode is acceptable, wrong size is not


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\xff\xd8\xff\xe0", "jpeg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"GIF87a", "gif"),
        (b"GIF89a", "gif"),
        (b"BM\x00\x00", "bmp"),
        (b"II*\x00", "tiff"),
        (b"MM\x00*", "tiff"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"iVBORw0KGgo", None),  # base64 of a PNG is text, not a PNG
        (b"", None),
    ],
)
def test_sniff(data, kind):
    assert sniff(data) == kind


PAYLOAD = bytes(range(256)) * 3  # every byte value: '+' and '/' both appear in its base64


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(PAYLOAD),
        base64.b64encode(PAYLOAD).decode(),
        base64.urlsafe_b64encode(PAYLOAD),
        base64.b64encode(PAYLOAD).rstrip(b"="),
        base64.encodebytes(PAYLOAD),  # wrapped at 76 columns
        base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n"),
        b"data:image/png;base64," + base64.b64encode(PAYLOAD),
        b"DATA:image/jpeg;base64," + base64.b64encode(PAYLOAD),
        b"data:;base64," + base64.b64encode(PAYLOAD),
        b"  \n" + base64.b64encode(PAYLOAD) + b"\n\n",
        urllib.parse.quote(base64.b64encode(PAYLOAD).decode(), safe="").encode(),
    ],
)
def test_decode_base64_forms(text):
    assert decode_base64(text) == PAYLOAD


@pytest.mark.parametrize(
    "text", [b"", b"   ", b"data:image/png;base64,", b"abc$def", b"A", b"AAAAA", "ünïcode"]
)
def test_decode_base64_rejects(text):
    with pytest.raises(BadRequest):
        decode_base64(text)


def test_encoders_roundtrip():
    rgb = _pattern(64, 48)
    out = decode_image(encode_jpeg(rgb, quality=95)).astype(int)
    assert out.shape == rgb.shape and np.abs(out - rgb).mean() < 4
    np.testing.assert_array_equal(decode_image(encode_png(rgb)), rgb)
    mask = (np.arange(48 * 64).reshape(48, 64) % 7).astype(np.uint8)
    png = encode_png(mask)
    assert Image.open(io.BytesIO(png)).mode == "L"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), mask)


PILLOW_DEFAULT_GUARD = int(1024 * 1024 * 1024 // 4 // 3)  # Image.MAX_IMAGE_PIXELS as shipped


def test_pillows_process_wide_bomb_guard_is_left_alone():
    import cvserve.engine.fastpath  # noqa: F401  (the server's decoders, imported for their side effects)

    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_GUARD


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF"])
@pytest.mark.parametrize("size", [(48, 32), (100, 60)])
def test_images_over_pillows_guard_decode_under_ours(monkeypatch, fmt, size):
    # A tiny guard stands in for a large image: 1536 px is in Pillow's warning zone, 6000 px
    # past its error limit (2x); only our per-call max_pixels may refuse them.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    rgb = _pattern(*size)
    data = _encode(rgb, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        out = decode_image(data, max_pixels=10_000)
    assert out.shape == (size[1], size[0], 3)
    if fmt in ("PNG", "BMP"):
        np.testing.assert_array_equal(out, rgb)
    with pytest.raises(PayloadTooLarge):
        decode_image(data, max_pixels=1000)


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP"])
def test_tiff_and_webp_keep_pillows_own_cap(monkeypatch, fmt):
    # Their plugins check Pillow's guard again inside (TIFF when it allocates the pixels, WebP
    # before its canvas): past 2x (~179 M px as shipped) that is a 413, whatever ours allows.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(_encode(_pattern(48, 32), fmt)).shape == (32, 48, 3)
    with pytest.raises(PayloadTooLarge, match="too large"):
        decode_image(_encode(_pattern(100, 60), fmt), max_pixels=10_000)

"""Malformed-input corpus: every hostile request gets a 4xx with a JSON {"message"} naming the
problem (never a 5xx), and the server stays healthy, in-process (TestClient) and live
(`cvserve serve --no-pull` on 127.0.0.1)."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cvserve.engine import LocalEngine
from cvserve.errors import PayloadTooLarge
from cvserve.http.app import build_state, create_app
from cvserve.images import decode_image
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.settings import Settings
from tests.support.hostile_support import (
    CLS_ID,
    DET_ID,
    LiveServer,
    add_classifier,
    add_detector,
    encode,
    jpeg_with_corrupt_exif,
    jpeg_with_garbage_exif,
    png_bomb,
    rss_kb,
)

B64 = base64.b64encode
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


@dataclass
class Case:
    name: str
    content: bytes | None = None
    path: str = "/" + DET_ID
    method: str = "POST"
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=lambda: dict(FORM))
    files: dict[str, Any] | None = None
    status: tuple[int, ...] = (400,)
    mentions: tuple[str, ...] = ()  # words the message must contain (any of them, lower-case)


def _good_png() -> bytes:
    return encode("PNG", 48, 32)


def _gif_zero_size() -> bytes:
    gif = encode("GIF", 8, 8)
    return gif[:6] + struct.pack("<HH", 0, 0) + gif[10:]


def _gif_huge_screen() -> bytes:
    gif = encode("GIF", 8, 8)
    return gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:]


def _bmp_huge() -> bytes:
    bmp = bytearray(encode("BMP", 8, 8))
    struct.pack_into("<ii", bmp, 18, 60000, 60000)
    return bytes(bmp)


def _bmp_negative_width() -> bytes:
    bmp = bytearray(encode("BMP", 8, 8))
    struct.pack_into("<i", bmp, 18, -8)
    return bytes(bmp)


def _tiff_huge() -> bytes:
    # A TIFF header + IFD declaring 100000 x 100000 with no strips worth speaking of.
    entries = [
        (256, 4, 1, 100_000),  # ImageWidth
        (257, 4, 1, 100_000),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # BlackIsZero
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if typ == 3:
            ifd += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, typ, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _multipart(name: str, boundary: str, body: bytes, **kw: Any) -> Case:
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return Case(name, body, headers=headers, **kw)


def corpus() -> list[Case]:
    png = _good_png()
    jpeg = encode("JPEG", 48, 32)
    webp = encode("WEBP", 48, 32)
    mp_nofile = b"--xyz\r\nContent-Disposition: form-data; name=other\r\n\r\nhello\r\n--xyz--\r\n"
    mp_empty_file = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\r\n--xyz--\r\n"
    )
    mp_text_file = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\nnot an image at all\r\n--xyz--\r\n"
    )
    mp_unterminated = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    cases = [
        # -- bodies that are not images --------------------------------------------------
        Case("zero-size body", b"", mentions=("no image",)),
        Case("whitespace body", b"  \r\n\t ", mentions=("no image",)),
        Case("bad base64", b"this is %%% not base64 !!!", mentions=("base64",)),
        Case("base64 bad length", b"QUJDR", mentions=("base64",)),
        Case("base64 of text", B64(b"hello world, not an image"), mentions=("jpeg, png",)),
        Case("data uri, empty", b"data:image/png;base64,", mentions=("no image",)),
        Case("data uri, garbage", b"data:image/png;base64,@@@@", mentions=("base64",)),
        Case(
            "raw binary junk",
            b"\x00\x01\x02 junk",
            headers={},
            mentions=("base64",),
        ),
        Case("only a magic number", b"\x89PNG\r\n\x1a\n", headers={}, mentions=("png",)),
        # -- truncated / corrupt images --------------------------------------------------
        Case("truncated PNG", B64(png[: len(png) // 2]), mentions=("png",)),
        Case("truncated PNG header", B64(png[:20]), mentions=("png",)),
        Case("truncated JPEG", B64(jpeg[: len(jpeg) // 2]), mentions=("jpeg",)),
        Case("JPEG header only", B64(jpeg[:200]), mentions=("jpeg",)),
        Case("truncated WebP", B64(webp[: len(webp) // 2]), mentions=("webp",)),
        Case("corrupt PNG IDAT", B64(png[:60] + b"\x00" * 40 + png[100:]), mentions=("png",)),
        Case(
            "corrupt JPEG scan",
            B64(jpeg[:300] + bytes(range(256)) * 2 + jpeg[812:]),
            status=(400,),
            mentions=("jpeg",),
        ),
        Case("raw truncated PNG (binary body)", png[:100], headers={}, mentions=("png",)),
        # -- sizes -----------------------------------------------------------------------
        Case("1x100000 image", B64(encode("PNG", 1, 100_000)), status=(413,), mentions=("100000",)),
        Case("50000x50000 PNG bomb", B64(png_bomb()), status=(413,), mentions=("50000",)),
        Case("PNG bomb, raw body", png_bomb(), headers={}, status=(413,), mentions=("50000",)),
        Case("PNG bomb under side cap", png_bomb(19_000, 19_000), headers={}, status=(413,)),
        Case("PNG 0x0 header", png_bomb(0, 0), headers={}, mentions=("png", "size", "empty")),
        Case("GIF 65535x65535", _gif_huge_screen(), headers={}, status=(413,)),
        Case("BMP 60000x60000", _bmp_huge(), headers={}, status=(413,)),
        Case("BMP negative width", _bmp_negative_width(), headers={}, status=(400, 413)),
        Case("TIFF 100000x100000", _tiff_huge(), headers={}, status=(413,)),
        Case(
            "body over max_body_bytes",
            b"A" * (2 * 1024 * 1024 + 4),
            status=(413,),
            mentions=("limit",),
        ),
        # -- JSON where base64 is due ----------------------------------------------------
        Case("JSON object, no image", b'{"foo": 1}', headers=JSON, mentions=("image",)),
        Case("JSON image is a number", b'{"image": 5}', headers=JSON, mentions=("image",)),
        Case(
            "JSON image type url",
            b'{"image": {"type": "url", "value": "x"}}',
            headers=JSON,
            mentions=("base64",),
        ),  # fmt: skip
        Case("JSON list", b"[1, 2, 3]", headers=JSON, mentions=("base64",)),
        Case("JSON malformed", b'{"image": ', headers=JSON, mentions=("json",)),
        Case("JSON string, not base64", b'"%%%%"', headers=JSON, mentions=("base64",)),
        Case("JSON string of number", b"12345", headers=JSON, mentions=("base64", "image")),
        Case("JSON NaN literal", b'{"image": NaN}', headers=JSON, mentions=("json",)),
        # -- multipart -------------------------------------------------------------------
        _multipart("multipart, no file part", "xyz", mp_nofile, mentions=("file",)),
        _multipart("multipart, empty file", "xyz", mp_empty_file, mentions=("empty",)),
        _multipart("multipart, text file", "xyz", mp_text_file, mentions=("base64",)),
        _multipart(
            "multipart, wrong boundary",
            "other",
            mp_text_file,
            mentions=("multipart", "file"),
        ),
        Case(
            "multipart, no boundary",
            mp_text_file,
            headers={"Content-Type": "multipart/form-data"},
            mentions=("boundary", "multipart"),
        ),
        _multipart(
            "multipart, unterminated",
            "xyz",
            mp_unterminated,
            mentions=("multipart", "file", "empty"),
        ),
        _multipart("multipart, empty body", "xyz", b"", mentions=("multipart", "file")),
        # -- parameters ------------------------------------------------------------------
        Case("confidence NaN", B64(png), params={"confidence": "nan"}, mentions=("confidence",)),
        Case("confidence inf", B64(png), params={"confidence": "inf"}, mentions=("confidence",)),
        Case("confidence -inf", B64(png), params={"confidence": "-inf"}, mentions=("confidence",)),
        Case("confidence huge", B64(png), params={"confidence": "1e308"}, mentions=("confidence",)),
        Case("confidence -5", B64(png), params={"confidence": "-5"}, mentions=("confidence",)),
        Case("overlap text", B64(png), params={"overlap": "lots"}, mentions=("overlap",)),
        Case(
            "max_detections huge",
            B64(png),
            params={"max_detections": "9" * 400},
            mentions=("max_detections",),
        ),
        Case(
            "max_detections negative",
            B64(png),
            params={"max_detections": "-1"},
            mentions=("max_detections",),
        ),
        Case(
            "max_detections inf",
            B64(png),
            params={"max_detections": "inf"},
            mentions=("max_detections",),
        ),  # fmt: skip
        Case(
            "max_detections 1e400",
            B64(png),
            params={"max_detections": "1e400"},
            mentions=("max_detections",),
        ),  # fmt: skip
        Case("stroke huge", B64(png), params={"stroke": "100000000"}, mentions=("stroke",)),
        Case("stroke negative", B64(png), params={"stroke": "-3"}, mentions=("stroke",)),
        Case("labels unicode", B64(png), params={"labels": "ja\u00e4"}, mentions=("labels",)),
        Case("format unicode", B64(png), params={"format": "\u2603"}, mentions=("format",)),
        Case(
            "mask format bogus",
            B64(png),
            params={"response_mask_format": "bitmap"},
            mentions=("response_mask_format",),
        ),
        Case(
            "keypoint_confidence NaN",
            B64(png),
            params={"keypoint_confidence": "NaN"},
            mentions=("keypoint_confidence",),
        ),
        # -- model names -----------------------------------------------------------------
        Case("unknown model", B64(png), path="/nope/1", status=(404,), mentions=("nope/1",)),
        Case("unicode model", B64(png), path="/d\u00e9t\u2603/1", status=(404,)),
        Case("emoji version", B64(png), path="/det/\U0001f600", status=(404,)),
        Case("NUL in model name", B64(png), path="/det%00/1", status=(404,)),
        Case("dot-dot version", B64(png), path="/det/..%2F..", status=(404,)),
        Case("very long model name", B64(png), path="/" + "a" * 5000 + "/1", status=(404,)),
        # -- GIF / TIFF / BMP edge cases -------------------------------------------------
        Case("GIF truncated", encode("GIF", 40, 40)[:30], headers={}, mentions=("gif",)),
        Case("BMP truncated", encode("BMP", 40, 40)[:60], headers={}, mentions=("bmp",)),
        Case("TIFF truncated", encode("TIFF", 40, 40)[:40], headers={}, mentions=("tiff",)),
        Case("TIFF header only", b"II*\x00\x08\x00\x00\x00", headers={}, mentions=("tiff",)),
        Case("BMP magic only", b"BM" + b"\x00" * 10, headers={}, mentions=("bmp",)),
        # -- the SDK JSON route ----------------------------------------------------------
        Case("infer: not JSON", b"garbage", path="/infer/object_detection", headers=JSON),
        Case(
            "infer: NaN confidence",
            b'{"model_id": "det/1", "image": {"type": "base64", "value": "QUJD"},'
            b' "confidence": NaN}',
            path="/infer/object_detection",
            headers=JSON,
            mentions=("json",),
        ),
        Case(
            "infer: huge confidence",
            json.dumps(
                {
                    "model_id": DET_ID,
                    "image": {"type": "base64", "value": B64(png).decode()},
                    "confidence": 1e308,
                }
            ).encode(),
            path="/infer/object_detection",
            headers=JSON,
            mentions=("confidence",),
        ),  # fmt: skip
        Case(
            "infer: image is a list of junk",
            json.dumps({"model_id": DET_ID, "image": [1, 2]}).encode(),
            path="/infer/object_detection",
            headers=JSON,
            mentions=("image",),
        ),
        Case(
            "infer: model_id is a dict",
            json.dumps({"model_id": {"a": 1}, "image": "x"}).encode(),
            path="/infer/object_detection",
            headers=JSON,
            mentions=("model_id",),
        ),
        Case(
            "infer: unicode model",
            json.dumps({"model_id": "\u2603/\u2603", "image": "x"}).encode(),
            path="/infer/object_detection",
            headers=JSON,
            status=(404,),
        ),
        Case(
            "infer: stroke width huge",
            json.dumps(
                {
                    "model_id": DET_ID,
                    "image": {"type": "base64", "value": B64(png).decode()},
                    "visualize_predictions": True,
                    "visualization_stroke_width": 1e300,
                }
            ).encode(),
            path="/infer/object_detection",
            headers=JSON,
            mentions=("visualization_stroke_width",),
        ),  # fmt: skip
        Case(
            "infer: max_detections float",
            json.dumps(
                {
                    "model_id": DET_ID,
                    "image": {"type": "base64", "value": B64(png).decode()},
                    "max_detections": 1.5,
                }
            ).encode(),
            path="/infer/object_detection",
            headers=JSON,
            mentions=("max_detections",),
        ),  # fmt: skip
        Case(
            "infer: wrong task",
            json.dumps({"model_id": CLS_ID, "image": "x"}).encode(),
            path="/infer/object_detection",
            headers=JSON,
            mentions=("classification",),
        ),
        Case(
            "infer: unknown task route",
            b"{}",
            path="/infer/\u2603",
            headers=JSON,
            status=(404,),
        ),
        Case(
            "infer: too many images",
            json.dumps({"model_id": DET_ID, "image": ["x"] * 100}).encode(),
            path="/infer/object_detection",
            headers=JSON,
            mentions=("images",),
        ),
        Case(
            "model/add: bad id",
            json.dumps({"model_id": "../../etc"}).encode(),
            path="/model/add",
            headers=JSON,
            status=(400, 404),
        ),
    ]
    return cases


CORPUS = corpus()
OK_CASES = [
    # Odd but valid inputs: answered 200 (never 5xx).
    ("corrupt EXIF offsets", jpeg_with_corrupt_exif()),
    ("garbage EXIF", jpeg_with_garbage_exif()),
    ("1x1 PNG", encode("PNG", 1, 1)),
    ("1x20000 PNG", encode("PNG", 1, 20_000)),
    ("20000x1 PNG", encode("PNG", 20_000, 1)),
    ("RGBA PNG", encode("PNG", 30, 20, mode="RGBA")),
    ("grayscale PNG", encode("PNG", 30, 20, mode="L")),
    ("16-bit PNG", None),
    ("CMYK JPEG", encode("JPEG", 30, 20, mode="CMYK")),
    ("palette GIF", encode("GIF", 30, 20)),
    ("GIF with a 0x0 screen", _gif_zero_size()),
    ("animated GIF", None),
    ("BMP", encode("BMP", 30, 20)),
    ("BMP top-down", None),
    ("TIFF", encode("TIFF", 30, 20)),
    ("TIFF lzw", encode("TIFF", 30, 20, compression="tiff_lzw")),
    ("TIFF float", None),
    ("WebP", encode("WEBP", 30, 20)),
    ("WebP lossless RGBA", encode("WEBP", 30, 20, mode="RGBA", lossless=True)),
]


def _special(name: str) -> bytes:
    buf = io.BytesIO()
    if name == "16-bit PNG":
        Image.new("I;16", (30, 20), 40000).save(buf, "PNG")
    elif name == "animated GIF":
        frames = [Image.new("RGB", (30, 20), (i * 40, 0, 0)) for i in range(4)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    elif name == "BMP top-down":
        bmp = bytearray(encode("BMP", 30, 20))
        struct.pack_into("<i", bmp, 22, -20)
        return bytes(bmp)
    elif name == "TIFF float":
        Image.new("F", (30, 20), 0.5).save(buf, "TIFF")
    return buf.getvalue()


OK_CORPUS = [(n, d if d is not None else _special(n)) for n, d in OK_CASES]


def _settings(models_dir: Path, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "data_dir": models_dir.parent / "data",
        "models_dir": models_dir,
        "auto_pull": False,
        "workers": 1,
        "intra_op_threads": 1,
        "max_body_bytes": 2 * 1024 * 1024,
    }
    fields.update(overrides)
    return Settings(**fields)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "models"
    add_detector(root)
    add_classifier(root)
    return root


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    settings = _settings(models_dir)
    store = ModelStore(models_dir, RuntimeOptions(lanes=1, threads_per_lane=1))
    app = create_app(settings, build_state(settings, engine=LocalEngine(settings, store)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _send(client: httpx.Client | TestClient, case: Case) -> httpx.Response:
    return client.request(
        case.method,
        case.path,
        content=case.content,
        params=case.params,
        headers=case.headers,
        files=case.files,
    )


def check_refused(response: httpx.Response, case: Case) -> None:
    where = f"{case.name}: {response.status_code} {response.text[:300]!r}"
    assert response.status_code < 500, where
    assert response.status_code in case.status, where
    assert response.headers.get("content-type", "").startswith("application/json"), where
    body = response.json()
    assert isinstance(body, dict), where
    message = body.get("message")
    assert isinstance(message, str) and message.strip(), where
    if case.mentions:
        low = message.lower()
        assert any(word.lower() in low for word in case.mentions), where


def check_healthy(client: httpx.Client | TestClient, after: str) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200, f"/healthz after {after}: {r.status_code}"


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_hostile_request_is_a_clean_4xx(client: TestClient, case: Case) -> None:
    check_refused(_send(client, case), case)
    check_healthy(client, case.name)


@pytest.mark.parametrize("name,data", OK_CORPUS, ids=[n for n, _ in OK_CORPUS])
def test_odd_but_valid_images_are_answered(client: TestClient, name: str, data: bytes) -> None:
    for model_id in (DET_ID, CLS_ID):
        r = client.post(f"/{model_id}", content=B64(data), headers=FORM)
        assert r.status_code == 200, f"{name} on {model_id}: {r.status_code} {r.text[:300]}"
        body = r.json()
        assert body["image"]["width"] > 0 and body["image"]["height"] > 0
    check_healthy(client, name)


def test_corrupt_exif_keeps_the_pixels(client: TestClient) -> None:
    body = client.post(f"/{DET_ID}", content=B64(jpeg_with_corrupt_exif()), headers=FORM).json()
    # The IFD0 orientation (6: rotate 90) is readable even though the Exif sub-IFD is not.
    assert body["image"] in ({"width": 30, "height": 40}, {"width": 40, "height": 30})


def test_image_format_on_odd_sizes(client: TestClient) -> None:
    for w, h in ((1, 1), (1, 5000), (5000, 1)):
        r = client.post(
            f"/{DET_ID}",
            content=B64(encode("PNG", w, h)),
            params={"format": "image_and_json", "stroke": "100", "labels": "true"},
            headers=FORM,
        )
        assert r.status_code == 200, r.text[:300]


def test_bomb_is_refused_before_pixels_are_allocated() -> None:
    before = rss_kb(os.getpid())
    for size in (50_000, 19_000, 9_000):
        with pytest.raises(PayloadTooLarge):
            decode_image(png_bomb(size, size), max_pixels=80_000_000, max_side=20_000)
    with pytest.raises(PayloadTooLarge):
        decode_image(png_bomb(), max_pixels=80_000_000, max_side=100_000)
    grown = rss_kb(os.getpid()) - before
    assert grown < 50_000, f"resident memory grew {grown} kB decoding bomb headers"


def test_live_server_survives_the_corpus(models_dir: Path, tmp_path: Path) -> None:
    """The same corpus against a real `cvserve serve` process: never 5xx, never down, and
    resident memory doesn't jump on the decompression bombs."""
    env = {"CVSERVE_MAX_BODY_BYTES": str(2 * 1024 * 1024)}
    with (
        LiveServer(models_dir, tmp_path / "server.log", env=env) as server,
        httpx.Client(base_url=server.url, timeout=30.0) as http,
    ):
        # Warm up: load both models and touch the decoders.
        for model_id in (DET_ID, CLS_ID):
            assert (
                http.post(f"/{model_id}", content=B64(_good_png()), headers=FORM).status_code == 200
            )
        rss_before = server.rss_kb()
        for case in CORPUS:
            check_refused(_send(http, case), case)
            check_healthy(http, case.name)
            if "bomb" in case.name:
                jump = server.rss_kb() - rss_before
                assert jump < 100_000, f"RSS jumped {jump} kB after {case.name}"
        for name, data in OK_CORPUS:
            r = http.post(f"/{DET_ID}", content=data, headers={})
            assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:300]}"
        assert server.alive()
        print(f"live server RSS {rss_before} kB -> {server.rss_kb()} kB over the corpus")
        log = server.log()
    assert "Traceback" not in log, log[-3000:]

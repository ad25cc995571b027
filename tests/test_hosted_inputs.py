"""Every way a client sends the image gives the same predictions.

The model is the rect-finder (it reports where the white rectangle is), so identical
predictions mean the same pixels were decoded, not merely that something was.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import add_model, build_client, make_store
from tests.support.synthetic import (
    jpeg_bytes,
    png_bytes,
    rect_finder_model,
    rect_image,
    ultralytics_meta,
)

W, H = 320, 200
RECT = (40, 30, 200, 150)
PNG = png_bytes(rect_image(W, H, RECT))
JPEG = jpeg_bytes(rect_image(W, H, RECT))
B64 = base64.b64encode(PNG)
MODEL = "shapes/1"
IGNORED = ("inference_id", "detection_id", "time")


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("inputs")
    store = make_store(tmp)
    meta = ultralytics_meta("detect", ["blob"])
    add_model(store, MODEL, rect_finder_model(tmp / "rf.onnx", metadata=meta))
    with build_client(store, allow_url_hosts=("127.0.0.1",)) as c:
        yield c


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _post(client: TestClient, content: bytes | None = None, ctype: str | None = None, **kw):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post(f"/{MODEL}", content=content, headers=headers, **kw)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def reference(client) -> dict:
    body = _post(client, B64, "application/x-www-form-urlencoded")
    assert body["image"] == {"width": W, "height": H}
    (pred,) = body["predictions"]
    box = (
        pred["x"] - pred["width"] / 2,
        pred["y"] - pred["height"] / 2,
        pred["x"] + pred["width"] / 2,
        pred["y"] + pred["height"] / 2,
    )
    np.testing.assert_allclose(box, RECT, atol=1.1)  # 320 -> 640: half a pixel per side
    assert set(body) >= {"time", "image", "predictions", "inference_id"}
    return _strip(body)


def _wrap76(data: bytes, eol: bytes = b"\n") -> bytes:
    return eol.join(data[i : i + 76] for i in range(0, len(data), 76)) + eol


BASE64_FORMS = {
    "form-urlencoded": (B64, "application/x-www-form-urlencoded"),
    "form-urlencoded-charset": (B64, "application/x-www-form-urlencoded; charset=utf-8"),
    "json-content-type": (B64, "application/json"),
    "text-plain": (B64, "text/plain"),
    "no-content-type": (B64, None),
    "octet-stream": (B64, "application/octet-stream"),
    "data-uri": (b"data:image/png;base64," + B64, "application/x-www-form-urlencoded"),
    "data-uri-json": (b"data:image/png;base64," + B64, "application/json"),
    "gnu-wrapped-76": (_wrap76(B64), "application/x-www-form-urlencoded"),
    "crlf-wrapped-76": (_wrap76(B64, b"\r\n"), "text/plain"),
    "json-string": (json.dumps(B64.decode()).encode(), "application/json"),
    "json-image-field": (json.dumps({"image": B64.decode()}).encode(), "application/json"),
    "json-sdk-shape": (
        json.dumps({"image": {"type": "base64", "value": B64.decode()}}).encode(),
        "application/json",
    ),
    "form-field-image": (
        b"image=" + urllib.parse.quote_plus(B64.decode()).encode(),
        "application/x-www-form-urlencoded",
    ),
    "form-field-file": (
        b"file=" + urllib.parse.quote_plus(B64.decode()).encode(),
        "application/x-www-form-urlencoded",
    ),
    "percent-encoded": (
        urllib.parse.quote(B64.decode(), safe="").encode(),
        "application/x-www-form-urlencoded",
    ),
    "urlsafe-alphabet": (base64.urlsafe_b64encode(PNG), "text/plain"),
    "unpadded": (B64.rstrip(b"="), "text/plain"),
    "surrounding-whitespace": (b"\n  " + B64 + b"  \n", None),
    "jpeg-base64": (base64.b64encode(JPEG), "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("form", list(BASE64_FORMS))
def test_base64_bodies_agree(client, reference, form):
    content, ctype = BASE64_FORMS[form]
    body = _post(client, content, ctype)
    if form == "jpeg-base64":
        assert body["image"] == reference["image"]
        assert len(body["predictions"]) == 1
        return
    assert _strip(body) == reference


def test_percent_encoding_detected_anywhere(client):
    """A percent-encoded body whose first escape comes late (after 100 chars) must decode."""
    # The PNG header fixes the first base64 characters; pick a size that keeps them clean.
    for width in range(300, 340):
        b64 = base64.b64encode(png_bytes(rect_image(width, H, RECT)))
        head = b64[:100]
        if b"+" not in head and b"/" not in head and (b"+" in b64 or b"/" in b64):
            break
    else:
        pytest.skip("no suitable PNG size found")
    quoted = urllib.parse.quote(b64.decode(), safe="")
    assert "%" not in quoted[:100] and "%" in quoted
    plain = _post(client, b64, "application/x-www-form-urlencoded")
    body = _post(client, quoted.encode(), "application/x-www-form-urlencoded")
    assert body["image"] == {"width": width, "height": H}
    assert _strip(body) == _strip(plain)


@pytest.mark.parametrize(
    ("data", "ctype"),
    [
        (PNG, "image/png"),
        (PNG, "application/octet-stream"),
        (PNG, None),
        (PNG, "application/x-www-form-urlencoded"),  # wrong type: sniffed anyway
        (JPEG, "image/jpeg"),
        (JPEG, None),
    ],
)
def test_raw_binary_bodies(client, reference, data, ctype):
    body = _post(client, data, ctype)
    assert body["image"] == reference["image"]
    if data is PNG:
        assert _strip(body) == reference
    else:
        assert len(body["predictions"]) == 1


@pytest.mark.parametrize("payload", ["png", "jpeg", "base64-part"])
def test_multipart_file(client, reference, payload):
    data = {"png": PNG, "jpeg": JPEG, "base64-part": B64}[payload]
    body = _post(client, files={"file": ("YOUR_IMAGE.jpg", data, "image/jpeg")})
    assert body["image"] == reference["image"]
    if payload != "jpeg":
        assert _strip(body) == reference


def test_get_and_post_with_image_url(client, reference):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/picture.png?x=1&y=2"
        for method in ("GET", "POST"):
            r = client.request(
                method,
                f"/{MODEL}",
                params={"image": url, "confidence": "40"},
                # the body is ignored when ?image= is given
                content=b"this is not an image" if method == "POST" else None,
            )
            assert r.status_code == 200, r.text
            assert _strip(r.json()) == reference
    finally:
        server.shutdown()
        server.server_close()


def test_image_url_not_allow_listed_is_refused(tmp_path):
    store = make_store(tmp_path)
    meta = ultralytics_meta("detect", ["blob"])
    add_model(store, MODEL, rect_finder_model(tmp_path / "rf.onnx", metadata=meta))
    with build_client(store) as c:  # no allow-list: loopback is refused, nothing fetched
        r = c.post(f"/{MODEL}", params={"image": "http://127.0.0.1:9/x.png"})
        assert r.status_code == 400
        assert "message" in r.json()


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation(client, orientation):
    """The stored JPEG is 200 x 100; orientation 6/8 make it 100 x 200 as displayed."""
    sw, sh = 200, 100
    x0, y0, x1, y1 = 20, 10, 120, 60
    stored = rect_image(sw, sh, (x0, y0, x1, y1))
    data = jpeg_bytes(stored, quality=98, orientation=orientation)
    shown = {
        6: (sh, sw, (sh - y1, x0, sh - y0, x1)),  # rotate 90 clockwise
        8: (sh, sw, (y0, sw - x1, y1, sw - x0)),  # rotate 90 counter-clockwise
        3: (sw, sh, (sw - x1, sh - y1, sw - x0, sh - y0)),  # rotate 180
    }
    width, height, want = shown[orientation]
    body = _post(client, base64.b64encode(data), "application/x-www-form-urlencoded")
    assert body["image"] == {"width": width, "height": height}
    (pred,) = body["predictions"]
    box = (
        pred["x"] - pred["width"] / 2,
        pred["y"] - pred["height"] / 2,
        pred["x"] + pred["width"] / 2,
        pred["y"] + pred["height"] / 2,
    )
    # 200 px long side -> 640: a model pixel is 0.31 image px; allow JPEG edge blur
    np.testing.assert_allclose(box, want, atol=1.0)

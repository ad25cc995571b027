"""Errors of the hosted route: the seed's exact 401/403 body, 400s that name the parameter,
404, 413, 415 (image formats not decoded), and never a 500 for bad input."""

from __future__ import annotations

import base64
import io
import pickle
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import add_model, build_client, make_store
from tests.support.synthetic import constant_model, png_bytes, ultralytics_meta, yolo_head

UNAUTHORIZED = {"Message": "User is not authorized to access this resource"}
PNG = png_bytes(np.zeros((48, 64, 3), np.uint8))
B64 = base64.b64encode(PNG)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    store = make_store(tmp)
    head = yolo_head([(320, 320, 100, 100)], [[0.9]], candidates=4)
    add_model(
        store,
        "ok/1",
        constant_model(tmp / "m.onnx", [head], metadata=ultralytics_meta("detect", ["thing"])),
    )
    return tmp


@pytest.fixture(scope="module")
def client(model_dir) -> Iterator[TestClient]:
    with build_client(make_store(model_dir), max_body_bytes=64 * 1024, max_image_pixels=10**6) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(model_dir) -> Iterator[TestClient]:
    with build_client(make_store(model_dir), api_keys=("k", "other-key")) as c:
        yield c


def _post(client, content=B64, params=None, headers=FORM, path="/ok/1"):
    return client.post(path, params=params or {}, content=content, headers=headers)


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        # No key at all is 401, a wrong one 403: the hosted platform's own split.
        ({}, {}, 401),
        ({"api_key": ""}, {}, 401),
        ({}, {"Authorization": "Basic az"}, 401),  # not a key this API reads
        ({"api_key": "wrong"}, {}, 403),
        ({"api_key": "K"}, {}, 403),  # keys are case-sensitive
        ({}, {"Authorization": "Bearer wrong"}, 403),
    ],
)
def test_401_403_exact_body(keyed, params, headers, status):
    r = _post(keyed, params=params, headers={**FORM, **headers})
    assert r.status_code == status
    assert r.json() == UNAUTHORIZED
    assert r.headers["content-type"].startswith("application/json")


def test_401_before_model_lookup(keyed):
    """Without a key, an unknown model is still 401 (no probing of the store)."""
    r = _post(keyed, path="/nope/1")
    assert r.status_code == 401 and r.json() == UNAUTHORIZED
    r = _post(keyed, path="/nope/1", params={"api_key": "wrong"})
    assert r.status_code == 403 and r.json() == UNAUTHORIZED


def test_401_403_on_the_sdk_routes(keyed):
    """/infer/* and /model/* answer the same split, in the same body."""
    infer = {"model_id": "ok/1", "image": {"type": "base64", "value": B64.decode()}}
    for path, body in (("/infer/object_detection", infer), ("/model/add", {"model_id": "ok/1"})):
        r = keyed.post(path, json=body)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED), path
        r = keyed.post(path, json={**body, "api_key": "wrong"})
        assert (r.status_code, r.json()) == (403, UNAUTHORIZED), path
        assert keyed.post(path, json={**body, "api_key": "k"}).status_code == 200, path
    assert keyed.get("/model/registry").status_code == 401
    assert keyed.get("/model/registry", params={"api_key": "x"}).status_code == 403


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"api_key": "k"}, {}),
        ({"api_key": "other-key"}, {}),
        ({}, {"Authorization": "Bearer k"}),
        ({}, {"Authorization": "bearer other-key"}),
    ],
)
def test_good_key_accepted(keyed, params, headers):
    r = _post(keyed, params=params, headers={**FORM, **headers})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["class"] == "thing"


def test_no_keys_configured_means_open(client):
    assert _post(client).status_code == 200
    assert _post(client, params={"api_key": "anything"}).status_code == 200


# -- 404 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/missing/1", "/ok/2", "/ok/..%2F..", "/.hidden/1"])
def test_404_unknown_model(client, path):
    r = _post(client, path=path)
    assert r.status_code == 404, r.text
    assert isinstance(r.json()["message"], str)


# -- 400: parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("confidence", "abc"),
        ("confidence", "-1"),
        ("confidence", "101"),
        ("confidence", "nan"),
        ("confidence", "inf"),
        ("overlap", "x"),
        ("overlap", "150"),
        ("format", "xml"),
        ("format", "png"),
        ("max_detections", "0"),
        ("max_detections", "abc"),
        ("max_detections", "1.5"),
        ("max_detections", "100000000"),
        ("max_detections", "-3"),
        ("stroke", "-1"),
        ("stroke", "thick"),
        ("stroke", "2.5"),
        ("labels", "maybe"),
        ("labels", "2"),
        ("keypoint_confidence", "high"),
        ("response_mask_format", "bitmap"),
    ],
)
def test_400_names_the_parameter(client, name, value):
    r = _post(client, params={name: value})
    assert r.status_code == 400, r.text
    assert name in r.json()["message"]


def test_unknown_parameters_are_ignored(client):
    r = _post(client, params={"foo": "bar", "name": "x.jpg", "colors": "{}", "version": "2"})
    assert r.status_code == 200


def test_empty_known_parameters_take_defaults(client):
    r = _post(client, params={"confidence": "", "overlap": "", "max_detections": ""})
    assert r.status_code == 200
    assert len(r.json()["predictions"]) == 1


# -- 400 / 413 / 415: bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"   \n  ", b"data:image/png;base64,", b'""', b"{}", b'{"image": null}'],
)
def test_400_missing_image(client, content):
    r = _post(client, content=content)
    assert r.status_code == 400, r.text
    assert r.json()["message"]


def test_400_get_without_image(client):
    r = client.get("/ok/1")
    assert r.status_code == 400
    assert "image" in r.json()["message"]


@pytest.mark.parametrize(
    "content",
    [
        b"!!!! definitely not base64 ****",
        B64[:-5] + b"$$$$$",
        b"A",  # a single character: impossible length
        b"{not json",
        b'"unterminated',
        b'{"image": 12}',
    ],
)
def test_400_bad_base64(client, content):
    r = _post(client, content=content)
    assert r.status_code == 400, r.text
    assert r.json()["message"]


def test_400_truncated_or_corrupt_image(client):
    assert _post(client, content=base64.b64encode(PNG[:30])).status_code == 400
    corrupt = PNG[:40] + bytes(len(PNG) - 40)
    r = _post(client, content=base64.b64encode(corrupt))
    assert r.status_code == 400, r.text


def test_413_body_too_large(client):
    big = base64.b64encode(b"\x00" * 100_000)
    r = _post(client, content=big)
    assert r.status_code == 413
    assert "message" in r.json()

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(20):
            yield b"A" * 8192

    r = client.post("/ok/1", content=chunks(), headers=FORM)
    assert r.status_code == 413


def test_413_too_many_pixels(client):
    """A small PNG that declares 2000 x 2000 pixels (the limit is 10**6) is refused early."""
    raw = b"".join(b"\x00" + b"\x00" * 2000 for _ in range(2000))  # filter byte + gray row
    ihdr = (2000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    assert len(png) < 32 * 1024
    r = _post(client, content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 413, r.text


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (base64.b64encode(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj"), FORM),  # base64 of a PDF
        (base64.b64encode(b"just some text, not an image"), FORM),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>", {"Content-Type": "application/pdf"}),
        (b"\x00\x01\x02\x03\xfe\xff" * 20, {"Content-Type": "application/octet-stream"}),
        (b"\x1f\x8b\x08\x00" + bytes(60), {}),  # gzip
    ],
)
def test_400_body_that_is_no_image(client, content, headers):
    """SPEC 1: a body that is neither an image nor base64 of one is a 400 saying what is
    accepted (415 is kept for image formats that are recognised but not decoded)."""
    r = _post(client, content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert "JPEG, PNG, WebP" in r.json()["message"] and "base64" in r.json()["message"]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_400_serialized_numpy_array_is_never_unpickled(client, tmp_path):
    """Old SDKs send `image_type=numpy` and a pickled array. A pickle whose loading would
    create a file proves nothing was unpickled, on the hosted route and on /infer/*."""
    marker = tmp_path / "unpickled"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    array = np.zeros((48, 64, 3), np.uint8)
    bodies = [
        pickle.dumps(Bomb()),
        pickle.dumps(array),
        _npy(array),
        base64.b64encode(pickle.dumps(Bomb())),
    ]
    for body in bodies:
        for params in ({"image_type": "numpy"}, {}):
            for headers in (FORM, {"Content-Type": "application/octet-stream"}):
                r = _post(client, content=body, params=params, headers=headers)
                assert r.status_code == 400, (body[:8], params, r.text)
                assert "JPEG, PNG" in r.json()["message"], r.text
    for body in bodies[:3]:
        r = client.post(
            "/infer/object_detection",
            json={
                "model_id": "ok/1",
                "image": {"type": "numpy", "value": base64.b64encode(body).decode()},
            },
        )
        assert r.status_code == 400 and "never unpickled" in r.json()["message"], r.text
    r = _post(client, content=pickle.dumps(array), headers={})
    assert "serialized arrays" in r.json()["message"]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"\x00\x00\x00\x1cftypheic" + bytes(40), "HEIC"),
        (b"\x00\x00\x00\x1cftypavif" + bytes(40), "AVIF"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(40), "JPEG 2000"),
    ],
)
def test_415_image_format_not_decoded(client, content, name):
    for body in (content, base64.b64encode(content)):
        r = _post(client, content=body, headers={})
        assert r.status_code == 415, r.text
        assert r.json()["message"].startswith(f"{name} images are not supported")


def test_400_multipart_file_that_is_no_image(client):
    r = client.post(
        "/ok/1", files={"file": ("doc.pdf", b"%PDF-1.4\n\xe2\xe3\xcf\xd3", "application/pdf")}
    )
    assert r.status_code == 400, r.text


def test_400_multipart_without_file_part(client):
    r = client.post("/ok/1", files={"other": ("x.png", PNG, "image/png")})
    assert r.status_code == 400
    assert "file" in r.json()["message"]


# -- never 500 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"\xff\xd8\xff" + bytes(100), {}),  # JPEG magic, nothing behind it
        (b"\x89PNG\r\n\x1a\n" + bytes(50), {}),
        (b"GIF89a" + bytes(20), {}),
        (b"BM" + bytes(60), {}),
        (b"II*\x00" + bytes(40), {}),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(20), {}),
        (b"\xff" * 5000, {"Content-Type": "text/plain"}),
        ("é".encode() * 100, {"Content-Type": "text/plain; charset=utf-8"}),
        (b"--x\r\ngarbage", {"Content-Type": "multipart/form-data; boundary=x"}),
        (b"--", {"Content-Type": "multipart/form-data"}),
        (
            b'{"image": {"type": "url", "value": "http://example.com"}}',
            {"Content-Type": "application/json"},
        ),
        (b"[1, 2, 3]", {"Content-Type": "application/json"}),
        (b"image=", FORM),
    ],
)
def test_bad_input_is_never_a_500(client, content, headers):
    r = client.post("/ok/1", content=content, headers=headers)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["message"]


@pytest.mark.parametrize(
    "params",
    [
        {"image": "file:///etc/passwd"},
        {"image": "not a url"},
        {"image": "http://169.254.169.254/latest/meta-data/"},
        {"image": "ftp://127.0.0.1/x.png"},
        {"classes": ",,,"},
        {"confidence": "1e309"},
        {"max_detections": "1e400"},
        {"stroke": "nan"},
    ],
)
def test_bad_query_is_never_a_500(client, params):
    r = client.post("/ok/1", params=params, content=B64, headers=FORM)
    assert r.status_code < 500, (r.status_code, r.text)

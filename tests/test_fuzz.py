"""Property-based fuzzing on a bounded budget: the image decoders only ever raise cvserve
errors, the OpenAPI-described routes never answer 5xx (schemathesis), and random bodies
and parameters on the raw-body routes never answer 5xx either."""

from __future__ import annotations

import base64
import io
import string
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cvserve.engine import LocalEngine
from cvserve.errors import CVServeError
from cvserve.http.app import build_state, create_app
from cvserve.images import decode_base64, decode_image, sniff
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.settings import Settings
from tests.support.hostile_support import (
    CLS_ID,
    DET_ID,
    add_classifier,
    add_detector,
    encode,
    png_bomb,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same inputs every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
LIMITS = {"max_pixels": 4_000_000, "max_side": 4_000}


def _seed_images() -> list[bytes]:
    out = []
    for fmt, kw in (
        ("PNG", {}),
        ("JPEG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
    ):
        out.append(encode(fmt, 13, 9, **kw))
    buf = io.BytesIO()
    Image.new("I;16", (9, 7), 1234).save(buf, "PNG")
    out.append(buf.getvalue())
    out.append(png_bomb(3000, 3000))
    return out


SEEDS = _seed_images()
MAGICS = [s[:12] for s in SEEDS] + [b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"GIF89a"]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real small image with a few bytes flipped, cut, or spliced in (headers included)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "word"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[:i] + data[i + draw(st.integers(1, 64)) :]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:  # overwrite a 32-bit word: sizes, offsets, counts
            data[i : i + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    return bytes(data)


def _decode_ok(data: bytes) -> None:
    try:
        rgb = decode_image(data, **LIMITS)
    except CVServeError as e:
        assert 400 <= e.status < 500, e
        assert e.message
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous


@FUZZ
@given(mutated_images())
def test_decode_image_mutations(data: bytes) -> None:
    _decode_ok(data)


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=512))
def test_decode_image_random_tails(magic: bytes, tail: bytes) -> None:
    _decode_ok(magic + tail)


@FUZZ
@given(st.binary(max_size=256))
def test_sniff_never_raises(data: bytes) -> None:
    assert sniff(data) in (None, "jpeg", "png", "gif", "bmp", "tiff", "webp")


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        st.text(alphabet=string.ascii_letters + string.digits + "+/=-_ \n\r%:;,", max_size=300),
        st.builds(
            lambda b: "data:image/png;base64," + base64.b64encode(b).decode(),
            st.binary(max_size=200),
        ),
    )
)
def test_decode_base64_only_raises_cvserve_errors(text: bytes | str) -> None:
    try:
        out = decode_base64(text)
    except CVServeError as e:
        assert e.status == 400 and e.message
        return
    assert isinstance(out, bytes)


def test_decode_base64_round_trips() -> None:
    for data in SEEDS:
        encoded = base64.b64encode(data)
        assert decode_base64(encoded) == data
        assert decode_base64(base64.urlsafe_b64encode(data)) == data
        wrapped = b"\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
        assert decode_base64(b"data:image/png;base64," + wrapped) == data


# -- the app -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):  # -> FastAPI
    root = tmp_path_factory.mktemp("fuzz") / "models"
    add_detector(root)
    add_classifier(root)
    cfg = Settings(
        data_dir=root.parent / "data",
        models_dir=root,
        auto_pull=False,
        workers=1,
        intra_op_threads=1,
        max_body_bytes=1 << 20,
        max_image_pixels=4_000_000,
        max_image_side=4_000,
    )
    store = ModelStore(root, RuntimeOptions(lanes=1, threads_per_lane=1))
    return create_app(cfg, build_state(cfg, engine=LocalEngine(cfg, store)))


@pytest.fixture(scope="module")
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


PARAM_NAMES = [
    "confidence",
    "overlap",
    "max_detections",
    "stroke",
    "labels",
    "format",
    "classes",
    "keypoint_confidence",
    "response_mask_format",
    "name",
    "fast",
    "api_key",
]
param_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "0x10", "1_000", "True", "", " 40 "]),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
bodies = st.one_of(
    st.binary(max_size=600),
    mutated_images(),
    mutated_images().map(base64.b64encode),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(
        lambda v: b'{"image": ' + v.encode("utf-8", "surrogatepass") + b"}",
        st.sampled_from(['"QUJD"', "null", "[]", "{}", '{"type": "url"}', "1e999", '"\\u0000"']),
    ),
)
content_types = st.sampled_from(
    [
        None,
        "application/x-www-form-urlencoded",
        "application/json",
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "image/png",
        "application/octet-stream; charset=\u00e9".encode().decode("latin-1"),
    ]
)
paths = st.sampled_from([f"/{DET_ID}", f"/{CLS_ID}", "/nope/1", "/det/%00", "/%E2%98%83/1"])


def _assert_clean(r) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body.get("message") or body.get("Message"), str), body


@FUZZ
@given(
    path=paths,
    method=st.sampled_from(["POST", "GET"]),
    body=bodies,
    ctype=content_types,
    params=st.dictionaries(st.sampled_from(PARAM_NAMES), param_values, max_size=4),
)
def test_hosted_route_random_requests(
    client: TestClient, path: str, method: str, body: bytes, ctype: str | None, params: dict
) -> None:
    headers = {"Content-Type": ctype.encode("latin-1")} if ctype else {}
    r = client.request(method, path, content=body, params=params, headers=headers)
    _assert_clean(r)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
image_fields = st.one_of(
    json_values,
    mutated_images().map(lambda b: base64.b64encode(b).decode()),
    mutated_images().map(lambda b: {"type": "base64", "value": base64.b64encode(b).decode()}),
    st.lists(
        mutated_images().map(lambda b: {"type": "base64", "value": base64.b64encode(b).decode()}),
        max_size=3,
    ),
)
infer_bodies = st.fixed_dictionaries(
    {"model_id": st.one_of(st.sampled_from([DET_ID, CLS_ID, "nope/1", "../x"]), json_values)},
    optional={
        "image": image_fields,
        "confidence": json_values,
        "iou_threshold": json_values,
        "max_detections": json_values,
        "class_filter": json_values,
        "keypoint_confidence": json_values,
        "visualize_predictions": json_values,
        "visualization_stroke_width": json_values,
        "visualization_labels": json_values,
        "response_mask_format": json_values,
        "api_key": json_values,
    },
)


@settings(FUZZ, max_examples=60)
@given(body=infer_bodies, task=st.sampled_from(["object_detection", "classification", "x"]))
def test_sdk_infer_route_random_json(client: TestClient, body: dict, task: str) -> None:
    _assert_clean(client.post(f"/infer/{task}", json=body))


@FUZZ
@given(body=st.binary(max_size=400))
def test_sdk_infer_route_random_bytes(client: TestClient, body: bytes) -> None:
    _assert_clean(
        client.post(
            "/infer/object_detection", content=body, headers={"Content-Type": "application/json"}
        )
    )


def test_health_after_fuzzing(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    good = base64.b64encode(encode("PNG", 20, 20))
    assert client.post(f"/{DET_ID}", content=good).status_code == 200


# -- schemathesis over the OpenAPI document ------------------------------------------------
# (Driven by hand: schemathesis' pytest fixtures don't work with pytest 9 yet.)
def test_openapi_operations_never_5xx(app) -> None:  # type: ignore[no-untyped-def]
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    seen: set[str] = set()

    @settings(FUZZ, max_examples=300, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case) -> None:  # type: ignore[no-untyped-def]
        seen.add(f"{case.method} {case.operation.path}")
        case.call_and_validate(checks=[not_a_server_error])

    run()
    print(f"schemathesis covered {len(seen)} operations: {sorted(seen)}")
    assert any("/infer/" in op for op in seen) and any("{dataset}" in op for op in seen), seen

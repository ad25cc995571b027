"""The Python SDK (cvserve.Client) against a live server on a socket, with synthetic models
whose answers are known exactly (tests/support/synthetic_store.py)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

import cvserve
from cvserve.client import Client, CVServeHTTPError, prediction_from_json
from cvserve.results import Classification, Detections, SemanticMask
from tests.support.live_server import LiveServer
from tests.support.synthetic_store import (
    DET_BOXES,
    SEG_BOX,
    build_store,
    pose_keypoints,
    sample_image,
)

KEY = "test-key-123"
PERSON_RGB = (255, 56, 56)  # palette colour 0 (cvserve.render.annotate)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("client")
    build_store(d / "store", d / "work", sam=True)
    rgb = sample_image()
    cv2.imwrite(str(d / "photo.jpg"), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(d / "photo.png"), rgb[:, :, ::-1])
    return d


@pytest.fixture(scope="module")
def image_host(workdir: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving workdir (for URL inputs)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(workdir), **kw)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[LiveServer]:
    with LiveServer(workdir / "store", api_keys=(KEY,), allow_url_hosts=("127.0.0.1",)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[Client]:
    with cvserve.Client(server.url, api_key=KEY, timeout=30) as c:
        yield c


def _boxes(result: cvserve.client.PredictionResult) -> dict[str, tuple[float, ...]]:
    out = {}
    for p in result.json()["predictions"]:
        x, y, w, h = p["x"], p["y"], p["width"], p["height"]
        out[p["class"]] = (x - w / 2, y - h / 2, x + w / 2, y + h / 2, p["confidence"])
    return out


def _near(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> np.ndarray:
    return (np.abs(rgb.astype(int) - np.array(colour)) <= tol).all(-1)


# -- predictions -----------------------------------------------------------------------------
def test_predict_path_matches_the_model(client: Client, workdir: Path) -> None:
    result = client.model("det/1").predict(str(workdir / "photo.jpg"), confidence=40, overlap=30)
    body = result.json()
    assert body["image"] == {"width": 640, "height": 640}
    assert result.task == "object-detection" and len(result) == 2
    boxes = _boxes(result)
    assert set(boxes) == {"person", "car"}  # the dog (0.35) is under 40 %
    for name in ("person", "car"):
        assert boxes[name] == pytest.approx(DET_BOXES[name], abs=0.02)
    assert all("detection_id" in p for p in result)
    assert result[0]["class"] == "person"

    low = client.model("det/1").predict(workdir / "photo.jpg", confidence=0.3)
    assert set(_boxes(low)) == {"person", "car", "dog"}
    only = client.model("det/1").predict(
        workdir / "photo.jpg", confidence=30, classes=["dog", "car"]
    )
    assert set(_boxes(only)) == {"car", "dog"}
    assert set(_boxes(client.predict("det/1", workdir / "photo.jpg", classes="car"))) == {"car"}


def test_every_image_kind_gives_the_same_answer(client: Client, workdir: Path) -> None:
    model = client.model("det/1")
    bgr = cv2.imread(str(workdir / "photo.png"))
    rgb = bgr[:, :, ::-1].copy()
    inputs = [
        str(workdir / "photo.png"),
        (workdir / "photo.png").read_bytes(),
        bgr,  # OpenCV order by default, like the roboflow package
        Image.open(workdir / "photo.png"),
    ]
    answers = [_boxes(model.predict(i)) for i in inputs]
    answers.append(_boxes(model.predict(rgb, channels="rgb")))
    for a in answers[1:]:
        assert a == answers[0]
    # Pixels arrive losslessly: the saved drawing of an RGB array is the image itself outside
    # the boxes.
    drawn = model.predict(rgb, channels="rgb").annotated()
    assert np.array_equal(drawn[600:, :50], rgb[600:, :50])


def test_save_draws_boxes_where_the_model_put_them(client: Client, workdir: Path) -> None:
    result = client.model("det/1").predict(str(workdir / "photo.png"))
    out = result.save(workdir / "out" / "det.png")
    drawn = np.asarray(Image.open(out).convert("RGB"))
    x1, y1, x2, y2, _ = DET_BOXES["person"]
    edge = drawn[y1 + 20 : y2 - 20, x1]  # left edge of the person box
    assert _near(edge, PERSON_RGB).mean() > 0.95
    centre = drawn[(y1 + y2) // 2, (x1 + x2) // 2]
    assert not _near(centre[None], PERSON_RGB)[0]  # boxes are outlines, not fills
    jpg = result.save(workdir / "out" / "det.jpg")
    assert jpg.read_bytes()[:2] == b"\xff\xd8"
    # The label sits on a filled tab above the box; predict(stroke=, labels=) set defaults.
    above = (slice(y1 - 8, y1 - 3), slice(x1 + 5, x1 + 40))
    assert _near(drawn[above], PERSON_RGB).mean() > 0.5
    plain = client.model("det/1").predict(workdir / "photo.png", stroke=6, labels=False)
    bare = np.asarray(Image.open(plain.save(workdir / "out" / "bare.png")).convert("RGB"))
    assert _near(bare[above], PERSON_RGB).mean() < 0.1
    assert _near(bare[y1 + 20 : y2 - 20, x1 + 2], PERSON_RGB).mean() > 0.95  # 6 px wide


def test_segmentation_masks_round_trip(client: Client, workdir: Path) -> None:
    x1, y1, x2, y2, _ = SEG_BOX
    for fmt in ("polygon", "rle"):
        result = client.model("seg/1").predict(workdir / "photo.png", mask_format=fmt)
        det = result.prediction().result
        assert isinstance(det, Detections) and det.masks is not None
        full = det.masks[0].full(640, 640)
        box = np.zeros((640, 640), bool)
        box[y1:y2, x1:x2] = True
        iou = (full & box).sum() / (full | box).sum()
        assert iou > 0.97, fmt
    drawn = result.annotated()
    original = result.image()
    inside = (slice(y1 + 10, y2 - 10), slice(x1 + 10, x2 - 10))
    assert np.abs(drawn[inside].astype(int) - original[inside]).mean() > 20  # tinted
    assert np.array_equal(drawn[400:, 400:], original[400:, 400:])


def test_keypoints_classification_semantic(client: Client, workdir: Path) -> None:
    pose = client.model("pose/1").predict(workdir / "photo.png", keypoint_confidence=0.5)
    det = pose.prediction().result
    assert pose.task == "keypoint-detection" and det.keypoints is not None
    want = [v for x, y, c in pose_keypoints() if c >= 0.5 for v in (x, y)]
    got = [v for k in pose[0]["keypoints"] for v in (k["x"], k["y"])]
    assert got == pytest.approx(want)
    assert det.keypoints.shape == (1, 16, 3) and det.keypoint_names[0] == "nose"

    cls = client.model("cls/1").predict(workdir / "photo.png")
    assert cls.json()["top"] == "cat" and cls.task == "classification"
    typed = cls.prediction().result
    assert isinstance(typed, Classification)
    assert typed.class_names == ["cat", "dog", "bird"]
    assert typed.scores == pytest.approx([0.7, 0.2, 0.1], abs=1e-4)
    assert cls.save(workdir / "out" / "cls.png").is_file()

    sem = client.model("sem/1").predict(workdir / "photo.png")
    mask = sem.prediction().result
    assert isinstance(mask, SemanticMask) and mask.class_names == ["background", "sky", "ground"]
    assert (mask.class_map[:300] == 1).all() and (mask.class_map[340:] == 2).all()
    drawn = sem.annotated()
    assert drawn.shape == (640, 640, 3)


def test_prediction_from_json_without_class_ids() -> None:
    body = {
        "image": {"width": 100, "height": 80},
        "predictions": [
            {"x": 50, "y": 40, "width": 20, "height": 10, "class": "a", "confidence": 0.9},
            {"x": 10, "y": 10, "width": 4, "height": 4, "class": "b", "confidence": 0.5},
        ],
    }
    det = prediction_from_json(body).result
    assert det.class_names == ["a", "b"] and det.class_id.tolist() == [0, 1]
    assert det.xyxy[0].tolist() == [40, 35, 60, 45]


def test_to_supervision(client: Client, workdir: Path) -> None:
    sv = pytest.importorskip("supervision", reason="supervision is not installed")
    det = client.model("det/1").predict(workdir / "photo.png", confidence=30).to_supervision()
    assert isinstance(det, sv.Detections) and len(det) == 3
    assert list(det.data["class_name"]) == ["person", "car", "dog"]
    seg = client.model("seg/1").predict(workdir / "photo.png").to_supervision()
    assert seg.mask is not None and seg.mask.shape == (1, 640, 640)


def test_to_supervision_without_the_package_says_how_to_get_it(
    client: Client, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "supervision", None)  # import fails
    result = client.model("det/1").predict(workdir / "photo.png")
    with pytest.raises(ImportError, match="pip install supervision"):
        result.to_supervision()


# -- URLs ------------------------------------------------------------------------------------
def test_hosted_url_is_fetched_by_the_server(
    client: Client, image_host: str, workdir: Path
) -> None:
    url = f"{image_host}/photo.png"
    result = client.model("det/1").predict(url, True)  # hosted is second, as in roboflow
    assert set(_boxes(result)) == {"person", "car"}
    out = result.save(workdir / "out" / "hosted.png")  # the client downloads it to draw
    assert Image.open(out).size == (640, 640)
    local = client.model("det/1").predict(url)  # hosted=False: the client downloads it
    assert _boxes(local) == _boxes(result)
    with pytest.raises(ValueError, match="URL"):
        client.model("det/1").predict(str(workdir / "photo.png"), hosted=True)


# -- SAM ---------------------------------------------------------------------------------------
def test_segment_with_points(client: Client, workdir: Path) -> None:
    seg = client.model("sam/1").segment(workdir / "photo.png", [(320, 300), (100, 500, 0)])
    assert seg.score == pytest.approx(0.9, abs=1e-3)
    mask = seg.mask  # an array, as `np.asarray(seg.mask) > 0` in the README expects
    assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == (640, 640)
    assert (np.asarray(seg.mask) > 0).sum() == mask.sum()
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 320) < 2 and abs(ys.mean() - 300) < 2
    assert 0.8 * np.pi * 20**2 < mask.sum() < 1.2 * np.pi * 20**2
    assert not mask[500, 100]  # background points paint nothing
    # The same prompt as fractions of the image: the same mask and outline, in pixels.
    norm = client.model("sam/1").segment(
        workdir / "photo.png", [(0.5, 300 / 640), (100 / 640, 500 / 640, 0)], normalised=True
    )
    assert norm.size == seg.size == (640, 640)
    assert (norm.mask != mask).sum() <= 0.02 * mask.sum()
    assert np.allclose(np.mean(norm.polygons[0], axis=0), np.mean(seg.polygons[0], axis=0), atol=2)


# -- errors ------------------------------------------------------------------------------------
def test_errors_are_typed(client: Client, server: LiveServer, workdir: Path) -> None:
    with pytest.raises(CVServeHTTPError) as e:
        client.model("nope/1").predict(workdir / "photo.png")
    assert e.value.status == 404 and "nope/1" in e.value.message
    with pytest.raises(CVServeHTTPError) as e:
        client.model("det/1").predict(b"GIF89a not really")
    assert e.value.status in (400, 415)
    with pytest.raises(CVServeHTTPError) as e:
        client.model("det/1").predict(workdir / "photo.png", confidence=500)
    assert e.value.status == 400 and "confidence" in e.value.message
    with Client(server.url) as anonymous, pytest.raises(CVServeHTTPError) as e:
        anonymous.models()
    assert e.value.status == 401
    assert e.value.message == "User is not authorized to access this resource"
    with Client(server.url, api_key="wrong") as wrong, pytest.raises(CVServeHTTPError) as e:
        wrong.model("det/1").predict(workdir / "photo.png")
    assert e.value.status == 403
    with pytest.raises(FileNotFoundError):
        client.model("det/1").predict(workdir / "missing.jpg")
    with pytest.raises(ValueError):
        client.model("not-an-id")


def test_unreachable_server(workdir: Path) -> None:
    with (
        Client("http://127.0.0.1:9", retries=0, timeout=2) as c,
        pytest.raises(CVServeHTTPError) as e,
    ):
        c.model("det/1").predict(workdir / "photo.png")
    assert e.value.status == 0 and "cannot reach" in e.value.message


def test_retries_overload_then_succeeds() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"message": "busy"})
        return httpx.Response(200, json={"image": {"width": 1, "height": 1}, "predictions": []})

    with Client("http://test", transport=httpx.MockTransport(handler)) as c:
        assert len(c.model("a/1").predict(b"\x89PNG\r\n\x1a\n")) == 0
        assert len(calls) == 3
        assert calls[0].headers["content-type"] == "application/octet-stream"
    calls.clear()
    with Client("http://test", transport=httpx.MockTransport(handler), retries=1) as c:
        with pytest.raises(CVServeHTTPError) as e:
            c.model("a/1").predict(b"x")
        assert e.value.status == 503 and e.value.message == "busy"


def test_keep_alive_reuses_one_connection(server: LiveServer, workdir: Path) -> None:
    data = (workdir / "photo.jpg").read_bytes()
    with Client(server.url, api_key=KEY) as c:
        for _ in range(4):
            c.model("det/1").predict(data)
        pool = c._http._transport._pool  # httpx's connection pool
        assert len(pool.connections) == 1


def test_models_and_info(client: Client) -> None:
    models = {m["model_id"]: m for m in client.models()}
    assert models["det/1"]["task_type"] == "object-detection"
    assert models["det/1"]["classes"] == ["person", "car", "dog"]
    assert client.info()["name"] == "cvserve"


def test_import_cvserve_does_not_import_httpx() -> None:
    code = (
        "import sys, cvserve; assert 'httpx' not in sys.modules; "
        "assert 'cvserve.client' not in sys.modules; "
        "c = cvserve.Client; assert 'httpx' not in sys.modules or c; print(c.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Client"
    assert cvserve.CVServeHTTPError is CVServeHTTPError
    with pytest.raises(AttributeError):
        cvserve.NotAThing  # noqa: B018


def test_result_of_an_image_without_source_cannot_draw(tmp_path: Path) -> None:
    result = cvserve.client.PredictionResult(
        {"image": {"width": 2, "height": 2}, "predictions": []}
    )
    assert result.json()["predictions"] == [] and len(result) == 0
    with pytest.raises(ValueError, match="no image"):
        result.save(tmp_path / "x.jpg")

"""The same image and parameters through every door give the same JSON (apart from
`time` and ids): the hosted route by body and by ?image=URL, the inference-sdk's
/infer/object_detection, the SDK, `cvserve predict` in-process and the engine as the
benchmark calls it. Against a live server on 127.0.0.1. The model finds the bright
rectangle of the photo, so its box depends on the pixels each door's path produced; the
per-model fast decode (`preprocess.fast_decode`) must be applied by every door too.

And the promptable door: the sync segment route and a segment job give the same segments.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import cvserve
from cvserve.encoders import HostedEncoder
from cvserve.engine import LocalEngine
from cvserve.engine import fastpath as fastpath_module
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.params import parse_hosted
from cvserve.predict import LocalBackend, PredictOptions
from cvserve.settings import Settings
from tests.conftest import add_model
from tests.support import answers
from tests.support.live_server import LiveServer
from tests.support.synthetic import jpeg_bytes, rect_finder_model, rect_image, ultralytics_meta
from tests.support.synthetic_sam import MODEL_ID as SAM_ID
from tests.support.synthetic_sam import write_sam_model

VOLATILE = answers.PER_ANSWER | {"visualization"}
PHOTO = jpeg_bytes(rect_image(1920, 1080, (400, 300, 1400, 900)), quality=95)
QUERY = {"confidence": "40", "overlap": "30", "max_detections": "50"}


def strip(body: Any) -> Any:
    return answers.strip(body, VOLATILE)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doors")
    store = ModelStore(root / "models", RuntimeOptions(lanes=1, threads_per_lane=1))
    meta = ultralytics_meta("detect", ["rect"])
    for model_id, fast in (("exact/1", False), ("fast/1", True)):
        add_model(store, model_id, rect_finder_model(root / f"{fast}.onnx", metadata=meta))
        manifest_path = store.folder(model_id) / "cvserve.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["preprocess"]["fast_decode"] = fast
        manifest_path.write_text(json.dumps(manifest))
    write_sam_model(root / "models", SAM_ID, encoder_work=2)
    store.close()
    return root / "models"


@pytest.fixture(scope="module")
def photo_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(PHOTO)))
            self.end_headers()
            self.wfile.write(PHOTO)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(store_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(store_dir, allow_url_hosts=("127.0.0.1",), job_workers=1) as live:
        yield live


@pytest.fixture
def reductions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The DCT reduction of every JPEG decode the engine's fast path makes."""
    seen: list[int] = []
    original = fastpath_module.decode_image

    def spy(data: bytes, **kwargs: Any) -> Any:
        seen.append(kwargs.get("reduce", 1))
        return original(data, **kwargs)

    monkeypatch.setattr(fastpath_module, "decode_image", spy)
    return seen


def through_every_door(
    model_id: str, server: LiveServer, store_dir: Path, photo_url: str, tmp_path: Path
) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post(f"/{model_id}", params=QUERY, content=PHOTO)
        assert r.status_code == 200, r.text
        answers["hosted POST body"] = r.json()
        r = http.get(f"/{model_id}", params={**QUERY, "image": photo_url})
        assert r.status_code == 200, r.text
        answers["hosted GET ?image=URL"] = r.json()
        b64 = base64.b64encode(PHOTO).decode()
        body = {
            "model_id": model_id,
            "image": {"type": "base64", "value": b64},
            "confidence": 0.4,
            "iou_threshold": 0.3,
            "max_detections": 50,
        }
        r = http.post("/infer/object_detection", json=body)
        assert r.status_code == 200, r.text
        sdk_json = r.json()
        assert sdk_json["visualization"] is None
        answers["/infer/object_detection"] = sdk_json

    with cvserve.Client(server.url, timeout=60) as client:
        result = client.model(model_id).predict(PHOTO, confidence=40, overlap=30, max_detections=50)
        answers["SDK Client"] = result.json()

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(PHOTO)
    settings = Settings(models_dir=store_dir, data_dir=tmp_path, workers=1, intra_op_threads=1)
    opts = PredictOptions(
        source=str(photo),
        model_id=model_id,
        models_dir=store_dir,
        confidence=40,
        overlap=30,
        max_detections=50,
    )
    backend = LocalBackend(opts, lanes=1, settings=settings)
    try:
        answers["cvserve predict (in-process)"] = backend.predict(photo, "photo.jpg")[0]
    finally:
        backend.close()

    store = ModelStore(store_dir, RuntimeOptions(lanes=1, threads_per_lane=1))
    engine = LocalEngine(settings, store)
    try:
        model = store.get(model_id)
        params, render = parse_hosted(QUERY, model.task)
        answer = engine.infer_now(model_id, PHOTO, params, HostedEncoder(render))
        answers["engine (bench)"] = answer.body
    finally:
        engine.close()
        store.close()
    return answers


@pytest.mark.parametrize("model_id", ["exact/1", "fast/1"])
def test_every_door_answers_the_same_json(
    model_id: str,
    server: LiveServer,
    store_dir: Path,
    photo_url: str,
    tmp_path: Path,
    reductions: list[int],
) -> None:
    answers = through_every_door(model_id, server, store_dir, photo_url, tmp_path)
    first_door, first = next(iter(answers.items()))
    assert first["image"] == {"width": 1920, "height": 1080}
    (box,) = first["predictions"]
    # the rectangle, in the photo's own pixels: the exact path to a pixel, the fast one near
    tolerance = 3 if model_id == "exact/1" else 6
    assert abs(box["x"] - 900) <= tolerance and abs(box["width"] - 1000) <= 2 * tolerance
    for door, answer in answers.items():
        assert strip(answer) == strip(first), f"{door} differs from {first_door}"
    # The server runs in this process: every door's decode went through the same policy.
    if model_id == "fast/1":
        assert reductions == [2] * len(answers), reductions
    else:
        assert reductions == []


def test_sync_segment_route_and_job_give_the_same_segments(
    server: LiveServer, tmp_path: Path
) -> None:
    project = "/api/v1/projects/doors"
    beta = {"cdf-version": "beta"}
    image = jpeg_bytes(rect_image(320, 240, (40, 30, 200, 150)), quality=95)
    points = [{"x": 0.25, "y": 0.5, "label": 1}]
    box = {"xMin": 0.5, "yMin": 0.1, "xMax": 0.9, "yMax": 0.4}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post(
            f"{project}/context/vision/segment/sync",
            json={"image": base64.b64encode(image).decode(), "points": points, "boundingBox": box},
        )
        assert r.status_code == 200, r.text
        sync = r.json()
        r = http.post(f"{project}/files/upload", files={"file": ("photo.jpg", image, "image/jpeg")})
        assert r.status_code == 201, r.text
        file_id = r.json()["id"]
        r = http.post(
            f"{project}/context/vision/segment",
            json={"items": [{"fileId": file_id}], "points": points, "boundingBox": box},
            headers=beta,
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["jobId"]
        deadline = time.monotonic() + 30
        while True:
            job = http.get(f"{project}/context/vision/segment/{job_id}", headers=beta).json()
            if job["status"] in ("Completed", "Failed") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert job["status"] == "Completed", job
    assert sync["segments"], sync
    assert job["items"][0]["segments"] == sync["segments"]
    assert sync["image"] == {"width": 320, "height": 240}

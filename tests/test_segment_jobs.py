"""Files + promptable segmentation jobs over HTTP (SPEC §4), against the synthetic SAM pair."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from tests.support.synthetic_sam import MODEL_ID, expected_mask, write_sam_model

P = "/api/v1/projects/acme"
BETA = {"cdf-version": "beta"}
W, H = 320, 240
RADIUS = 20.0


def png(width: int = W, height: int = H, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def sam_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic SAM pair, built once; each test gets its own store over it."""
    root = tmp_path_factory.mktemp("models")
    write_sam_model(root, MODEL_ID, encoder_work=2, radius=RADIUS)
    write_sam_model(root, "heavy/1", encoder_work=48, radius=RADIUS)  # a costly encoder
    return root


@pytest.fixture
def sam_store(sam_root: Path) -> ModelStore:
    return ModelStore(sam_root, RuntimeOptions(lanes=1, threads_per_lane=1))


@pytest.fixture
def client(
    sam_store: ModelStore, tmp_path: Path, make_client: Callable[..., TestClient]
) -> TestClient:
    return make_client(sam_store, data_dir=tmp_path, job_workers=1)


def upload(
    client: TestClient,
    data: bytes,
    name: str = "img.png",
    mime: str = "image/png",
    external_id: str | None = None,
) -> dict[str, Any]:
    meta = {"name": name, "mimeType": mime}
    if external_id:
        meta["externalId"] = external_id
    r = client.post(f"{P}/files", json=meta)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["uploaded"] is False
    r = client.put(created["uploadUrl"], content=data)
    assert r.status_code == 200, r.text
    return r.json()


def submit(client: TestClient, body: dict[str, Any], expect: int = 200) -> dict[str, Any]:
    r = client.post(f"{P}/context/vision/segment", json=body, headers=BETA)
    assert r.status_code == expect, r.text
    return r.json()


def wait_done(client: TestClient, job_id: int, timeout: float = 20.0) -> tuple[dict, list[str]]:
    """Poll until Completed/Failed; returns the final job and every status seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"{P}/context/vision/segment/{job_id}", headers=BETA)
        assert r.status_code == 200, r.text
        job = r.json()
        seen.append(job["status"])
        if job["status"] in ("Completed", "Failed"):
            return job, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not done after {timeout}s: {seen[-5:]}")


def polygon_mask(vertices: list[dict[str, float]], width: int = W, height: int = H) -> np.ndarray:
    pts = np.array([[v["x"] * width, v["y"] * height] for v in vertices], np.float32)
    out = np.zeros((height, width), np.uint8)
    cv2.fillPoly(out, [np.round(pts).astype(np.int32)], 1)
    return out.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


ORDER = {"Queued": 0, "Running": 1, "Completed": 2, "Failed": 2}


# -- files -------------------------------------------------------------------------------
def test_files_create_put_get_and_download(client: TestClient) -> None:
    data = png()
    r = client.post(
        f"{P}/files", json={"name": "a.png", "mimeType": "image/png", "externalId": "a"}
    )
    assert r.status_code == 201
    created = r.json()
    assert {"id", "externalId", "name", "mimeType", "uploaded", "createdTime", "uploadUrl"} <= set(
        created
    )
    assert created["uploadUrl"].startswith("http://testserver/api/v1/projects/acme/files/")
    assert created["uploaded"] is False and created["externalId"] == "a"
    r = client.put(created["uploadUrl"], content=data)
    assert r.status_code == 200 and r.json()["uploaded"] is True
    got = client.get(f"{P}/files/{created['id']}").json()
    assert got["uploaded"] is True and got["name"] == "a.png" and "uploadedTime" in got
    assert client.get(f"{P}/files/{created['id']}/content").content == data
    # Projects are separate namespaces.
    r = client.get(f"/api/v1/projects/other/files/{created['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404


def test_files_multipart_upload_and_errors(client: TestClient) -> None:
    r = client.post(
        f"{P}/files/upload",
        files={"file": ("m.png", png(), "image/png")},
        data={"externalId": "m"},
    )
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["uploaded"] is True and meta["name"] == "m.png"
    assert meta["mimeType"] == "image/png" and meta["externalId"] == "m"
    # Duplicate externalId: 409 in the platform's shape.
    r = client.post(
        f"{P}/files", json={"name": "n.png", "mimeType": "image/png", "externalId": "m"}
    )
    assert r.status_code == 409
    assert r.json()["error"]["duplicated"] == [{"externalId": "m"}]
    # byids: unknown ids listed under `missing`.
    r = client.post(f"{P}/files/byids", json={"items": [{"externalId": "m"}, {"id": 999}]})
    assert r.status_code == 400 and r.json()["error"]["missing"] == [{"id": 999}]
    r = client.post(
        f"{P}/files/byids", json={"items": [{"externalId": "m"}], "ignoreUnknownIds": True}
    )
    assert r.status_code == 200 and r.json()["items"][0]["id"] == meta["id"]
    r = client.post(f"{P}/files/upload", data={"name": "x.png"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    r = client.post(f"{P}/files/upload", files={"other": ("x.png", b"x", "image/png")})
    assert r.status_code == 400 and "file" in r.json()["error"]["message"]
    for bad in ({}, {"name": ""}, [1]):
        r = client.post(f"{P}/files", json=bad)
        assert r.status_code == 400 and "message" in r.json()["error"]
    assert client.get(f"{P}/files/abc").status_code == 400
    assert client.put(f"{P}/files/12345/content", content=b"x").status_code == 404


# -- jobs --------------------------------------------------------------------------------
def test_point_job_completes_with_the_disc(client: TestClient) -> None:
    f = upload(client, png(), external_id="cat")
    px, py = 100, 120
    t0 = int(time.time() * 1000)
    body = {"items": [{"fileId": f["id"]}], "points": [{"x": px / W, "y": py / H, "label": 1}]}
    job = submit(client, body)
    assert job["status"] == "Queued" and job["errorMessage"] is None
    assert isinstance(job["jobId"], int)
    assert job["items"] == [{"fileId": f["id"], "fileExternalId": "cat"}]
    assert job["points"] == body["points"] and "boundingBox" not in job
    for k in ("createdTime", "startTime", "statusTime"):
        assert abs(job[k] - t0) < 60_000
    done, seen = wait_done(client, job["jobId"])
    assert [ORDER[s] for s in seen] == sorted(ORDER[s] for s in seen)  # never backwards
    assert done["status"] == "Completed", done
    assert done["prompt"] == {"points": body["points"]} and done["errorMessage"] is None
    assert "failedItems" not in done
    (item,) = done["items"]
    assert item["fileId"] == f["id"] and item["fileExternalId"] == "cat"
    (seg,) = item["segments"]
    assert seg["score"] == pytest.approx(0.9, abs=1e-6)
    (poly,) = seg["polygons"]
    assert poly["confidence"] == pytest.approx(0.9, abs=1e-6)
    vs = poly["vertices"]
    assert all(0 <= v["x"] <= 1 and 0 <= v["y"] <= 1 for v in vs)
    assert all(v["confidence"] == pytest.approx(0.9, abs=1e-6) for v in vs)
    want = expected_mask(H, W, [(px, py, 1)], radius=RADIUS)
    assert iou(polygon_mask(vs), want) > 0.9


def test_box_job_by_external_id_and_background_point(client: TestClient) -> None:
    upload(client, png(seed=1), name="b.JPG", mime="image/jpeg", external_id="b")
    # A JPEG name with PNG bytes decodes fine; the name/mimeType rule is about metadata.
    box = {"xMin": 0.25, "yMin": 0.25, "xMax": 0.75, "yMax": 0.5}
    body = {
        "items": [{"fileExternalId": "b"}],
        "points": [{"x": 0.9, "y": 0.9, "label": 0}],
        "boundingBox": box,
    }
    job = submit(client, body)
    assert job["boundingBox"] == box
    done, _ = wait_done(client, job["jobId"])
    assert done["status"] == "Completed", done
    assert done["prompt"]["boundingBox"] == box
    poly = done["items"][0]["segments"][0]["polygons"][0]
    want = expected_mask(H, W, box=(0.25 * W, 0.25 * H, 0.75 * W, 0.5 * H))
    assert iou(polygon_mask(poly["vertices"]), want) > 0.95
    # Box only, no points at all, is a valid prompt too.
    job = submit(client, {"items": [{"fileExternalId": "b"}], "boundingBox": box})
    assert wait_done(client, job["jobId"])[0]["status"] == "Completed"


def test_second_job_on_the_same_file_hits_the_embedding_cache(client: TestClient) -> None:
    f = upload(client, png(seed=2))
    for x in (0.2, 0.6):
        job = submit(client, {"items": [{"fileId": f["id"]}], "points": [{"x": x, "y": 0.5}]})
        assert wait_done(client, job["jobId"])[0]["status"] == "Completed"
    model = client.app.state.cvserve.engine.store.loaded(MODEL_ID)
    assert (model.cache.misses, model.cache.hits) == (1, 1)
    # New content under the same id must not reuse the old embedding.
    client.put(f"{P}/files/{f['id']}/content", content=png(seed=3))
    job = submit(client, {"items": [{"fileId": f["id"]}], "points": [{"x": 0.5, "y": 0.5}]})
    assert wait_done(client, job["jobId"])[0]["status"] == "Completed"
    assert model.cache.misses == 2


@pytest.mark.parametrize(
    "name,mime,data,why",
    [
        ("a.gif", "image/png", png(), ".jpeg, .jpg or .png"),
        ("a.png", "image/gif", png(), "image/jpeg or image/png"),
        ("a.png", "image/png", b"\x89PNG\r\n\x1a\nnot really a png", "cannot segment"),
        ("a.png", "image/png", None, "not been uploaded"),
    ],
)
def test_unusable_file_fails_the_item(
    client: TestClient, name: str, mime: str, data: bytes | None, why: str
) -> None:
    r = client.post(f"{P}/files", json={"name": name, "mimeType": mime})
    f = r.json()
    if data is not None:
        client.put(f["uploadUrl"], content=data)
    job = submit(client, {"items": [{"fileId": f["id"]}], "points": [{"x": 0.5, "y": 0.5}]})
    done, _ = wait_done(client, job["jobId"])
    assert done["status"] == "Failed" and why in done["errorMessage"]
    (failed,) = done["failedItems"]
    assert why in failed["errorMessage"] and failed["items"][0]["fileId"] == f["id"]
    assert done["items"] == []


def test_missing_file_fails_the_item(client: TestClient) -> None:
    for item in ({"fileId": 424242}, {"fileExternalId": "nope"}):
        job = submit(client, {"items": [item], "points": [{"x": 0.5, "y": 0.5, "label": 1}]})
        assert job["items"] == [item]
        done, _ = wait_done(client, job["jobId"])
        assert done["status"] == "Failed"
        assert done["failedItems"] == [{"errorMessage": "file not found", "items": [item]}]


def test_cdf_version_header_is_required(client: TestClient) -> None:
    body = {"items": [{"fileId": 1}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]}
    r = client.post(f"{P}/context/vision/segment", json=body)
    assert r.status_code == 400 and "cdf-version" in r.json()["error"]["message"]
    r = client.post(f"{P}/context/vision/segment", json=body, headers={"cdf-version": "20230101"})
    assert r.status_code == 400
    r = client.post(
        f"{P}/context/vision/segment", json=body, headers={"cdf-version": "20230101-beta"}
    )
    assert r.status_code == 200
    job = submit(client, body)
    r = client.get(f"{P}/context/vision/segment/{job['jobId']}")
    assert r.status_code == 400 and r.json()["error"]["code"] == 400


GOOD_POINT = {"x": 0.5, "y": 0.5, "label": 1}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"items": [], "points": [GOOD_POINT]},
        {"items": [{"fileId": 1}, {"fileId": 2}], "points": [GOOD_POINT]},
        {"items": [{"fileId": 1, "fileExternalId": "x"}], "points": [GOOD_POINT]},
        {"items": [{}], "points": [GOOD_POINT]},
        {"items": [{"fileId": "abc"}], "points": [GOOD_POINT]},
        {"items": [{"fileId": 1}]},
        {"items": [{"fileId": 1}], "points": []},
        {"items": [{"fileId": 1}], "points": [{"x": 0.5, "y": 0.5, "label": 2}]},
        {"items": [{"fileId": 1}], "points": [{"x": 1.5, "y": 0.5, "label": 1}]},
        {"items": [{"fileId": 1}], "points": [{"x": -0.1, "y": 0.5, "label": 0}]},
        {"items": [{"fileId": 1}], "points": [GOOD_POINT, GOOD_POINT]},
        {"items": [{"fileId": 1}], "points": [GOOD_POINT, {**GOOD_POINT, "label": 0}]},
        {"items": [{"fileId": 1}], "boundingBox": {"xMin": 0.5, "yMin": 0, "xMax": 0.5, "yMax": 1}},
        {"items": [{"fileId": 1}], "boundingBox": {"xMin": 0, "yMin": 0.9, "xMax": 1, "yMax": 0.1}},
        {"items": [{"fileId": 1}], "boundingBox": {"xMin": 0, "yMin": 0, "xMax": 1.2, "yMax": 1}},
        {"items": [{"fileId": 1}], "boundingBox": {"xMin": 0, "yMin": 0, "xMax": 1}},
        {"items": [{"fileId": 1}], "points": [GOOD_POINT], "colour": "red"},
        {"items": [{"fileId": 1}], "points": [GOOD_POINT], "model": "nope/1"},
        [GOOD_POINT],
    ],
)
def test_bad_requests_get_the_platform_error_shape(client: TestClient, body: Any) -> None:
    r = client.post(f"{P}/context/vision/segment", json=body, headers=BETA)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == 400 and isinstance(err["message"], str) and err["message"]


def test_invalid_json_and_unknown_job(client: TestClient) -> None:
    r = client.post(f"{P}/context/vision/segment", content=b"{nope", headers=BETA)
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    r = client.get(f"{P}/context/vision/segment/987654", headers=BETA)
    assert r.status_code == 404 and r.json()["error"]["missing"] == [{"jobId": 987654}]
    r = client.get(f"{P}/context/vision/segment/x1", headers=BETA)
    assert r.status_code == 400
    # A job is only visible in its own project.
    job = submit(client, {"items": [{"fileId": 1}], "points": [GOOD_POINT]})
    r = client.get(f"/api/v1/projects/other/context/vision/segment/{job['jobId']}", headers=BETA)
    assert r.status_code == 404


def test_api_keys_401_403_in_platform_shape(
    sam_store: ModelStore, tmp_path: Path, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(sam_store, data_dir=tmp_path, api_keys=("k1",))
    body = {"items": [{"fileId": 1}], "points": [GOOD_POINT]}
    url = f"{P}/context/vision/segment"
    r = client.post(url, json=body, headers=BETA)
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    r = client.post(url, json=body, headers={**BETA, "Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["error"]["code"] == 403
    r = client.post(url, json=body, headers={**BETA, "Authorization": "Bearer k1"})
    assert r.status_code == 200
    r = client.get(f"{url}/{r.json()['jobId']}", headers={**BETA, "api-key": "k1"})
    assert r.status_code == 200
    assert client.post(f"{P}/files", json={"name": "a.png"}).status_code == 401


def test_sync_route_base64_pixels_and_file(client: TestClient) -> None:
    data = png(seed=4)
    body = {
        "image": "data:image/png;base64," + base64.b64encode(data).decode(),
        "points": [{"x": 160, "y": 100, "label": 1}],
        "pixels": True,
    }
    r = client.post(f"{P}/context/vision/segment/sync", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["image"] == {"width": W, "height": H} and out["cached"] is False
    assert out["model"] == MODEL_ID
    vs = out["segments"][0]["polygons"][0]["vertices"]
    assert max(v["x"] for v in vs) > 1  # pixels, not fractions
    got = polygon_mask([{"x": v["x"] / W, "y": v["y"] / H} for v in vs])
    assert iou(got, expected_mask(H, W, [(160, 100, 1)], radius=RADIUS)) > 0.9
    r = client.post(f"{P}/context/vision/segment/sync", json=body)
    assert r.json()["cached"] is True
    f = upload(client, data)
    r = client.post(
        f"{P}/context/vision/segment/sync",
        json={
            "fileId": f["id"],
            "boundingBox": {"xMin": 0.1, "yMin": 0.1, "xMax": 0.3, "yMax": 0.3},
        },
    )
    assert (
        r.status_code == 200 and 0 < r.json()["segments"][0]["polygons"][0]["vertices"][0]["x"] < 1
    )
    bad = {"image": "!!!", "points": [GOOD_POINT]}
    r = client.post(f"{P}/context/vision/segment/sync", json=bad)
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    r = client.post(
        f"{P}/context/vision/segment/sync", json={"fileId": 999, "points": [GOOD_POINT]}
    )
    assert r.status_code == 400 and "not found" in r.json()["error"]["message"]


def test_second_prompt_on_the_same_file_is_5x_faster(client: TestClient) -> None:
    f = upload(client, png(seed=5))
    url = f"{P}/context/vision/segment/sync"
    warm = {"image": base64.b64encode(png(seed=6)).decode(), "points": [GOOD_POINT]}
    assert client.post(url, json={**warm, "model": "heavy/1"}).status_code == 200  # ORT warm-up
    times = []
    for x in (0.2, 0.4, 0.6, 0.8):
        body = {"fileId": f["id"], "points": [{"x": x, "y": 0.5, "label": 1}], "model": "heavy/1"}
        r = client.post(url, json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["cached"] is (x != 0.2)
        times.append(out["time"])  # measured in the server: no HTTP noise
    model = client.app.state.cvserve.engine.store.loaded("heavy/1")
    assert (model.cache.misses, model.cache.hits) == (2, 3)
    first, again = times[0], float(np.median(times[1:]))
    assert first >= 5 * again, f"first {first * 1000:.1f} ms, cached {again * 1000:.1f} ms"

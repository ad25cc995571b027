"""The same product on both engines: each API test here runs against `cvserve serve` (a
LocalEngine) and `cvserve serve --ray` on a real two-node Ray cluster (a RayEngine whose
model replicas hold the models), with the same settings (tests/support/engines.py).

What a door asks of the engine contract: the model routes (/model/add, remove, clear,
registry, /models), the model budget, /readiness, /metrics (the models-loaded gauge and the
load and eviction counters, which on Ray come from the replicas), the hosted route and
/infer, the SDK and the jobs API on PostgreSQL. A final test asks both servers the same
questions and compares the answers.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import cvserve
from tests.support.answers import strip
from tests.support.engines import BUDGET, ENGINES, KEY, PRELOAD, Served, engine_env, served_by
from tests.support.live_server import serve_subprocess, stop
from tests.support.postgres_server import PostgresServer
from tests.support.synthetic import jpeg_bytes, png_bytes, rect_image
from tests.support.synthetic_sam import MODEL_ID as SAM_ID

pytestmark = pytest.mark.timeout(600)

PHOTO = jpeg_bytes(rect_image(640, 480, (100, 80, 300, 240)), quality=95)
# Not SAM: the seven models the budget test loads one after the other.
MODELS = ["det/1", "seg/1", "pose/1", "cls/1", "mcls/1", "sem/1", "rect/1"]
PROJECT = "/api/v1/projects/engines"


@pytest.fixture(scope="module", params=ENGINES)
def served(request: pytest.FixtureRequest) -> Served:
    return served_by(request, request.param)


@pytest.fixture
def http(served: Served) -> Any:
    with httpx.Client(base_url=served.url, timeout=60, params={"api_key": KEY}) as client:
        yield client


def registry(http: httpx.Client) -> list[str]:
    r = http.get("/model/registry")
    assert r.status_code == 200, r.text
    return sorted(m["model_id"] for m in r.json()["models"])


def listed(http: httpx.Client) -> dict[str, dict[str, Any]]:
    r = http.get("/models")
    assert r.status_code == 200, r.text
    return {m["model_id"]: m for m in r.json()["models"]}


def metric(http: httpx.Client, name: str, labels: str = "") -> float:
    text = http.get("/metrics").text
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    for found in pattern.finditer(text):
        if labels in (found.group(1) or ""):
            total += float(found.group(2))
    return total


def eventually(check: Any, seconds: float = 20.0) -> Any:
    """check() until it is truthy (the Ray replicas' events reach the ingress by a poll)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def add(http: httpx.Client, model_id: str) -> list[str]:
    r = http.post("/model/add", json={"model_id": model_id, "api_key": KEY})
    assert r.status_code == 200, r.text
    return sorted(m["model_id"] for m in r.json()["models"])


def test_readiness_after_the_preload(served: Served) -> None:
    r = eventually(lambda: httpx.get(f"{served.url}/readiness").status_code == 200, 120)
    assert r, httpx.get(f"{served.url}/readiness").text
    assert httpx.get(f"{served.url}/readiness").json() == {"status": "ready"}
    with httpx.Client(base_url=served.url, params={"api_key": KEY}) as http:
        entry = listed(http)[PRELOAD]
        assert entry["loaded"] is True and entry["pinned"] is True


def test_add_remove_clear_and_what_is_loaded(served: Served, http: httpx.Client) -> None:
    assert "det/1" in add(http, "det/1")
    assert "det/1" in registry(http)
    det = listed(http)["det/1"]
    assert det["loaded"] is True and det["pinned"] is False
    assert isinstance(det["resident_bytes"], int) and det["load_seconds"] > 0
    loads = eventually(lambda: metric(http, "cvserve_model_loads_total", 'model="det/1"'))
    assert loads >= 1

    r = http.post("/model/remove", json={"model_id": "det/1", "api_key": KEY})
    assert r.status_code == 200, r.text
    assert "det/1" not in [m["model_id"] for m in r.json()["models"]]
    assert "det/1" not in registry(http)
    assert listed(http)["det/1"]["loaded"] is False

    add(http, "det/1")
    add(http, "seg/1")
    assert {"det/1", "seg/1"} <= set(registry(http))
    assert metric(http, "cvserve_models_loaded") == len(registry(http))
    r = http.post("/model/clear")
    assert r.status_code == 200, r.text
    assert r.json() == {"models": []}
    assert registry(http) == []
    assert not any(m["loaded"] for m in listed(http).values())
    assert metric(http, "cvserve_models_loaded") == 0
    # And it serves again: a request loads what it needs.
    r = http.post("/rect/1", content=PHOTO)
    assert r.status_code == 200, r.text
    assert registry(http) == ["rect/1"]
    assert metric(http, "cvserve_models_loaded") == 1


def test_the_budget_holds_in_every_model_process(served: Served, http: httpx.Client) -> None:
    http.post("/model/clear")
    evicted_before = metric(http, "cvserve_model_evictions_total")
    for model_id in MODELS:
        add(http, model_id)
    held = listed(http)
    loaded = [m for m, entry in held.items() if entry["loaded"]]
    room = BUDGET * served.model_processes
    assert 0 < len(loaded) <= room, loaded
    assert metric(http, "cvserve_models_loaded") == len(loaded)
    must_evict = len(MODELS) - room  # at least this many were unloaded to make room
    evicted = eventually(
        lambda: metric(http, "cvserve_model_evictions_total") - evicted_before >= must_evict
    )
    assert evicted, metric(http, "cvserve_model_evictions_total")
    for model_id in MODELS:  # every one still answers (loaded again as needed)
        r = http.post(f"/{model_id}", content=PHOTO)
        assert r.status_code == 200, (model_id, r.text)
    assert len([m for m, e in listed(http).items() if e["loaded"]]) <= room


def test_hosted_route_and_infer_agree(http: httpx.Client) -> None:
    b64 = base64.b64encode(PHOTO).decode()
    raw = http.post("/rect/1", content=PHOTO)
    form = http.post(
        "/rect/1", content=b64, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    multipart = http.post("/rect/1", files={"file": ("p.jpg", PHOTO, "image/jpeg")})
    answers = [strip(r.json()) for r in (raw, form, multipart)]
    assert answers[0] == answers[1] == answers[2]
    (box,) = answers[0]["predictions"]
    assert (box["x"], box["y"], box["width"], box["height"]) == (200, 160, 200, 160)
    body = {"model_id": "rect/1", "api_key": KEY, "image": {"type": "base64", "value": b64}}
    one = http.post("/infer/object_detection", json=body)
    assert one.status_code == 200, one.text
    assert strip(one.json())["predictions"] == answers[0]["predictions"]
    body["image"] = [body["image"], body["image"]]
    two = http.post("/infer/object_detection", json=body)
    assert [strip(a)["predictions"] for a in two.json()] == [answers[0]["predictions"]] * 2


def test_the_sdk(served: Served) -> None:
    with cvserve.Client(served.url, api_key=KEY, timeout=60) as client:
        result = client.model("rect/1").predict(PHOTO, confidence=50)
        (box,) = result.json()["predictions"]
        assert box["class"] == "rect" and box["x"] == 200
        ids = {m["model_id"] for m in client.models()}
        assert {"rect/1", SAM_ID} <= ids


def test_a_job_on_postgres(served: Served) -> None:
    headers = {"cdf-version": "beta", "api-key": KEY}
    image = png_bytes(rect_image(320, 240, (40, 30, 200, 150)))
    with httpx.Client(base_url=served.url, timeout=60, headers=headers) as http:
        r = http.post(f"{PROJECT}/files/upload", files={"file": ("a.png", image, "image/png")})
        assert r.status_code == 201, r.text
        body = {"items": [{"fileId": r.json()["id"]}], "points": [{"x": 0.3, "y": 0.4}]}
        r = http.post(f"{PROJECT}/context/vision/segment", json=body)
        assert r.status_code == 200, r.text
        job_id = r.json()["jobId"]
        job: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            job = http.get(f"{PROJECT}/context/vision/segment/{job_id}").json()
            if job["status"] in ("Completed", "Failed"):
                break
            time.sleep(0.1)
    assert job["status"] == "Completed", job
    assert job["items"][0]["segments"]
    # The worker's prompt went through the engine's front door: counted like any call.
    with httpx.Client(base_url=served.url, params={"api_key": KEY}) as http:
        if served.engine == "local":
            assert metric(http, "cvserve_inference_total", f'model="{SAM_ID}"') >= 1


def tour(url: str) -> dict[str, Any]:
    """The same questions, to compare two servers' answers."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=60, params={"api_key": KEY}) as http:
        http.post("/model/clear")
        out["add"] = add(http, "pose/1")
        out["registry"] = http.get("/model/registry").json()
        out["models"] = {
            m: {k: v for k, v in e.items() if k not in ("load_seconds", "resident_bytes")}
            for m, e in listed(http).items()
        }
        out["remove"] = http.post("/model/remove", json={"model_id": "pose/1"}).json()
        out["remove unknown"] = http.post("/model/remove", json={"model_id": "nope/1"}).json()
        r = http.post("/model/add", json={"model_id": "nope/1"})
        out["add unknown"] = (r.status_code, r.json())
        for model in ("pose/1", "sem/1", "mcls/1"):
            r = http.post(f"/{model}", content=PHOTO)
            out[model] = (r.status_code, strip(r.json()))
        r = http.post("/pose/1", params={"format": "image"}, content=PHOTO)
        out["format=image"] = (r.status_code, r.headers["content-type"], r.content)
        r = http.post("/sem/1", params={"confidence": "x"}, content=PHOTO)
        out["400"] = (r.status_code, r.json())
        out["clear"] = http.post("/model/clear").json()
        out["openapi"] = sorted(http.get("/openapi.json").json()["paths"])
    r = httpx.post(f"{url}/rect/1", content=PHOTO, params={"api_key": "wrong"})
    out["wrong key"] = (r.status_code, r.json())
    out["readiness"] = httpx.get(f"{url}/readiness").json()
    return out


def test_both_engines_answer_alike(local_engine_server: Served, ray_engine_server: Served) -> None:
    local, on_ray = tour(local_engine_server.url), tour(ray_engine_server.url)
    assert on_ray.keys() == local.keys()
    for name in local:
        assert on_ray[name] == local[name], name
    assert local["add"] == ["pose/1"] and local["clear"] == {"models": []}
    assert local["add unknown"][0] == 404 and local["400"][0] == 400


def temp_dir_of(data_dir: Path) -> str:
    """A `--ray local` server's Ray temp folder, from the pidfile in its data dir."""
    from cvserve.ray.launch import PIDFILE

    return (data_dir / PIDFILE).read_text().split()[1]


def test_the_colocated_ray_layout_answers_alike(
    local_engine_server: Served, engine_store: Path, postgres: PostgresServer
) -> None:
    """`--ray-layout colocated` (each replica runs the doors and the models: one hop) on a
    private Ray instance, through the ingress `--ray local` picks (Serve's HAProxy ingress
    where Ray ships it): the same answers, the deployment's view of what is loaded, and a
    tracked stream's events alike, frame for frame."""
    from cvserve.ray.launch import instance_processes
    from tests.test_streams_engines import crossing_events

    pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'cvserve[ray]'")
    env = {
        **engine_env(engine_store, "colocated", postgres.new_database()),
        "CVSERVE_RAY_JOB_REPLICAS": "1",
    }
    args = ["--ray", "local", "--ray-layout", "colocated", "--replicas", "2", "--replica-cpus", "1"]
    proc, url = serve_subprocess(engine_store, *args, env=env, timeout=180.0, new_session=True)
    try:
        # Each replica answers /readiness for itself and preloads on its own: a tour begun
        # while one still loads would see that preload land after its clear.
        ready = lambda: all(  # noqa: E731
            httpx.get(f"{url}/readiness").status_code == 200 for _ in range(12)
        )
        assert eventually(ready, 120)
        assert tour(url) == tour(local_engine_server.url)
        with httpx.Client(base_url=url, timeout=60, params={"api_key": KEY}) as http:
            for _ in range(6):  # Serve spreads them: both replicas load rect/1
                assert http.post("/rect/1", content=PHOTO).status_code == 200
            entry = listed(http)["rect/1"]
            assert entry["loaded"] is True
            assert registry(http) == ["rect/1"]
            http.post("/model/clear")
            assert registry(http) == []
        # The default ingress here (Ray ships HAProxy in the test environment): HAProxy.
        assert any(
            Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/haproxy")
            for pid in instance_processes(temp_dir_of(Path(env["CVSERVE_DATA_DIR"])))
        )
        colocated = Served("ray", url, engine_store, env["CVSERVE_DATABASE_URL"], 2, {})
        events = crossing_events(colocated)
        assert [f["frame"] for f in events] == list(range(40))
        assert events == crossing_events(local_engine_server)
    finally:
        stop(proc)

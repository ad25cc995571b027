"""Heavy load and failure behaviour: request deadlines (504, and the ONNX run is stopped),
503 + Retry-After when a model's queue is full, a slow model (loading or running) never
holds up another, graceful SIGTERM, per-key rate limits (429), keys never logged, request
ids, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cvserve.engine import LocalEngine
from cvserve.errors import TooManyRequests
from cvserve.http.app import build_state, create_app
from cvserve.http.ratelimit import RateLimiter
from cvserve.models import registry
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.settings import Settings
from tests.support.hostile_support import (
    DET_ID,
    SLOW_ID,
    LiveServer,
    add_detector,
    add_slow_detector,
    encode,
)

SLOW_S = 1.2  # seconds per inference of the slow model
SLEEPY_ID = "sleepy/1"
SLEEPY_LOAD_S = 2.5
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
IMAGE = base64.b64encode(encode("PNG", 48, 32))


@registry.family("test-sleepy")
def _sleepy_loader(model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions):
    """A family whose loading takes SLEEPY_LOAD_S (think: a huge initializer)."""
    time.sleep(SLEEPY_LOAD_S)
    registry.known_families()  # make sure the real families are registered
    return registry._FAMILIES["yolo"].load(model_id, manifest, folder, options)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robust") / "models"
    add_detector(root)
    add_slow_detector(root, SLOW_S)
    add_detector(root, SLEEPY_ID)
    manifest = Manifest.read(root / SLEEPY_ID).model_copy(update={"family": "test-sleepy"})
    manifest.write(root / SLEEPY_ID)
    return root


def make_app(models_dir: Path, **overrides: Any):  # -> FastAPI
    fields: dict[str, Any] = {
        "data_dir": models_dir.parent / "data",
        "models_dir": models_dir,
        "auto_pull": False,
        "workers": 1,
        "intra_op_threads": 1,
    }
    fields.update(overrides)
    settings = Settings(**fields)
    store = ModelStore(models_dir, RuntimeOptions(lanes=1, threads_per_lane=1))
    return create_app(settings, build_state(settings, engine=LocalEngine(settings, store)))


@pytest.fixture
def client_for(models_dir: Path) -> Iterator[Any]:
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        c = TestClient(make_app(models_dir, **overrides), raise_server_exceptions=False)
        c.__enter__()
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.__exit__(None, None, None)


async def _post_many(app: Any, paths: list[str], delay_s: float = 0.0) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:

        async def one(i: int, path: str) -> httpx.Response:
            await asyncio.sleep(i * delay_s)
            return await c.post(path, content=IMAGE, headers=FORM)

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))


def _wait_until(predicate: Any, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- deadlines ---------------------------------------------------------------------------
def test_deadline_answers_504_and_stops_the_run(client_for: Any) -> None:
    client = client_for(request_timeout_s=0.3)
    # Loaded first: on a busy machine the load alone can pass 0.3 s, and that answer is
    # another 504 ("still loading"); a load outlives its request, so this waits for it.
    client.post("/model/add", json={"model_id": SLOW_ID})
    loaded = lambda: client.get("/models").json()["models"]  # noqa: E731
    assert _wait_until(lambda: any(m["loaded"] for m in loaded() if m["model_id"] == SLOW_ID), 30)
    t0 = time.perf_counter()
    r = client.post(f"/{SLOW_ID}", content=IMAGE, headers=FORM)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 504, r.text
    assert "within 0.3 s" in r.json()["message"]
    assert r.headers["x-request-id"]
    # The answer comes at the deadline, not when the run would have ended.
    assert elapsed < SLOW_S, elapsed
    # ORT was told to terminate: the lane frees up long before the 2 s run would end.
    gate = client.app.state.cvserve.engine.admission
    assert _wait_until(lambda: not any(gate.in_flight.values()), 1.0), gate.snapshot()
    # And the next request (model loaded, lane free) fails the same way, not worse.
    assert client.post(f"/{SLOW_ID}", content=IMAGE, headers=FORM).status_code == 504
    assert client.get("/healthz").status_code == 200


def test_slow_model_within_deadline_answers(client_for: Any) -> None:
    client = client_for(request_timeout_s=30)
    r = client.post(f"/{SLOW_ID}", content=IMAGE, headers=FORM)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["class"] == "a"


# -- admission ---------------------------------------------------------------------------
def test_full_queue_answers_503_with_retry_after(models_dir: Path) -> None:
    app = make_app(models_dir, max_queue=1, request_timeout_s=60)
    # Admission limit = max_queue + workers = 2: of 6 simultaneous requests, 2 are served.
    responses = asyncio.run(_post_many(app, [f"/{SLOW_ID}"] * 6, delay_s=0.01))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503, 503, 503], statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert "busy" in r.json()["message"]
    # Once drained, the model takes requests again.
    again = asyncio.run(_post_many(app, [f"/{SLOW_ID}"]))
    assert again[0].status_code == 200
    gate = app.state.cvserve.engine.admission
    assert gate.snapshot()[SLOW_ID] == (0, 0)


def test_busy_model_does_not_hold_up_another(models_dir: Path) -> None:
    """Three slow inferences in flight on one model; the fast model answers meanwhile."""
    app = make_app(models_dir, request_timeout_s=60)

    async def scenario() -> tuple[list[httpx.Response], list[float]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            # Load both first so this measures inference, not loading.
            await c.post(f"/{DET_ID}", content=IMAGE, headers=FORM)
            slow = [
                asyncio.create_task(c.post(f"/{SLOW_ID}", content=IMAGE, headers=FORM))
                for _ in range(3)
            ]
            await asyncio.sleep(0.3)
            fast_times = []
            for _ in range(5):
                t0 = time.perf_counter()
                r = await c.post(f"/{DET_ID}", content=IMAGE, headers=FORM)
                assert r.status_code == 200
                fast_times.append(time.perf_counter() - t0)
            return await asyncio.gather(*slow), fast_times

    slow, fast_times = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in slow)
    assert max(fast_times) < 1.0, fast_times


def test_loading_one_model_never_blocks_another(models_dir: Path) -> None:
    app = make_app(models_dir, request_timeout_s=1.0)

    async def scenario() -> tuple[httpx.Response, list[float], httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            await c.post(f"/{DET_ID}", content=IMAGE, headers=FORM)
            loading = asyncio.create_task(c.post(f"/{SLEEPY_ID}", content=IMAGE, headers=FORM))
            await asyncio.sleep(0.1)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                r = await c.post(f"/{DET_ID}", content=IMAGE, headers=FORM)
                assert r.status_code == 200
                times.append(time.perf_counter() - t0)
            first = await loading
            # The load went on in the background after the 504: soon the model serves.
            await asyncio.sleep(SLEEPY_LOAD_S)
            later = await c.post(f"/{SLEEPY_ID}", content=IMAGE, headers=FORM)
            return first, times, later

    first, times, later = asyncio.run(scenario())
    assert max(times) < 0.5, times
    assert first.status_code == 504 and "still loading" in first.json()["message"], first.text
    assert later.status_code == 200, later.text


# -- rate limits -------------------------------------------------------------------------
def test_rate_limiter_refills_and_stays_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        limiter.hit("k")
    with pytest.raises(TooManyRequests) as err:
        limiter.hit("k")
    assert err.value.status == 429 and err.value.retry_after_s == 20  # 60 s / 3 per token
    limiter.hit("other")  # per key
    now[0] += 20.0
    limiter.hit("k")  # one token refilled
    with pytest.raises(TooManyRequests):
        limiter.hit("k")
    # Anonymous callers are told apart by address.
    limiter.hit(None, "10.0.0.1")
    limiter.hit(None, "10.0.0.2")
    # Callers whose bucket refilled are forgotten.
    now[0] += 3600.0
    limiter.hit("late")
    assert len(limiter) == 1
    assert RateLimiter(0).enabled is False


def test_rate_limit_answers_429_per_key(client_for: Any) -> None:
    client = client_for(api_keys=("key-one", "key-two"), rate_limit_per_minute=3)
    url = f"/{DET_ID}"
    for _ in range(3):
        assert client.post(
            url, params={"api_key": "key-one"}, content=IMAGE, headers=FORM
        ).is_success
    r = client.post(url, params={"api_key": "key-one"}, content=IMAGE, headers=FORM)
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert "rate limit" in r.json()["message"]
    # The same key through a header or the SDK's JSON body is the same caller.
    r = client.post(url, headers={"Authorization": "Bearer key-one", **FORM}, content=IMAGE)
    assert r.status_code == 429
    body = {"model_id": DET_ID, "api_key": "key-one", "image": IMAGE.decode()}
    assert client.post("/infer/object_detection", json=body).status_code == 429
    # Another key has its own allowance; a wrong key is 403, not counted.
    assert client.post(url, params={"api_key": "key-two"}, content=IMAGE, headers=FORM).is_success
    r = client.post(url, params={"api_key": "wrong"}, content=IMAGE, headers=FORM)
    assert r.status_code == 403
    assert client.get("/healthz").status_code == 200  # health is never limited


def test_non_string_key_in_json_is_403_not_500(client_for: Any) -> None:
    client = client_for(api_keys=("key-one",))
    for key in (5, ["key-one"], {"k": 1}, True):
        body = {"model_id": DET_ID, "api_key": key, "image": IMAGE.decode()}
        r = client.post("/infer/object_detection", json=body)
        assert r.status_code == 403, (key, r.text)
    # A null or empty key is no key at all: 401, as the hosted platform answers.
    for key in (None, ""):
        body = {"model_id": DET_ID, "api_key": key, "image": IMAGE.decode()}
        r = client.post("/infer/object_detection", json=body)
        assert r.status_code == 401, (key, r.text)


# -- request ids, access log, metrics -----------------------------------------------------
def test_request_ids_and_access_log(client_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = client_for(api_keys=("sekrit-key",))
    with caplog.at_level(logging.INFO, logger="cvserve.access"):
        r = client.post(
            f"/{DET_ID}",
            params={"api_key": "sekrit-key", "confidence": "50"},
            content=IMAGE,
            headers={"X-Request-ID": "trace-123", **FORM},
        )
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "trace-123"
        bad = client.get("/healthz", headers={"X-Request-ID": "bad id <with> spaces"})
        assert bad.headers["x-request-id"] != "bad id <with> spaces"
        assert len(bad.headers["x-request-id"]) == 32
        missing = client.post("/nope/1", params={"api_key": "sekrit-key"}, content=IMAGE)
        assert missing.status_code == 404 and missing.headers["x-request-id"]
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "cvserve.access"]
    first = next(line for line in lines if line["request_id"] == "trace-123")
    assert first["method"] == "POST" and first["path"] == f"/{DET_ID}"
    assert first["route"] == "/{dataset}/{version}" and first["status"] == 200
    assert first["duration_ms"] >= 0
    assert any(line["status"] == 404 and line["path"] == "/nope/1" for line in lines)
    assert "sekrit-key" not in caplog.text


def test_unhandled_error_is_500_with_request_id(models_dir: Path) -> None:
    app = make_app(models_dir)

    async def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom", headers={"X-Request-ID": "req-500"})
        assert r.status_code == 500
        assert r.headers["x-request-id"] == "req-500"
        assert r.json()["message"] == "internal server error"
        assert client.get("/healthz").status_code == 200


def test_metrics(models_dir: Path) -> None:
    app = make_app(models_dir, max_queue=0, request_timeout_s=60)
    other = make_app(models_dir)  # a second app: its own registry, no clashes
    state = app.state.cvserve
    responses = asyncio.run(_post_many(app, [f"/{DET_ID}"] * 3 + [f"/{SLOW_ID}"] * 3))
    assert sorted(r.status_code for r in responses).count(503) >= 1
    # Real job records: 2 left queued, 5 completed (a kind no worker handles).
    queue = state.jobs.queue
    for _ in range(7):
        queue.submit("metrics-test", "p", {})
    for _ in range(5):
        job = queue.claim(["metrics-test"])
        assert job is not None and queue.complete(job.id, job.attempt, {})
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/nope/1", content=IMAGE).status_code == 404
        r = client.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
    assert (
        'cvserve_http_requests_total{method="POST",route="/{dataset}/{version}",status="200"}'
        in text
    )
    assert 'status="503"' in text and 'status="404"' in text
    assert 'cvserve_inference_duration_seconds_bucket{le="0.005",model="det/1"}' in text
    assert 'cvserve_queue_wait_seconds_count{model="det/1"}' in text
    assert 'cvserve_inference_total{model="slow/1",outcome="overloaded"}' in text
    assert 'cvserve_model_queue_depth{model="slow/1"} 0.0' in text
    assert 'cvserve_model_in_flight{model="det/1"} 0.0' in text
    assert "cvserve_models_loaded 2.0" in text
    assert 'cvserve_jobs{status="Queued"} 2.0' in text
    assert 'cvserve_jobs{status="Running"} 0.0' in text
    assert (
        'cvserve_http_request_duration_seconds_bucket{le="0.005",route="/{dataset}/{version}"}'
        in text
    )
    with TestClient(other) as client:
        assert 'model="det/1"' not in client.get("/metrics").text


def test_metrics_need_the_key_when_keys_are_set(client_for: Any) -> None:
    client = client_for(api_keys=("k",))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer bad"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200


# -- a live server: SIGTERM, and keys never logged -----------------------------------------
def test_sigterm_finishes_in_flight_requests(models_dir: Path, tmp_path: Path) -> None:
    server = LiveServer(models_dir, tmp_path / "server.log", env={"CVSERVE_LOG_LEVEL": "info"})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post(f"/{SLOW_ID}", content=IMAGE, headers=FORM).status_code == 200
        results: list[httpx.Response | Exception] = []

        def call() -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=30) as http:
                    results.append(http.post(f"/{SLOW_ID}", content=IMAGE, headers=FORM))
            except Exception as e:  # recorded, asserted below
                results.append(e)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both admitted: one running, one queued
        t0 = time.perf_counter()
        server.terminate()
        for t in threads:
            t.join(30)
        # uvicorn re-raises the captured SIGTERM once it has shut down gracefully.
        assert server.proc.wait(30) in (0, -signal.SIGTERM), server.log()[-3000:]
        took = time.perf_counter() - t0
        assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), results
        # A new connection after shutdown is refused.
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/healthz", timeout=2)
        print(f"graceful shutdown with 2 slow requests in flight took {took:.2f} s")
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "Finished server process" in log, log[-3000:]


def test_keys_never_logged(models_dir: Path, tmp_path: Path) -> None:
    key, wrong = "live-secret-key-0123", "wrong-secret-key-4567"
    env = {"CVSERVE_RATE_LIMIT_PER_MINUTE": "4", "CVSERVE_LOG_LEVEL": "debug"}
    with (
        LiveServer(models_dir, tmp_path / "server.log", args=("--api-key", key), env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        statuses = [
            http.post(f"/{DET_ID}", params={"api_key": key}, content=IMAGE, headers=FORM),
            http.post(f"/{DET_ID}", params={"api_key": key}, content=b"junk!", headers=FORM),
            http.post(f"/{DET_ID}", headers={"Authorization": f"Bearer {key}"}, content=IMAGE),
            http.post(
                "/infer/object_detection",
                json={"model_id": DET_ID, "api_key": key, "image": IMAGE.decode()},
            ),
            http.post(f"/{DET_ID}", params={"api_key": key}, content=IMAGE, headers=FORM),
            http.post(f"/{DET_ID}", params={"api_key": wrong}, content=IMAGE, headers=FORM),
            http.get("/metrics", params={"api_key": key}),
            http.get("/nope/1", params={"api_key": key, "image": "http://127.0.0.1/x"}),
        ]
        codes = [r.status_code for r in statuses]
        assert codes[:6] == [200, 400, 200, 200, 429, 403], codes
        log = server.log()
    assert key not in log and wrong not in log
    assert '"path":"/det/1"' in log and '"status":429' in log, log[-2000:]
    # Every access line names its request id, also in the line's prefix.
    assert re.search(r'\[([0-9a-f]{32})\] \{"request_id":"\1"', log), log[-2000:]

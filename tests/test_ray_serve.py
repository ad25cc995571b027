"""cvserve on Ray Serve, on the session's real two-node local Ray cluster (tests/support/engines.py):
`cvserve serve --ray ADDRESS` joins it and answers like `cvserve serve` (the hosted route in
its body forms and formats, /infer for the official SDK, the SDK, the jobs API, keys and
errors); a model replica killed under load means only 200s and honest 503s, and the replica
comes back. Jobs and files live in a real PostgreSQL (the scale-out layout; the plain server
keeps SQLite, so the equality test covers both stores): a job worker killed mid-job leaves the
job to another, which completes it, and queued jobs finish after PostgreSQL restarts."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'cvserve[ray]'")

import cvserve  # noqa: E402
from tests.support.answers import strip  # noqa: E402
from tests.support.engines import KEY, Served  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402
from tests.support.postgres_server import PostgresServer  # noqa: E402
from tests.support.synthetic import jpeg_bytes, png_bytes, rect_image  # noqa: E402
from tests.support.synthetic_sam import MODEL_ID as SAM_ID  # noqa: E402

PHOTO = jpeg_bytes(rect_image(1280, 720, (300, 200, 900, 600)), quality=95)
PROJECT = "/api/v1/projects/ray"
BETA = {"cdf-version": "beta"}


@pytest.fixture(scope="module")
def store_dir(engine_store: Path) -> Path:
    return engine_store


@pytest.fixture(scope="module")
def database_url(ray_engine_server: Served) -> str:
    return ray_engine_server.database_url


@pytest.fixture(scope="module")
def ray_server(ray_engine_server: Served) -> str:
    """The session's `cvserve serve --ray` on the two-node cluster (tests/support/engines.py)."""
    return ray_engine_server.url


@pytest.fixture(scope="module")
def plain_server(store_dir: Path) -> Iterator[str]:
    with LiveServer(store_dir, api_keys=(KEY,), data_dir=store_dir.parent / "plain-data") as live:
        yield live.url


def answers(url: str) -> dict[str, Any]:
    """The same requests, in every body form and format the hosted API takes."""
    out: dict[str, Any] = {}
    b64 = base64.b64encode(PHOTO).decode()
    key = {"api_key": KEY}
    with httpx.Client(base_url=url, timeout=60) as http:
        for model in ("det/1", "seg/1", "pose/1", "cls/1", "sem/1", "rect/1"):
            r = http.post(f"/{model}", params=key, content=PHOTO)
            out[f"{model} raw"] = (r.status_code, strip(r.json()))
        form = {"content": b64, "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
        r = http.post("/rect/1", params={**key, "confidence": "50"}, **form)  # type: ignore[arg-type]
        out["base64 form"] = (r.status_code, strip(r.json()))
        r = http.post("/rect/1", params=key, files={"file": ("p.jpg", PHOTO, "image/jpeg")})
        out["multipart"] = (r.status_code, strip(r.json()))
        r = http.post("/seg/1", params={**key, "response_mask_format": "rle"}, content=PHOTO)
        out["rle"] = (r.status_code, strip(r.json()))
        r = http.post("/rect/1", params={**key, "format": "image", "stroke": "3"}, content=PHOTO)
        out["format=image"] = (r.status_code, r.headers["content-type"], r.content)
        body = {"model_id": "det/1", "api_key": KEY, "image": {"type": "base64", "value": b64}}
        r = http.post("/infer/object_detection", json=body)
        out["/infer"] = (r.status_code, strip(r.json()))
        body["image"] = [body["image"], body["image"]]  # type: ignore[assignment]
        r = http.post("/infer/object_detection", json=body)
        out["/infer list"] = (r.status_code, strip(r.json()))
        # errors: the same status and message
        out["no key"] = (lambda r: (r.status_code, r.json()))(http.post("/det/1", content=PHOTO))
        r = http.post("/nope/1", params=key, content=PHOTO)
        out["404"] = (r.status_code, r.json())
        r = http.post("/det/1", params={**key, "confidence": "x"}, content=PHOTO)
        out["400"] = (r.status_code, r.json())
        r = http.post("/det/1", params=key, content=b"\x00\x01 not an image")
        out["400 no image"] = (r.status_code, r.json())
        r = http.post("/det/1", params=key, content=b"\x00\x00\x00\x1cftypheic" + bytes(40))
        out["415"] = (r.status_code, r.json())
        r = http.post("/infer/classification", json={**body, "model_id": "det/1"})
        out["/infer wrong task"] = (r.status_code, r.json())
        out["openapi"] = sorted(http.get("/openapi.json").json()["paths"])
    with cvserve.Client(url, api_key=KEY, timeout=60) as client:
        out["SDK"] = strip(client.model("pose/1").predict(PHOTO).json())
    return out


def run_job(url: str, model: str = SAM_ID) -> tuple[dict[str, Any], list[str]]:
    headers = {**BETA, "api-key": KEY}
    image = png_bytes(rect_image(320, 240, (40, 30, 200, 150)))
    with httpx.Client(base_url=url, timeout=60, headers={"api-key": KEY}) as http:
        r = http.post(f"{PROJECT}/files/upload", files={"file": ("a.png", image, "image/png")})
        assert r.status_code == 201, r.text
        body = {"items": [{"fileId": r.json()["id"]}], "points": [{"x": 0.3, "y": 0.4}]}
        if model != SAM_ID:
            body["model"] = model
        r = http.post(f"{PROJECT}/context/vision/segment", json=body, headers=headers)
        assert r.status_code == 200, r.text
        job_id = r.json()["jobId"]
        seen: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            job = http.get(f"{PROJECT}/context/vision/segment/{job_id}", headers=headers).json()
            seen.append(job["status"])
            if job["status"] in ("Completed", "Failed"):
                return job, seen
            time.sleep(0.1)
    raise AssertionError(f"job {job_id} not done: {seen[-5:]}")


def test_ray_answers_exactly_like_plain_serve(ray_server: str, plain_server: str) -> None:
    on_ray, plain = answers(ray_server), answers(plain_server)
    assert on_ray.keys() == plain.keys()
    for name in plain:
        assert on_ray[name] == plain[name], name
    assert plain["det/1 raw"][0] == 200 and plain["no key"][0] == 401
    assert plain["404"][0] == 404 and plain["400"][0] == 400 and plain["415"][0] == 415
    assert plain["400 no image"][0] == 400
    ray_job, _ = run_job(ray_server)
    plain_job, _ = run_job(plain_server)
    assert ray_job["status"] == plain_job["status"] == "Completed"
    assert ray_job["items"][0]["segments"] == plain_job["items"][0]["segments"]
    assert ray_job["items"][0]["segments"]


def _replicas(prefix: str) -> list[tuple[str, str]]:
    """(actor name, namespace) of the Serve replicas of deployment `prefix`."""
    found = ray.util.list_named_actors(all_namespaces=True)
    return [
        (a["name"], a["namespace"])
        for a in found
        if "SERVE_REPLICA" in a["name"] and f"#{prefix}#" in a["name"]
    ]


def test_model_replica_killed_under_load(ray_server: str) -> None:
    statuses: list[int] = []
    stop_at = time.monotonic() + 12
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=ray_server, timeout=60, params={"api_key": KEY}) as http:
            while time.monotonic() < stop_at:
                r = http.post("/rect/1", content=PHOTO)
                if r.status_code == 503:
                    assert int(r.headers["retry-after"]) >= 1
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    replicas = _replicas("models")
    assert len(replicas) == 2, replicas
    name, namespace = replicas[0]
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    killed_at = len(statuses)
    for t in threads:
        t.join(timeout=60)
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) > killed_at, "requests went on being answered after the kill"
    # Serve starts a replacement: two replicas again, and every request answered.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(_replicas("models")) < 2:
        time.sleep(0.5)
    assert len(_replicas("models")) == 2
    with httpx.Client(base_url=ray_server, timeout=60, params={"api_key": KEY}) as http:
        assert all(http.post("/rect/1", content=PHOTO).status_code == 200 for _ in range(6))


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _job_row(database_url: str, job_id: int) -> tuple[str, str | None, int] | None:
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as db:
        row = db.execute(
            "SELECT status, owner, attempt FROM cvserve_jobs WHERE id = %s", (job_id,)
        ).fetchone()
    return (str(row[0]), row[1], int(row[2])) if row else None


def test_job_worker_killed_mid_job_completes_on_another(ray_server: str, database_url: str) -> None:
    assert len(_replicas("jobs")) == 2
    headers = {**BETA, "api-key": KEY}
    image = png_bytes(rect_image(320, 240, (40, 30, 200, 150)))
    with httpx.Client(base_url=ray_server, timeout=60, headers={"api-key": KEY}) as http:
        r = http.post(f"{PROJECT}/files/upload", files={"file": ("b.png", image, "image/png")})
        assert r.status_code == 201, r.text
        body = {"items": [{"fileId": r.json()["id"]}], "points": [{"x": 0.3, "y": 0.4}]}
        r = http.post(
            f"{PROJECT}/context/vision/segment",
            json={**body, "model": "slowsam/1"},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["jobId"]
        # The worker that claimed it: its process id is in the job's lease owner.
        owner = None
        deadline = time.monotonic() + 60
        while owner is None and time.monotonic() < deadline:
            row = _job_row(database_url, job_id)
            if row and row[0] == "Running" and row[1]:
                owner = row[1]
            time.sleep(0.05)
        assert owner is not None, "no worker claimed the job"
        victim = int(owner.rsplit(":", 2)[1])
        assert "ServeReplica:cvserve:jobs" in _command_line(victim), _command_line(victim)
        os.kill(victim, signal.SIGKILL)  # the job worker dies mid-job
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = http.get(f"{PROJECT}/context/vision/segment/{job_id}", headers=headers).json()
            seen.append(job["status"])
            if job["status"] in ("Completed", "Failed"):
                break
            time.sleep(0.1)
    assert job["status"] == "Completed", (job, seen[-5:])
    assert job["items"][0]["segments"]
    order = {"Queued": 0, "Running": 1, "Completed": 2, "Failed": 2}
    ranks = [order[s] for s in seen]
    assert ranks == sorted(ranks), seen  # never backwards
    row = _job_row(database_url, job_id)
    assert row is not None and row[2] >= 2  # it ran again, on another worker


def test_queued_jobs_finish_after_postgres_restarts(
    ray_server: str, postgres: PostgresServer
) -> None:
    headers = {**BETA, "api-key": KEY}
    image = png_bytes(rect_image(320, 240, (40, 30, 200, 150)))
    with httpx.Client(base_url=ray_server, timeout=60, headers={"api-key": KEY}) as http:
        r = http.post(f"{PROJECT}/files/upload", files={"file": ("c.png", image, "image/png")})
        assert r.status_code == 201, r.text
        body = {"items": [{"fileId": r.json()["id"]}], "points": [{"x": 0.3, "y": 0.4}]}
        jobs = []
        for model in ("slowsam/1", "slowsam/1", SAM_ID, SAM_ID):
            r = http.post(
                f"{PROJECT}/context/vision/segment", json={**body, "model": model}, headers=headers
            )
            assert r.status_code == 200, r.text
            jobs.append(r.json()["jobId"])
        postgres.restart()  # while they run and wait
        seen: dict[int, list[str]] = {j: [] for j in jobs}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
            s and s[-1] in ("Completed", "Failed") for s in seen.values()
        ):
            for job_id in jobs:
                r = http.get(f"{PROJECT}/context/vision/segment/{job_id}", headers=headers)
                if r.status_code == 200:
                    seen[job_id].append(r.json()["status"])
                else:  # the database is still coming back: an honest 503, nothing lost
                    assert r.status_code == 503, r.text
            time.sleep(0.2)
    assert all(s and s[-1] == "Completed" for s in seen.values()), seen

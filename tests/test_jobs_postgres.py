"""The jobs API with `database_url` set: jobs and files in a real PostgreSQL server.

- The files + segment-job tests of tests/test_segment_jobs.py run again here, unchanged,
  over an app whose storage is PostgreSQL (their `client` fixture is redefined below).
- A job worker killed mid-job: two `cvserve serve` replicas share one database; one is
  SIGKILLed while it runs a job; the other takes the job once its lease runs out and
  completes it. Nothing is lost, no status goes backwards, every polygon is right.
- PostgreSQL restarted while jobs are queued (and one runs): they all finish afterwards,
  and every poll during the restart still answers 200.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from tests.support.live_server import serve_subprocess, stop
from tests.support.postgres_server import PostgresServer
from tests.support.synthetic_sam import MODEL_ID, expected_mask, write_sam_model
from tests.test_segment_jobs import (  # the same API tests, collected here against PostgreSQL
    BETA,
    ORDER,
    RADIUS,
    H,
    P,
    W,
    iou,
    png,
    polygon_mask,
    submit,
    test_box_job_by_external_id_and_background_point,  # noqa: F401
    test_files_create_put_get_and_download,  # noqa: F401
    test_files_multipart_upload_and_errors,  # noqa: F401
    test_missing_file_fails_the_item,  # noqa: F401
    test_point_job_completes_with_the_disc,  # noqa: F401
    test_second_job_on_the_same_file_hits_the_embedding_cache,  # noqa: F401
    test_sync_route_base64_pixels_and_file,  # noqa: F401
    upload,
)

SLOW_ID = "slow/1"
CENTRES = [(60, 60), (260, 60), (160, 120), (60, 180), (260, 180)]


@pytest.fixture(scope="module")
def sam_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_sam_model(root, MODEL_ID, encoder_work=2, radius=RADIUS)
    write_sam_model(root, "heavy/1", encoder_work=48, radius=RADIUS)
    # ~0.3-1 s per prompt: slow enough to restart or kill something mid-job.
    write_sam_model(root, SLOW_ID, encoder_work=2, decoder_work=150, radius=RADIUS)
    return root


@pytest.fixture
def sam_store(sam_root: Path) -> ModelStore:
    return ModelStore(sam_root, RuntimeOptions(lanes=1, threads_per_lane=1))


@pytest.fixture
def client(
    sam_store: ModelStore,
    tmp_path: Path,
    make_client: Callable[..., TestClient],
    pg_url: str,  # noqa: F811 - fixture
) -> TestClient:
    c = make_client(sam_store, data_dir=tmp_path, job_workers=1, database_url=pg_url)
    assert c.app.state.cvserve.jobs.queue.__class__.__name__ == "PostgresQueue"  # type: ignore[attr-defined]
    return c


def point_job(x: float, y: float, file_id: int, model: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "items": [{"fileId": file_id}],
        "points": [{"x": x / W, "y": y / H, "label": 1}],
    }
    if model:
        body["model"] = model
    return body


def check_polygon(job: dict[str, Any], x: float, y: float) -> None:
    assert job["status"] == "Completed", job
    vertices = job["items"][0]["segments"][0]["polygons"][0]["vertices"]
    assert iou(polygon_mask(vertices), expected_mask(H, W, [(x, y, 1)], radius=RADIUS)) > 0.85


def poll_all(
    get: Callable[[int], dict[str, Any]], ids: list[int], before: dict[int, str], timeout: float
) -> dict[int, dict[str, Any]]:
    """Poll every job until all are done; asserts no status ever goes backwards."""
    last = dict(before)
    finals: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(finals) < len(ids):
        assert time.monotonic() < deadline, f"unfinished after {timeout} s: {last}"
        for j in ids:
            if j in finals:
                continue
            job = get(j)
            assert ORDER[job["status"]] >= ORDER[last.get(j, "Queued")], (j, last[j], job)
            last[j] = job["status"]
            if job["status"] in ("Completed", "Failed"):
                finals[j] = job
        time.sleep(0.05)
    return finals


def test_postgres_restart_while_jobs_are_queued_they_finish_afterwards(
    client: TestClient,
    postgres: PostgresServer,  # noqa: F811 - fixture
) -> None:
    ids = []
    for i, (x, y) in enumerate(CENTRES):
        f = upload(client, png(seed=i), name=f"{i}.png")
        ids.append(submit(client, point_job(x, y, f["id"], SLOW_ID))["jobId"])

    def get(j: int) -> dict[str, Any]:
        r = client.get(f"{P}/context/vision/segment/{j}", headers=BETA)
        assert r.status_code == 200, r.text  # the restart is a pause, never an error
        return dict(r.json())

    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "never saw a running job with a queue behind it"
        states = {j: get(j)["status"] for j in ids}
        if "Running" in states.values() and list(states.values()).count("Queued") >= 2:
            break
        time.sleep(0.02)
    postgres.restart()  # fast stop: every connection cut, then start again
    finals = poll_all(get, ids, states, timeout=60)
    for j, (x, y) in zip(ids, CENTRES, strict=True):
        check_polygon(finals[j], x, y)
    # Files survive too: the content comes back from the database.
    assert client.get(f"{P}/files/{1}/content").content == png(seed=0)


def _env(url: str) -> dict[str, str]:
    return {
        "CVSERVE_DATABASE_URL": url,
        "CVSERVE_JOB_LEASE_S": "1.5",
        "CVSERVE_JOB_WORKERS": "1",
        "CVSERVE_WORKERS": "1",
    }


@pytest.fixture
def replicas(
    sam_root: Path,
    pg_url: str,  # noqa: F811 - fixture
) -> Iterator[list[tuple[Any, str]]]:
    """Two `cvserve serve` processes (replicas) on one PostgreSQL database."""
    started: list[tuple[Any, str]] = []
    try:
        for _ in range(2):
            started.append(serve_subprocess(sam_root, env=_env(pg_url)))
        yield started
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                stop(proc)


def test_a_worker_killed_mid_job_another_replica_completes_it(
    replicas: list[tuple[Any, str]],
    pg_url: str,  # noqa: F811 - fixture
) -> None:
    import psycopg

    (victim, victim_url), (survivor, survivor_url) = replicas
    ids: list[int] = []
    with httpx.Client(base_url=victim_url, timeout=30) as http:
        for i, (x, y) in enumerate(CENTRES):
            r = http.post(
                f"{P}/files/upload", files={"file": (f"{i}.png", png(seed=i), "image/png")}
            )
            assert r.status_code == 201, r.text
            body = point_job(x, y, r.json()["id"], SLOW_ID)
            r = http.post(f"{P}/context/vision/segment", json=body, headers=BETA)
            assert r.status_code == 200, r.text
            ids.append(r.json()["jobId"])

    def rows() -> dict[int, tuple[str, int, str | None]]:
        with psycopg.connect(pg_url, connect_timeout=10) as conn:
            got = conn.execute("SELECT id, status, attempt, owner FROM cvserve_jobs").fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in got}

    mark = f":{victim.pid}:"
    deadline = time.monotonic() + 40
    while True:
        assert time.monotonic() < deadline, f"the victim never ran a job: {rows()}"
        # Freeze it, then look: a job it holds now is one it is in the middle of.
        os.kill(victim.pid, signal.SIGSTOP)
        state = rows()
        mine = [j for j, (s, _, owner) in state.items() if s == "Running" and mark in (owner or "")]
        if mine:
            break
        os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)  # mid-job: its lease stops being renewed
    victim.wait(10)
    before = {j: s for j, (s, _, _) in state.items()}
    (killed,) = mine

    with httpx.Client(base_url=survivor_url, timeout=30) as http:

        def get(j: int) -> dict[str, Any]:
            r = http.get(f"{P}/context/vision/segment/{j}", headers=BETA)
            assert r.status_code == 200, r.text
            return dict(r.json())

        finals = poll_all(get, ids, before, timeout=60)
    for j, (x, y) in zip(ids, CENTRES, strict=True):
        check_polygon(finals[j], x, y)
    after = rows()
    assert after[killed][1] == 2, after  # run again, once, by the survivor
    assert all(s == "Completed" for s, _, _ in after.values())
    assert all(a == 1 for j, (_, a, _) in after.items() if j != killed), after
    assert survivor.poll() is None

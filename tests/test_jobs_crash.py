"""Durability of the job queue: forward-only status, leases, stale attempts, crash recovery.

The last test runs the real server (`cvserve serve`) in a subprocess, SIGKILLs it while one
job is running and others are queued, restarts it, and checks every job completes with the
polygon its own prompt asks for.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from cvserve.jobs.db import DB_NAME, Database
from cvserve.jobs.queue import JobQueue, JobStatus, new_owner
from cvserve.jobs.workers import Outcome, WorkerPool
from tests.support.synthetic_sam import MODEL_ID, expected_mask, write_sam_model

PAYLOAD = {"items": [{"fileId": 1}], "points": []}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / DB_NAME)
    yield d
    d.close()


def status(db: Database, job_id: int) -> str:
    row = db.one("SELECT status FROM jobs WHERE id = ?", (job_id,))
    assert row is not None
    return row["status"]


# -- the queue's rules -------------------------------------------------------------------
def test_status_only_moves_forward(db: Database) -> None:
    q = JobQueue(db)
    job = q.submit("segment", "p", PAYLOAD)
    assert job.status is JobStatus.QUEUED and job.start_time is None
    assert not q.complete(job.id, 0, {})  # not claimed: nothing written
    claimed = q.claim(["segment"])
    assert claimed is not None and claimed.status is JobStatus.RUNNING and claimed.attempt == 1
    assert claimed.start_time is not None
    assert q.complete(job.id, 1, {"items": ["done"]})
    assert not q.fail(job.id, 1, "late failure")  # terminal: frozen
    for backwards in ("Queued", "Running", "Failed"):
        with pytest.raises(sqlite3.IntegrityError, match="only move forward"):
            db.execute("UPDATE jobs SET status = ? WHERE id = ?", (backwards, job.id))
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE jobs SET result = '{}' WHERE id = ?", (job.id,))
    final = q.get(job.id)
    assert final is not None and final.status is JobStatus.COMPLETED
    assert final.result == {"items": ["done"]}


def test_a_stale_attempt_cannot_overwrite_the_result(db: Database) -> None:
    q1 = JobQueue(db, lease_ms=50)
    q2 = JobQueue(db, lease_ms=60_000)
    job = q1.submit("segment", "p", PAYLOAD)
    first = q1.claim(["segment"])
    assert first is not None and first.attempt == 1
    assert q2.claim(["segment"]) is None  # leased
    time.sleep(0.08)  # the first worker "hangs" past its lease
    second = q2.claim(["segment"])
    assert second is not None and second.attempt == 2
    assert second.status is JobStatus.RUNNING and status(db, job.id) == "Running"
    assert not q1.heartbeat(job.id, 1)  # the first worker learns it lost the job
    assert q2.complete(job.id, 2, {"by": "second"})
    assert not q1.complete(job.id, 1, {"by": "first"})
    assert not q1.fail(job.id, 1, "first gave up")
    got = q2.get(job.id)
    assert got is not None and got.result == {"by": "second"} and got.error is None


def test_recover_resumes_jobs_of_dead_owners_only(db: Database) -> None:
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = {
        "dead-pid": f"{host}:{dead.pid}:abc",
        "alive-pid": f"{host}:{os.getppid()}:abc",
        "our-pid-earlier-life": f"{host}:{os.getpid()}:oldtoken",
        "other-host": f"elsewhere:{dead.pid}:abc",
    }
    q = JobQueue(db)
    ids = {}
    for name, owner in owners.items():
        job = q.submit("segment", "p", {**PAYLOAD, "name": name})
        db.execute(
            "UPDATE jobs SET status = 'Running', attempt = 1, owner = ?, lease_until = ?"
            " WHERE id = ?",
            (owner, int(time.time() * 1000) + 600_000, job.id),
        )
        ids[name] = job.id
    assert q.recover() == 2
    got = [q.claim(["segment"]) for _ in range(3)]
    claimed = {j.payload["name"]: j.attempt for j in got if j is not None}
    assert claimed == {"dead-pid": 2, "our-pid-earlier-life": 2}
    assert status(db, ids["alive-pid"]) == "Running"


def test_a_job_that_keeps_crashing_is_given_up(db: Database) -> None:
    q = JobQueue(db, lease_ms=1, max_attempts=2)
    job = q.submit("segment", "p", PAYLOAD)
    for attempt in (1, 2):
        claimed = q.claim(["segment"])
        assert claimed is not None and claimed.attempt == attempt
        time.sleep(0.005)  # its worker "dies": the lease runs out
    assert q.claim(["segment"]) is None
    final = q.get(job.id)
    assert final is not None and final.status is JobStatus.FAILED
    assert final.error is not None and "gave up after 2 attempts" in final.error


def test_graceful_stop_leaves_queued_jobs_queued(db: Database) -> None:
    release = threading.Event()
    ran: list[int] = []

    def handler(job) -> Outcome:  # noqa: ANN001
        ran.append(job.id)
        release.wait(5)
        return Outcome(result={"id": job.id})

    q = JobQueue(db, owner=new_owner())
    ids = [q.submit("segment", "p", PAYLOAD).id for _ in range(3)]
    pool = WorkerPool(q, {"segment": handler}, 1, poll_s=0.05, grace_s=0.1)
    pool.start()
    deadline = time.monotonic() + 5
    while not ran and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.stop()  # the running job outlives the grace period: handed back
    assert [status(db, i) for i in ids] == ["Running", "Queued", "Queued"]
    release.set()  # the old thread finishes: its attempt still holds the job, so it counts
    deadline = time.monotonic() + 5
    while status(db, ids[0]) != "Completed" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert status(db, ids[0]) == "Completed"
    # A new server (new owner) picks up whatever is left; all end Completed, nothing twice.
    q2 = JobQueue(db, owner=new_owner())
    pool2 = WorkerPool(q2, {"segment": handler}, 1, poll_s=0.05)
    pool2.start()
    deadline = time.monotonic() + 5
    while any(status(db, i) != "Completed" for i in ids) and time.monotonic() < deadline:
        time.sleep(0.02)
    pool2.stop()
    assert [status(db, i) for i in ids] == ["Completed"] * 3
    assert sorted(ran) == ids


# -- a real crash ------------------------------------------------------------------------
W, H = 200, 150
CENTRES = [(40, 40), (160, 40), (100, 75), (40, 110), (160, 110)]
RADIUS = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, models: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "CVSERVE_DATA_DIR": str(tmp / "data"),
        "CVSERVE_MODELS_DIR": str(models),
        "CVSERVE_HOST": "127.0.0.1",
        "CVSERVE_PORT": str(port),
        "CVSERVE_JOB_WORKERS": "1",
        "CVSERVE_WORKERS": "1",
        "CVSERVE_AUTO_PULL": "false",
    }
    cmd = [sys.executable, "-m", "cvserve.cli", "serve", "--no-pull", "--log-level", "warning"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()[-3000:]}")


def test_sigkill_while_running_then_restart_completes_every_job(tmp_path: Path) -> None:
    models = tmp_path / "models"
    # ~0.3-0.6 s per job: long enough to kill one mid-run with others queued behind it.
    write_sam_model(models, MODEL_ID, encoder_work=120, radius=RADIUS)
    log = tmp_path / "server.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1/projects/crash"
    beta = {"cdf-version": "beta"}
    proc = start_server(tmp_path, models, port, log)
    try:
        job_ids = []
        with httpx.Client(timeout=30) as http:
            for i, (x, y) in enumerate(CENTRES):
                img = np.random.default_rng(i).integers(0, 255, (H, W, 3), dtype=np.uint8)
                png = cv2.imencode(".png", img)[1].tobytes()
                r = http.post(
                    f"{base}/files/upload", files={"file": (f"{i}.png", png, "image/png")}
                )
                assert r.status_code == 201, r.text
                body = {
                    "items": [{"fileId": r.json()["id"]}],
                    "points": [{"x": x / W, "y": y / H, "label": 1}],
                }
                r = http.post(f"{base}/context/vision/segment", json=body, headers=beta)
                assert r.status_code == 200, r.text
                job_ids.append(r.json()["jobId"])
            # Kill once a job is done, one is mid-run and at least two are queued behind it.
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, "never saw a running job with a queue"
                states = [
                    http.get(f"{base}/context/vision/segment/{j}", headers=beta).json()["status"]
                    for j in job_ids
                ]
                if "Completed" in states and "Running" in states and states.count("Queued") >= 2:
                    break
                time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        before = dict(zip(job_ids, states, strict=True))
        running_at_kill = [j for j, s in before.items() if s == "Running"]

        port = free_port()
        proc = start_server(tmp_path, models, port, log)
        base = f"http://127.0.0.1:{port}/api/v1/projects/crash"
        finals: dict[int, dict] = {}
        order = {"Queued": 0, "Running": 1, "Completed": 2, "Failed": 2}
        with httpx.Client(timeout=30) as http:
            deadline = time.monotonic() + 60
            while len(finals) < len(job_ids):
                assert time.monotonic() < deadline, f"unfinished after restart: {finals.keys()}"
                for j in job_ids:
                    if j in finals:
                        continue
                    job = http.get(f"{base}/context/vision/segment/{j}", headers=beta).json()
                    assert order[job["status"]] >= order[before[j]], (j, before[j], job)
                    if job["status"] in ("Completed", "Failed"):
                        finals[j] = job
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    for j, (x, y) in zip(job_ids, CENTRES, strict=True):
        job = finals[j]
        assert job["status"] == "Completed", job
        poly = job["items"][0]["segments"][0]["polygons"][0]["vertices"]
        pts = np.array([[v["x"] * W, v["y"] * H] for v in poly])
        cx, cy = pts.mean(axis=0)
        assert abs(cx - x) < 2 and abs(cy - y) < 2, (j, (cx, cy), (x, y))
        filled = np.zeros((H, W), np.uint8)
        cv2.fillPoly(filled, [np.round(pts).astype(np.int32)], 1)
        want = expected_mask(H, W, [(x, y, 1)], radius=RADIUS)
        assert (filled.astype(bool) & want).sum() / (filled.astype(bool) | want).sum() > 0.85
    # The job killed mid-run was run again (attempt 2); the queued ones ran once.
    conn = sqlite3.connect(tmp_path / "data" / DB_NAME)
    attempts = dict(conn.execute("SELECT id, attempt FROM jobs").fetchall())
    conn.close()
    assert all(attempts[j] == 2 for j in running_at_kill), attempts
    assert all(attempts[j] == 1 for j, s in before.items() if s != "Running"), attempts

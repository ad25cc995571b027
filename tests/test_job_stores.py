"""One test suite, both storage backends: the SQLite queue + folder, and PostgreSQL.

Each test runs against `sqlite` and `postgres` (a real server, tests/support/postgres_server.py):
submit/claim/complete/fail, lease expiry -> another claim takes the job with attempt + 1
and the stale attempt's writes are refused, forward-only status, counts, recover, release,
concurrent claimers, and files create/write/read/find/duplicate externalId. PostgreSQL
only: the stores reconnect after a server restart, workers keep polling through it, and
the URL's password never reaches a log.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cvserve.jobs.files import DuplicateExternalId
from cvserve.jobs.queue import Job, JobStatus
from cvserve.jobs.stores import FilesStore, QueueStore, Storage, open_storage
from cvserve.jobs.workers import Outcome, WorkerPool
from cvserve.settings import Settings
from tests.support.postgres_server import PostgresServer

PAYLOAD = {"items": [{"fileId": 1}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]}


@dataclass
class Backend:
    """One opened backend plus the raw access a test needs to play a crashed worker."""

    name: str
    settings: Settings
    storage: Storage
    raw: Callable[[str, tuple[Any, ...]], int]  # SQL with %s marks -> rows changed
    opened: list[Storage] = field(default_factory=list)

    @property
    def queue(self) -> QueueStore:
        return self.storage.queue

    @property
    def files(self) -> FilesStore:
        return self.storage.files

    def another_queue(self, **kw: Any) -> QueueStore:
        """A second queue on the same database (another worker, another replica)."""
        other = open_storage(self.settings)
        self.opened.append(other)
        q = other.queue
        for k, v in kw.items():
            setattr(q, k, v)
        return q

    @property
    def jobs_table(self) -> str:
        return "cvserve_jobs" if self.name == "postgres" else "jobs"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        settings = Settings(data_dir=tmp_path, database_url=url)
    else:
        settings = Settings(data_dir=tmp_path)
    storage = open_storage(settings)
    if request.param == "postgres":
        from cvserve.jobs.postgres import PostgresQueue

        assert isinstance(storage.queue, PostgresQueue)
        db = storage.queue.db

        def raw(sql: str, params: tuple[Any, ...]) -> int:
            return int(db.run(lambda c: c.execute(sql, params).rowcount))
    else:
        from cvserve.jobs.queue import JobQueue

        assert isinstance(storage.queue, JobQueue)
        sdb = storage.queue.db

        def raw(sql: str, params: tuple[Any, ...]) -> int:
            return int(sdb.execute(sql.replace("%s", "?"), params).rowcount)

    b = Backend(request.param, settings, storage, raw)
    yield b
    for other in b.opened:
        other.close()
    storage.close()


def the(job: Job | None) -> Job:
    assert job is not None
    return job


# -- the queue ---------------------------------------------------------------------------
def test_implements_the_interfaces(backend: Backend) -> None:
    assert isinstance(backend.queue, QueueStore)
    assert isinstance(backend.files, FilesStore)


def test_submit_claim_complete_and_status_only_moves_forward(backend: Backend) -> None:
    q = backend.queue
    job = q.submit("segment", "p", PAYLOAD)
    assert job.status is JobStatus.QUEUED and job.attempt == 0 and job.start_time is None
    assert job.payload == PAYLOAD and job.created_time > 0
    assert the(q.get(job.id, "p")).status is JobStatus.QUEUED
    assert q.get(job.id, "other-project") is None and q.get(job.id + 1000) is None
    assert q.claim(["another-kind"]) is None
    assert not q.complete(job.id, 0, {})  # not claimed: nothing written
    claimed = the(q.claim(["segment"]))
    assert claimed.id == job.id and claimed.status is JobStatus.RUNNING
    assert claimed.attempt == 1 and claimed.owner == q.owner and claimed.start_time is not None
    assert q.claim(["segment"]) is None  # leased to us
    assert q.heartbeat(job.id, 1)
    assert q.complete(job.id, 1, {"items": ["done"]})
    assert not q.fail(job.id, 1, "late failure")  # terminal: frozen
    assert not q.heartbeat(job.id, 1)
    final = the(q.get(job.id))
    assert final.status is JobStatus.COMPLETED and final.result == {"items": ["done"]}
    assert final.error is None and final.owner is None
    for backwards in ("Queued", "Running", "Failed"):
        with pytest.raises(Exception, match="only move forward"):
            backend.raw(
                f"UPDATE {backend.jobs_table} SET status = %s WHERE id = %s", (backwards, job.id)
            )
    assert the(q.get(job.id)).status is JobStatus.COMPLETED


def test_fail_keeps_the_result_and_counts_add_up(backend: Backend) -> None:
    q = backend.queue
    ids = [q.submit("segment", "p", {**PAYLOAD, "n": i}).id for i in range(5)]
    assert q.counts() == {"Queued": 5}
    a, b = the(q.claim(["segment"])), the(q.claim(["segment"]))
    assert [a.id, b.id] == ids[:2]  # oldest first
    assert q.fail(a.id, a.attempt, "bad file", {"failedItems": [1]})
    assert q.counts() == {"Queued": 3, "Running": 1, "Failed": 1}
    assert q.complete(b.id, b.attempt, {"ok": True})
    assert q.counts() == {"Queued": 3, "Completed": 1, "Failed": 1}
    failed = the(q.get(a.id))
    assert failed.status is JobStatus.FAILED and failed.error == "bad file"
    assert failed.result == {"failedItems": [1]}


def test_lease_expiry_gives_the_job_to_another_worker_and_refuses_the_stale_one(
    backend: Backend,
) -> None:
    q1 = backend.another_queue(lease_ms=100)
    q2 = backend.another_queue(lease_ms=60_000)
    assert q1.owner != q2.owner
    job = q1.submit("segment", "p", PAYLOAD)
    first = the(q1.claim(["segment"]))
    assert first.attempt == 1
    assert q2.claim(["segment"]) is None  # leased
    time.sleep(0.25)  # the first worker "hangs" (or died) past its lease
    second = the(q2.claim(["segment"]))
    assert second.id == job.id and second.attempt == 2 and second.owner == q2.owner
    assert second.status is JobStatus.RUNNING  # never back to Queued
    assert second.start_time == first.start_time
    assert not q1.heartbeat(job.id, 1)  # the first worker learns it lost the job
    assert q2.complete(job.id, 2, {"by": "second"})
    assert not q1.complete(job.id, 1, {"by": "first"})
    assert not q1.fail(job.id, 1, "first gave up")
    got = the(q2.get(job.id))
    assert got.result == {"by": "second"} and got.error is None and got.attempt == 2


def test_a_job_that_keeps_crashing_is_given_up(backend: Backend) -> None:
    q = backend.another_queue(lease_ms=20, max_attempts=2)
    job = q.submit("segment", "p", PAYLOAD)
    for attempt in (1, 2):
        assert the(q.claim(["segment"])).attempt == attempt
        time.sleep(0.06)  # its worker "dies": the lease runs out
    assert q.claim(["segment"]) is None
    final = the(q.get(job.id))
    assert final.status is JobStatus.FAILED
    assert final.error is not None and "gave up after 2 attempts" in final.error


def test_release_hands_a_job_back_at_once(backend: Backend) -> None:
    q1 = backend.another_queue()
    q2 = backend.another_queue()
    job = q1.submit("segment", "p", PAYLOAD)
    first = the(q1.claim(["segment"]))
    assert not q2.release(job.id, first.attempt)  # not q2's to give back
    assert q1.release(job.id, first.attempt)
    second = the(q2.claim(["segment"]))
    assert second.attempt == 2 and second.status is JobStatus.RUNNING


def test_recover_resumes_jobs_of_dead_owners_only(backend: Backend) -> None:
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = {
        "dead-pid": f"{host}:{dead.pid}:abc",
        "alive-pid": f"{host}:{os.getppid()}:abc",
        "our-pid-earlier-life": f"{host}:{os.getpid()}:oldtoken",
        "other-host": f"elsewhere:{dead.pid}:abc",
    }
    q = backend.queue
    ids = {}
    for name, owner in owners.items():
        job = q.submit("segment", "p", {**PAYLOAD, "name": name})
        backend.raw(
            f"UPDATE {backend.jobs_table} SET status = 'Running', attempt = 1, owner = %s,"
            " lease_until = %s WHERE id = %s",
            (owner, int(time.time() * 1000) + 600_000, job.id),
        )
        ids[name] = job.id
    assert q.recover() == 2
    got = [q.claim(["segment"]) for _ in range(3)]
    claimed = {j.payload["name"]: j.attempt for j in got if j is not None}
    assert claimed == {"dead-pid": 2, "our-pid-earlier-life": 2}
    assert the(q.get(ids["alive-pid"])).status is JobStatus.RUNNING
    assert the(q.get(ids["other-host"])).owner == owners["other-host"]


def test_concurrent_claimers_never_share_a_job(backend: Backend) -> None:
    queues = [backend.another_queue() for _ in range(3)]
    n = 30
    ids = {backend.queue.submit("segment", "p", {"n": i}).id for i in range(n)}
    taken: list[tuple[int, str]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(q: QueueStore) -> None:
        try:
            while (job := q.claim(["segment"])) is not None:
                with lock:
                    taken.append((job.id, q.owner))
                assert q.complete(job.id, job.attempt, {"by": q.owner})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=claimer, args=(q,)) for q in queues for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(i for i, _ in taken) == sorted(ids)  # each exactly once
    assert backend.queue.counts() == {"Completed": n}
    for job_id, owner in taken:
        job = the(backend.queue.get(job_id))
        assert job.attempt == 1 and job.result == {"by": owner}


def test_a_worker_pool_runs_every_job(backend: Backend) -> None:
    q = backend.queue
    ids = [q.submit("segment", "p", {"n": i}).id for i in range(4)]

    def handler(job: Job) -> Outcome:
        return Outcome(result={"n": job.payload["n"]})

    pool = WorkerPool(q, {"segment": handler}, 2, poll_s=0.05)
    pool.start()
    try:
        wait_for(lambda: q.counts() == {"Completed": 4}, 20)
    finally:
        pool.stop()
    assert [the(q.get(i)).result for i in ids] == [{"n": i} for i in range(4)]


# -- files -------------------------------------------------------------------------------
def test_files_create_write_read_find_and_duplicates(backend: Backend) -> None:
    f = backend.files
    meta = f.create("p", "cat.png", "image/png", "cat")
    assert meta.id >= 1 and not meta.uploaded and meta.size is None and meta.sha256 is None
    assert meta.external_id == "cat" and meta.created_time == meta.last_updated_time
    with pytest.raises(FileNotFoundError):
        f.read(meta)  # no content yet
    data = bytes(range(256)) * 1000 + b"\x00"
    written = f.write(meta, data)
    assert written.uploaded and written.size == len(data) and written.uploaded_time is not None
    assert f.read(written) == data
    assert f.get("p", meta.id) == written
    assert f.find("p", file_id=meta.id) == written
    assert f.find("p", external_id="cat") == written == f.by_external_id("p", "cat")
    assert f.get("other", meta.id) is None and f.find("other", external_id="cat") is None
    assert f.find("p") is None
    with pytest.raises(DuplicateExternalId) as e:
        f.create("p", "again.png", "image/png", "cat")
    assert e.value.status == 409
    elsewhere = f.create("other", "cat.png", "image/png", "cat")  # unique per project only
    assert elsewhere.id != meta.id
    a = f.create("p", "a.png", "image/png")  # no externalId: never a duplicate
    b = f.create("p", "b.png", "image/png")
    assert a.id != b.id and a.external_id is None
    again = f.write(written, b"new content")  # a re-upload changes the hash (cache key)
    assert f.read(again) == b"new content" and again.sha256 != written.sha256
    assert again.cache_key != written.cache_key


# -- PostgreSQL only ---------------------------------------------------------------------
def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not true after {timeout} s"
        time.sleep(0.02)


def test_postgres_restart_the_stores_reconnect(
    postgres: PostgresServer,  # noqa: F811 - fixture
    pg_url: str,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    storage = open_storage(Settings(data_dir=tmp_path, database_url=pg_url))
    try:
        q, f = storage.queue, storage.files
        job = q.submit("segment", "p", PAYLOAD)
        meta = f.write(f.create("p", "a.png", "image/png", "a"), b"bytes")
        postgres.restart()  # every open connection is cut
        assert the(q.get(job.id)).status is JobStatus.QUEUED
        assert f.read(meta) == b"bytes"
        claimed = the(q.claim(["segment"]))
        postgres.restart()
        assert q.complete(claimed.id, claimed.attempt, {"ok": 1})
        assert q.counts() == {"Completed": 1}
        from cvserve.jobs.postgres import PostgresQueue

        assert isinstance(q, PostgresQueue) and q.db.reconnects >= 2
    finally:
        storage.close()


def test_postgres_down_for_a_while_workers_keep_polling_and_finish_queued_jobs(
    postgres: PostgresServer,  # noqa: F811 - fixture
    pg_url: str,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    from cvserve.jobs.postgres import DatabaseUnavailable, PostgresQueue

    storage = open_storage(Settings(data_dir=tmp_path, database_url=pg_url))
    q = storage.queue
    assert isinstance(q, PostgresQueue)
    q.db.retries = 2  # give up quickly while the server is down: the workers must survive
    ran: list[int] = []

    def handler(job: Job) -> Outcome:
        ran.append(job.id)
        return Outcome(result={"n": job.payload["n"]})

    ids = [q.submit("segment", "p", {"n": i}).id for i in range(3)]
    pool = WorkerPool(q, {"segment": handler}, 2, poll_s=0.05)
    try:
        postgres.stop_server()
        pool.start()  # recover() and every claim meet a dead server: logged, polled again
        time.sleep(1.0)
        with pytest.raises(DatabaseUnavailable, match="unavailable"):
            q.counts()
        assert pool.running and all(t.is_alive() for t in pool._threads) and not ran
        postgres.start()
        wait_for(lambda: q.counts() == {"Completed": 3}, 30)
        assert sorted(ran) == ids  # each ran once
    finally:
        if not postgres.started:
            postgres.start()
        pool.stop()
        storage.close()


def test_the_password_never_reaches_a_log_or_a_repr(
    pg_url: str,  # noqa: F811 - fixture
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cvserve.jobs.postgres import redact_url

    secret = "s3cr3t-pw"
    url = pg_url.replace("cvserve@", f"cvserve:{secret}@")  # trust auth: accepted, unused
    settings = Settings(data_dir=tmp_path, database_url=url)
    assert secret not in repr(settings) and secret not in str(settings)
    with caplog.at_level(logging.DEBUG, logger="cvserve"):
        storage = open_storage(settings)
        storage.close()
    assert "PostgreSQL postgresql://cvserve:***@127.0.0.1" in caplog.text
    assert secret not in caplog.text and secret not in storage.where
    assert (
        redact_url("postgresql://u:pw@h/db?password=pw2") == "postgresql://u:***@h/db?password=***"
    )
    assert redact_url("host=h password=pw user=u") == "host=h password=*** user=u"


def test_the_plain_install_never_imports_psycopg(tmp_path: Path) -> None:
    code = (
        "import sys; from cvserve.settings import Settings; from cvserve.http.app import create_app;"
        "from cvserve.jobs.stores import open_storage;"
        f"s = open_storage(Settings(data_dir={str(tmp_path)!r})); s.close();"
        "assert 'psycopg' not in sys.modules, 'psycopg imported'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_database_url_and_lease_settings_env_and_flag() -> None:
    import typer.main

    from cvserve.cli import app

    s = Settings.from_env(
        {"CVSERVE_DATABASE_URL": "postgresql://u:pw@h/db", "CVSERVE_JOB_LEASE_S": "2.5"}
    )
    assert s.database_url == "postgresql://u:pw@h/db" and s.job_lease_s == 2.5
    assert Settings().database_url is None and Settings().job_lease_s == 60.0
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    (flag,) = [p for p in serve.params if "--database-url" in p.opts]
    assert flag.envvar == "CVSERVE_DATABASE_URL" and flag.default is None

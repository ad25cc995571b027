"""Job and file lifecycle at the store level, on both backends (SQLite + folder, PostgreSQL)
through test_job_stores.py's parametrized `backend` fixture: listing newest first in pages,
the active jobs, purging old finished jobs, deleting files (metadata and bytes), the expired
files, a file needed by an active job refused (`FileInUse`), and one retention sweep removing
old finished jobs and old unneeded files and only those, within its bound."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cvserve.jobs.files import FileMeta
from cvserve.jobs.lifecycle import FileInUse, Sweeper, delete_files, sweep_interval_s
from cvserve.jobs.queue import JobStatus
from cvserve.settings import Settings
from tests.test_job_stores import Backend, backend, the  # noqa: F401 - the fixture

HOUR_S = 3600.0


def job_on(b: Backend, file_id: int | None = None, project: str = "p", **ref: str) -> int:
    item = {"fileId": file_id} if file_id is not None else dict(ref)
    return b.queue.submit("segment", project, {"items": [item], "points": []}).id


def finish(b: Backend, job_id: int, ok: bool = True) -> None:
    job = the(b.queue.claim(["segment"]))
    assert job.id == job_id, "claim the oldest first: finish jobs in submission order"
    if ok:
        assert b.queue.complete(job.id, job.attempt, {"items": []})
    else:
        assert b.queue.fail(job.id, job.attempt, "bad", {"failedItems": []})


def stored(b: Backend, name: str, project: str = "p", ext: str | None = None) -> FileMeta:
    return b.files.write(
        b.files.create(project, name, "image/png", ext), b"content " + name.encode()
    )


def test_list_jobs_newest_first_in_pages_each_once(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    q = backend.queue
    mine = [job_on(backend, i + 1) for i in range(7)]
    job_on(backend, 1, project="other")
    q.submit("another-kind", "p", {"items": []})
    seen: list[int] = []
    before: int | None = None
    while True:
        page = q.list_jobs("segment", "p", 3, before)
        seen += [j.id for j in page]
        if len(page) < 3:
            break
        before = page[-1].id
    assert seen == sorted(mine, reverse=True)
    assert q.list_jobs("segment", "p", 100, min(mine)) == []
    assert [j.id for j in q.list_jobs("segment", "nobody", 10)] == []


def test_active_jobs_are_the_queued_and_running_ones(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    a, b, c = (job_on(backend, i) for i in (1, 2, 3))
    d = job_on(backend, 4, project="other")
    finish(backend, a)
    running = the(backend.queue.claim(["segment"]))
    assert running.id == b
    assert [j.id for j in backend.queue.active_jobs("p")] == [b, c]
    assert [j.id for j in backend.queue.active_jobs()] == [b, c, d]
    statuses = {j.id: j.status for j in backend.queue.active_jobs()}
    assert statuses[b] is JobStatus.RUNNING and statuses[c] is JobStatus.QUEUED


def test_purge_finished_removes_old_finished_jobs_only_within_its_limit(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    q = backend.queue
    done = [job_on(backend, i) for i in range(3)]
    for i, job_id in enumerate(done):
        finish(backend, job_id, ok=i != 1)  # Completed, Failed, Completed
    running, queued = job_on(backend, 10), job_on(backend, 11)
    assert the(q.claim(["segment"])).id == running
    assert q.purge_finished(60_000, 100) == 0  # none finished a minute ago
    time.sleep(0.05)
    assert q.purge_finished(10, 2) == 2  # bounded
    assert q.purge_finished(10, 100) == 1
    assert all(q.get(i) is None for i in done)
    assert the(q.get(running)).status is JobStatus.RUNNING
    assert the(q.get(queued)).status is JobStatus.QUEUED
    assert q.counts() == {"Running": 1, "Queued": 1}


def test_files_delete_metadata_and_bytes_and_list_the_expired(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    f = backend.files
    a, b = stored(backend, "a.png", ext="a"), stored(backend, "b.png")
    other = stored(backend, "o.png", project="other")
    assert not f.delete("other", a.id)  # another project's id: not found there
    assert f.delete("p", a.id)
    assert f.get("p", a.id) is None and f.by_external_id("p", "a") is None
    with pytest.raises(FileNotFoundError):
        f.read(a)
    if backend.name == "sqlite":
        assert not (backend.settings.data_dir / "files" / str(a.id)).exists()
        assert (backend.settings.data_dir / "files" / str(b.id)).exists()
        assert (f.free_bytes() or 0) > 0
    else:
        assert f.free_bytes() is None  # the bytes live on the database's disk
    assert not f.delete("p", a.id)  # already gone
    assert f.read(b).startswith(b"content")
    assert f.create("p", "again.png", "image/png", "a").external_id == "a"  # externalId free
    assert f.expired(60_000, 10) == []
    time.sleep(0.05)
    fresh = stored(backend, "fresh.png")
    old = f.expired(30, 10)
    assert b.id in [m.id for m in old] and other.id in [m.id for m in old]
    assert fresh.id not in [m.id for m in old]
    first = f.expired(30, 1)
    assert len(first) == 1 and [m.id for m in f.expired(30, 10, first[0].id)] == [
        m.id for m in old[1:]
    ]


def test_a_file_an_active_job_needs_is_never_deleted(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    q, f = backend.queue, backend.files
    a, b, c = stored(backend, "a.png"), stored(backend, "b.png"), stored(backend, "c.png", ext="c")
    ja = job_on(backend, a.id)
    jb = job_on(backend, b.id)
    jc = job_on(backend, fileExternalId="c")  # by externalId only
    with pytest.raises(FileInUse) as e:
        delete_files(q, f, "p", [a, b, c])
    assert e.value.status == 409
    assert [(x["id"], x["jobIds"]) for x in e.value.busy] == [
        (a.id, [ja]),
        (b.id, [jb]),
        (c.id, [jc]),
    ]
    assert f"job(s) {ja}" in e.value.message
    assert all(f.get("p", m.id) is not None for m in (a, b, c))  # all or nothing
    finish(backend, ja)
    running = the(q.claim(["segment"]))  # jb: Running still protects its file
    assert running.id == jb
    assert delete_files(q, f, "p", [a]) == 1 and f.get("p", a.id) is None
    with pytest.raises(FileInUse):
        delete_files(q, f, "p", [b])
    assert q.complete(jb, running.attempt, {})
    finish(backend, jc, ok=False)
    assert delete_files(q, f, "p", [b, c]) == 2
    assert f.get("p", b.id) is None and f.get("p", c.id) is None


def test_one_sweep_removes_old_finished_jobs_and_old_unneeded_files_only(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    q, f = backend.queue, backend.files
    old_used, old_free, old_done = (stored(backend, n) for n in ("u.png", "f.png", "d.png"))
    j_done = job_on(backend, old_done.id)
    finish(backend, j_done)
    j_running = job_on(backend, old_used.id)
    assert the(q.claim(["segment"])).id == j_running  # Running protects its file too
    time.sleep(0.3)
    new_file = stored(backend, "new.png")
    j_new = job_on(backend, new_file.id)
    finish(backend, j_new)
    sweeper = Sweeper(q, f, job_retention_hours=0.2 / HOUR_S, file_retention_hours=0.2 / HOUR_S)
    swept = sweeper.sweep()
    assert (swept.jobs, swept.files, swept.more) == (1, 2, False)
    assert q.get(j_done) is None and the(q.get(j_new)).status is JobStatus.COMPLETED
    assert the(q.get(j_running)).status is JobStatus.RUNNING
    assert f.get("p", old_free.id) is None and f.get("p", old_done.id) is None
    assert f.get("p", old_used.id) is not None and f.get("p", new_file.id) is not None
    assert (sweeper.removed_jobs, sweeper.removed_files) == (1, 2)
    assert sweeper.sweep() == type(swept)(0, 0, False)


def test_a_sweep_is_bounded_and_says_when_more_is_waiting(
    backend: Backend,  # noqa: F811 - the fixture
) -> None:
    q, f = backend.queue, backend.files
    for i in range(5):
        stored(backend, f"{i}.png")
        finish(backend, job_on(backend, 1000 + i))
    time.sleep(0.1)
    sweeper = Sweeper(
        q, f, job_retention_hours=0.05 / HOUR_S, file_retention_hours=0.05 / HOUR_S, batch=2
    )
    first = sweeper.sweep()
    assert (first.jobs, first.files, first.more) == (2, 2, True)
    while sweeper.sweep().more:
        pass
    assert (sweeper.removed_jobs, sweeper.removed_files) == (5, 5)
    assert q.counts() == {} and f.expired(0, 10) == []


def test_the_sweep_interval_and_the_settings() -> None:
    assert sweep_interval_s(0, 0) == 300.0
    assert sweep_interval_s(24, 0) == 300.0  # at most 5 minutes
    assert sweep_interval_s(0.5, 0) == 180.0  # a tenth of the smaller retention
    assert sweep_interval_s(0.0005, 2) == pytest.approx(0.18)
    assert sweep_interval_s(1e-9) == 0.05
    s = Settings()
    assert (s.job_retention_hours, s.file_retention_hours, s.min_free_disk_mb) == (0, 0, 100)
    env = Settings.from_env(
        {
            "CVSERVE_JOB_RETENTION_HOURS": "72",
            "CVSERVE_FILE_RETENTION_HOURS": "0.5",
            "CVSERVE_MIN_FREE_DISK_MB": "2048",
        }
    )
    assert (env.job_retention_hours, env.file_retention_hours, env.min_free_disk_mb) == (
        72,
        0.5,
        2048,
    )
    with pytest.raises(ValueError):
        Settings(job_retention_hours=-1)


def test_the_serve_flags(tmp_path: Path) -> None:
    import typer.main

    from cvserve.cli import app

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    flags = {p.opts[0]: p for p in serve.params if p.opts}
    for flag, field in (
        ("--job-retention-hours", "job_retention_hours"),
        ("--file-retention-hours", "file_retention_hours"),
        ("--min-free-disk-mb", "min_free_disk_mb"),
    ):
        assert flags[flag].envvar == Settings.env_name(field)

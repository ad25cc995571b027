"""A durable job queue on SQLite: submit, claim with a lease, heartbeat, finish.

Status only moves forward (Queued -> Running -> Completed | Failed), enforced twice: every
UPDATE is conditional on the status it expects, and a trigger refuses anything else.

Never losing a job: a claim gives the worker a lease (`owner`, `lease_until`) and bumps
`attempt`. A job whose lease ran out (its worker died) is claimable again, staying Running
as the client sees it. At start-up, `recover()` expires at once the leases of owners that
are known dead (a previous process on this host), so a restart after a crash resumes
straight away instead of waiting for the lease. Results are written with
`WHERE attempt = <the claim's attempt>`, so a stale worker that comes back late cannot
overwrite what a newer attempt wrote.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cvserve.jobs.db import Database, now_ms
from cvserve.processes import pid_alive

DEFAULT_LEASE_MS = 60_000
DEFAULT_MAX_ATTEMPTS = 5


class JobStatus(str, Enum):
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"

    @property
    def done(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    project: str
    status: JobStatus
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_time: int
    start_time: int | None
    status_time: int
    attempt: int
    owner: str | None


def _job(row: Any) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        project=row["project"],
        status=JobStatus(row["status"]),
        payload=json.loads(row["payload"]),
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        created_time=row["created_time"],
        start_time=row["start_time"],
        status_time=row["status_time"],
        attempt=row["attempt"],
        owner=row["owner"],
    )


def new_owner() -> str:
    """host:pid:token. The token tells this process from an earlier one with the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str | None, me: str) -> bool:
    """True only when certain; otherwise the lease's expiry decides."""
    if not owner:
        return True
    try:
        host, pid_s, token = owner.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    my_host, my_pid, my_token = me.rsplit(":", 2)
    if host != my_host:
        return False
    if pid == int(my_pid):
        return token != my_token  # our pid, another token: an earlier life of this pid
    return not pid_alive(pid)


class JobQueue:
    def __init__(
        self,
        db: Database,
        *,
        lease_ms: int = DEFAULT_LEASE_MS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        owner: str | None = None,
    ) -> None:
        self.db = db
        self.lease_ms = lease_ms
        self.max_attempts = max_attempts
        self.owner = owner or new_owner()

    # -- clients -------------------------------------------------------------------------
    def submit(self, kind: str, project: str, payload: dict[str, Any]) -> Job:
        """Insert a Queued job; once this returns, the job is on disk (fsynced)."""
        t = now_ms()
        with self.db.transaction() as c:
            cur = c.execute(
                "INSERT INTO jobs (kind, project, status, payload, created_time, status_time)"
                " VALUES (?, ?, 'Queued', ?, ?, ?)",
                (kind, project, json.dumps(payload), t, t),
            )
            job_id = cur.lastrowid
        assert job_id is not None  # set by the INSERT above
        job = self.get(int(job_id))
        assert job is not None
        return job

    def get(self, job_id: int, project: str | None = None) -> Job | None:
        row = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None or (project is not None and row["project"] != project):
            return None
        return _job(row)

    def counts(self) -> dict[str, int]:
        rows = self.db.all("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    def list_jobs(
        self, kind: str, project: str, limit: int, before_id: int | None = None
    ) -> list[Job]:
        """Up to `limit` jobs of a project, newest (highest id) first, ids below `before_id`."""
        rows = self.db.all(
            "SELECT * FROM jobs WHERE kind = ? AND project = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (kind, project, before_id if before_id is not None else 2**63 - 1, limit),
        )
        return [_job(r) for r in rows]

    def active_jobs(self, project: str | None = None) -> list[Job]:
        """Every Queued or Running job (of one project, or all), oldest first."""
        rows = self.db.all(
            "SELECT * FROM jobs WHERE status IN ('Queued', 'Running')"
            " AND (? IS NULL OR project = ?) ORDER BY id",
            (project, project),
        )
        return [_job(r) for r in rows]

    def purge_finished(self, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` Completed/Failed jobs finished over `older_than_ms` ago."""
        cur = self.db.execute(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs"
            " WHERE status IN ('Completed', 'Failed') AND status_time < ? ORDER BY id LIMIT ?)",
            (now_ms() - older_than_ms, limit),
        )
        return int(cur.rowcount)

    # -- workers -------------------------------------------------------------------------
    def recover(self) -> int:
        """Expire the leases of Running jobs whose owner is certainly gone; returns how many."""
        n = 0
        for row in self.db.all("SELECT id, owner FROM jobs WHERE status = 'Running'"):
            if owner_is_dead(row["owner"], self.owner):
                cur = self.db.execute(
                    "UPDATE jobs SET lease_until = 0 WHERE id = ? AND status = 'Running'"
                    " AND owner IS ?",
                    (row["id"], row["owner"]),
                )
                n += cur.rowcount
        return n

    def claim(self, kinds: Iterable[str]) -> Job | None:
        """The oldest Queued job, or a Running one whose lease ran out, now leased to us."""
        kinds = list(kinds)
        marks = ",".join("?" * len(kinds))
        while True:
            t = now_ms()
            with self.db.transaction() as c:
                row = c.execute(
                    f"SELECT id, status, attempt FROM jobs WHERE kind IN ({marks}) AND"
                    " (status = 'Queued' OR (status = 'Running' AND lease_until < ?))"
                    " ORDER BY id LIMIT 1",
                    (*kinds, t),
                ).fetchone()
                if row is None:
                    return None
                if row["attempt"] >= self.max_attempts:
                    # A job that keeps killing its worker must not crash-loop the server.
                    c.execute(
                        "UPDATE jobs SET status = 'Failed', error = ?, status_time = ?,"
                        " owner = NULL, lease_until = NULL"
                        " WHERE id = ? AND status = ? AND attempt = ?",
                        (
                            f"gave up after {row['attempt']} attempts: the worker stopped"
                            " every time while running this job",
                            t,
                            row["id"],
                            row["status"],
                            row["attempt"],
                        ),
                    )
                    continue
                cur = c.execute(
                    "UPDATE jobs SET status = 'Running', attempt = attempt + 1, owner = ?,"
                    " lease_until = ?, start_time = COALESCE(start_time, ?),"
                    " status_time = CASE WHEN status = 'Queued' THEN ? ELSE status_time END"
                    " WHERE id = ? AND attempt = ? AND"
                    " (status = 'Queued' OR (status = 'Running' AND lease_until < ?))",
                    (self.owner, t + self.lease_ms, t, t, row["id"], row["attempt"], t),
                )
                if cur.rowcount != 1:
                    continue
                claimed = c.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
            return _job(claimed)

    def heartbeat(self, job_id: int, attempt: int) -> bool:
        """Extend our lease; False when the job is no longer ours (finished or re-claimed)."""
        cur = self.db.execute(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'Running'"
            " AND attempt = ? AND owner = ?",
            (now_ms() + self.lease_ms, job_id, attempt, self.owner),
        )
        return cur.rowcount == 1

    def complete(self, job_id: int, attempt: int, result: dict[str, Any]) -> bool:
        return self._finish(job_id, attempt, JobStatus.COMPLETED, result, None)

    def fail(
        self, job_id: int, attempt: int, error: str, result: dict[str, Any] | None = None
    ) -> bool:
        return self._finish(job_id, attempt, JobStatus.FAILED, result, error)

    def release(self, job_id: int, attempt: int) -> bool:
        """Give a job back unfinished (graceful shutdown): claimable at once, still Running."""
        cur = self.db.execute(
            "UPDATE jobs SET lease_until = 0 WHERE id = ? AND status = 'Running'"
            " AND attempt = ? AND owner = ?",
            (job_id, attempt, self.owner),
        )
        return cur.rowcount == 1

    def _finish(
        self,
        job_id: int,
        attempt: int,
        status: JobStatus,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> bool:
        """Write the outcome only if this attempt still holds the job; False: discarded."""
        with self.db.transaction() as c:
            cur = c.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, status_time = ?,"
                " owner = NULL, lease_until = NULL"
                " WHERE id = ? AND status = 'Running' AND attempt = ?",
                (
                    status.value,
                    json.dumps(result) if result is not None else None,
                    error,
                    now_ms(),
                    job_id,
                    attempt,
                ),
            )
            return cur.rowcount == 1

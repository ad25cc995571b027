"""The job queue and the file store in PostgreSQL, shared by every replica of a cluster.

Same rules as the SQLite pair (`cvserve.jobs.queue`, `cvserve.jobs.files`): status only
moves forward (conditional UPDATEs, and a trigger refusing anything else), a claim takes a
lease and bumps `attempt`, a job whose lease ran out is claimable again, and only the
attempt that still holds a job may write its outcome. Claims use `FOR UPDATE SKIP LOCKED`,
so workers on many machines never wait on each other nor take the same job. Lease times
come from the database's clock, one clock for every machine. File metadata and bytes
(`bytea`) live in the database too: nothing is on a node's disk.

The queue is here; the schema and the connection pool (bounded retries on a broken
connection) are in `cvserve.jobs.pg_database`, the file store in `cvserve.jobs.pg_files`;
this module re-exports them. psycopg 3 is needed: `pip install 'cvserve[postgres]'`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cvserve.jobs.pg_database import JOB_COLUMNS as _JOB_COLUMNS
from cvserve.jobs.pg_database import (
    NOW_MS,
    DatabaseUnavailable,
    PostgresDatabase,
    redact_url,
)
from cvserve.jobs.pg_files import PostgresFileStore
from cvserve.jobs.queue import (
    DEFAULT_LEASE_MS,
    DEFAULT_MAX_ATTEMPTS,
    Job,
    JobStatus,
    _job,
    new_owner,
    owner_is_dead,
)

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DatabaseUnavailable",
    "PostgresDatabase",
    "PostgresFileStore",
    "PostgresQueue",
    "redact_url",
]


# -- the queue ---------------------------------------------------------------------------
class PostgresQueue:
    """`QueueStore` on PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        db: PostgresDatabase,
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
        """Insert a Queued job; once this returns, the job is committed."""
        text = json.dumps(payload)

        def go(c: psycopg.Connection[Any]) -> Any:
            return c.execute(
                "INSERT INTO cvserve_jobs (kind, project, status, payload, created_time,"
                f" status_time) VALUES (%s, %s, 'Queued', %s, {NOW_MS}, {NOW_MS})"
                f" RETURNING {_JOB_COLUMNS}",
                (kind, project, text),
            ).fetchone()

        return _job(self.db.run(go))

    def get(self, job_id: int, project: str | None = None) -> Job | None:
        row = self.db.run(
            lambda c: c.execute(
                f"SELECT {_JOB_COLUMNS} FROM cvserve_jobs WHERE id = %s", (job_id,)
            ).fetchone()
        )
        if row is None or (project is not None and row["project"] != project):
            return None
        return _job(row)

    def counts(self) -> dict[str, int]:
        rows = self.db.run(
            lambda c: c.execute(
                "SELECT status, COUNT(*) AS n FROM cvserve_jobs GROUP BY status"
            ).fetchall()
        )
        return {r["status"]: int(r["n"]) for r in rows}

    def list_jobs(
        self, kind: str, project: str, limit: int, before_id: int | None = None
    ) -> list[Job]:
        """Up to `limit` jobs of a project, newest (highest id) first, ids below `before_id`."""
        rows = self.db.run(
            lambda c: c.execute(
                f"SELECT {_JOB_COLUMNS} FROM cvserve_jobs WHERE kind = %s AND project = %s"
                " AND id < %s ORDER BY id DESC LIMIT %s",
                (kind, project, before_id if before_id is not None else 2**63 - 1, limit),
            ).fetchall()
        )
        return [_job(r) for r in rows]

    def active_jobs(self, project: str | None = None) -> list[Job]:
        """Every Queued or Running job (of one project, or all), oldest first."""
        rows = self.db.run(
            lambda c: c.execute(
                f"SELECT {_JOB_COLUMNS} FROM cvserve_jobs WHERE status IN ('Queued', 'Running')"
                " AND (%s::text IS NULL OR project = %s) ORDER BY id",
                (project, project),
            ).fetchall()
        )
        return [_job(r) for r in rows]

    def purge_finished(self, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` Completed/Failed jobs finished over `older_than_ms` ago
        (on the database's clock)."""
        return int(
            self.db.run(
                lambda c: (
                    c.execute(
                        "DELETE FROM cvserve_jobs WHERE id IN (SELECT id FROM cvserve_jobs"
                        " WHERE status IN ('Completed', 'Failed')"
                        f" AND status_time < {NOW_MS} - %s ORDER BY id LIMIT %s)",
                        (older_than_ms, limit),
                    ).rowcount
                )
            )
        )

    # -- workers -------------------------------------------------------------------------
    def recover(self) -> int:
        """Expire the leases of Running jobs whose owner is certainly gone; returns how many.

        Certain means: on this host, and its process is gone. Owners on other machines are
        left to their lease's expiry.
        """
        rows = self.db.run(
            lambda c: c.execute(
                "SELECT id, owner FROM cvserve_jobs WHERE status = 'Running'"
            ).fetchall()
        )
        dead = [(r["id"], r["owner"]) for r in rows if owner_is_dead(r["owner"], self.owner)]

        def expire(c: psycopg.Connection[Any]) -> int:
            n = 0
            for job_id, owner in dead:
                n += c.execute(
                    "UPDATE cvserve_jobs SET lease_until = 0 WHERE id = %s"
                    " AND status = 'Running' AND owner IS NOT DISTINCT FROM %s",
                    (job_id, owner),
                ).rowcount
            return n

        n = self.db.run(expire) if dead else 0
        return n

    def claim(self, kinds: Iterable[str]) -> Job | None:
        """The oldest Queued job, or a Running one whose lease ran out, now leased to us."""
        kinds = list(kinds)

        def go(c: psycopg.Connection[Any]) -> Any:
            while True:
                row = c.execute(
                    "SELECT id, status, attempt FROM cvserve_jobs WHERE kind = ANY(%s) AND"
                    f" (status = 'Queued' OR (status = 'Running' AND lease_until < {NOW_MS}))"
                    " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (kinds,),
                ).fetchone()
                if row is None:
                    return None
                if row["attempt"] >= self.max_attempts:
                    # A job that keeps killing its worker must not crash-loop the cluster.
                    c.execute(
                        "UPDATE cvserve_jobs SET status = 'Failed', error = %s,"
                        f" status_time = {NOW_MS}, owner = NULL, lease_until = NULL"
                        " WHERE id = %s",
                        (
                            f"gave up after {row['attempt']} attempts: the worker stopped"
                            " every time while running this job",
                            row["id"],
                        ),
                    )
                    continue
                return c.execute(
                    "UPDATE cvserve_jobs SET status = 'Running', attempt = attempt + 1,"
                    f" owner = %s, lease_until = {NOW_MS} + %s,"
                    f" start_time = COALESCE(start_time, {NOW_MS}),"
                    f" status_time = CASE WHEN status = 'Queued' THEN {NOW_MS}"
                    " ELSE status_time END"
                    f" WHERE id = %s RETURNING {_JOB_COLUMNS}",
                    (self.owner, self.lease_ms, row["id"]),
                ).fetchone()

        claimed = self.db.run(go)
        return _job(claimed) if claimed is not None else None

    def heartbeat(self, job_id: int, attempt: int) -> bool:
        """Extend our lease; False when the job is no longer ours (finished or re-claimed)."""
        return self._one_row(
            f"UPDATE cvserve_jobs SET lease_until = {NOW_MS} + %s WHERE id = %s"
            " AND status = 'Running' AND attempt = %s AND owner = %s",
            (self.lease_ms, job_id, attempt, self.owner),
        )

    def complete(self, job_id: int, attempt: int, result: dict[str, Any]) -> bool:
        return self._finish(job_id, attempt, JobStatus.COMPLETED, result, None)

    def fail(
        self, job_id: int, attempt: int, error: str, result: dict[str, Any] | None = None
    ) -> bool:
        return self._finish(job_id, attempt, JobStatus.FAILED, result, error)

    def release(self, job_id: int, attempt: int) -> bool:
        """Give a job back unfinished (graceful shutdown): claimable at once, still Running."""
        return self._one_row(
            "UPDATE cvserve_jobs SET lease_until = 0 WHERE id = %s AND status = 'Running'"
            " AND attempt = %s AND owner = %s",
            (job_id, attempt, self.owner),
        )

    def _finish(
        self,
        job_id: int,
        attempt: int,
        status: JobStatus,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> bool:
        """Write the outcome only if this attempt still holds the job; False: discarded."""
        return self._one_row(
            "UPDATE cvserve_jobs SET status = %s, result = %s, error = %s,"
            f" status_time = {NOW_MS}, owner = NULL, lease_until = NULL"
            " WHERE id = %s AND status = 'Running' AND attempt = %s",
            (
                status.value,
                json.dumps(result) if result is not None else None,
                error,
                job_id,
                attempt,
            ),
        )

    def _one_row(self, sql: str, params: tuple[Any, ...]) -> bool:
        return bool(self.db.run(lambda c: c.execute(sql, params).rowcount) == 1)

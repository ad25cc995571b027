"""The job queue and the file store in PostgreSQL, shared by every replica of a cluster.

Same rules as the SQLite pair (`cvserve.jobs.queue`, `cvserve.jobs.files`): status only
moves forward (conditional UPDATEs, and a trigger refusing anything else), a claim takes a
lease and bumps `attempt`, a job whose lease ran out is claimable again, and only the
attempt that still holds a job may write its outcome. Claims use `FOR UPDATE SKIP LOCKED`,
so workers on many machines never wait on each other nor take the same job. Lease times
come from the database's clock, one clock for every machine. File metadata and bytes
(`bytea`) live in the database too: nothing is on a node's disk.

Connections: a small pool, one connection per call in flight. A call that meets a broken
connection (the server restarted, the network dropped) is retried a bounded number of times
on a fresh connection with a short backoff, so a PostgreSQL restart costs callers a pause,
not an error. psycopg 3 is imported here only: `pip install 'cvserve[postgres]'`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from cvserve.errors import CVServeError
from cvserve.jobs.files import DuplicateExternalId, FileMeta, _meta
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

log = logging.getLogger("cvserve.jobs")
T = TypeVar("T")

# Milliseconds since the epoch on the database's clock (the transaction's start time).
NOW_MS = "(extract(epoch from now()) * 1000)::bigint"
_SCHEMA_LOCK = 0x63767365  # pg_advisory_xact_lock key: one schema creator at a time

_SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS cvserve_jobs (
        id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        project TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('Queued', 'Running', 'Completed', 'Failed')),
        payload TEXT NOT NULL,
        result TEXT,
        error TEXT,
        created_time BIGINT NOT NULL,
        start_time BIGINT,
        status_time BIGINT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        lease_until BIGINT
    )
    """,
    "CREATE INDEX IF NOT EXISTS cvserve_jobs_pending ON cvserve_jobs (status, id)",
    # Status only moves forward: Queued -> Running -> Completed | Failed (Queued -> Failed
    # for jobs given up on); Running -> Running is a re-claim. Terminal rows are frozen.
    """
    CREATE OR REPLACE FUNCTION cvserve_jobs_forward() RETURNS trigger AS $$
    BEGIN
        IF NOT ((OLD.status = 'Queued' AND NEW.status IN ('Queued', 'Running', 'Failed'))
                OR (OLD.status = 'Running' AND NEW.status IN ('Running', 'Completed', 'Failed')))
        THEN
            RAISE EXCEPTION 'job status may only move forward' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'cvserve_jobs_status_forward'
                       AND tgrelid = 'cvserve_jobs'::regclass) THEN
            CREATE TRIGGER cvserve_jobs_status_forward
            BEFORE UPDATE OF status, result, error ON cvserve_jobs
            FOR EACH ROW EXECUTE FUNCTION cvserve_jobs_forward();
        END IF;
    END $$
    """,
    """
    CREATE TABLE IF NOT EXISTS cvserve_files (
        id BIGSERIAL PRIMARY KEY,
        project TEXT NOT NULL,
        external_id TEXT,
        name TEXT NOT NULL,
        mime_type TEXT,
        uploaded BOOLEAN NOT NULL DEFAULT false,
        size BIGINT,
        sha256 TEXT,
        content BYTEA,
        created_time BIGINT NOT NULL,
        uploaded_time BIGINT,
        last_updated_time BIGINT NOT NULL,
        UNIQUE (project, external_id)
    )
    """,
    # Images and the like do not compress: store them out of line without trying.
    "ALTER TABLE cvserve_files ALTER COLUMN content SET STORAGE EXTERNAL",
]

_JOB_COLUMNS = (
    "id, kind, project, status, payload, result, error, created_time, start_time,"
    " status_time, attempt, owner"
)
_FILE_COLUMNS = (
    "id, project, external_id, name, mime_type, uploaded, size, sha256, created_time,"
    " uploaded_time, last_updated_time"
)


class DatabaseUnavailable(CVServeError):
    status = 503

    def __init__(self, where: str, cause: BaseException) -> None:
        super().__init__(f"the jobs database ({where}) is unavailable: {type(cause).__name__}")


def redact_url(url: str) -> str:
    """The URL (or `key=value` conninfo) with any password replaced by ***, for logs."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable database URL>"
    parts = parts._replace(query=re.sub(r"(password=)[^&]*", r"\1***", parts.query))
    if password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return urlunsplit(parts)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "a PostgreSQL database_url needs psycopg: pip install 'cvserve[postgres]'"
        ) from e
    return psycopg


class PostgresDatabase:
    """A small connection pool with bounded retries on broken connections."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 8,
        retries: int = 8,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._psycopg = _psycopg()
        from psycopg.rows import dict_row

        self._row_factory = dict_row
        self._url = url
        self.where = redact_url(url)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False
        self.reconnects = 0  # broken connections replaced (for tests and logs)
        self.run(self._create_schema)

    @staticmethod
    def _create_schema(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in _SCHEMA:
            conn.execute(statement)

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] = self._psycopg.connect(
            self._url,
            autocommit=True,
            row_factory=self._row_factory,
            connect_timeout=max(1, round(self.connect_timeout_s)),
            application_name="cvserve",
        )
        return conn

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        return self._connect()

    def _give(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if not self._closed and not conn.closed and not conn.broken:
                self._idle.append(conn)
                return
        conn.close()

    def _drop_idle(self) -> None:
        """After a broken connection every idle one is suspect (a restart breaks them all)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """fn(conn) in one transaction; retried on a fresh connection if the link broke.

        A retry after a lost link can repeat work whose COMMIT did reach the server; every
        caller here tolerates that (a re-claim only costs a lease expiry, a repeated finish
        is refused as stale).
        """
        pg = self._psycopg
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            if self._closed:
                raise RuntimeError("the jobs database is closed")
            with self._slots:
                conn: psycopg.Connection[Any] | None = None
                try:
                    conn = self._take()
                    with conn.transaction():
                        out = fn(conn)
                    self._give(conn)
                    return out
                except (pg.OperationalError, pg.InterfaceError) as e:
                    if conn is not None and not (conn.broken or conn.closed):
                        # An error the server raised on a healthy link (a real failure,
                        # not a lost connection): no retry helps.
                        self._give(conn)
                        raise
                    if conn is not None:
                        conn.close()
                    self._drop_idle()
                    self.reconnects += 1
                    if attempt == self.retries:
                        raise DatabaseUnavailable(self.where, e) from e
                    log.warning(
                        "jobs database %s: %s; retrying in %.2f s",
                        self.where,
                        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
                        delay,
                    )
                except BaseException:
                    if conn is not None:
                        self._give(conn)
                    raise
            time.sleep(delay)
            delay = min(self.max_backoff_s, delay * 2)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()


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


# -- the file store ----------------------------------------------------------------------
class PostgresFileStore:
    """`FilesStore` on PostgreSQL: metadata and content (bytea) in `cvserve_files`."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self._unique = db._psycopg.errors.UniqueViolation

    def create(
        self, project: str, name: str, mime_type: str | None, external_id: str | None = None
    ) -> FileMeta:
        def go(c: psycopg.Connection[Any]) -> Any:
            return c.execute(
                "INSERT INTO cvserve_files (project, external_id, name, mime_type,"
                f" created_time, last_updated_time) VALUES (%s, %s, %s, %s, {NOW_MS}, {NOW_MS})"
                f" RETURNING {_FILE_COLUMNS}",
                (project, external_id, name, mime_type),
            ).fetchone()

        try:
            return _meta(self.db.run(go))
        except self._unique as e:
            raise DuplicateExternalId(external_id or "") from e

    def get(self, project: str, file_id: int) -> FileMeta | None:
        return self._one(
            f"SELECT {_FILE_COLUMNS} FROM cvserve_files WHERE id = %s AND project = %s",
            (file_id, project),
        )

    def by_external_id(self, project: str, external_id: str) -> FileMeta | None:
        return self._one(
            f"SELECT {_FILE_COLUMNS} FROM cvserve_files WHERE external_id = %s AND project = %s",
            (external_id, project),
        )

    def find(
        self, project: str, file_id: int | None = None, external_id: str | None = None
    ) -> FileMeta | None:
        if file_id is not None:
            return self.get(project, file_id)
        if external_id is not None:
            return self.by_external_id(project, external_id)
        return None

    def write(self, meta: FileMeta, data: bytes) -> FileMeta:
        """Store the content and mark the file uploaded, in one transaction."""
        digest = hashlib.sha256(data).hexdigest()

        def go(c: psycopg.Connection[Any]) -> Any:
            return c.execute(
                "UPDATE cvserve_files SET content = %b, uploaded = true, size = %s, sha256 = %s,"
                f" uploaded_time = {NOW_MS}, last_updated_time = {NOW_MS}"
                f" WHERE id = %s AND project = %s RETURNING {_FILE_COLUMNS}",
                (data, len(data), digest, meta.id, meta.project),
            ).fetchone()

        row = self.db.run(go)
        if row is None:
            raise FileNotFoundError(f"file {meta.id} is gone")
        return _meta(row)

    def read(self, meta: FileMeta) -> bytes:
        row = self.db.run(
            lambda c: c.execute(
                "SELECT content FROM cvserve_files WHERE id = %s AND uploaded",
                (meta.id,),
                binary=True,
            ).fetchone()
        )
        if row is None or row["content"] is None:
            raise FileNotFoundError(f"file {meta.id} has no stored content")
        return bytes(row["content"])

    def _one(self, sql: str, params: tuple[Any, ...]) -> FileMeta | None:
        row = self.db.run(lambda c: c.execute(sql, params).fetchone())
        return _meta(row) if row is not None else None

"""The PostgreSQL side shared by the queue and the file store: schema, connection pool.

Connections: a small pool, one connection per call in flight. A call that meets a broken
connection (the server restarted, the network dropped) is retried a bounded number of times
on a fresh connection with a short backoff, so a PostgreSQL restart costs callers a pause,
not an error. psycopg 3 is imported here only: `pip install 'cvserve[postgres]'`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from cvserve.errors import CVServeError

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
    # Video streams (cvserve.streams.store): a row per stream, leased by its Ray worker.
    """
    CREATE TABLE IF NOT EXISTS cvserve_streams (
        id TEXT PRIMARY KEY,
        request TEXT NOT NULL,
        status TEXT NOT NULL,
        created BIGINT NOT NULL,
        updated BIGINT NOT NULL,
        object TEXT NOT NULL,
        owner TEXT,
        lease_until BIGINT
    )
    """,
]

JOB_COLUMNS = (
    "id, kind, project, status, payload, result, error, created_time, start_time,"
    " status_time, attempt, owner"
)
FILE_COLUMNS = (
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

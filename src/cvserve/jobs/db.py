"""The jobs database: one SQLite file in the data dir, WAL mode, fsync on every commit.

One connection per process, guarded by a lock: every statement here is tiny, and SQLite
serialises writers anyway. `synchronous=FULL` makes a commit durable before the HTTP
answer goes out, so an accepted job survives a crash or a power cut.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DB_NAME = "jobs.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    project TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('Queued', 'Running', 'Completed', 'Failed')),
    payload TEXT NOT NULL,
    result TEXT,
    error TEXT,
    created_time INTEGER NOT NULL,
    start_time INTEGER,
    status_time INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (status, id);

-- Status only moves forward: Queued -> Running -> Completed | Failed (Queued -> Failed for
-- jobs given up on). Running -> Running is a re-claim after a crash. Terminal rows are frozen.
CREATE TRIGGER IF NOT EXISTS jobs_status_forward
BEFORE UPDATE OF status, result, error ON jobs
WHEN NOT (
    (OLD.status = 'Queued' AND NEW.status IN ('Queued', 'Running', 'Failed'))
    OR (OLD.status = 'Running' AND NEW.status IN ('Running', 'Completed', 'Failed'))
)
BEGIN
    SELECT RAISE(ABORT, 'job status may only move forward');
END;

CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    external_id TEXT,
    name TEXT NOT NULL,
    mime_type TEXT,
    uploaded INTEGER NOT NULL DEFAULT 0,
    size INTEGER,
    sha256 TEXT,
    created_time INTEGER NOT NULL,
    uploaded_time INTEGER,
    last_updated_time INTEGER NOT NULL,
    UNIQUE (project, external_id)
);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class Database:
    """A lock-guarded SQLite connection in autocommit mode (explicit BEGIN for multi-step)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        with self.transaction() as c:  # not executescript: it would COMMIT on its own
            for statement in _split(_SCHEMA):
                c.execute(statement)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, params)

    def one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: atomic even against another process on the same file."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split(script: str) -> list[str]:
    """Statements of the schema script; a trigger body's inner ';' stays with its trigger."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    return out
